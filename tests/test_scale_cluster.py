"""Extraction on a Dask cluster into a Zarr store: a LocalCluster of 2 worker processes, and a real
``dask scheduler`` with two ``dask worker`` processes (they reach the driver only through the
scheduler and the store). Faults: a killed worker, an interrupted driver."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lstmvis
from lstmvis import StateStore, StoreError

from test_extract import TEXTS, char_lm

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow  # clusters of worker processes: 20-100 s a test (CI runs them)
ROOT = Path(__file__).resolve().parents[1]
CORPUS = [t for t in TEXTS if t] * 30  # a few hundred sequences


@pytest.fixture(scope="module")
def local_client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Single-process extraction into HDF5: what every cluster run must equal bitwise."""
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    return lstmvis.extract(char_lm(), CORPUS, path, progress=False, part_tokens=400)


def _assert_same(store, ref):
    assert store.sources == ref.sources and store.offsets.tolist() == ref.offsets.tolist()
    for s in ref.sources:
        np.testing.assert_array_equal(store.states(s), ref.states(s))  # bitwise at float32
    assert store.tokens() == ref.tokens()


def test_local_cluster_extraction_is_bitwise_single_process(local_client, reference, tmp_path):
    seen = []
    with lstmvis.extract(char_lm(), CORPUS, str(tmp_path / "c.zarr"), progress=False, part_tokens=400,
                         client=local_client, report=lambda done, total: seen.append((done, total))) as store:
        _assert_same(store, reference)
        assert len(store.backend.root.attrs["parts"]) > 2
    assert seen[-1] == (reference.n_tokens, reference.n_tokens) and seen == sorted(seen)


def test_a_cluster_needs_a_zarr_store(local_client, tmp_path):
    with pytest.raises(ValueError, match="Zarr"):
        lstmvis.extract(char_lm(), CORPUS[:3], tmp_path / "x.h5", client=local_client, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cli_cluster(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on loopback; yields (address, workers)."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    address = f"tcp://127.0.0.1:{port}"
    logs = open(tmp_path / "cluster.log", "w")
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--dashboard-address", ":0", "--no-show"],
                                 env=env, stdout=logs, stderr=subprocess.STDOUT)
    workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                 "--no-nanny", "--no-dashboard", "--name", f"w{i}"],
                                env=env, stdout=logs, stderr=subprocess.STDOUT) for i in range(2)]
    try:
        client = distributed.Client(address, timeout=60)
        client.wait_for_workers(2, timeout=60)
        yield client, workers
        client.close()
    finally:
        for p in workers + [scheduler]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in workers + [scheduler]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()


def test_cli_cluster_killed_worker_shard_is_redone(cli_cluster, reference, tmp_path, monkeypatch):
    """A worker killed mid-extraction: its shard is redone by the other, and the result is exact. Then
    an interrupted driver: no store opens as complete, and a rerun finishes it."""
    client, workers = cli_cluster
    path = str(tmp_path / "k.zarr")
    killed = []

    def report(done, total):
        if done and not killed:  # after the first finished part, kill one worker (SIGKILL)
            workers[0].kill()
            killed.append(done)

    with lstmvis.extract(char_lm(), CORPUS, path, progress=False, part_tokens=400, client=client,
                         report=report) as store:
        _assert_same(store, reference)
    assert killed and workers[0].poll() is not None

    path2 = str(tmp_path / "i.zarr")

    def interrupt(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lstmvis.extract(char_lm(), CORPUS, path2, progress=False, part_tokens=400, client=client, report=interrupt)
    with pytest.raises(StoreError, match="incomplete"):
        StateStore.open(path2)
    with lstmvis.extract(char_lm(), CORPUS, path2, progress=False, part_tokens=400, client=client) as store:
        _assert_same(store, reference)


def test_cli_extract_on_a_scheduler_by_model_name(local_client, tmp_path):
    """``lstmvis extract --out X.zarr --scheduler ADDR``: workers load the model by name, once each."""
    from lstmvis.cli import main

    common = ["extract", "--model", "parens-lstm", "--corpus", "parens:test", "--limit", "40", "--quiet",
              "--part-tokens", "300"]
    assert main(common + ["--out", str(tmp_path / "one.h5")]) == 0
    assert main(common + ["--out", str(tmp_path / "many.zarr"), "--scheduler", local_client.scheduler.address]) == 0
    with StateStore.open(tmp_path / "one.h5") as one, StateStore.open(tmp_path / "many.zarr") as many:
        _assert_same(many, one)
        assert many.meta_names == one.meta_names and many.card == one.card
    loaded = local_client.run(lambda: sorted(__import__("lstmvis.extraction").extraction._WORKER_MODELS))
    assert any(names == ["parens-lstm"] for names in loaded.values())
