"""SIGKILL during an extraction (a short run of benchmarks/kill_extraction.py).

A child process extracts into a path that already holds an earlier store and is killed with
SIGKILL at named code points (after a sequence is marked done, in the middle of the states
writes, just before the rename) and once at a random moment. After each kill the target opens
as the earlier store or the complete new one, never anything in between; the partial file does
not open as complete unless it is; a sibling store is untouched; a rerun finishes with the same
states as an uninterrupted run and leaves no files behind. The full run (20 random trials and
every code point) is ``python benchmarks/kill_extraction.py --trials 20 --points all``.
"""
from __future__ import annotations

import random

import pytest
import torch

from conftest_server import load_benchmark
from data.registry import CHECKPOINTS


pytestmark = pytest.mark.skipif(not (CHECKPOINTS / "parens-lstm.pt").exists(), reason="parens-lstm not trained")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bench = load_benchmark("kill_extraction")
    yield bench.Harness(tmp_path_factory.mktemp("kill"), n_sequences=30)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("point", ["after-done-flags", "mid-states-write", "before-rename"])
def test_kill_at_a_code_point_loses_nothing(harness, point):
    row = harness.trial(0, point=point)
    assert row["killed"], row
    assert row["problems"] == [], row
    if point == "after-rename":
        assert row["target"] == "new" and not row["partial_left"]
    else:
        assert row["target"] == "earlier" and row["partial_left"]
    if point == "before-rename":
        assert row["partial_opens"], "the partial file was complete: it may open (and was checked to be correct)"
    else:
        assert not row.get("partial_opens"), row


def test_kill_at_a_random_moment_loses_nothing(harness):
    row = harness.trial(1, delay=random.Random(7).uniform(0.2, 1.5))
    assert row["problems"] == [], row
    assert row["target"] in ("earlier", "new")


def test_server_killed_inside_an_index_build_restarts_clean(tmp_path):
    """SIGKILL the server while its first match request builds the match index (temporary index
    files exist), restart it: the store is byte-identical and the answer equals the library's."""
    import hashlib
    import json
    import os
    import signal
    import time

    import numpy as np

    from lstmvis import StateStore

    bench = load_benchmark("kill_server")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    n, d = 200_000, 32  # large enough that building the index takes a moment
    states = np.tanh(rng.standard_normal((n, d)).cumsum(0) * 0.05).astype(np.float16)
    tokens = [f"w{i % 50}" for i in range(n)]
    with StateStore.from_arrays(data / "big.h5", {"rnn.l0.h": states}, tokens=tokens,
                                offsets=np.arange(0, n + 1, 1000)) as store:
        cells = [int(c) for c in store.select("rnn.l0.h", 10, 12)] or [0, 1]
        expected = store.match("rnn.l0.h", cells, top=20, index_dir=tmp_path / "reference-index").to_dict()
    digest = hashlib.sha256((data / "big.h5").read_bytes()).hexdigest()
    path = "/api/stores/big/match?source=rnn.l0.h&top=20&cells=" + ",".join(map(str, cells))
    index_dir = data / "big.h5.index"

    server = bench.Server("data", data)
    try:
        killed_in_build = False
        import threading
        threading.Thread(target=lambda: _quietly(server.get, path), daemon=True).start()
        deadline = time.time() + 120
        while time.time() < deadline:
            if index_dir.is_dir() and any(".tmp" in p.name for p in index_dir.iterdir()):
                os.kill(server.proc.pid, signal.SIGKILL)
                killed_in_build = True
                break
            time.sleep(0.01)
    finally:
        server.kill()
    assert killed_in_build, "the index build was not caught in progress"
    assert hashlib.sha256((data / "big.h5").read_bytes()).hexdigest() == digest
    server = bench.Server("data", data)
    try:
        status, body = server.get(path)
    finally:
        server.kill()
    assert status == 200
    assert not [p.name for p in index_dir.iterdir() if ".tmp" in p.name], "the killed build's files are left"
    got = json.loads(body)
    assert [(h["start"], h["stop"]) for h in got["hits"]] == [(h["start"], h["stop"]) for h in expected["hits"]]
    assert hashlib.sha256((data / "big.h5").read_bytes()).hexdigest() == digest


def _quietly(fn, *args):
    try:
        fn(*args, timeout=120)
    except OSError:
        pass
