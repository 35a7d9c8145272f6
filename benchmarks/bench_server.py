"""Server latency on the bundled demo: match, an IG explanation, and explorer page load to first plot.

Starts ``lstmvis serve`` on the demo in a subprocess (demo stores are built first if missing, once),
then measures, each with 1 client (the baseline) and with ``--clients`` concurrent clients:

* ``GET /api/stores/<store>/match`` for seeded random brushes (cells chosen by ``/select``, as a
  user would), on every demo store that has recurrent sources (goal: p99 <= 100 ms at 8 clients);
* ``POST /api/explain`` with Integrated Gradients (50 steps) of a 50-token text on sentiment-lstm
  (goal: p99 <= 300 ms at 8 clients), when the explanations API is present;
* the explorer page in headless Chromium, from navigation to the first drawn plotly trace, in a
  fresh browser context each time (no cache), idle and while 8 clients send match requests
  (goal: <= 2 s).

    python benchmarks/bench_server.py                       # prints a table
    python benchmarks/bench_server.py --out benchmarks/results/server.md
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def start_server(cache: str) -> tuple[subprocess.Popen, str, float]:
    """``lstmvis serve`` in a subprocess: (process, base URL, seconds from spawn to listening)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lstmvis", "serve", "--no-browser", "--port", "0", "--cache", cache],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        if m:
            up = time.perf_counter() - t0
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain the log
            print(f"server up in {up:.1f} s at {m.group(1)}", flush=True)
            return proc, m.group(1).rstrip("/"), up
    raise RuntimeError("the server did not start")


def wait_ready(base: str, t0: float, timeout: float = 900) -> tuple[dict, dict[str, float]]:
    """Poll until no store is building; also when each store became ready (seconds since ``t0``)."""
    ready_at: dict[str, float] = {}
    while time.perf_counter() - t0 < timeout:
        status = requests.get(f"{base}/api/status", timeout=30).json()
        for s in status["stores"]:
            if s["status"] == "ready" and s["name"] not in ready_at:
                ready_at[s["name"]] = time.perf_counter() - t0
        if not any(s["status"] in ("queued", "building") for s in status["stores"]):
            return status, ready_at
        time.sleep(0.25)
    raise RuntimeError("demo stores did not finish building")


def server_cpu(proc: subprocess.Popen) -> float:
    """CPU seconds (user + system) the server process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(lat: list[float]) -> tuple[float, float]:
    a = np.array(lat) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def run_load(n_clients: int, requests_list: list, send) -> list[float]:
    """Send every request once, spread over ``n_clients`` threads each with its own session."""
    latencies: list[float] = []
    lock = threading.Lock()
    chunks = [requests_list[i::n_clients] for i in range(n_clients)]

    def client(chunk):
        with requests.Session() as s:
            for req in chunk:
                t0 = time.perf_counter()
                resp = send(s, req)
                dt = time.perf_counter() - t0
                if resp.status_code != 200:
                    raise RuntimeError(f"{resp.status_code}: {resp.text[:300]}")
                with lock:
                    latencies.append(dt)

    with ThreadPoolExecutor(n_clients) as pool:
        list(pool.map(client, chunks))
    return latencies


def match_queries(base: str, status: dict, n: int, seed: int) -> list[tuple[str, dict]]:
    """Seeded random brushes of 1-3 tokens inside a sequence, kept when ``select`` finds 1+ cells."""
    rng = np.random.default_rng(seed)
    stores = [s for s in status["stores"] if s["status"] == "ready" and any(".l" in x for x in s["sources"])]
    out, tries = [], 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        s = stores[tries % len(stores)]
        source = [x for x in s["sources"] if x.endswith(".h") or x.endswith(".c")][rng.integers(0, 2)]
        pos = int(rng.integers(1, s["n_tokens"] - 4))
        length = int(rng.integers(1, 4))
        r = requests.get(f"{base}/api/stores/{s['name']}/select",
                         params={"source": source, "start": pos, "stop": pos + length}, timeout=60)
        if r.status_code == 200 and r.json()["cells"]:
            cells = ",".join(map(str, r.json()["cells"]))
            out.append((s["name"], {"source": source, "cells": cells, "threshold": 0.3}))
    return out


def fifty_token_text() -> str:
    import data
    model = data.load_model("sentiment-lstm")
    texts, _ = data.rotten_tomatoes("test")
    words: list[str] = []
    for t in texts:
        words.extend(t.split())
        if len(model.tokenize(" ".join(words))) >= 50:
            break
    while len(model.tokenize(" ".join(words))) > 50:
        words.pop()
    text = " ".join(words)
    return text


def page_loads(base: str, url: str, n: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(n):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            t0 = time.perf_counter()
            page.goto(base + url, wait_until="commit")
            page.wait_for_selector("#lineplot .scatterlayer .trace", state="attached", timeout=60000)
            out.append(time.perf_counter() - t0)
            context.close()
        browser.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--match-requests", type=int, default=240)
    ap.add_argument("--explain-requests", type=int, default=64)
    ap.add_argument("--page-loads", type=int, default=5)
    ap.add_argument("--cache", help="demo store cache (default: a fresh empty folder, so the first-run build "
                    "is measured too)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the results as markdown here")
    args = ap.parse_args()

    import tempfile
    cache = args.cache or tempfile.mkdtemp(prefix="lstmvis-bench-")
    fresh = not any(Path(cache).rglob("*.h5"))
    t0 = time.perf_counter()
    proc, base, up = start_server(cache)
    rows: list[tuple[str, ...]] = []
    startup = ""
    try:
        status, ready_at = wait_ready(base, t0)
        startup = (f"`lstmvis serve` ({'fresh cache: demo stores built' if fresh else 'cached demo stores'}): "
                   f"listening after {up:.1f} s; " + ", ".join(f"{k} ready after {v:.1f} s" for k, v in
                                                               sorted(ready_at.items(), key=lambda kv: kv[1])))
        print(startup, flush=True)
        queries = match_queries(base, status, 40, args.seed)
        for store, q in queries:  # warm: match indexes are built on a source's first query
            requests.get(f"{base}/api/stores/{store}/match", params=q, timeout=120)
        reqs = [queries[i % len(queries)] for i in range(args.match_requests)]

        def send_match(s, req):
            return s.get(f"{base}/api/stores/{req[0]}/match", params=req[1], timeout=120)

        one = percentiles(run_load(1, reqs[: max(40, args.match_requests // 4)], send_match))
        cpu0 = server_cpu(proc)
        many = percentiles(run_load(args.clients, reqs, send_match))
        cpu_ms = 1000 * (server_cpu(proc) - cpu0) / len(reqs)
        stores = sorted({q[0] for q in queries})
        rows.append((f"match ({', '.join(stores)}; {len(queries)} brushes)", f"{one[0]:.1f} / {one[1]:.1f}",
                     f"{many[0]:.1f} / {many[1]:.1f}", f"{many[1] / one[1]:.2f}", f"{cpu_ms:.1f}", "p99 <= 100 ms"))
        print(rows[-1], flush=True)

        models = requests.get(f"{base}/api/explain/models", timeout=30)
        if models.status_code == 200:
            text = fifty_token_text()
            body = {"model": "sentiment-lstm", "text": text, "methods": ["integrated_gradients"],
                    "faithfulness": False, "params": {"integrated_gradients": {"n_steps": 50}}}

            def send_ig(s, req):
                return s.post(f"{base}/api/explain", json=body, timeout=120)

            send_ig(requests, None)
            one = percentiles(run_load(1, [None] * max(16, args.explain_requests // 4), send_ig))
            cpu0 = server_cpu(proc)
            many = percentiles(run_load(args.clients, [None] * args.explain_requests, send_ig))
            cpu_ms = 1000 * (server_cpu(proc) - cpu0) / args.explain_requests
            rows.append(("IG explanation, 50 tokens, 50 steps (sentiment-lstm)", f"{one[0]:.1f} / {one[1]:.1f}",
                         f"{many[0]:.1f} / {many[1]:.1f}", f"{many[1] / one[1]:.2f}", f"{cpu_ms:.1f}",
                         "p99 <= 300 ms"))
            print(rows[-1], flush=True)
        else:
            print("no explanations API on this server: IG latency skipped", flush=True)

        if os.path.exists(CHROMIUM):
            store, q = queries[0]
            url = f"/explorer?store={store}&source={q['source']}&pos=0"
            idle = page_loads(base, url, args.page_loads)
            stop = threading.Event()

            def background():
                with requests.Session() as s:
                    i = 0
                    while not stop.is_set():
                        send_match(s, reqs[i % len(reqs)])
                        i += 1
            workers = [threading.Thread(target=background, daemon=True) for _ in range(args.clients)]
            for w in workers:
                w.start()
            try:
                loaded = page_loads(base, url, args.page_loads)
            finally:
                stop.set()
                for w in workers:
                    w.join(120)
            rows.append(("explorer page load to first plot, fresh browser context (s; median / max)",
                         f"{np.median(idle):.2f} / {max(idle):.2f}", f"{np.median(loaded):.2f} / {max(loaded):.2f}",
                         f"{np.median(loaded) / np.median(idle):.2f}", "", "<= 2 s"))
            print(rows[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait(30)

    head = (f"| measurement | 1 client (ms p50 / p99) | {args.clients} clients (ms p50 / p99) | "
            f"ratio {args.clients}:1 (p99) | server CPU per request (ms) | goal |\n|---|---|---|---|---|---|\n")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    table = (head + "".join(f"| {' | '.join(r)} |\n" for r in rows)
             + f"\n{startup}\n\nload average at the end (1/5/15 min): {load} on {os.cpu_count()} cores\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
