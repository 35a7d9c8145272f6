"""``lstmvis serve --data s3://... --scheduler ADDR`` and ``lstmvis.serve(data_dir="s3://...", scheduler=/client=)``
(issue 22, point 3): Zarr stores on an S3-compatible server on loopback (moto's server mode, reached
through s3fs), listed and rescanned like a local folder and confined to it; select, match and cell
ranking through the HTTP API, with match and cell ranking (AUROC, Pearson) on a Dask cluster (a LocalCluster of 2
worker processes), give what the same server gives on a local HDF5 copy of the store. Opening a store starts
the background job that builds every part's match index on the cluster (progress in parts)."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

import lstmvis
from lstmvis import StateStore
from lstmvis.cli import main as lstmvis_main
from server import python_api
from server.jobs import RUNNER_KEY
from server.resources import RESCAN_SECONDS

from test_store_contract import s3_server  # noqa: F401  (moto's S3 server on loopback, fsspec set to reach it)

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow  # a cluster of worker processes and an S3 server (CI runs them)
ROOT = Path(__file__).resolve().parents[1]
BUCKET = "lstmvis-test"

# match queries sent to both servers: ties (coarse values), both signs, padding, phrase length, contexts
MATCHES = [dict(cells="0,1,2", threshold=0.2, top=7), dict(cells="3", threshold=0.0, top=40, min_length=1),
           dict(cells="0,4,5", threshold=0.3, top=25, sign="negative", pad_left=0, left=2, right=4),
           dict(cells="2,7", threshold=0.25, top=15, phrase_length=3)]
# how much work a match did (one count per part on a cluster), not what it found
ENGINE_COUNTS = {"n_candidates", "n_verified", "levels"}
RANKS = [dict(hypothesis="meta:label"), dict(hypothesis="tokens:w1,w2", method="auroc", top=12),
         dict(hypothesis="meta:label", method="pearson", top=5), dict(hypothesis="meta:label", method="spearman")]


def _s3():
    """A client of its own, as another process writing the bucket would be (not the server's cached one)."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


@pytest.fixture(scope="module")
def remote(s3_server, tmp_path_factory):  # noqa: F811
    """``(data URL, local folder)``: a Zarr store of many parts at ``<URL>/runs/s.zarr`` on S3, and its HDF5
    copy made by ``lstmvis convert`` at ``<folder>/runs/s.h5`` (both served as the store ``runs/s``)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=120)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = int(offsets[-1])
    states = {"h": (np.round(rng.standard_normal((n, 12)) * 4) / 8).astype(np.float16)}
    tokens = [f"w{i % 17}" for i in range(n)]
    label = np.repeat(np.arange(len(lengths)) % 2, lengths)
    work = tmp_path_factory.mktemp("remote")
    StateStore.from_arrays(work / "made.h5", states, tokens=tokens, offsets=offsets, meta={"label": label},
                           card={"name": "remote-toy"}).close()
    url = f"s3://{BUCKET}/serve-{uuid.uuid4().hex[:8]}"
    assert lstmvis_main(["convert", str(work / "made.h5"), f"{url}/runs/s.zarr", "--part-tokens", "500"]) == 0
    local = work / "local"
    (local / "runs").mkdir(parents=True)
    assert lstmvis_main(["convert", f"{url}/runs/s.zarr", str(local / "runs" / "s.h5")]) == 0
    with StateStore.open(f"{url}/runs/s.zarr") as zs:
        assert len(zs.backend.root.attrs["parts"]) > 5
    return url, local


@pytest.fixture(scope="module")
def cluster(s3_server):  # noqa: F811
    """A LocalCluster of 2 worker processes, started once the S3 server is up (the workers inherit its settings)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


def _get(url: str, path: str, status: int = 200, **params) -> dict:
    resp = requests.get(url + path, params=params, timeout=120)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    return resp.json()


def _index_job(url: str) -> dict:
    """The one job "index" the server at ``url`` has started, as soon as it has one."""
    return next(j for j in _get(url, "api/jobs")["jobs"] if j["kind"] == "index")


def _finished(url: str, job: dict, timeout: float = 180.0) -> dict:
    """``job`` polled over HTTP until it is done or failed."""
    deadline = time.monotonic() + timeout
    while job["status"] not in ("done", "error"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = _get(url, f"api/jobs/{job['id']}")
    return job


def _answers(url: str) -> list:
    """Every select, match and ranking answer of the store ``runs/s``."""
    out = [_get(url, "api/stores/runs/s/select", source="h", start=40, stop=43, threshold=0.2),
           _get(url, "api/stores/runs/s/select", source="h", start=5, stop=6, threshold=0.1, sign="both")]
    out += [_get(url, "api/stores/runs/s/match", source="h", **q) for q in MATCHES]
    out += [_get(url, "api/stores/runs/s/cells/rank", source="h", **q) for q in RANKS]
    return out


def _same(a, b) -> bool:
    """Equal JSON values, floats to float64 rounding (the cluster adds a correlation's sums in another
    order)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12,
                                                                                            abs_tol=1e-15)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _assert_same_answers(got: list[dict], want: list[dict]) -> None:
    """Equal answers: every field but how much work a match did (per part on a cluster)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        diff = sorted(k for k in set(g) | set(w) if not _same(g.get(k), w.get(k)))
        assert set(diff) <= ENGINE_COUNTS, (diff, {k: (g.get(k), w.get(k)) for k in diff})


def test_a_remote_store_on_a_cluster_answers_as_its_local_hdf5_copy(remote, cluster):
    url, local = remote
    with lstmvis.serve(data_dir=local, port=0, block=False) as here:
        want = _answers(here.url)
        want_info = _get(here.url, "api/stores/runs/s")
    with lstmvis.serve(data_dir=url + "/", scheduler=cluster.scheduler_address, port=0, block=False) as there, \
            distributed.Client(cluster) as watcher, distributed.get_task_stream(watcher) as tasks:
        info = _get(there.url, "api/stores/runs/s")
        assert info["status"] == "ready" and info["n_tokens"] == want_info["n_tokens"]
        assert _finished(there.url, _index_job(there.url))["status"] == "done"  # opening it indexed its parts
        assert {k: v for k, v in info.items() if k != "description"} == \
            {k: v for k, v in want_info.items() if k != "description"}
        got = _answers(there.url)
        owned = there.app.config["DASK_CLIENT"]
        assert owned.status == "running"
    _assert_same_answers(got, want)
    assert len(tasks.data) >= 2 * len(MATCHES)  # the queries ran as tasks on the cluster (one per part and query)
    ranked = {t["key"] for t in tasks.data if "key_sums_part" in str(t["key"])}
    with StateStore.open(f"{url}/runs/s.zarr") as zs:
        n_parts = len(zs.backend.root.attrs["parts"])
    assert len(ranked) == len(RANKS) * n_parts  # every ranking, AUROC and correlations, one task per part
    assert owned.status == "closed"  # the client the server opened for scheduler= is closed when it stops


def test_opening_a_remote_store_indexes_its_parts_on_the_cluster_in_the_background(remote, cluster):
    """Opening the store starts the job "index": one task per part on the cluster, its progress in parts;
    a match or ranking meanwhile answers 202 with that job; a part that fails fails the job with its
    message, the server stays up and opening the store again retries; once done, every part's index is
    beside its part on S3 and the first queries build none (the same index files), answering as the
    HDF5 copy."""
    url, local = remote
    fresh = f"s3://{BUCKET}/fresh-{uuid.uuid4().hex[:8]}"  # the same store, no part indexed yet
    assert lstmvis_main(["convert", str(local / "runs" / "s.h5"), f"{fresh}/runs/s.zarr", "--part-tokens", "500"]) == 0
    root = fresh[len("s3://"):] + "/runs/s.zarr"
    fs = _s3()
    with StateStore.open(f"{fresh}/runs/s.zarr") as zs:
        n_parts = len(zs.backend.root.attrs["parts"])
    assert not fs.glob(f"{root}/parts/*.index")
    with lstmvis.serve(data_dir=local, port=0, block=False) as here:
        want = _answers(here.url)
    chunk = f"{root}/parts/00003/h/c/0/0"  # part 3's states
    good = fs.cat_file(chunk)
    fs.pipe_file(chunk, b"not a chunk")
    gate = threading.Event()
    with lstmvis.serve(data_dir=fresh, scheduler=cluster.scheduler_address, port=0, block=False) as there, \
            distributed.Client(cluster) as watcher:
        there.app.config["INDEX_WAIT_S"] = 0.0
        there.app.extensions[RUNNER_KEY].submit("test", ("hold the job worker",), lambda report: gate.wait(60))
        try:
            _get(there.url, "api/stores/runs/s")
            job = _index_job(there.url)
            assert job["status"] == "queued"
            for path, q in [("match", {"source": "h", **MATCHES[0]}), ("cells/rank", {"source": "h", **RANKS[0]})]:
                waiting = _get(there.url, f"api/stores/runs/s/{path}", 202, **q)
                assert waiting["status"] == "building index" and waiting["job"]["id"] == job["id"]
        finally:
            gate.set()
        failed = _finished(there.url, job)
        assert failed["status"] == "error" and "tokens 0.." in failed["error"], failed  # part 3's own error
        assert failed["total"] == n_parts and failed["done"] < n_parts
        assert _get(there.url, "api/stores")["stores"]  # the server is up
        indexed_before = {k: fs.cat_file(f"{root}/parts/{k:05d}.index/h.json") for k in range(n_parts)
                          if fs.exists(f"{root}/parts/{k:05d}.index/h.json")}
        assert 3 not in indexed_before
        fs.pipe_file(chunk, good)
        there.app.config["INDEX_WAIT_S"] = 60.0
        with distributed.get_task_stream(watcher) as tasks:
            _get(there.url, "api/stores/runs/s")  # opening it again: a new job
            retried = _index_job(there.url)
            assert retried["id"] != job["id"]
            seen = []
            while retried["status"] not in ("done", "error"):
                seen.append((retried["done"], retried["total"]))
                time.sleep(0.05)
                retried = _get(there.url, f"api/jobs/{retried['id']}")
        assert retried["status"] == "done" and retried["done"] == retried["total"] == n_parts, retried
        assert all(total in (0, n_parts) and done <= total for done, total in seen), seen
        indexed = {t["key"] for t in tasks.data if "index_part" in str(t["key"])}
        assert len(indexed) == n_parts  # one task per part
        metas = [fs.cat_file(f"{root}/parts/{k:05d}.index/h.json") for k in range(n_parts)]
        assert all(json.loads(m)["fingerprint"]["part"] == k for k, m in enumerate(metas))
        assert all(metas[k] == m for k, m in indexed_before.items())  # indexed before the failure: not rebuilt
        got = _answers(there.url)
        assert [fs.cat_file(f"{root}/parts/{k:05d}.index/h.json") for k in range(n_parts)] == metas  # none rebuilt
    _assert_same_answers(got, want)


def test_a_remote_data_location_is_rescanned_and_confined(remote):
    url, _ = remote
    fs = _s3()
    prefix = url.split("://", 1)[1]
    fs.pipe_file(f"{prefix}-other/evil.zarr/zarr.json", b"{}")  # beside the location, sharing its name's start
    with lstmvis.serve(data_dir=url, port=0, block=False) as server:  # no cluster: queried in this process
        names = {s["name"] for s in _get(server.url, "api/stores")["stores"]}
        assert "runs/s" in names and not any("evil" in n or "other" in n for n in names)
        fs.copy(f"{prefix}/runs/s.zarr", f"{prefix}/later/t.zarr", recursive=True)
        fs.copy(f"{prefix}/runs/s.zarr", f"{prefix}/half.zarr", recursive=True)
        fs.rm(f"{prefix}/half.zarr/manifest.json")  # a store still being written: no manifest yet
        time.sleep(RESCAN_SECONDS + 0.1)
        stores = {s["name"]: s for s in _get(server.url, "api/stores")["stores"]}
        assert stores["later/t"]["status"] == "ready" and stores["half"]["status"] == "error"
        assert "manifest" in stores["half"]["message"] or "complete" in stores["half"]["message"]
        hit = _get(server.url, "api/stores/later/t/match", **{"source": "h", **MATCHES[0]})
        assert hit["hits"] == _get(server.url, "api/stores/runs/s/match", **{"source": "h", **MATCHES[0]})["hits"]
        fs.rm(f"{prefix}/later", recursive=True)
        time.sleep(RESCAN_SECONDS + 0.1)
        assert "later/t" not in {s["name"] for s in _get(server.url, "api/stores")["stores"]}
        for name in ("..%2Fserve-other/evil", "%2E%2E/x", f"{BUCKET}/runs/s", "later/t"):
            err = _get(server.url, f"api/stores/{name}/match", 404, source="h", cells="0")["error"]
            assert "unknown store" in err["message"] and "s3://" not in err["message"]
        err = _get(server.url, "api/stores/runs/s/match", 400, source="h", cells="99")["error"]
        assert "99" in err["message"]
        assert _get(server.url, "api/stores/runs/s/match", 404, source="nope", cells="0")["error"]["status"] == 404
    handed = python_api.store_entries([f"{url}/runs/s.zarr/"])  # a store's URL handed to lstmvis.serve(stores=)
    assert handed["s"].path == f"{url}/runs/s.zarr" and handed["s"].open().n_tokens > 0
    with pytest.raises(ValueError, match=r"may not contain '\.\.'"):
        python_api.make_resources(data_dir=f"{url}/../elsewhere")
    with pytest.raises(ValueError, match="no such folder or prefix"):
        python_api.make_resources(data_dir=f"s3://{BUCKET}/nothing-here-{uuid.uuid4().hex[:6]}")
    with pytest.raises(ValueError, match="not both"):
        python_api.serve(data_dir=url, scheduler="tcp://127.0.0.1:1", client=object(), port=0, block=False)


def test_lstmvis_serve_data_url_scheduler_from_the_command_line(remote, cluster, tmp_path):
    """The command as a user runs it: a process of its own, the data on S3, the queries on the scheduler."""
    url, local = remote
    with lstmvis.serve(data_dir=local, port=0, block=False) as here:
        want = _get(here.url, "api/stores/runs/s/match", source="h", **MATCHES[2])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lstmvis", "serve", "--data", url, "--scheduler",
                                 cluster.scheduler_address, "--port", "0", "--no-browser"],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline, address = time.monotonic() + 120, None
        while address is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            found = re.search(r"at (http://127\.0\.0\.1:\d+/)", log.read_text())
            address = found.group(1) if found else None
        assert address, log.read_text()
        assert "Dask cluster" in log.read_text()
        _assert_same_answers([_get(address, "api/stores/runs/s/match", source="h", **MATCHES[2])], [want])
        assert "GET /api/stores/runs/s/match" in log.read_text()  # the command line keeps its request log
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert lstmvis_main(["serve", "--data", f"s3://{BUCKET}/nothing-{uuid.uuid4().hex[:6]}", "--no-browser"]) == 2


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian chromium at /usr/bin/chromium")
def test_the_explorer_on_a_remote_store(remote, cluster, watched):
    """Smoke: the explorer opens the S3 store by URL state, selects the brushed cells and shows the
    cluster's matches."""
    url, _ = remote
    with lstmvis.serve(data_dir=url, scheduler=cluster.scheduler_address, port=0, block=False) as server:
        brush = dict(source="h", start=20, stop=22, threshold=0.2)
        cells = _get(server.url, "api/stores/runs/s/select", **brush)["cells"]
        hits = _get(server.url, "api/stores/runs/s/match", source="h", threshold=0.2,
                    cells=",".join(map(str, cells)))["hits"]
        assert cells and hits
        page = watched.page
        page.goto(f"{server.url}explorer?store=runs/s&source=h&threshold=0.2&brush=20,22&match=1")
        page.wait_for_selector("#word-matrix tr.match-row")
        assert page.locator("#cell-chips .chip").all_text_contents() == [str(c) for c in cells]
        rows = page.locator("#word-matrix tr.match-row")
        shown = [int(rows.nth(i).get_attribute("data-position")) for i in range(rows.count())]
        assert shown == [h["start"] for h in hits][:len(shown)] and shown
