"""Admission of concurrent requests: FairGate (first come first served, at most ``slots`` at once, no
overtaking), the lanes every API view waits in, and a live server that still answers concurrent
requests exactly as sequential ones while requests queue."""
from __future__ import annotations

import json
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
    wait_until(lambda: "waiter" in order and gate.waiting == 1)  # the newcomer is queued
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
    for path in ("/api/explain", "/api/images/explain", "/api/stores/<path:store>/cells/<int:cell>/explain"):
        assert lanes[path] == "model", path
    for path in ("/api/stores/<path:store>/match", "/api/stores/<path:store>/select", "/api/stores/<path:store>/states"):
        assert lanes[path] == "store", path
    for path in ("/api/status", "/api/jobs/<job_id>"):
        assert lanes[path] is None, path


def test_requests_queue_in_their_own_lane_only(data_dir):
    """While the store lane is full, store queries wait (and then answer), and views of another lane
    or of no lane answer at once."""
    from server.app import create_app
    app = create_app(data_dir, {"TESTING": True, "COMPUTE_SLOTS": 1})
    gates = app.extensions["lstmvis_gates"]
    store_gate = gates.gate("store")
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


def test_a_malformed_request_is_answered_without_waiting_for_its_lane(data_dir):
    """Validation runs before the queue: a 400 never waits behind the lane's computations."""
    from server.app import create_app
    app = create_app(data_dir, {"TESTING": True, "COMPUTE_SLOTS": 1})
    store_gate = app.extensions["lstmvis_gates"].gate("store")
    with live_server(app) as base:
        store_gate.acquire()  # the store lane's only slot is taken
        try:
            bad = requests.get(f"{base}/api/stores/toy/tokens?start=zero", timeout=5)
            assert bad.status_code == 400 and "start" in bad.json()["error"]["message"]
            assert store_gate.waiting == 0
        finally:
            store_gate.release()


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


# ------------------------------------------------------------------------------ keep-alive

class RawConnection:
    """A socket to the server and a reader of its answers (status, lower-cased headers, body), framed
    by Content-Length as the server sends them."""

    def __init__(self, base: str, timeout: float = 5.0):
        import socket
        from urllib.parse import urlsplit
        u = urlsplit(base)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.reader.close()
        self.sock.close()

    def exchange(self, raw: bytes) -> list[tuple[int, dict, bytes]]:
        """Send ``raw`` (one or more requests) and read answers until one says close or the server does."""
        if raw:
            self.sock.sendall(raw)
        out = []
        n_requests = max(1, raw.count(b" HTTP/1."))
        while len(out) < n_requests:
            status_line = self.reader.readline()
            if not status_line:
                break
            headers = {}
            for line in iter(self.reader.readline, b"\r\n"):
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            body = self.reader.read(int(headers.get("content-length", 0)))
            out.append((int(status_line.split()[1]), headers, body))
            if headers.get("connection") == "close":
                break
        return out

    def closed_by_server(self) -> bool:
        return self.reader.read(1) == b""


@pytest.fixture()
def served(data_dir):
    from server.app import create_app
    with live_server(create_app(data_dir, {"TESTING": True, "MAX_CONTENT_LENGTH": 4096})) as base:
        yield base


def test_connections_are_kept_alive_and_bodies_end_where_they_say(served):
    """Three requests on one connection, sent at once: a POST whose body the API refuses unread (415),
    a POST with a JSON body, a GET; every answer is the one a fresh connection gets."""
    body = b'{"model": "no-such-model", "text": "x"}'
    raw = (b"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n"
           b"GET / x\r\n\r\n"  # the unread body looks like a request line: it must not be taken for one
           + b"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
           + b"GET /api/stores/toy/tokens?start=0&stop=3 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    with RawConnection(served) as conn:
        answers = conn.exchange(raw)
        assert [a[0] for a in answers] == [415, 404, 200]
        assert all(a[1].get("connection") != "close" for a in answers)
        assert json.loads(answers[2][2])["tokens"] == " ".join(TOY_TEXTS).split()[:3]
        # still open: one more request on the same connection
        again = conn.exchange(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert [a[0] for a in again] == [200]


@pytest.mark.parametrize("head,closes", [
    (b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", True),
    (b"GET /api/status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", True),
    (b"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", True),
    (b"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
     b"Content-Length: 5000\r\n\r\n" + b" " * 5000, True),  # over the app's limit: 413, then closed
    (b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", False),
])
def test_connections_close_when_keeping_them_is_not_safe(served, head, closes):
    with RawConnection(served) as conn:
        answers = conn.exchange(head)
        assert len(answers) == 1 and answers[0][1]["content-type"].startswith("application/json")
        assert (answers[0][1].get("connection") == "close") is closes
        if closes:
            assert conn.closed_by_server()
        else:
            assert [a[0] for a in conn.exchange(head)] == [200]


def test_a_body_shorter_than_its_length_closes_the_connection(served):
    import socket
    with RawConnection(served) as conn:
        conn.sock.sendall(b"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"model\": ")
        conn.sock.shutdown(socket.SHUT_WR)  # the client stops sending
        answers = conn.exchange(b"")
        assert len(answers) == 1 and 400 <= answers[0][0] < 500
        assert conn.closed_by_server()


def test_idle_kept_alive_connections_are_closed(data_dir):
    from server.app import create_app

    with live_server(create_app(data_dir, {"TESTING": True}), keep_alive_seconds=0.3) as base:
        with RawConnection(base, timeout=10) as conn:
            assert [a[0] for a in conn.exchange(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")] == [200]
            t0 = time.monotonic()
            assert conn.closed_by_server(), "an idle connection is closed by the server"
            assert time.monotonic() - t0 < 5
