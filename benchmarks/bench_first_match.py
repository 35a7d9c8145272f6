"""The first match on each demo store, from a fresh server start, as the explorer asks for it.

For every demo store: its match indexes are removed, ``lstmvis serve`` is started afresh (bench_server's
``start_server``), and the script does what the explorer page does when a user opens the store and
brushes at once: ``GET /api/stores/<store>`` (opening it), ``/select`` on a 2-token brush that selects
1+ cells, then ``/match`` until it answers, following a 202 "building index" to its job as the page does
(``LVJobs.whenIndexed``). Recorded: seconds from opening to the matches, the longest silent wait (a
request in flight with no progress to show), how often progress came, and the slowest window of 300
tokens asked for every 0.5 s meanwhile (the page scrolling its text: usable or not). The same again with the
indexes on disk (a second fresh start), which leaves the server's own first-call costs.

    python benchmarks/bench_first_match.py --cache /tmp/lstmvis-bench      # demo stores built there once
    python benchmarks/bench_first_match.py --cache /tmp/lstmvis-bench --think 3   # brushing 3 s after opening
    python benchmarks/bench_first_match.py --cache /tmp/lstmvis-bench --out benchmarks/results/first_match.md
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import start_server, uptime, wait_ready  # noqa: E402 (benchmarks/ is no package)


def brush(base: str, store: dict) -> tuple[str, list[int], int]:
    """(source, cells, position): the first 2-token brush of the store's first source that selects 1+ cells."""
    source = store["sources"][0]
    for pos in range(1, min(store["n_tokens"] - 2, 400)):
        r = requests.get(f"{base}/api/stores/{store['name']}/select",
                         params={"source": source, "start": pos, "stop": pos + 2}, timeout=600)
        if r.status_code == 200 and r.json()["cells"]:
            return source, r.json()["cells"], pos
    raise RuntimeError(f"no brush selects a cell on {store['name']}")


def tokens_while(base: str, name: str, stop: threading.Event, latencies: list[float]) -> None:
    """What keeps the page usable meanwhile: a window of tokens (scrolling the text) every 0.5 s."""
    while not stop.wait(0.5):
        t = time.perf_counter()
        requests.get(f"{base}/api/stores/{name}/tokens", params={"start": 0, "stop": 300}, timeout=600).raise_for_status()
        latencies.append(time.perf_counter() - t)


def first_match(base: str, name: str, think: float = 0.0) -> dict:
    """Open the store, brush, match as the page does; times (s), the longest wait without progress, and
    the slowest window of tokens asked for meanwhile."""
    stop, latencies = threading.Event(), []
    scroller = threading.Thread(target=tokens_while, args=(base, name, stop, latencies), daemon=True)
    scroller.start()
    try:
        result = _first_match(base, name, think)
    finally:
        stop.set()
        scroller.join(600)
    return {**result, "tokens": max(latencies, default=float("nan"))}


def _first_match(base: str, name: str, think: float) -> dict:
    t0 = time.perf_counter()
    info = requests.get(f"{base}/api/stores/{name}", timeout=600).json()
    opened = time.perf_counter() - t0
    time.sleep(think)  # a user looks at the text before brushing
    t0 = time.perf_counter() - opened  # timed without the pause
    source, cells, _ = brush(base, info)
    selected = time.perf_counter() - t0
    params = {"source": source, "cells": ",".join(map(str, cells)), "threshold": 0.3, "left": 3, "right": 12}
    silent, updates = 0.0, 0
    while True:
        t = time.perf_counter()
        r = requests.get(f"{base}/api/stores/{name}/match", params=params, timeout=600)
        silent = max(silent, time.perf_counter() - t)
        body = r.json()
        if r.status_code == 200:
            break
        if r.status_code != 202:
            raise RuntimeError(f"{r.status_code}: {body}")
        job = body["job"]
        while job["status"] not in ("done", "error"):  # the page polls every 0.5 s and shows the percentage
            time.sleep(0.5)
            t = time.perf_counter()
            job = requests.get(f"{base}/api/jobs/{job['id']}", timeout=600).json()
            silent = max(silent, time.perf_counter() - t + 0.5)
            updates += 1
        if job["status"] == "error":
            raise RuntimeError(job)
    return {"store": name, "source": source, "cells": len(cells), "open": opened, "select": selected - opened,
            "total": time.perf_counter() - t0, "silent": silent, "updates": updates, "hits": len(body["hits"])}


def index_dirs(cache: Path, name: str) -> list[Path]:
    return [p for p in (cache / "demo").glob(f"{name}__*.index") if p.is_dir()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", required=True, help="demo store cache (built there on the first run)")
    ap.add_argument("--stores", default="", help="comma-separated demo stores (default: every one)")
    ap.add_argument("--think", type=float, default=0.0,
                    help="seconds between opening the store and brushing (a user reading; default 0: at once)")
    ap.add_argument("--out", help="also write the results as markdown here")
    args = ap.parse_args()
    cache = Path(args.cache)
    load_before = uptime()
    proc, base, _ = start_server(str(cache))  # builds the demo stores once
    try:
        status, _ = wait_ready(base, time.perf_counter())
    finally:
        proc.terminate()
        proc.wait(60)
    names = [s["name"] for s in status["stores"] if s["status"] == "ready" and
             (not args.stores or s["name"] in args.stores.split(","))]
    rows = []
    for name in names:
        for d in index_dirs(cache, name):
            shutil.rmtree(d)
        for disk in ("no index on disk", "index on disk"):
            proc, base, up = start_server(str(cache))
            try:
                wait_ready(base, time.perf_counter())
                r = first_match(base, name, args.think)
            finally:
                proc.terminate()
                proc.wait(60)
            rows.append({**r, "disk": disk, "up": up})
            print(rows[-1], flush=True)
    table = ("| store (source, cells brushed) | indexes | server up (s) | open (s) | select (s) | open to matches (s) | "
             "longest wait without progress (s) | progress updates | slowest tokens window meanwhile (s) |\n"
             "|---|---|---|---|---|---|---|---|---|\n" +
             "".join(f"| {r['store']} ({r['source']}, {r['cells']}) | {r['disk']} | {r['up']:.1f} | {r['open']:.2f} | "
                     f"{r['select']:.2f} | {r['total']:.2f} | {r['silent']:.2f} | {r['updates']} | {r['tokens']:.2f} |\n"
                     for r in rows) +
             f"\nbrushing {args.think:g} s after opening (not timed); load average (1/5/15 min) before: "
             f"{load_before}; at the end: {uptime()} on {os.cpu_count()} cores\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
