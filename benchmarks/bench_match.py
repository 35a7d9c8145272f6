"""Select + match latency on a synthetic float16 store, ours vs a straightforward numpy LSTMVis.

Builds (or reuses) a synthetic store of ``--tokens`` x ``--cells`` float16 states (AR(1) processes
squashed by tanh, so cells switch on and off in runs like real LSTM cells), builds our match index
(timed, size reported relative to the states), then runs random brushes: ``select`` over 1-3 steps
(threshold 0.3, pad_left 1), ``match`` top 50, warm (index open and in the page cache). The
baseline is LSTMVis's server algorithm in "precise" mode (all steps; per-step counts in column
batches of floor(5e6 / N) cells, run-length candidates from level |C| down until 10,000 are found,
each verified by reading its rows), run on the same data as a row-major float16 memory map.

The timed figures exclude the one-off index build (reported separately with its size). Ours runs
its kernels on as many threads as the process may use (at most 8; 2 on the reference machine).

    python benchmarks/bench_match.py --tokens 2000000 --cells 256 --queries 40 --baseline-queries 8
    python benchmarks/bench_match.py --tokens 2000000 --cells 256 --latent 32 --queries 40 --baseline-queries 8
    python benchmarks/bench_match.py --tokens 10000000 --cells 512 --latent 64 --tile-rows 500000 --no-raw \
        --queries 30 --baseline-queries 3 --dir /tmp/lstmvis-bench-match

The 10M x 512 store takes 10 GB and its index 45 GB (delete both afterwards).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lstmvis.index import MatchIndex, threshold_keys  # noqa: E402
from lstmvis.query import match, select  # noqa: E402
from lstmvis.store import StateStore, StoreWriter  # noqa: E402

SOURCE = "rnn.l0.h"


def synthetic_blocks(n: int, d: int, seed: int, latent: int = 0, tile_rows: int | None = None, block: int = 1 << 16):
    """Yield ``(start, float16 states)`` blocks of a synthetic store.

    ``latent = 0``: every cell is its own AR(1) process squashed by tanh (cells co-activate only by
    chance: many levels to scan, the hard case). ``latent = K``: cells load on one of K shared AR(1)
    processes (loading 0.6-0.95), so groups of cells switch on together, as in trained LSTMs.
    ``tile_rows``: generate that many rows once and repeat them with the cells shuffled per copy
    (cheap stores larger than RAM; each copy is a different cell-to-process assignment).
    """
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    persistence = np.array([0.6, 0.85, 0.95, 0.99])
    gain = rng.uniform(0.7, 2.5, size=d).astype(np.float32)
    bias = rng.uniform(-1.2, 0.4, size=d).astype(np.float32)
    width = d + latent
    group = rng.integers(0, len(persistence), size=width)
    loading = rng.uniform(0.6, 0.95, size=d).astype(np.float32)
    owner = rng.integers(0, max(latent, 1), size=d)
    state = np.zeros((len(persistence), width), dtype=np.float32)
    base = None
    if tile_rows is not None and tile_rows < n:
        base = np.concatenate([v for _, v in synthetic_blocks(tile_rows, d, seed, latent, None, block)])
    for a in range(0, n, block):
        b = min(n, a + block)
        if base is not None:
            copy, offset = divmod(a, len(base))
            perm = np.random.default_rng([seed, copy]).permutation(d) if copy else np.arange(d)
            rows = (np.arange(a, b) - copy * len(base)) % len(base)
            yield a, base[rows][:, perm]
            continue
        noise = rng.standard_normal((b - a, width), dtype=np.float32)
        x = np.empty_like(noise)
        for g, p in enumerate(persistence):
            cols = group == g
            out, _ = lfilter([np.sqrt(1 - p * p)], [1, -p], noise[:, cols], axis=0, zi=(p * state[g, cols])[None, :])
            x[:, cols] = out
            state[g, cols] = out[-1]
        if latent:
            x = loading * x[:, d + owner] + np.sqrt(1 - loading ** 2) * x[:, :d]
        yield a, np.tanh(gain * x + bias).astype(np.float16)


def make_store(path: Path, raw_path: Path | None, n: int, d: int, seed: int, latent: int = 0,
               tile_rows: int | None = None) -> None:
    """Synthetic store (``synthetic_blocks``) + optionally the same states as a raw row-major .npy."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    lengths = rng.geometric(1 / 800, size=n // 100 + 10)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    offsets = np.concatenate([offsets[offsets < n], [n]])
    writer = StoreWriter(path, n_tokens=n, offsets=offsets, vocab=[f"w{i}" for i in range(200)] + ["<pad>", "<unk>"],
                         card={"name": "synthetic", "generator": "benchmarks/bench_match.py", "seed": seed,
                               "latent": latent, "tile_rows": tile_rows})
    raw = None if raw_path is None else np.lib.format.open_memmap(raw_path.with_suffix(".tmp.npy"), mode="w+",
                                                                  dtype=np.float16, shape=(n, d))
    try:
        writer.add_source(SOURCE, d, "float16")
        for a, values in tqdm(synthetic_blocks(n, d, seed, latent, tile_rows), total=-(-n // (1 << 16)),
                              desc="synthetic store", unit="block"):
            writer.write_states(SOURCE, a, values)
            writer.write_tokens(a, rng.integers(0, 200, size=len(values)))
            if raw is not None:
                raw[a:a + len(values)] = values
        writer.finish()
        if raw is not None:
            raw.flush()
            del raw
            os.replace(raw_path.with_suffix(".tmp.npy"), raw_path)
    except BaseException:
        writer.abort()
        raise


# ---------------------------------------------------------------------------- baseline: LSTMVis in numpy
def _rle(values: np.ndarray):
    """Run-length encoding: (lengths, starts, values)."""
    edges = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate([[0], edges])
    lengths = np.diff(np.concatenate([starts, [len(values)]]))
    return lengths, starts, values[starts]


def lstmvis_match(states: np.ndarray, cells: np.ndarray, threshold: float = 0.3, phrase_length: int = 0,
                  constrain_left: bool = True, constrain_right: bool = False, no_of_results: int = 50,
                  mode: str = "precise"):
    """LSTMVis's ``query_similar_activations`` as a straightforward numpy program (no sequence bounds)."""
    n_total = states.shape[0]
    if mode == "fast":
        n_steps, batch, num_candidates = min(n_total, 500_000), 5, 1000
    else:
        n_steps, batch, num_candidates = n_total, max(1, int(5e6 // n_total)), 10_000
    cells = np.asarray(cells)
    counts = np.zeros(n_steps, dtype=np.int32)
    for b in range(0, len(cells), batch):
        counts += (states[:n_steps, cells[b:b + batch]] >= threshold).sum(axis=1)
    candidates: dict[str, tuple[int, int, int]] = {}
    for n in range(len(cells), 0, -1):
        lengths, starts, values = _rle(np.minimum(counts, n))
        ok = (values == n) & ((lengths >= 2) if phrase_length == 0 else (lengths == phrase_length))
        for i in np.flatnonzero(ok):
            score = 0
            if constrain_left and i > 0:
                score += n - values[i - 1]
            if constrain_right and i + 1 < len(values):
                score += n - values[i + 1]
            candidates.setdefault(f"{lengths[i]}_{starts[i]}", (int(lengths[i]), int(starts[i]), int(score)))
        if len(candidates) >= num_candidates:
            break
    shortlist = sorted(candidates.values(), key=lambda c: -c[2])[:num_candidates]
    selected = set(cells.tolist())
    results = []
    for ml, pos, _ in shortlist:
        if pos < 1 or pos + ml + 1 > n_total:
            continue
        rows = np.where(states[pos - 1:pos + ml + 1] >= threshold, 1, -1)
        mask = np.ones(ml + 2)
        mask[0] = -1 if constrain_left else 0
        mask[-1] = -1 if constrain_right else 0
        hits = mask @ rows
        on = set(np.flatnonzero(hits == np.abs(mask).sum()).tolist())
        inter, union = len(selected & on), len(selected | on)
        results.append((pos, ml, inter, union))
    results.sort(key=lambda r: (-r[2], r[3], -r[1]))
    return results[:no_of_results]


# ---------------------------------------------------------------------------- timing
def percentile(ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(ms), q))


def random_queries(store: StateStore, n_queries: int, seed: int, threshold: float):
    rng = np.random.default_rng(seed + 1)
    queries = []
    while len(queries) < n_queries:
        seq = int(rng.integers(0, store.n_sequences))
        a, b = store.sequence_bounds(seq)
        if b - a < 5:
            continue
        start = int(rng.integers(a + 1, b - 3))
        stop = start + int(rng.integers(1, 4))
        cells = select(store, SOURCE, start, stop, threshold=threshold)
        if len(cells):
            queries.append((start, stop))
    return queries


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2_000_000)
    p.add_argument("--cells", type=int, default=256)
    p.add_argument("--queries", type=int, default=40, help="timed select+match queries (ours)")
    p.add_argument("--baseline-queries", type=int, default=8, help="of those, run through the baseline too")
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--dir", type=Path, default=Path("/tmp/lstmvis-bench-match"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent", type=int, default=0, help="shared latent processes (0: independent cells)")
    p.add_argument("--tile-rows", type=int, help="generate this many rows and repeat them with shuffled cells "
                                                 "(for stores too large to generate in time)")
    p.add_argument("--no-raw", action="store_true", help="no raw float16 copy for the baseline: it reads the "
                                                          "index's row-major keys instead (same order, same bytes)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    args.dir.mkdir(parents=True, exist_ok=True)
    stem = (f"synthetic-{args.tokens}x{args.cells}-s{args.seed}" + (f"-latent{args.latent}" if args.latent else "")
            + (f"-tile{args.tile_rows}" if args.tile_rows else ""))
    path, raw_path = args.dir / f"{stem}.h5", args.dir / f"{stem}.raw.npy"
    if args.no_raw:
        raw_path = None
    if not path.exists() or (raw_path is not None and not raw_path.exists()):
        t0 = time.perf_counter()
        make_store(path, raw_path, args.tokens, args.cells, args.seed, args.latent, args.tile_rows)
        print(f"synthetic store written in {time.perf_counter() - t0:.0f} s")
    store = StateStore.open(path)
    states_bytes = store.dataset(SOURCE).size * store.dataset(SOURCE).dtype.itemsize
    t0 = time.perf_counter()
    index = MatchIndex.load(store, SOURCE, progress=True)
    build_s = time.perf_counter() - t0
    kind = f"cells sharing {args.latent} latent processes" if args.latent else "independent cells"
    print(f"store: {store.n_tokens:,} tokens x {args.cells} cells float16 ({kind}) = {states_bytes / 2**30:.2f} GiB, "
          f"{store.n_sequences:,} sequences")
    print(f"index: open/build {build_s:.1f} s, {index.nbytes / 2**30:.2f} GiB on disk = "
          f"{index.nbytes / states_bytes:.2f} x the states")

    queries = random_queries(store, args.queries, args.seed, args.threshold)
    load_before = os.getloadavg()
    for start, stop in queries:  # warm-up pass: index pages mapped and in the page cache
        match(store, SOURCE, select(store, SOURCE, start, stop, args.threshold), args.threshold)
    wall, cpu, n_cells, n_cand, verified = [], [], [], [], []
    for start, stop in queries:
        t0, c0 = time.perf_counter(), time.process_time()
        cells = select(store, SOURCE, start, stop, threshold=args.threshold)
        result = match(store, SOURCE, cells, threshold=args.threshold, top=50)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
        n_cells.append(len(cells))
        n_cand.append(result.n_candidates)
        verified.append(result.n_verified)
    print(f"queries: {len(queries)} brushes of 1-3 steps (threshold {args.threshold}, pad_left 1), |C| median "
          f"{int(np.median(n_cells))} (range {min(n_cells)}-{max(n_cells)}); candidates per query median "
          f"{int(np.median(n_cand))} (max {max(n_cand)}), of which rows read for median {int(np.median(verified))}")
    print(f"ours select+match top 50, warm: wall p50 {percentile(wall, 50):.1f} ms, p99 {percentile(wall, 99):.1f} ms;"
          f" CPU p50 {percentile(cpu, 50):.1f} ms, p99 {percentile(cpu, 99):.1f} ms (CPU: all threads; load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after)")

    if raw_path is not None:
        raw, thr = np.load(raw_path, mmap_mode="r"), args.threshold
    else:  # the row-major keys sort like the floats: ``key >= key(threshold)`` is ``value >= threshold``
        raw, thr = index.row_major, threshold_keys(args.threshold, index.dtype)[0]
    picked = list(range(min(args.baseline_queries, len(queries))))
    for i in picked:  # warm-up for the baseline too
        lstmvis_match(raw, select(store, SOURCE, *queries[i], threshold=args.threshold)[:1], thr)
    b_wall, b_cpu = [], []
    for i in picked:
        start, stop = queries[i]
        t0, c0 = time.perf_counter(), time.process_time()
        cells = np.flatnonzero((raw[start:stop] >= thr).all(0) & ~(raw[start - 1] >= thr))
        lstmvis_match(raw, cells, thr)
        b_wall.append((time.perf_counter() - t0) * 1e3)
        b_cpu.append((time.process_time() - c0) * 1e3)
        print(f"  query [{start}, {stop}) |C|={len(cells)}: LSTMVis precise wall {b_wall[-1]:.0f} ms, CPU "
              f"{b_cpu[-1]:.0f} ms; ours wall {wall[i]:.1f} ms, CPU {cpu[i]:.1f} ms")
    if picked:
        ratio_wall = np.asarray(b_wall) / np.asarray([wall[i] for i in picked])
        ratio_cpu = np.asarray(b_cpu) / np.asarray([cpu[i] for i in picked])
        print(f"baseline (LSTMVis precise in numpy) on {len(picked)} of the same queries: wall p50 "
              f"{percentile(b_wall, 50):.0f} ms, CPU p50 {percentile(b_cpu, 50):.0f} ms; ours on them: wall p50 "
              f"{percentile([wall[i] for i in picked], 50):.1f} ms; speed-up median {np.median(ratio_wall):.0f}x wall, "
              f"{np.median(ratio_cpu):.0f}x CPU (min {ratio_wall.min():.0f}x / {ratio_cpu.min():.0f}x)")


if __name__ == "__main__":
    main()
