"""Admission of concurrent requests: FairGate (first come first served, at most ``slots`` at once, no
overtaking), the lanes every API view waits in, and a live server that still answers concurrent
requests exactly as sequential ones while requests queue."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest_server import TOY_TEXTS, live_server, make_toy_store
from server.concurrency import LANES, FairGate, Gates, n_cores


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def test_gate_admits_waiters_in_arrival_order():
    gate = FairGate(1)
    gate.acquire()
    order: list[int] = []

    def worker(i):
        with gate:
            order.append(i)

    threads = []
    for i in range(6):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        threads.append(t)
        wait_until(lambda: gate.waiting == i + 1)  # thread i is queued before thread i + 1 arrives
    gate.release()
    for t in threads:
        t.join(10)
    assert order == list(range(6))
    assert gate.busy == 0 and gate.waiting == 0


def test_a_released_slot_goes_to_the_waiter_not_to_a_newcomer():
    gate = FairGate(1)
    gate.acquire()
    order: list[str] = []
    hold = threading.Event()

    def waiter():
        with gate:
            order.append("waiter")
            hold.wait(10)

    t = threading.Thread(target=waiter)
    t.start()
    wait_until(lambda: gate.waiting == 1)
    gate.release()
    assert gate.busy == 1, "the slot is handed over, never free in between"
    newcomer = threading.Thread(target=lambda: (gate.acquire(), order.append("newcomer"), gate.release()))
    newcomer.start()
    wait_until(lambda: "waiter" in order)
    time.sleep(0.05)
    assert order == ["waiter"], "the newcomer must queue behind the waiter"
    hold.set()
    t.join(10)
    newcomer.join(10)
    assert order == ["waiter", "newcomer"]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_gate_runs_at_most_slots_at_once(slots):
    gate = FairGate(slots)
    lock = threading.Lock()
    running, peak = [0], [0]

    def work(_):
        with gate:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.01)
            with lock:
                running[0] -= 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(32)))
    assert peak[0] == slots
    assert gate.busy == 0


def test_gate_refuses_misuse():
    with pytest.raises(ValueError, match="at least 1 slot"):
        FairGate(0)
    gate = FairGate(2)
    with pytest.raises(RuntimeError, match="released more often"):
        gate.release()
    with pytest.raises(ValueError, match="unknown lane"):
        with Gates(1).admit("gpu"):
            pass


def test_unknown_lane_is_refused_when_a_view_is_declared():
    from server.validation import api
    with pytest.raises(ValueError, match="unknown lane"):
        api(lane="fast")


# ------------------------------------------------------------------------------ the app's lanes

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    make_toy_store(d / "toy.h5").close()
    return d


def test_slots_default_to_the_cores_and_zero_turns_the_gates_off(data_dir):
    from server.app import create_app
    assert create_app(data_dir, {"TESTING": True}).extensions["lstmvis_gates"].slots == n_cores()
    assert create_app(data_dir, {"TESTING": True, "COMPUTE_SLOTS": 3}).extensions["lstmvis_gates"].slots == 3
    assert create_app(data_dir, {"TESTING": True, "COMPUTE_SLOTS": 0}).extensions["lstmvis_gates"] is None


def test_every_api_view_has_a_lane_and_model_calls_wait_in_the_model_lane(data_dir):
    from server.app import create_app
    app = create_app(data_dir, {"TESTING": True})
    lanes = {}
    for rule in app.url_map.iter_rules():
        spec = getattr(app.view_functions[rule.endpoint], "api_spec", None)
        if spec is not None:
            assert spec["lane"] in (None, *LANES), rule.rule
            lanes[rule.rule] = spec["lane"]
    for path in ("/api/explain", "/api/images/explain", "/api/stores/<store>/cells/<int:cell>/explain"):
        assert lanes[path] == "model", path
    for path in ("/api/stores/<store>/match", "/api/stores/<store>/select", "/api/stores/<store>/states"):
        assert lanes[path] == "store", path
    for path in ("/api/status", "/api/jobs/<job_id>"):
        assert lanes[path] is None, path


def test_requests_queue_in_their_own_lane_only(data_dir):
    """While the store lane is full, store queries wait (and then answer), and views of another lane
    or of no lane answer at once."""
    from server.app import create_app
    app = create_app(data_dir, {"TESTING": True, "COMPUTE_SLOTS": 1})
    gates = app.extensions["lstmvis_gates"]
    store_gate = gates._gates["store"]
    with live_server(app) as base:
        store_gate.acquire()  # the lane's only slot, as a long request would hold it
        try:
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(lambda: requests.get(f"{base}/api/stores/toy/tokens?start=0&stop=3", timeout=30))
                wait_until(lambda: store_gate.waiting == 1)
                assert requests.get(f"{base}/api/status", timeout=5).status_code == 200  # no lane
                bad = requests.post(f"{base}/api/explain", json={"model": "no-such-model", "text": "x"}, timeout=5)
                assert bad.status_code == 404 and bad.json()["error"]  # the model lane is free
                assert not pending.done()
                store_gate.release()
                resp = pending.result(30)
        finally:
            wait_until(lambda: store_gate.busy == 0)
    assert resp.status_code == 200 and resp.json()["tokens"] == " ".join(TOY_TEXTS).split()[:3]


@pytest.mark.parametrize("slots", [1, 2])
def test_concurrent_answers_equal_sequential_ones_through_the_gate(data_dir, slots):
    from server.app import create_app
    app = create_app(data_dir, {"TESTING": True, "COMPUTE_SLOTS": slots})
    paths = [f"/api/stores/toy/tokens?start={i % 8}&stop={i % 8 + 3}" for i in range(16)]
    paths += [f"/api/stores/toy/states?source=rnn.l0.h&start={i}&stop={i + 2}" for i in range(8)]
    paths += [f"/api/stores/toy/match?source=rnn.l0.h&cells={c}&threshold=0.3" for c in ("0", "1", "0,1", "2")]
    paths += ["/api/stores/toy/tokens?start=5&stop=2", "/api/stores/toy/states?source=nope"]  # 4xx answers
    with live_server(app) as base:
        sequential = [(r.status_code, r.json()) for r in (requests.get(base + p, timeout=30) for p in paths)]
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(lambda p: (lambda r: (r.status_code, r.json()))(
                requests.get(base + p, timeout=30)), paths * 3))
    assert concurrent == sequential * 3
    assert {s for s, _ in sequential} == {200, 400, 404}
    gates = app.extensions["lstmvis_gates"]
    assert gates.info()["store"] == {"slots": slots, "busy": 0, "waiting": 0}
