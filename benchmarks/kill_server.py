"""SIGKILL the server mid-request and mid-build, restart it, and prove nothing on disk is corrupted.

What a running server writes: demo stores (built once into its cache, via ``lstmvis.extract``)
and match indexes (beside each store, ``<store>.index/``, or in the user cache). The stores of
``--data DIR`` are only ever read. Two scenarios, each against a reference taken from an
uninterrupted server:

* ``requests``: a server on ``--data DIR`` (copies of two demo stores) is killed at a random
  moment while 4 clients send select, match, cell-ranking, top-context and token requests (the
  first match or ranking of a source builds its index, so kills land inside index builds too;
  before half of the trials the indexes are deleted so that builds happen again). After each
  kill the server is restarted: every answer must equal the reference, the store files must be
  byte-identical, and the leftovers of killed index builds are counted.
* ``demo``: a demo server (parens + sentiment stores) is killed at random moments during its
  background build, several times in a row on the same cache. After each kill, every demo store
  that a fresh server would serve as ready must open and equal the reference; the last restart
  must finish the build with stores equal to the reference.

    python benchmarks/kill_server.py --trials 10 --demo-kills 5
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

DEMO_NAMES = ["parens", "sentiment"]


# ------------------------------------------------------------------------------ children

def child(mode: str, target: str, port_file: str) -> None:
    """A server: ``data`` serves the stores in ``target``; ``demo`` builds the demo into cache ``target``."""
    import logging

    from server.app import create_app
    from server.resources import Resources
    from server.serving import make_server
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if mode == "data":
        res = Resources(target, demo=False, build="off", progress=False)
    else:
        res = Resources(None, cache_dir=target, build="background", progress=False, demo_names=DEMO_NAMES)
    app = create_app(None, {"RESOURCES": res})
    app.logger.setLevel(logging.CRITICAL)
    srv = make_server(app, "127.0.0.1", 0)
    Path(port_file).write_text(str(srv.server_port))
    srv.serve_forever()


class Server:
    """A child server process and a tiny HTTP client for it."""

    def __init__(self, mode: str, target: Path):
        self.port_file = Path(tempfile.mktemp(prefix="kill-server-", suffix=".port"))
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", mode, str(target),
                                      str(self.port_file)], cwd=ROOT, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while not self.port_file.exists() or not self.port_file.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
        self.port = int(self.port_file.read_text())

    def get(self, path: str, timeout: float = 600) -> tuple[int, bytes]:
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.port_file.unlink(missing_ok=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------ scenario: requests

def request_list(server: Server, seed: int) -> list[str]:
    """Select, match, rank, contexts and tokens requests over every recurrent source of every store."""
    rng = random.Random(seed)
    paths = []
    for s in json.loads(server.get("/api/stores")[1])["stores"]:
        name = s["name"]
        for source in [x for x in s["sources"] if x.startswith("rnn.")][:3]:
            pos = rng.randrange(s["n_tokens"])
            seq = json.loads(server.get(f"/api/stores/{name}/tokens?start={pos}&stop={pos + 1}")[1])["sequences"][0]
            start = rng.randrange(seq["start"] + 1, max(seq["start"] + 2, seq["stop"] - 3))
            sel = f"/api/stores/{name}/select?" + urlencode({"source": source, "start": start, "stop": start + 2})
            cells = json.loads(server.get(sel)[1]).get("cells") or [0]
            paths += [sel, f"/api/stores/{name}/match?" + urlencode({"source": source, "cells": ",".join(map(str, cells[:16]))}),
                      f"/api/stores/{name}/cells/{cells[0]}/contexts?" + urlencode({"source": source, "k": 5})]
            hyp = "parens" if name.startswith("parens") else "tokens:the,a,and"
            paths.append(f"/api/stores/{name}/cells/rank?" + urlencode({"source": source, "hypothesis": hyp, "top": 10}))
        paths.append(f"/api/stores/{name}/tokens?start=0&stop=50")
    return paths


def answers(server: Server, paths: list[str]) -> dict[str, str]:
    out = {}
    for p in paths:
        status, body = server.get(p)
        out[p] = f"{status} {json.dumps(json.loads(body), sort_keys=True)}"
    return out


def index_dirs(data: Path) -> list[Path]:
    return [p for p in data.iterdir() if p.is_dir() and p.name.endswith(".index")]


def leftovers(data: Path) -> list[str]:
    return sorted(str(p.relative_to(data)) for d in index_dirs(data) for p in d.iterdir() if ".tmp" in p.name)


def scenario_requests(work: Path, trials: int, seed: int) -> tuple[list[dict], list[str]]:
    from conftest_server import TEST_CACHE, demo_resources
    res = demo_resources()  # the demo stores built (once) for the tests: copied in as user data
    data = work / "data"
    data.mkdir()
    for name in DEMO_NAMES:
        shutil.copy(res.stores[name].path, data / f"{name}.h5")
    digests = {p.name: sha256(p) for p in data.glob("*.h5")}
    del TEST_CACHE

    server = Server("data", data)
    t0 = time.perf_counter()
    try:
        paths = request_list(server, seed)
        reference = answers(server, paths)
    finally:
        server.kill()
    reference_seconds = time.perf_counter() - t0
    print(f"requests scenario: {len(paths)} requests; an uninterrupted server answers them (building every index) "
          f"in {reference_seconds:.0f} s", flush=True)
    rng = random.Random(seed)
    rows, problems = [], []
    for trial in range(trials):
        rebuilt = rng.random() < 0.5
        if rebuilt:
            for d in index_dirs(data):
                shutil.rmtree(d)
        server = Server("data", data)
        stop_clients = threading.Event()

        def client(k: int, srv=server):
            order = paths[:]
            random.Random(seed + 100 * trial + k).shuffle(order)
            for p in order:
                if stop_clients.is_set():
                    return
                try:
                    srv.get(p, timeout=60)
                except OSError:
                    return  # the server was killed under us

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        delay = rng.uniform(0.1, 1.0 * reference_seconds)
        time.sleep(delay)
        server.kill()
        stop_clients.set()
        for t in threads:
            t.join(5)
        left_after_kill = leftovers(data)
        server = Server("data", data)
        try:
            got = answers(server, paths)
        finally:
            server.kill()
        wrong = [p for p in paths if got[p] != reference[p]]
        changed = [n for n, d in digests.items() if sha256(data / n) != d]
        row = {"trial": trial, "indexes_deleted_first": rebuilt, "kill_after_s": round(delay, 2),
               "tmp_files_left_by_kills": len(left_after_kill), "wrong_answers_after_restart": len(wrong),
               "store_files_changed": changed}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if wrong:
            problems.append(f"trial {trial}: {len(wrong)} answers differ after restart, e.g. {wrong[0]}: "
                            f"{got[wrong[0]][:200]}")
        if changed:
            problems.append(f"trial {trial}: store files changed: {changed}")
    return rows, problems


# ------------------------------------------------------------------------------ scenario: demo build

def snapshot(path: Path) -> dict:
    from kill_extraction import snapshot as snap
    return snap(path)


def scenario_demo(work: Path, kills: int, seed: int) -> tuple[list[dict], list[str]]:
    from kill_extraction import same
    from server.resources import Resources
    cache = work / "cache"
    rng = random.Random(seed)
    # how long an uninterrupted build takes, in a throw-away cache
    t0 = time.perf_counter()
    server = Server("demo", work / "timing-cache")
    while any(s["status"] != "ready" for s in json.loads(server.get("/api/stores")[1])["stores"]):
        time.sleep(0.5)
    build_seconds = time.perf_counter() - t0
    server.kill()
    # the reference: what this uninterrupted build wrote (same code, same models)
    built = Resources(None, cache_dir=work / "timing-cache", build="off", progress=False, demo_names=DEMO_NAMES)
    reference = {name: snapshot(built.stores[name].path) for name in DEMO_NAMES}
    print(f"demo scenario: an uninterrupted build of {DEMO_NAMES} takes {build_seconds:.0f} s", flush=True)
    rows, problems = [], []
    for k in range(kills + 1):
        final = k == kills
        server = Server("demo", cache)
        delay = None
        if final:
            while any(s["status"] != "ready" for s in json.loads(server.get("/api/stores")[1])["stores"]):
                time.sleep(0.5)
        else:
            delay = rng.uniform(0.0, build_seconds)
            time.sleep(delay)
        server.kill()
        # what a fresh server would serve from this cache, without building anything
        fresh = Resources(None, cache_dir=cache, build="off", progress=False, demo_names=DEMO_NAMES)
        states = {}
        for name in DEMO_NAMES:
            entry = fresh.stores[name]
            states[name] = entry.status
            if entry.status == "ready":
                try:
                    ok = same(snapshot(entry.path), reference[name])
                except Exception as exc:  # noqa: BLE001 -- any failure to open a 'ready' store is the finding
                    ok = False
                    problems.append(f"kill {k}: store {name} is listed ready but does not open: {exc}")
                if not ok:
                    problems.append(f"kill {k}: store {name} is listed ready but differs from the reference")
                states[name] += "" if ok else " (WRONG)"
            elif final:
                problems.append(f"final run: store {name} is {entry.status}, not ready")
        partials = sorted(p.name for p in (cache / "demo").glob("*.partial")) if (cache / "demo").exists() else []
        row = {"kill": k, "after_s": None if delay is None else round(delay, 2), "final_run": final,
               "stores": states, "partial_files": partials}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows, problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10, help="kills in the requests scenario (default 10)")
    p.add_argument("--demo-kills", type=int, default=5, help="kills during the demo build (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return 0
    problems = []
    with tempfile.TemporaryDirectory(prefix="kill-server-") as tmp:
        work = Path(tmp)
        req_rows, req_problems = scenario_requests(work, args.trials, args.seed) if args.trials else ([], [])
        demo_rows, demo_problems = scenario_demo(work, args.demo_kills, args.seed) if args.demo_kills else ([], [])
    problems = req_problems + demo_problems
    print(f"\nrequests scenario: {len(req_rows)} kills; answers wrong after restart in "
          f"{sum(r['wrong_answers_after_restart'] > 0 for r in req_rows)}; store files changed in "
          f"{sum(bool(r['store_files_changed']) for r in req_rows)}; tmp files left by killed index builds: "
          f"{sum(r['tmp_files_left_by_kills'] for r in req_rows[-1:])} at the end")
    print(f"demo scenario: {len(demo_rows) - 1 if demo_rows else 0} kills during the build, then a full run; "
          f"stores listed ready but wrong or unopenable: "
          f"{sum('WRONG' in s for r in demo_rows for s in r['stores'].values())}")
    for prob in problems:
        print("PROBLEM", prob)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
