"""Latency of explanations through the server: IG of a 50-token text with 1 and with N concurrent clients.

Starts ``lstmvis serve --data <empty dir>`` in a subprocess (the shipped models, no demo stores to
build, one torch thread per request thread as ``serve`` sets it), then measures ``POST /api/explain``
with Integrated Gradients (50 steps, Gauss-Legendre, pad baseline) of 50-token Rotten Tomatoes
texts on sentiment-lstm, a different text in every request:

* the baseline: the same explanation as a plain library call in this process, one at a time
  (``textexplain.explain``; 1 torch thread) -- the compute floor;
* the server with 1 client (the floor plus HTTP, validation and JSON);
* the server with ``--clients`` concurrent clients (goal: p99 <= 300 ms at 8 clients).

Optionally ``--methods`` adds the other methods' single-client latency, and ``--faithfulness``
the cost of the faithfulness numbers the page shows by default.

    python benchmarks/bench_server_explain.py
    python benchmarks/bench_server_explain.py --requests 96 --out benchmarks/results/server-explain.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_server import fifty_token_texts, run_load  # noqa: E402


def server_cpu(proc: subprocess.Popen) -> float:
    """CPU seconds (user + system) the server process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(data_dir: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "lstmvis", "serve", "--no-browser", "--port", "0",
                             "--data", data_dir], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain the log
            return proc, m.group(1).rstrip("/")
    raise RuntimeError("the server did not start")


def pct(latencies: list[float]) -> tuple[float, float, float]:
    """(p50, p99, min) in ms; the minimum is the best case on a machine other jobs share."""
    a = np.asarray(latencies) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.min())


def load(base: str, body: dict, n_clients: int, texts: list[str]) -> tuple[list[float], float]:
    """One POST per text (each a different text), spread over ``n_clients`` concurrent light clients
    (:func:`bench_server.run_load`); (latencies, wall s)."""
    start = time.perf_counter()
    latencies = run_load(n_clients, texts,
                         lambda text: ("POST", "/api/explain", json.dumps({**body, "text": text}).encode()), base)
    return latencies, time.perf_counter() - start


def library_latencies(texts: list[str], params: dict) -> list[float]:
    import torch

    import data
    import textexplain
    torch.set_num_threads(1)
    model = data.load_model("sentiment-lstm")
    textexplain.explain(model, texts[0], "integrated_gradients", **params)  # warm
    out = []
    for text in texts:
        t0 = time.perf_counter()
        textexplain.explain(model, text, "integrated_gradients", **params)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64, help="requests in the concurrent run")
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--methods", action="store_true", help="also time every other method with 1 client")
    ap.add_argument("--faithfulness", action="store_true", help="also time IG with the faithfulness numbers")
    ap.add_argument("--out", help="also write the results as markdown here")
    args = ap.parse_args()

    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    params = {"n_steps": args.steps}
    body = {"model": "sentiment-lstm", "methods": ["integrated_gradients"], "faithfulness": False,
            "params": {"integrated_gradients": params}}
    n_single = max(16, args.requests // 4)
    # every request explains a different text (no answer can come from a cache)
    texts = iter(fifty_token_texts(3 + args.clients + 2 * n_single + args.requests + 8 * n_single, args.tokens))

    def take(n: int) -> list[str]:
        return [next(texts) for _ in range(n)]

    rows = []
    with tempfile.TemporaryDirectory() as empty:
        proc, base = start_server(empty)
        try:
            load(base, body, 1, take(3))  # warm: model loaded, pool copies made
            load(base, body, args.clients, take(args.clients))
            lib = pct(library_latencies(take(n_single), params))
            cpu0 = server_cpu(proc)
            one_lat, _ = load(base, body, 1, take(n_single))
            cpu1 = server_cpu(proc)
            many_lat, wall = load(base, body, args.clients, take(args.requests))
            cpu_one = 1000 * (cpu1 - cpu0) / n_single
            cpu_many = 1000 * (server_cpu(proc) - cpu1) / args.requests
            one, many = pct(one_lat), pct(many_lat)
            cores = os.cpu_count() or 1
            rows.append(("IG, library call in-process (baseline)", f"{lib[0]:.0f} / {lib[1]:.0f} / {lib[2]:.0f}", "",
                         "", "", ""))
            rows.append(("IG via server, 1 client", f"{one[0]:.0f} / {one[1]:.0f} / {one[2]:.0f}", f"{one[0] / lib[0]:.2f}",
                         f"{cpu_one:.0f}", f"{1 / np.mean(one_lat):.1f}", ""))
            rows.append((f"IG via server, {args.clients} clients", f"{many[0]:.0f} / {many[1]:.0f} / {many[2]:.0f}",
                         f"{many[0] / lib[0]:.2f}", f"{cpu_many:.0f}", f"{args.requests / wall:.1f}",
                         "p99 <= 300 ms: " + ("met" if many[1] <= 300 else "not met") +
                         f"; on {cores} idle cores about {args.clients * cpu_many / cores:.0f} ms "
                         f"({args.clients} x CPU per request / cores)"))
            for r in rows:
                print(r, flush=True)
            if args.faithfulness:
                lat, _ = load(base, {**body, "faithfulness": True}, 1, take(n_single))
                p = pct(lat)
                rows.append(("IG + faithfulness numbers, 1 client", f"{p[0]:.0f} / {p[1]:.0f} / {p[2]:.0f}",
                             f"{p[0] / lib[0]:.2f}", "", "", ""))
                print(rows[-1], flush=True)
            if args.methods:
                for method in ("gradient", "gradient_x_input", "smoothgrad", "occlusion", "shap", "lime"):
                    b = {**body, "methods": [method], "params": {"lime": {"num_samples": 1000}}}
                    lat, _ = load(base, b, 1, take(8))
                    p = pct(lat)
                    rows.append((f"{method} via server, 1 client" + (" (1000 samples)" if method == "lime" else ""),
                                 f"{p[0]:.0f} / {p[1]:.0f} / {p[2]:.0f}", "", "", "", ""))
                    print(rows[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait(30)

    loadavg = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    table = (f"{args.tokens}-token text, {args.steps} IG steps, sentiment-lstm (biLSTM 96), "
             f"{args.requests} requests at {args.clients} clients, {n_single} at 1 client; "
             f"date {datetime.date.today()}; {os.cpu_count()} cores; load average before {load_before}, "
             f"at the end {loadavg}\n\n"
             "| measurement | latency ms (p50 / p99 / min) | p50 / library p50 | server CPU per request (ms) | "
             "throughput (req/s) | goal |\n|---|---|---|---|---|---|\n" + "".join(f"| {' | '.join(r)} |\n" for r in rows))
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
