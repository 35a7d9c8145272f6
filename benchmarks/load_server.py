"""Load: 8 concurrent clients x 500 mixed requests against one server, checked against a sequential run.

The server runs in its own process on 127.0.0.1 (the bundled demo, test cache), so its resident
memory (VmRSS) is measured alone. A pool of distinct requests is drawn once (seeded): select and
match on every demo store with recurrent sources (cells from a real select, as the explorer asks),
text explanations with every method on the shipped classifiers, and image explanations with every
image method. Then:

1. sequential pass: each distinct request once, one at a time -- the reference answers, and the
   warm-up (models loaded, match indexes built); RSS after it is the baseline;
2. concurrent pass: ``--clients`` threads, each sending ``--requests`` requests drawn (seeded)
   from the pool; every answer must be a 200 and equal the sequential one (timing fields aside);
3. figures: errors, mismatches, p50/p99 latency per endpoint, RSS after warm-up and after the
   concurrent pass (goal: growth <= 10 %), peak RSS, wall time.

    python benchmarks/load_server.py                     # 8 x 500
    python benchmarks/load_server.py --clients 2 --requests 20 --pool-explain 1   # a quick look
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = {"seconds"}  # the only timing field in these answers (per explanation row / image overlay)
TEXTS = ["a gorgeous , witty , seductive movie .", "the film is a dull , tedious mess with no redeeming features",
         "not bad at all , really", "<b>great</b> acting but the plot makes no sense whatsoever !",
         "an unforgettable , moving experience that stays with you long after the credits roll"]
# explanation methods with per-request costs kept moderate (the point is concurrency, not quality)
TEXT_PARAMS = {"integrated_gradients": {"n_steps": 32}, "smoothgrad": {"n_samples": 16},
               "lime": {"num_samples": 300}, "shap": {"budget": 128}}


# ----------------------------------------------------------------------------- server process

def serve(port_file: str) -> None:
    """Child: serve the demo (built into the test cache) on a free loopback port, with the process
    settings of ``lstmvis serve``: glibc's allocator tuned (one arena per core) before any thread
    starts, and one torch thread."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from lstmvis.allocator import tune_allocator
    tune_allocator()
    import logging

    import torch
    torch.set_num_threads(1)

    from conftest_server import demo_resources
    from server.app import create_app
    from server.serving import make_server
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(None, {"RESOURCES": demo_resources()})
    srv = make_server(app, "127.0.0.1", 0)
    Path(port_file).write_text(str(srv.server_port))
    srv.serve_forever()


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of ``pid`` in KiB: VmRSS (all), RssAnon (heap) or RssFile (mapped files: match indexes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def rss_split(pid: int) -> str:
    return f"anon {rss_kib(pid, 'RssAnon') / 1024:.0f} + file {rss_kib(pid, 'RssFile') / 1024:.0f} MiB"


class Client:
    """One keep-alive-free HTTP client to 127.0.0.1 (a new connection per request, as browsers often do)."""

    def __init__(self, port: int):
        self.port = port

    def __call__(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes, float]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        data = json.dumps(body).encode() if body is not None else None
        t0 = time.perf_counter()
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            out = resp.read()
            return resp.status, out, time.perf_counter() - t0
        finally:
            conn.close()


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def normalized(body: bytes) -> str:
    """The whole answer without its timing fields, canonically serialized (values compared exactly)."""
    return json.dumps(_strip(json.loads(body)), sort_keys=True)


def first_difference(a, b, path: str = "") -> str:
    """Where two (normalized) answers first differ, e.g. ``explanations[0].scores[3]: 0.1 != 0.2``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'the sequential' if k in a else 'the concurrent'} answer"
            if a[k] != b[k]:
                return first_difference(a[k], b[k], f"{path}.{k}")
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {str(a)[:80]} != {str(b)[:80]}"


# ----------------------------------------------------------------------------- the request pool

def build_pool(call, rng: random.Random, n_brush: int, explain_texts: int) -> list[tuple[str, str, str, dict | None]]:
    """Distinct requests: (endpoint label, method, path, body)."""
    from urllib.parse import urlencode
    pool = []
    stores = json.loads(call("GET", "/api/stores")[1])["stores"]
    for s in stores:
        if s["status"] != "ready":
            continue
        recurrent = [src for src in s["sources"] if src.startswith("rnn.") and (src.endswith(".h") or src.endswith(".c"))]
        if not recurrent:
            continue
        for _ in range(n_brush):
            source = rng.choice(recurrent)
            pos = rng.randrange(s["n_tokens"])  # a brush inside the sequence holding a random position
            info = json.loads(call("GET", f"/api/stores/{s['name']}/tokens?start={pos}&stop={pos + 1}")[1])
            bounds = info["sequences"][0]
            lo, hi = bounds["start"], bounds["stop"]
            if hi - lo < 4:
                continue
            start = rng.randrange(lo + 1, hi - 3)
            stop = start + rng.randint(1, 3)
            sel = {"source": source, "start": start, "stop": stop, "threshold": 0.3, "pad_left": 1}
            path = f"/api/stores/{s['name']}/select?" + urlencode(sel)
            pool.append(("select", "GET", path, None))
            cells = json.loads(call("GET", path)[1]).get("cells") or [rng.randrange(s["cells"][source])]
            m = {"source": source, "cells": ",".join(map(str, cells[:20])), "threshold": 0.3, "pad_left": 1, "top": 50}
            pool.append(("match", "GET", f"/api/stores/{s['name']}/match?" + urlencode(m), None))
    models = [m["name"] for m in json.loads(call("GET", "/api/explain/models")[1])["models"]
              if m["name"].startswith("sentiment-")]
    methods = json.loads(call("GET", "/api/explain/models")[1])["methods"]
    for method in methods:
        for text in rng.sample(TEXTS, explain_texts):
            model = rng.choice(models)
            body = {"model": model, "text": text, "methods": [method], "faithfulness": rng.random() < 0.3,
                    "params": {method: TEXT_PARAMS[method]} if method in TEXT_PARAMS else {}}
            pool.append((f"explain:{method}", "POST", "/api/explain", body))
    # every image method the server documents (the enum of ExplainImageRequest.methods)
    schema = json.loads(call("GET", "/api/openapi.json")[1])["components"]["schemas"]["ExplainImageRequest"]
    image_methods = next(a["items"]["enum"] for a in schema["properties"]["methods"]["anyOf"] if a.get("type") == "array")
    for method in image_methods:
        pool.append((f"image:{method}", "POST", "/api/images/explain",
                     {"model": "mnist-cnn", "index": rng.randrange(500), "methods": [method]}))
    pool.append(("image:all", "POST", "/api/images/explain", {"model": "mnist-cnn", "index": 7}))
    missing = ({"select", "match"} | {f"explain:{m}" for m in methods} | {f"image:{m}" for m in image_methods}) \
        - {label for label, *_ in pool}
    if missing:
        raise RuntimeError(f"the request pool lacks {sorted(missing)} (demo stores not ready?)")
    return pool


def sequential_pass(call, pool) -> tuple[list[str], list[float]]:
    """Each pool request once, one at a time: the reference answers (normalized) and their seconds."""
    reference, seconds = [], []
    for label, method, path, body in pool:
        status, out, sec = call(method, path, body)
        if status != 200:
            raise RuntimeError(f"sequential {label} {path} {body}: {status} {out[:300]!r}")
        reference.append(normalized(out))
        seconds.append(sec)
    return reference, seconds


def random_plans(n_pool: int, clients: int, n_requests: int, seed: int) -> list[list[int]]:
    """Per client, ``n_requests`` pool indices drawn with replacement (seeded per client)."""
    rngs = [random.Random(seed * 1000 + c + 1) for c in range(clients)]
    return [[rng.randrange(n_pool) for _ in range(n_requests)] for rng in rngs]


def concurrent_pass(call, pool, reference: list[str], plans: list[list[int]],
                    latencies: dict[str, list[float]] | None = None, progress: bool = False):
    """One thread per plan, all at once; every answer must be a 200 equal to ``reference`` (timing aside).

    Returns (wall seconds, errors as (label, status, body head), mismatches as (label, path, body, where)).
    """
    errors, mismatches, done = [], [], [0]
    lock = threading.Lock()

    def client(plan):
        for i in plan:
            label, method, path, body = pool[i]
            try:
                status, out, sec = call(method, path, body)
            except OSError as exc:
                status, out, sec = 599, str(exc).encode(), 0.0
            with lock:
                done[0] += 1
                if status != 200:
                    errors.append((label, status, out[:200]))
                    continue
                if latencies is not None:
                    latencies[label].append(sec)
            answer = normalized(out)
            if answer != reference[i]:
                where = first_difference(json.loads(reference[i]), json.loads(answer))
                with lock:
                    mismatches.append((label, path, body, where))

    threads = [threading.Thread(target=client, args=(plan,)) for plan in plans]
    total = sum(map(len, plans))
    t1 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:  # progress every 30 s; the wall time is taken when the last client ends
        while t.is_alive():
            t.join(timeout=30)
            if t.is_alive() and progress:
                print(f"  {done[0]}/{total} requests, {len(errors)} errors, {len(mismatches)} mismatches, "
                      f"{time.perf_counter() - t1:.0f} s", flush=True)
    return time.perf_counter() - t1, errors, mismatches


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=500, help="requests per client (default 500)")
    p.add_argument("--brushes", type=int, default=6, help="select+match pairs per store in the pool (default 6)")
    p.add_argument("--pool-explain", type=int, default=2, help="texts per explanation method in the pool")
    p.add_argument("--warmup", type=int, default=100, help="requests per client in the concurrent warm-up")
    p.add_argument("--rounds", type=int, default=2, help="measured rounds (latency from the first; RSS after each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="append the markdown report here")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    port_file = Path(f"/tmp/load-server-{os.getpid()}.port")
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(port_file)], cwd=ROOT,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 1800  # the first run may build the demo stores
        while not port_file.exists():
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.5)
        time.sleep(0.2)
        call = Client(int(port_file.read_text()))
        rng = random.Random(args.seed)
        t_pool = time.perf_counter()
        pool = build_pool(call, rng, args.brushes, args.pool_explain)
        print(f"pool: {len(pool)} distinct requests ({time.perf_counter() - t_pool:.0f} s)", flush=True)

        # 1. sequential reference (and warm-up)
        t0 = time.perf_counter()
        reference, seq_seconds = sequential_pass(call, pool)
        sequential_wall = time.perf_counter() - t0
        rss_warm, split_sequential = rss_kib(server.pid), rss_split(server.pid)
        print(f"sequential pass: {sequential_wall:.0f} s, server RSS {rss_warm / 1024:.0f} MiB ({split_sequential})",
              flush=True)

        # 2. concurrent pass
        peak = [rss_warm]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], rss_kib(server.pid))
                except (OSError, RuntimeError):
                    pass
                stop.wait(0.5)

        latencies: dict[str, list[float]] = defaultdict(list)
        errors, mismatches = [], []

        def run_round(n_requests: int, round_seed: int, record: bool) -> float:
            plans = random_plans(len(pool), args.clients, n_requests, round_seed)
            wall, errs, mism = concurrent_pass(call, pool, reference, plans, latencies if record else None,
                                               progress=True)
            errors.extend(errs)
            mismatches.extend(mism)
            return wall

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rss_sequential = rss_warm
        # warm-up under concurrency: the model pool makes its second copies, thread arenas settle
        run_round(args.warmup, args.seed + 7919, record=False)
        rss_warm, split_warm = rss_kib(server.pid), rss_split(server.pid)
        print(f"concurrent warm-up ({args.clients} x {args.warmup}): server RSS {rss_warm / 1024:.0f} MiB "
              f"({split_warm})", flush=True)
        rss_rounds, walls = [], []
        for r in range(args.rounds):
            walls.append(run_round(args.requests, args.seed + r, record=(r == 0)))
            rss_rounds.append(rss_kib(server.pid))
            split_after = rss_split(server.pid)
            print(f"round {r + 1}: {walls[-1]:.0f} s, server RSS {rss_rounds[-1] / 1024:.0f} MiB ({split_after})",
                  flush=True)
        concurrent_wall = walls[0]
        stop.set()
        rss_after = rss_rounds[-1]
        alive = call("GET", "/api/status")[0] == 200
    finally:
        server.kill()
        server.wait()
        port_file.unlink(missing_ok=True)

    growth = (rss_after - rss_warm) / rss_warm
    total = args.clients * args.requests
    lines = [f"## Load: {args.clients} clients x {args.requests} mixed requests (seed {args.seed})", "",
             f"- distinct requests in the pool: {len(pool)}; sequential pass {sequential_wall:.0f} s",
             f"- concurrent pass: {total} requests in {concurrent_wall:.0f} s ({total / concurrent_wall:.1f} req/s); "
             f"{args.rounds} measured rounds + a warm-up round of {args.clients} x {args.warmup}; over all rounds "
             f"errors: {len(errors)}, answers differing from the sequential run: {len(mismatches)}",
             f"- server RSS: {rss_sequential / 1024:.0f} MiB after the sequential pass, {rss_warm / 1024:.0f} MiB after "
             f"the concurrent warm-up, after each measured round "
             f"{', '.join(f'{r / 1024:.0f}' for r in rss_rounds)} MiB (growth after warm-up {growth * 100:+.1f} %, "
             f"goal <= 10 %), peak {peak[0] / 1024:.0f} MiB; server alive: {alive}",
             f"- of which heap (RssAnon) and mapped files (RssFile): after the sequential pass {split_sequential}, "
             f"after the warm-up {split_warm}, after the last round {split_after}",
             "", "| endpoint | requests | p50 ms | p99 ms | sequential p50 ms |", "|---|---:|---:|---:|---:|"]
    seq_by_label: dict[str, list[float]] = defaultdict(list)
    for i, (label, *_rest) in enumerate(pool):
        seq_by_label[label].append(seq_seconds[i])

    def row(name: str, labels: list[str]) -> str:
        v = [x for lab in labels for x in latencies[lab]]
        seq = [x for lab in labels for x in seq_by_label[lab]]
        return (f"| {name} | {len(v)} | {percentile(v, 0.5) * 1000:.0f} | {percentile(v, 0.99) * 1000:.0f} | "
                f"{percentile(seq, 0.5) * 1000:.0f} |")

    endpoints = {"GET /api/stores/{store}/select": ["select"], "GET /api/stores/{store}/match": ["match"],
                 "POST /api/explain": sorted(lab for lab in latencies if lab.startswith("explain:")),
                 "POST /api/images/explain": sorted(lab for lab in latencies if lab.startswith("image:"))}
    lines += [f"{row(f'**{name}**', labs)}" for name, labs in endpoints.items() if labs and any(latencies[x] for x in labs)]
    lines += [row(f"{label.split(':')[0]} `{label.split(':')[1]}`", [label]) for label in sorted(latencies)
              if ":" in label]
    for e in errors[:10]:
        lines.append(f"\nERROR {e}")
    for m in mismatches[:10]:
        lines.append(f"\nMISMATCH {m}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n\n")
    return 0 if not errors and not mismatches and growth <= 0.10 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
