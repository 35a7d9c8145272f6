"""Extraction on 1 and 2 Dask workers, and match on a Zarr store through Dask against HDF5 in one process.

Extraction: charlm-python (h and c, 2 x 256 cells) over the first ``--sequences`` files of
python_source:test into a Zarr store by a LocalCluster of 1 and of 2 worker processes (one
torch thread each), tokens per second after the workers started, scaling efficiency
``tps(2) / (2 tps(1))``, and a check that both stores equal a single-process HDF5 extraction bit for bit.

Match: a synthetic float16 store of ``--tokens`` x ``--cells`` (bench_match's generator: cells
loading on ``--latent`` shared AR(1) processes, so groups switch on together) written by
``StoreWriter``, first as HDF5, then, once the HDF5 store and its index are deleted (at 10M x 512
each index is 43 GiB), as a Zarr store of parts of ``--part-tokens`` with the same rows. The same
random brushes (select 1-3 steps, threshold 0.3, top 50) are answered by ``lstmvis.match`` on the
HDF5 store in this process and by ``lstmvis.cluster.match`` on the Zarr store with 2 worker
processes, warm (indexes built first; each build timed once). Every answer (hits, histogram, the
whole-store counts) is compared. The floor of the Dask figure: the same task graph (a task per part
and one on its result) doing nothing. Bytes per query: the index bytes a query must read, one code byte
per token per selected cell (``codes``, the dominant term), computed, not counted; the per-token
counts (one byte per token) stay on the workers.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_scale.py --only match --tokens 10000000 --cells 512 \
        --latent 64 --tile-rows 500000 --part-tokens 2500000 --queries 30 --work /tmp   # needs ~56 GB free
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_scale.py --sequences 60 --tokens 1000000 --cells 128
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lstmvis  # noqa: E402
from benchmarks.bench_match import SOURCE, synthetic_blocks  # noqa: E402
from lstmvis import cluster  # noqa: E402
from lstmvis.index import forget_indexes  # noqa: E402
from lstmvis.store import StateStore, StoreWriter  # noqa: E402
from lstmvis.zarr_backend import plan_parts  # noqa: E402
from textexplain import providers  # noqa: E402


def extraction(args, work: Path) -> dict:
    import distributed

    model = providers.load_model("charlm-python")
    texts, _, _ = providers.load_corpus("python_source:test", model)
    texts = texts[:args.sequences]
    t0 = time.perf_counter()
    ref = lstmvis.extract(model, texts, work / "ref.h5", progress=False, part_tokens=args.extract_part_tokens)
    single = time.perf_counter() - t0
    out = {"tokens": ref.n_tokens, "single_process_s": single}
    for n in (1, 2):
        with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
                distributed.Client(c) as client:
            client.run(lambda: __import__("torch").set_num_threads(1))
            t0 = time.perf_counter()
            store = lstmvis.extract("charlm-python", texts, str(work / f"w{n}.zarr"), progress=False,
                                    part_tokens=args.extract_part_tokens, client=client)
            out[f"workers_{n}_s"] = time.perf_counter() - t0
            out[f"exact_{n}"] = all(np.array_equal(store.states(s), ref.states(s)) for s in ref.sources)
    out["tps_1"], out["tps_2"] = ref.n_tokens / out["workers_1_s"], ref.n_tokens / out["workers_2_s"]
    out["efficiency"] = out["tps_2"] / (2 * out["tps_1"])
    return out


def write_synthetic(path, args) -> StateStore:
    """The benchmark's store at ``path`` (HDF5 or Zarr, by the address), written by ``StoreWriter``
    from bench_match's structured generator (cells loading on ``--latent`` shared processes), the same
    rows for both backends; Zarr in parts of ``--part-tokens``."""
    n, d = args.tokens, args.cells
    rng = np.random.default_rng(0)
    lengths = rng.geometric(1 / 800, size=n // 100 + 10)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    offsets = np.concatenate([offsets[offsets < n], [n]])
    parts = plan_parts(offsets, args.part_tokens) if str(path).endswith(".zarr") else None
    writer = StoreWriter(path, n_tokens=n, offsets=offsets, vocab=[f"w{i}" for i in range(200)], parts=parts)
    writer.add_source(SOURCE, d, "float16")
    for a, values in synthetic_blocks(n, d, 0, latent=args.latent, tile_rows=args.tile_rows):
        writer.write_states(SOURCE, a, values)
        writer.write_tokens(a, rng.integers(0, 200, size=len(values)))
    writer.finish()
    return StateStore.open(path)


def _answer(result) -> tuple:
    """What must be equal between the two answers: hits, histogram, and the whole-store counts."""
    counts = np.asarray(result.counts)
    return ([h.to_dict() for h in result.hits], result.length_histogram.tolist(),
            hashlib.sha1(counts.tobytes()).hexdigest(), str(counts.dtype))


def matching(args, work: Path) -> dict:
    """HDF5 in one process, then the same store as Zarr through 2 Dask workers, one after the other
    (each store's index is 4.5x its states: at 10M x 512, 43 GiB; both at once would not fit the disk).
    The second phase checks every answer against the first's."""
    import distributed

    out = {"tokens": args.tokens, "cells": args.cells}
    t0 = time.perf_counter()
    h5 = write_synthetic(work / "m.h5", args)
    out["write_hdf5_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    brushes = []
    while len(brushes) < args.queries:
        seq = int(rng.integers(h5.n_sequences))
        a, b = h5.sequence_bounds(seq)
        if b - a >= 4:
            start = int(rng.integers(a + 1, b - 3))
            cells = h5.select(SOURCE, start, start + int(rng.integers(1, 4)), threshold=0.3)
            if len(cells):
                brushes.append(cells)
    t0 = time.perf_counter()
    lstmvis.build_index(h5, progress=False)
    out["index_build_hdf5_s"] = time.perf_counter() - t0
    one, answers = [], []
    for cells in brushes:
        t0 = time.perf_counter()
        want = lstmvis.match(h5, SOURCE, cells, top=50)
        one.append(time.perf_counter() - t0)
        answers.append(_answer(want))
    out["load_hdf5"] = os.getloadavg()[0]
    h5.close()
    forget_indexes()
    shutil.rmtree(work / "m.h5.index")
    (work / "m.h5").unlink()

    t0 = time.perf_counter()
    zs = write_synthetic(str(work / "m.zarr"), args)
    out["write_zarr_s"] = time.perf_counter() - t0
    out["parts"] = len(zs.backend.root.attrs["parts"])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c) as client:
        t0 = time.perf_counter()
        cluster.build_part_indexes(zs, client, SOURCE)
        out["index_build_cluster_s"] = time.perf_counter() - t0
        many, same = [], 0
        for cells, answer in zip(brushes, answers):
            t0 = time.perf_counter()
            got = cluster.match(zs, client, SOURCE, cells, top=50)
            many.append(time.perf_counter() - t0)
            same += _answer(got) == answer  # untimed: gathers the counts
        floor = []  # the task graph of a query (a task per part, then one on its result) doing nothing
        for _ in brushes:
            t0 = time.perf_counter()
            client.gather([client.submit(len, client.submit(list, range(k), pure=False), pure=False)
                           for k in range(out["parts"])])
            floor.append(time.perf_counter() - t0)
        out["load_dask"] = os.getloadavg()[0]
    selected = float(np.mean([len(c) for c in brushes]))
    out.update(hdf5_p50_ms=1e3 * np.percentile(one, 50), hdf5_p99_ms=1e3 * np.percentile(one, 99),
               dask_p50_ms=1e3 * np.percentile(many, 50), dask_p99_ms=1e3 * np.percentile(many, 99),
               empty_graph_p50_ms=1e3 * np.percentile(floor, 50),
               same_results=f"{same}/{len(brushes)}", mean_selected_cells=selected,
               code_bytes_per_query=selected * args.tokens,
               counts_bytes_kept_on_workers=args.tokens * np.dtype(np.uint8).itemsize)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", type=int, default=60)
    p.add_argument("--extract-part-tokens", type=int, default=20000)
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--cells", type=int, default=128)
    p.add_argument("--part-tokens", type=int, default=250_000)
    p.add_argument("--latent", type=int, default=16, help="shared processes the cells load on")
    p.add_argument("--tile-rows", type=int, default=None, help="generate this many rows, repeat them shuffled")
    p.add_argument("--work", type=Path, default=None, help="folder for the stores (default: a temporary one)")
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--only", choices=["extract", "match"])
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lstmvis-bench-scale-", dir=args.work))
    try:
        if args.only != "match":
            print("extraction", {k: round(float(v), 3) if isinstance(v, float) else v for k, v in extraction(args, work).items()})
        if args.only != "extract":
            print("match", {k: round(float(v), 3) if isinstance(v, float) else v for k, v in matching(args, work).items()})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
