"""Server latency on the bundled demo: match, an IG explanation, and explorer page load to first plot.

Starts ``lstmvis serve`` on the demo in a subprocess (demo stores are built first if missing, once),
then measures, each with 1 client (the baseline) and with ``--clients`` concurrent clients:

* ``GET /api/stores/<store>/match`` for seeded random brushes (cells chosen by ``/select``, as a
  user would), on every demo store that has recurrent sources (goal: p99 <= 100 ms at 8 clients);
* ``POST /api/explain`` with Integrated Gradients (50 steps) of a 50-token text on sentiment-lstm
  (goal: p99 <= 300 ms at 8 clients), when the explanations API is present;
* the explorer page in headless Chromium, from navigation to the first drawn plotly trace: first
  visits (fresh browser context, empty cache) and repeat visits (one browser profile, so the HTTP
  and code caches work as in a user's browser), idle and while 8 clients send match requests
  (goal: <= 2 s).

The IG requests explain distinct texts (no two requests alike). Server CPU per request is the server
process's user + system time over a run divided by its requests: it does not depend on other load.

    python benchmarks/bench_server.py                       # prints a table
    python benchmarks/bench_server.py --cache /tmp/lstmvis-bench --only match,ig   # a few minutes
    python benchmarks/bench_server.py --out benchmarks/results/server.md
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from urllib.parse import urlencode, urlsplit
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
    # run outside the repository: `serve` takes the working folder off sys.path (a user's own data.py must not
    # shadow the demo package), which would leave the checkout's packages unimportable
    proc = subprocess.Popen([sys.executable, "-m", "lstmvis", "serve", "--no-browser", "--port", "0", "--cache", cache],
                            cwd=REPO.parent, env=env, stderr=subprocess.PIPE, text=True)
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


def run_load(n_clients: int, requests_list: list, prepare, base: str) -> list[float]:
    """Send every request once, spread over ``n_clients`` concurrent clients; their latencies (s).

    Each client is a thread with its own ``http.client`` connection that sends its share one request
    after another (a closed loop, as a user's page does); all start together. The clients are kept
    light, because they share the machine with the server: requests are encoded before the clock
    starts (``prepare(req) -> (method, path, body or None)``) and answers are read as bytes, not
    parsed (``requests`` cost ~2 ms of CPU per request here, plain ``http.client`` ~0.7 ms). A client
    keeps its connection open between requests when the server allows it (as a browser does) and
    reconnects when the server closes it (part of what is timed).
    """
    host, port = urlsplit(base).hostname, urlsplit(base).port
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    chunks = [[prepare(r) for r in requests_list[i::n_clients]] for i in range(n_clients)]

    def client(chunk):
        conn = http.client.HTTPConnection(host, port, timeout=300)
        mine = []
        start.wait()
        try:
            for method, path, body in chunk:
                t0 = time.perf_counter()
                conn.request(method, path, body=body,
                             headers={"Content-Type": "application/json"} if body is not None else {})
                resp = conn.getresponse()
                data = resp.read()
                dt = time.perf_counter() - t0
                if resp.status != 200:
                    raise RuntimeError(f"{resp.status}: {data[:300]!r}")
                mine.append(dt)
        except Exception as exc:  # noqa: BLE001 -- reported below, in the main thread
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(chunk,)) for chunk in chunks if chunk]
    start = threading.Barrier(len(threads))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed; first: {errors[0]}")
    return latencies


def client_cpu() -> float:
    """CPU seconds (user + system) this benchmark process has used so far: its clients' cost."""
    t = os.times()
    return t.user + t.system


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


def fifty_token_texts(n: int, n_tokens: int = 50) -> list[str]:
    """``n`` distinct texts of exactly ``n_tokens`` tokens: consecutive Rotten Tomatoes test sentences,
    joined and cut (so no two requests explain the same text; nothing can be answered from a cache)."""
    import data
    model = data.load_model("sentiment-lstm")
    texts, _ = data.rotten_tomatoes("test")
    out: list[str] = []
    words: list[str] = []
    for t in texts:
        words.extend(t.split())
        if len(model.tokenize(" ".join(words))) < n_tokens:
            continue
        while len(model.tokenize(" ".join(words))) > n_tokens:
            words.pop()
        if len(model.tokenize(" ".join(words))) == n_tokens:
            out.append(" ".join(words))
        words = []
        if len(out) == n:
            break
    if len(set(out)) < n:
        raise RuntimeError(f"only {len(set(out))} distinct {n_tokens}-token texts")
    return out


def page_loads(base: str, url: str, n: int) -> tuple[list[float], list[float]]:
    """(first visits, repeat visits): seconds from navigation to the first drawn plotly trace.

    First visit: a fresh incognito browser context each time (empty caches). Repeat visits: one
    persistent browser profile, as a user's own browser, opened on the page ``n + 1`` times; the first
    of them (a first visit) is not counted. Repeat visits take plotly.js from the HTTP cache without
    asking (versioned address, cached for a year) and, from the third visit on, its compiled code from
    Chromium's code cache (which incognito contexts do not keep).
    """
    import tempfile

    from playwright.sync_api import sync_playwright

    def load(context) -> float:
        page = context.new_page()
        t0 = time.perf_counter()
        page.goto(base + url, wait_until="commit")
        page.wait_for_selector("#lineplot .scatterlayer .trace", state="attached", timeout=60000)
        dt = time.perf_counter() - t0
        page.close()
        return dt

    cold, warm = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(n):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            cold.append(load(context))
            context.close()
        browser.close()
        with tempfile.TemporaryDirectory(prefix="lstmvis-bench-profile-") as profile:
            context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                           viewport={"width": 1280, "height": 900})
            visits = []
            for _ in range(n + 1):
                visits.append(load(context))
                time.sleep(0.5)  # Chromium writes its code cache after the page has run
            context.close()
        warm = visits[1:]
    return cold, warm


def page_cpu(base: str, url: str, n: int) -> list[dict[str, float]]:
    """Chromium's own CPU time (ms, from a CDP trace) of ``n`` first visits, which unlike wall-clock
    time does not depend on other load: parsing plotly.js on a background thread (it overlaps the
    download) and running it on the main thread (the first plot waits for it)."""
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(n):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            events: list[dict] = []
            done = threading.Event()
            cdp.on("Tracing.dataCollected", lambda e: events.extend(e["value"]))
            cdp.on("Tracing.tracingComplete", lambda e: done.set())
            cdp.send("Tracing.start", {"categories": "devtools.timeline,v8",
                                       "transferMode": "ReportEvents"})
            page.goto(base + url, wait_until="commit")
            page.wait_for_selector("#lineplot .scatterlayer .trace", state="attached", timeout=60000)
            cdp.send("Tracing.end")
            while not done.is_set():
                page.wait_for_timeout(50)
            context.close()
            cpu = {"parse (background)": 0.0, "run plotly.js (main)": 0.0}
            for e in events:
                if e.get("ph") != "X" or "plotly" not in str(e.get("args", {}).get("data", {}).get("url", "")):
                    continue
                if e["name"] == "v8.parseOnBackground":
                    cpu["parse (background)"] += e.get("tdur", 0) / 1000
                elif e["name"] == "EvaluateScript":
                    cpu["run plotly.js (main)"] += e.get("tdur", 0) / 1000
            out.append(cpu)
        browser.close()
    return out


def uptime() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--match-requests", type=int, default=240)
    ap.add_argument("--explain-requests", type=int, default=64)
    ap.add_argument("--page-loads", type=int, default=5)
    ap.add_argument("--only", default="match,ig,page", help="comma-separated subset of match, ig, page")
    ap.add_argument("--ig-method", help="IG quadrature rule (default: the library's default rule)")
    ap.add_argument("--cache", help="demo store cache (default: a fresh empty folder, so the first-run build "
                    "is measured too)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the results as markdown here")
    args = ap.parse_args()
    only = set(args.only.split(","))

    import tempfile
    cache = args.cache or tempfile.mkdtemp(prefix="lstmvis-bench-")
    fresh = not any(Path(cache).rglob("*.h5"))
    load_before = uptime()
    t0 = time.perf_counter()
    proc, base, up = start_server(cache)
    rows: list[tuple[str, ...]] = []
    startup = ""

    def measured(n_clients: int, reqs: list, prepare) -> tuple[tuple[float, float], float, float]:
        """((p50, p99) ms, server CPU ms per request, this process's (the clients') CPU ms per request)."""
        cpu0, mine0 = server_cpu(proc), client_cpu()
        lat = run_load(n_clients, reqs, prepare, base)
        return (percentiles(lat), 1000 * (server_cpu(proc) - cpu0) / len(reqs),
                1000 * (client_cpu() - mine0) / len(reqs))

    try:
        status, ready_at = wait_ready(base, t0)
        startup = (f"`lstmvis serve` ({'fresh cache: demo stores built' if fresh else 'cached demo stores'}): "
                   f"listening after {up:.1f} s; " + ", ".join(f"{k} ready after {v:.1f} s" for k, v in
                                                               sorted(ready_at.items(), key=lambda kv: kv[1])))
        print(startup, flush=True)
        queries = match_queries(base, status, 40, args.seed)
        reqs = [queries[i % len(queries)] for i in range(args.match_requests)]

        def match_request(req):
            return "GET", f"/api/stores/{req[0]}/match?{urlencode(req[1])}", None

        if "match" in only:
            run_load(args.clients, queries, match_request, base)  # warm: indexes are built on a source's first query
            one, cpu_one, mine_one = measured(1, reqs[: max(40, args.match_requests // 4)], match_request)
            many, cpu_many, mine_many = measured(args.clients, reqs, match_request)
            stores = sorted({q[0] for q in queries})
            rows.append((f"match ({', '.join(stores)}; {len(queries)} brushes)", f"{one[0]:.1f} / {one[1]:.1f}",
                         f"{many[0]:.1f} / {many[1]:.1f}", f"{many[1] / one[1]:.2f}",
                         f"{cpu_one:.1f} / {cpu_many:.1f}", f"{mine_one:.1f} / {mine_many:.1f}", "p99 <= 100 ms"))
            print(rows[-1], flush=True)

        models = requests.get(f"{base}/api/explain/models", timeout=30)
        if "ig" in only and models.status_code == 200:
            n_one = max(16, args.explain_requests // 4)
            texts = fifty_token_texts(n_one + args.explain_requests + args.clients)

            def ig_request(text):
                ig = {"n_steps": 50, **({"method": args.ig_method} if args.ig_method else {})}
                body = {"model": "sentiment-lstm", "text": text, "methods": ["integrated_gradients"],
                        "faithfulness": False, "params": {"integrated_gradients": ig}}
                return "POST", "/api/explain", json.dumps(body).encode()

            run_load(args.clients, texts[:args.clients], ig_request, base)  # warm: model loaded, pool copies made
            one, cpu_one, mine_one = measured(1, texts[args.clients:args.clients + n_one], ig_request)
            many, cpu_many, mine_many = measured(args.clients, texts[args.clients + n_one:], ig_request)
            rows.append((f"IG explanation, 50 tokens, 50 steps, {args.ig_method or 'default'} rule (sentiment-lstm; "
                         "distinct texts)",
                         f"{one[0]:.1f} / {one[1]:.1f}", f"{many[0]:.1f} / {many[1]:.1f}", f"{many[1] / one[1]:.2f}",
                         f"{cpu_one:.1f} / {cpu_many:.1f}", f"{mine_one:.1f} / {mine_many:.1f}", "p99 <= 300 ms"))
            print(rows[-1], flush=True)
        elif "ig" in only:
            print("no explanations API on this server: IG latency skipped", flush=True)

        if "page" in only and os.path.exists(CHROMIUM):
            store, q = queries[0]
            url = f"/explorer?store={store}&source={q['source']}&pos=0"
            page_loads(base, url, 1)  # warm the server side (templates, store summaries)
            cold, warm = page_loads(base, url, args.page_loads)
            stop = threading.Event()

            def background(offset: int):
                conn = http.client.HTTPConnection(urlsplit(base).hostname, urlsplit(base).port, timeout=120)
                i = offset
                while not stop.is_set():
                    method, path, _ = match_request(reqs[i % len(reqs)])
                    conn.request(method, path)
                    conn.getresponse().read()
                    i += 1
                conn.close()
            workers = [threading.Thread(target=background, args=(k,), daemon=True) for k in range(args.clients)]
            for w in workers:
                w.start()
            try:
                cold_busy, warm_busy = page_loads(base, url, args.page_loads)
            finally:
                stop.set()
                for w in workers:
                    w.join(120)
            traced = page_cpu(base, url, 3)
            rows.append(("explorer first visit, Chromium CPU (ms, median of 3 traces): " + ", ".join(
                f"{k} {np.median([t[k] for t in traced]):.0f}" for k in traced[0]), "", "", "", "", "", ""))
            print(rows[-1], flush=True)
            for what, idle, busy in (("first visit: fresh browser context, empty cache", cold, cold_busy),
                                     ("repeat visits: one browser profile, its caches warm", warm, warm_busy)):
                rows.append((f"explorer page load to first plot, {what} (s; median / max)",
                             f"{np.median(idle):.2f} / {max(idle):.2f}", f"{np.median(busy):.2f} / {max(busy):.2f}",
                             f"{np.median(busy) / np.median(idle):.2f}", "", "", "<= 2 s"))
                print(rows[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait(30)

    head = (f"| measurement | 1 client (ms p50 / p99) | {args.clients} clients (ms p50 / p99) | "
            f"ratio {args.clients}:1 (p99) | server CPU per request, 1 / {args.clients} clients (ms) | "
            f"benchmark clients' CPU per request, 1 / {args.clients} (ms) | goal |\n"
            "|---|---|---|---|---|---|---|\n")
    table = (head + "".join(f"| {' | '.join(r)} |\n" for r in rows)
             + f"\n{startup}\n\nload average (1/5/15 min) before: {load_before}; at the end: {uptime()} "
               f"on {os.cpu_count()} cores\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
