"""Select and match: LSTMVis's pattern search, exact over the whole store, backed by an index.

**Select.** A cell is *on* at a step when its value is ``>= threshold`` (``sign="positive"``,
LSTMVis's only mode) or ``<= -threshold`` (``sign="negative"``). ``select`` returns the cells
that are on at every step of the brushed range ``[start, stop)`` and off at each of the
``pad_left`` steps before it and the ``pad_right`` steps after it. Padding steps that fall outside
the brushed range's sequence are dropped (a sequence start is an edge, not an "on" step). With
``sign="both"`` the cells live in a doubled space: id ``j < D`` is cell ``j`` on positively, id
``D + j`` is cell ``j`` on negatively (LSTMVis's ``signed_to_unsigned`` layout, without the copy).

**Match.** For selected cells ``C`` (``n = |C|``), ``count[t]`` is the number of cells of ``C`` on
at step ``t``. A *run at level m* is a maximal interval ``[s, e)`` inside one sequence with
``count >= m`` at every step. The *candidates* are the runs at any level ``m = n, n-1, ..., 1``
whose length is ``>= min_length`` (default 2), or exactly ``phrase_length`` when given; an
interval that is a run at several levels is one candidate. For each candidate, ``C'`` is what
``select`` would return for ``[s, e)`` with the same threshold, sign and padding: every cell (not
only the selected ones) on over the whole run and off at its padding. Candidates with
``|C & C'| = 0`` are not matches. Matches are ranked by ``|C & C'|`` descending, ``|C | C'|``
ascending (fewest extra cells on), length descending, then start ascending (a total order), and
the first ``top`` are returned. No run, hence no match, spans two sequences.

The result is exact. Compiled passes (numba; the store is cut into parts at sequence boundaries,
one thread each) first compute, for the selected cells, ``count`` and each step's on-bits from the
index's one-byte codes, and per chunk of 64 steps the largest count and the largest number of
selected cells that switch on (on at a step, off at the one before). Then one scan enumerates the
runs of all levels at once with a stack of open runs (runs of different levels nest: at most
``n + 1`` are open at any step), each with the AND of its steps' bits and the OR of its left
padding's bits, so closing a run gives its exact ``|C & C'|``. Candidates that ``top`` others
already beat on ``|C & C'|`` (the *floor*: the ``top``-th best found so far) are dropped, and two
bounds let the scan skip most of the store: a run at level ``m`` has ``|C & C'| <= m``, so the
scan's level rises with the floor (steps counting less end runs); and every cell of ``C & C'`` is
on at the run's start and off at the padding before it, so a run whose start has fewer such cells
than the floor is never evaluated, and 64 steps where no step has that many cells switching on
(nor a sequence start; with ``pad_left=0``: where no count reaches the floor) are skipped at once
while no run that can still qualify is open. The survivors are verified best bound first
(``(-|C & C'|, n, -length, start)``, as ``|C | C'| >= n``): whole rows are read for ``C'`` and the
union, and verification stops once the ``top``-th best key is no worse than the next bound.
LSTMVis instead keeps a heuristic shortlist of 1,000 (fast mode, first 500k steps only) or 10,000
candidates.

The index (``lstmvis.index``) answers which cells are on where; this module holds the queries.
"""
from __future__ import annotations

import html
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from .index import MatchIndex, _check_source, float_keys, threshold_keys

SIGNS = ("positive", "negative", "both")


# ---------------------------------------------------------------------------- argument checks
def _check_sign(sign: str) -> str:
    if sign not in SIGNS:
        raise ValueError(f"sign={sign!r} is not supported: use 'positive' (x >= threshold, LSTMVis), "
                         "'negative' (x <= -threshold) or 'both'")
    return sign


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    return threshold


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def n_virtual_cells(n_cells: int, sign: str) -> int:
    """Size of the cell-id space of ``sign``: ``D``, or ``2D`` for ``"both"``."""
    return 2 * n_cells if _check_sign(sign) == "both" else n_cells


def on_mask(keys: np.ndarray, sign: str, k_pos: int, k_neg: int) -> np.ndarray:
    """``(T, D)`` keys -> ``(T, D')`` booleans "cell on" in the id space of ``sign``."""
    if sign == "positive":
        return keys >= k_pos
    if sign == "negative":
        return keys <= k_neg
    return np.concatenate([keys >= k_pos, keys <= k_neg], axis=1)


# ---------------------------------------------------------------------------- select
def select(store, source: str, start: int, stop: int, threshold: float = 0.3, pad_left: int = 1,
           pad_right: int = 0, sign: str = "positive") -> np.ndarray:
    """Cells on at every step of ``[start, stop)`` and off at each padding step (LSTMVis).

    Returns sorted cell ids (``int64``); see the module docstring for ``sign="both"`` ids. The
    range must lie inside one sequence. An empty result is a valid answer (e.g. a threshold above
    every value).
    """
    _check_source(store, source)
    threshold = _check_threshold(threshold)
    pad_left, pad_right = _check_count("pad_left", pad_left, 0), _check_count("pad_right", pad_right, 0)
    _check_sign(sign)
    lo, hi, seq_lo, seq_hi = _check_brush(store, start, stop)
    a, b = max(seq_lo, lo - pad_left), min(seq_hi, hi + pad_right)
    dataset = store.dataset(source)
    keys = float_keys(np.asarray(dataset[a:b]))
    on = on_mask(keys, sign, *threshold_keys(threshold, dataset.dtype))
    brush = on[lo - a:hi - a].all(axis=0)
    padding = np.concatenate([on[:lo - a], on[hi - a:]]).any(axis=0)
    return np.flatnonzero(brush & ~padding).astype(np.int64)


def _check_brush(store, start: int, stop: int) -> tuple[int, int, int, int]:
    for name, value in (("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer token position, got {value!r}")
    start, stop = int(start), int(stop)
    if not 0 <= start < stop <= store.n_tokens:
        raise ValueError(f"brushed range [{start}, {stop}) must be non-empty and inside the store's "
                         f"0..{store.n_tokens}")
    seq = store.sequence_of(start)
    seq_lo, seq_hi = store.sequence_bounds(seq)
    if stop > seq_hi:
        raise ValueError(f"brushed range [{start}, {stop}) crosses the end of sequence {seq} at {seq_hi}: "
                         "brush inside one sequence")
    return start, stop, seq_lo, seq_hi


# ---------------------------------------------------------------------------- match result
@dataclass
class Hit:
    """One match: the run ``[start, stop)`` in ``sequence`` and its cells ``C'``."""

    start: int
    stop: int
    sequence: int
    intersection: int
    union: int
    cells: np.ndarray
    context_start: int
    context_stop: int
    tokens: list[str]
    counts: np.ndarray

    @property
    def length(self) -> int:
        return self.stop - self.start

    @property
    def jaccard(self) -> float:
        return self.intersection / self.union

    def to_dict(self) -> dict:
        return {"start": self.start, "stop": self.stop, "sequence": self.sequence, "length": self.length,
                "intersection": self.intersection, "union": self.union, "cells": self.cells.tolist(),
                "context_start": self.context_start, "context_stop": self.context_stop,
                "tokens": self.tokens, "counts": self.counts.tolist()}


@dataclass
class MatchResult:
    """Ranked matches, the per-step count of selected cells on, and the run-length histogram.

    ``counts[t]``: selected cells on at step ``t`` (whole store; the heatmap). ``length_histogram[L]``:
    how many maximal runs with *all* selected cells on (inside sequences) have length ``L``.
    ``n_candidates``: candidates whose intersection was computed; ``n_verified``: of those, the ones
    whose whole ``C'`` was read; ``levels``: levels ``m`` scanned (all of ``n .. 1``: the scan's
    level starts at 1 and rises with the ``top``-th best ``|C & C'|`` found).
    """

    source: str
    cells: np.ndarray
    threshold: float
    sign: str
    pad_left: int
    pad_right: int
    hits: list[Hit]
    counts: np.ndarray
    length_histogram: np.ndarray
    n_candidates: int = 0
    n_verified: int = 0
    levels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self):
        return iter(self.hits)

    def __getitem__(self, i: int) -> Hit:
        return self.hits[i]

    def to_dict(self, counts: bool = False) -> dict:
        """JSON-ready dict (the whole-store ``counts`` only when asked: it has one entry per token)."""
        out = {"source": self.source, "cells": self.cells.tolist(), "threshold": self.threshold, "sign": self.sign,
               "pad_left": self.pad_left, "pad_right": self.pad_right, "hits": [h.to_dict() for h in self.hits],
               "length_histogram": self.length_histogram.tolist(), "n_candidates": self.n_candidates,
               "n_verified": self.n_verified,
               "levels": self.levels}
        if counts:
            out["counts"] = self.counts.tolist()
        return out

    def _repr_html_(self) -> str:
        n = len(self.cells)
        rows = []
        for rank, h in enumerate(self.hits[:20], 1):
            cells = []
            for pos, (tok, c) in enumerate(zip(h.tokens, h.counts), h.context_start):
                alpha = c / max(n, 1)
                style = f"background: rgba(19,153,228,{alpha:.2f})"
                if h.start <= pos < h.stop:
                    style += "; outline: 1px solid #333"
                cells.append(f'<span style="{style}" title="{int(c)} of {n} cells on">{html.escape(tok)}</span>')
            rows.append(f"<tr><td>{rank}</td><td>{h.start}</td><td>{h.length}</td><td>{h.intersection}</td>"
                        f"<td>{h.union}</td><td style='font-family:monospace;white-space:pre'>{''.join(cells)}</td></tr>")
        return (f"<div><b>{len(self.hits)} matches</b> for {n} cells of {html.escape(self.source)} "
                f"(threshold {self.threshold:g}, {self.sign})<table><tr><th>#</th><th>start</th><th>len</th>"
                f"<th>|C&cap;C'|</th><th>|C&cup;C'|</th><th>context</th></tr>{''.join(rows)}</table></div>")

    def __repr__(self) -> str:
        return (f"MatchResult({self.source!r}, {len(self.cells)} cells, threshold={self.threshold:g}, "
                f"sign={self.sign!r}, {len(self.hits)} hits)")


# ---------------------------------------------------------------------------- match
def match(store, source: str, cells: Sequence[int] | np.ndarray, threshold: float = 0.3, pad_left: int = 1,
          pad_right: int = 0, sign: str = "positive", top: int = 50, min_length: int = 2,
          phrase_length: int | None = None, context: int | tuple[int, int] = 5,
          index_dir: str | Path | None = None, progress: bool | None = None) -> MatchResult:
    """Runs anywhere in the store where the selected ``cells`` are on, ranked as LSTMVis does.

    Exact over every position (definitions in the module docstring). ``context``: tokens shown
    around each hit (one number or ``(left, right)``), clipped to the hit's sequence. The index
    is built on the first query of a source and reused afterwards.
    """
    n_cells = _check_source(store, source)
    threshold = _check_threshold(threshold)
    pad_left, pad_right = _check_count("pad_left", pad_left, 0), _check_count("pad_right", pad_right, 0)
    _check_sign(sign)
    top = _check_count("top", top, 1)
    min_length = _check_count("min_length", min_length, 1)
    if phrase_length is not None:
        phrase_length = _check_count("phrase_length", phrase_length, 1)
    left, right = (context, context) if isinstance(context, (int, np.integer)) else tuple(context)
    left, right = _check_count("context", left, 0), _check_count("context", right, 0)
    n_virtual = n_virtual_cells(n_cells, sign)
    cells = _check_cells(cells, n_virtual, sign)

    index = MatchIndex.load(store, source, index_dir, progress)
    scratch = _take_scratch(((len(cells) + 7) // 8) * index.n_tokens)
    try:
        return _match(store, source, index, cells, threshold, pad_left, pad_right, sign, top, min_length,
                      phrase_length, left, right, n_virtual, scratch)
    finally:
        _give_scratch(scratch)


def _match(store, source, index, cells, threshold, pad_left, pad_right, sign, top, min_length, phrase_length,
           left, right, n_virtual, scratch) -> MatchResult:
    """``match`` after its checks, with ``scratch`` bytes for the selected cells' bit planes."""
    n = len(cells)
    k_pos, k_neg = (index.cell_major.dtype.type(k) for k in threshold_keys(threshold, index.dtype))
    planes, count, chunk_max, chunk_rise = _selected_on(index, cells, sign, k_pos, k_neg, scratch)
    pool = _pool()
    longest = int(np.diff(index.offsets).max(initial=0))  # padding never reaches past a sequence
    seq_parts = _sequence_parts(index.offsets, _THREADS)
    histograms = np.zeros((len(seq_parts), longest + 1), dtype=np.int64)
    cands = [np.empty((_CANDIDATES, 5), dtype=np.int64) for _ in seq_parts]  # grown by ``_runs`` when full

    def runs(i: int, level: int, known: int):
        return _runs(planes, count, chunk_max, chunk_rise, n, (0,) * ((n + 63) // 64), level, known, index.offsets,
                     seq_parts[i][0], seq_parts[i][1], min(pad_left, longest), min(pad_right, longest), min_length,
                     phrase_length or 0, top, cands[i])

    list(pool.map(lambda i: _full_runs(count, chunk_max, n, index.offsets, seq_parts[i][0], seq_parts[i][1],
                                       histograms[i]), range(len(seq_parts))))

    # Scans (each part of the store on its own thread) whose level rises with the top-th best
    # |C & C'| found; runs whose start bounds |C & C'| below it are skipped. The first scan is of
    # level n only (often enough when few cells are selected): done if the top-th best found is n.
    # Otherwise that top-th best is a lower bound ``known`` of the true one, and a scan from level
    # ``known`` (runs lower have less) is the last.
    level, known = n, 0
    while True:
        results = list(pool.map(lambda i: runs(i, level, known), range(len(seq_parts))))
        cand = np.concatenate([r[0] for r in results])
        floor = int(np.partition(cand[:, 4], len(cand) - top)[len(cand) - top]) if len(cand) >= top else 0
        if floor >= level or level <= max(known, 1):
            break
        known = floor
        level = max(known, 1)
    n_candidates = sum(r[2] for r in results)
    histogram = histograms.sum(axis=0)
    histogram = histogram[:int(np.flatnonzero(histogram)[-1]) + 1] if histogram.any() else histogram[:1]
    cand = cand[cand[:, 4] >= floor] if floor else cand
    starts, stops, lo, hi, inter = cand.T
    order = np.lexsort((starts, starts - stops, -inter))
    selected = np.zeros((n_virtual + 63) // 64, dtype=np.uint64)
    np.bitwise_or.at(selected, cells // 64, np.left_shift(np.uint64(1), (cells % 64).astype(np.uint64)))
    sign_code = SIGNS.index(sign)
    best, bits, n_verified = _verify(index.row_major, starts[order], stops[order], lo[order], hi[order],
                                     inter[order], sign_code, k_pos, k_neg, selected, n, top)
    hits = []
    for i in range(len(best)):
        s, e, inter_i, union_i = (int(v) for v in best[i])
        seq = int(np.searchsorted(index.offsets, s, side="right") - 1)
        seq_lo, seq_hi = int(index.offsets[seq]), int(index.offsets[seq + 1])
        c_lo, c_hi = max(seq_lo, s - left), min(seq_hi, e + right)
        cprime = np.flatnonzero(np.unpackbits(bits[i].astype("<u8").view(np.uint8), count=n_virtual,
                                              bitorder="little")).astype(np.int64)
        tokens = [store.vocab[t] for t in index.token_ids[c_lo:c_hi]]
        hits.append(Hit(s, e, seq, inter_i, union_i, cprime, c_lo, c_hi, tokens, count[c_lo:c_hi].copy()))
    return MatchResult(source, cells, threshold, sign, pad_left, pad_right, hits, count, histogram,
                       int(n_candidates), int(n_verified), list(range(n, level - 1, -1)))


def _selected_on(index: MatchIndex, cells: np.ndarray, sign: str, k_pos: int, k_neg: int,
                 scratch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For sorted (virtual) ``cells`` and the threshold's keys (``threshold_keys``), over the whole
    store: ``planes`` (bit ``j & 7`` of
    ``planes[j >> 3, t]``: cell ``j`` on at ``t``; in ``scratch``, uint8, when given), ``count``
    (cells on per step), and per chunk of 64 steps ``chunk_max`` (the largest count) and
    ``chunk_rise`` (at least the largest number of cells on at a step and off at the step before
    it; the count at a part's first step)."""
    n = len(cells)
    column, low, split, check = index.cell_tests(cells, sign, k_pos, k_neg)
    k_pos, k_neg = index.cell_major.dtype.type(k_pos), index.cell_major.dtype.type(k_neg)
    count = np.empty(index.n_tokens, dtype=np.uint8 if n < 256 else np.uint16 if n < 65536 else np.uint32)
    shape = ((n + 7) // 8, index.n_tokens)  # every byte is written
    planes = np.empty(shape, dtype=np.uint8) if scratch is None else scratch[:shape[0] * shape[1]].reshape(shape)
    chunk_max = np.empty((index.n_tokens + 63) // 64, dtype=count.dtype)
    chunk_rise = np.empty(len(chunk_max), dtype=np.int32)
    rows, flips, least, enable = _plane_tables(column, low, split)
    list(_pool().map(lambda part: _on_planes(index.codes, rows, flips, least, enable, part[0], part[1], planes, count,
                                             chunk_max, chunk_rise), _token_parts(index.n_tokens, _THREADS)))
    _fix_bucket(index.cell_major, index.order, index.bucket_start, column, low, check, k_pos, k_neg, planes, count,
                chunk_max, chunk_rise)
    return planes, count, chunk_max, chunk_rise


_CANDIDATES = 4096  # rows of each part's candidate array at first
_SCRATCH: list[np.ndarray] = []  # free bit-plane buffers, reused: fresh pages cost more than the pass
_SCRATCH_LOCK = threading.Lock()
_SCRATCH_KEEP = 256 << 20  # largest buffer kept between queries (bytes)


def _take_scratch(nbytes: int) -> np.ndarray:
    """A free uint8 buffer of at least ``nbytes`` (a kept one if one is large enough)."""
    with _SCRATCH_LOCK:
        for i, buffer in enumerate(_SCRATCH):
            if buffer.size >= nbytes:
                return _SCRATCH.pop(i)
    return np.empty(nbytes, dtype=np.uint8)


def _give_scratch(buffer: np.ndarray) -> None:
    """Keep ``buffer`` for later queries: the largest ones, at most one per thread of the pool."""
    if buffer.size > _SCRATCH_KEEP:
        return
    with _SCRATCH_LOCK:
        _SCRATCH.append(buffer)
        _SCRATCH.sort(key=lambda b: b.size)
        del _SCRATCH[:-_THREADS]


def _check_cells(cells, n_virtual: int, sign: str) -> np.ndarray:
    arr = np.asarray(cells)
    if arr.ndim != 1:
        raise ValueError(f"cells must be a 1-D list of cell ids, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("no cells selected: lower the threshold, brush fewer steps or use less padding "
                         "(select returned an empty set)")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"cells must be integer cell ids, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= n_virtual:
        hint = " (sign='both' ids run to 2 x cells)" if sign == "both" else ""
        raise ValueError(f"cell ids must lie in 0..{n_virtual - 1} for sign={sign!r}{hint}, got "
                         f"{arr.min()}..{arr.max()}")
    return np.unique(arr).astype(np.int64)


def _usable_cpus() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


_THREADS = _usable_cpus()
_POOL: list = []
_POOL_LOCK = threading.Lock()


def set_threads(parts: int | None = None) -> int:
    """Cut the store into ``parts`` for each compiled pass of a query, one thread each (``None``: the
    CPUs this process may use, at most 8, the default); returns the previous number. Results do not
    depend on it: the tests check every answer with several."""
    global _THREADS
    previous = _THREADS
    _THREADS = _usable_cpus() if parts is None else _check_count("parts", parts, 1)
    return previous


def _pool():
    """The threads that run the kernels on parts of the store (the kernels release the GIL)."""
    with _POOL_LOCK:
        if not _POOL:
            from concurrent.futures import ThreadPoolExecutor

            _POOL.append(ThreadPoolExecutor(_THREADS, thread_name_prefix="lstmvis-match"))
        return _POOL[0]


def _token_parts(n_tokens: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` (or fewer) step ranges ``[a, b)`` covering ``[0, n_tokens)``, split at multiples of 64."""
    cuts = sorted({64 * round(n_tokens * i / parts / 64) for i in range(1, parts)})
    edges = [0, *[c for c in cuts if 0 < c < n_tokens], n_tokens]
    return list(zip(edges[:-1], edges[1:]))


def _sequence_parts(offsets: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """``parts`` (or fewer) ranges of whole sequences ``[first, last)`` with about as many steps each."""
    n_seq = len(offsets) - 1
    cuts = np.searchsorted(offsets, [offsets[-1] * i / parts for i in range(1, parts)])
    edges = sorted({0, n_seq, *[int(c) for c in cuts if 0 < c < n_seq]})
    return list(zip(edges[:-1], edges[1:]))


# ---------------------------------------------------------------------------- compiled kernels
@intrinsic
def _popcount(typingctx, x):
    """Set bits of a uint64 (LLVM's ctpop: one instruction)."""
    def codegen(context, builder, signature, args):
        return builder.zext(builder.ctpop(args[0]), context.get_value_type(types.int64))
    return types.int64(types.uint64), codegen


@intrinsic
def _popcount8(typingctx, x):
    """Set bits of a uint8 (LLVM's ctpop: vectorized with a table lookup per byte)."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.uint8(types.uint8), codegen


@numba.njit(inline="always")
def _on_bit(codes, t, flip, least, enable):
    """1 if the cell is on at ``t``: its code (flipped, ``code ^ 255``, for cells on when low) is at
    least ``least``, and ``enable`` is 1 (0: the cell is on nowhere)."""
    return np.uint8((codes[t] ^ flip) >= least) & enable


@numba.njit(cache=True, nogil=True)
def _on_planes(codes, rows, flips, least, enable, start, stop, planes, count, chunk_max, chunk_rise):
    """The selected cells over steps ``[start, stop)`` (``start`` a multiple of 64): ``planes[p, t]``
    bit ``k`` = cell ``8p + k`` on at ``t``, ``count[t]`` = how many are on, ``chunk_max[k]`` = the
    largest count in steps ``[64k, 64k + 64)``, ``chunk_rise[k]`` = the largest number of selected
    cells that switch on (on at ``t``, off at ``t - 1``) at a step ``t`` of the chunk (at ``t =
    start``, where ``t - 1`` is another thread's, its count). Eight cells at a time (one plane
    byte; ``rows``, ``flips``, ``least``, ``enable``: ``(planes, 8)``, see ``_on_bit``), vectorized
    over steps with one-byte arithmetic, in blocks that stay in cache. The threshold's own bucket
    counts as off here (``_fix_bucket`` adds its steps that are on)."""
    block, chunk = 4096, 64
    n_planes = planes.shape[0]
    rise = np.zeros(block, dtype=count.dtype)
    for b0 in range(start, stop, block):
        b1 = min(stop, b0 + block)
        size = b1 - b0
        cnt = count[b0:b1]
        cnt[:] = 0
        for p in range(n_planes):
            plane = planes[p, b0:b1]
            if enable[p, 3] == 0:  # at most 3 cells on somewhere (the last plane): one at a time is cheaper
                plane[:] = 0
                for k in range(8):
                    if enable[p, k] == 0:
                        continue
                    c0, f0, l0, e0 = codes[rows[p, k], b0:b1], flips[p, k], least[p, k], enable[p, k]
                    for t in range(size):
                        on = _on_bit(c0, t, f0, l0, e0)
                        plane[t] |= on << np.uint8(k)
                        cnt[t] += on
                continue
            c0, c1, c2, c3 = codes[rows[p, 0], b0:b1], codes[rows[p, 1], b0:b1], codes[rows[p, 2], b0:b1], \
                codes[rows[p, 3], b0:b1]
            c4, c5, c6, c7 = codes[rows[p, 4], b0:b1], codes[rows[p, 5], b0:b1], codes[rows[p, 6], b0:b1], \
                codes[rows[p, 7], b0:b1]
            f0, f1, f2, f3, f4, f5, f6, f7 = flips[p, 0], flips[p, 1], flips[p, 2], flips[p, 3], flips[p, 4], \
                flips[p, 5], flips[p, 6], flips[p, 7]
            l0, l1, l2, l3, l4, l5, l6, l7 = least[p, 0], least[p, 1], least[p, 2], least[p, 3], least[p, 4], \
                least[p, 5], least[p, 6], least[p, 7]
            e0, e1, e2, e3, e4, e5, e6, e7 = enable[p, 0], enable[p, 1], enable[p, 2], enable[p, 3], enable[p, 4], \
                enable[p, 5], enable[p, 6], enable[p, 7]
            for t in range(size):
                on = (_on_bit(c0, t, f0, l0, e0) | (_on_bit(c1, t, f1, l1, e1) << np.uint8(1))
                      | (_on_bit(c2, t, f2, l2, e2) << np.uint8(2)) | (_on_bit(c3, t, f3, l3, e3) << np.uint8(3))
                      | (_on_bit(c4, t, f4, l4, e4) << np.uint8(4)) | (_on_bit(c5, t, f5, l5, e5) << np.uint8(5))
                      | (_on_bit(c6, t, f6, l6, e6) << np.uint8(6)) | (_on_bit(c7, t, f7, l7, e7) << np.uint8(7)))
                plane[t] = on
                cnt[t] += _popcount8(on)
        for c0 in range(0, size, chunk):
            top = cnt[c0]
            for t in range(c0 + 1, min(size, c0 + chunk)):
                top = max(top, cnt[t])
            chunk_max[(b0 + c0) // chunk] = top
        rise[:] = 0
        first = 1 if b0 == start else 0
        if first:
            rise[0] = cnt[0]
        for p in range(n_planes):
            now, before = planes[p, b0 + first:b1], planes[p, b0 + first - 1:b1 - 1]
            for t in range(size - first):
                rise[t + first] += _popcount8(now[t] & ~before[t])
        for c0 in range(0, size, chunk):
            top = rise[c0]
            for t in range(c0 + 1, min(size, c0 + chunk)):
                top = max(top, rise[t])
            chunk_rise[(b0 + c0) // chunk] = top


def _plane_tables(column: np.ndarray, low: np.ndarray, split: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``_on_planes``'s ``(rows, flips, least, enable)`` for the cells of ``cell_tests``: cell ``j`` is
    slot ``j & 7`` of plane ``j >> 3``. On when high: ``code > split``, i.e. ``code >= split + 1``;
    on when low: ``code < split``, i.e. ``code ^ 255 >= 256 - split``; a bound of 256 is nowhere
    (``enable`` 0). Empty slots are never on (and read the plane's first row again, in cache)."""
    n_planes = (len(column) + 7) // 8
    rows = np.repeat(column[::8], 8).reshape(n_planes, 8).astype(np.int64)
    flips = np.zeros((n_planes, 8), dtype=np.uint8)
    least = np.full((n_planes, 8), 256, dtype=np.int16)
    j = np.arange(len(column))
    rows.flat[j] = column
    flips.flat[j] = np.where(low, 255, 0)
    least.flat[j] = np.where(low, 256 - np.maximum(split, 0), split + 1)
    return rows, flips, np.minimum(least, 255).astype(np.uint8), (least < 256).astype(np.uint8)


@numba.njit(cache=True, nogil=True)
def _fix_bucket(keys, order, bucket_start, column, low, check, k_pos, k_neg, planes, count, chunk_max, chunk_rise):
    """Add to ``_on_planes``'s result the steps of the threshold's own bucket (``check``) that are
    on: a prefix (low) or suffix (high) of the bucket in key order (``order``), found by bisection.
    ``chunk_rise`` stays an upper bound: each cell added at a step adds at most one to its rise."""
    chunk = 64
    for j in range(len(column)):
        if check[j] < 0:
            continue
        cell, p, bit = column[j], j >> 3, np.uint8(1 << (j & 7))
        lo, hi = bucket_start[cell, check[j]], bucket_start[cell, check[j] + 1]
        while lo < hi:  # the first with key > k_neg (low) or key >= k_pos (high)
            mid = (lo + hi) // 2
            key = keys[cell, order[cell, mid]]
            if (key <= k_neg) if low[j] else (key < k_pos):
                lo = mid + 1
            else:
                hi = mid
        first, last = (bucket_start[cell, check[j]], lo) if low[j] else (lo, bucket_start[cell, check[j] + 1])
        for i in range(first, last):
            t = order[cell, i]
            planes[p, t] |= bit
            count[t] += np.uint8(1)
            chunk_max[t // chunk] = max(chunk_max[t // chunk], count[t])
            chunk_rise[t // chunk] += 1


@numba.njit(inline="always")
def _step_bits(planes, t, w, n_planes):
    """Word ``w`` of the selected cells' on-bits at step ``t`` (cells ``64w .. 64w + 63``)."""
    word = np.uint64(0)
    for p in range(8 * w, min(n_planes, 8 * w + 8)):
        word |= np.uint64(planes[p, t]) << np.uint64(8 * (p - 8 * w))
    return word


@numba.njit(cache=True, nogil=True)
def _full_runs(count, chunk_max, n, offsets, first_seq, last_seq, histogram):
    """``histogram[L]`` += the number of maximal runs of length ``L`` with all ``n`` selected cells on
    (``count == n``) in sequences ``[first_seq, last_seq)``; chunks of 64 steps whose largest count
    is below ``n`` are skipped."""
    histogram[:] = 0
    for seq in range(first_seq, last_seq):
        lo, hi = offsets[seq], offsets[seq + 1]
        t, open_at = lo, -1
        while t < hi:
            if open_at < 0 and t % 64 == 0 and chunk_max[t // 64] < n:
                t += 64
                continue
            if count[t] == n:
                if open_at < 0:
                    open_at = t
            elif open_at >= 0:
                histogram[t - open_at] += 1
                open_at = -1
            t += 1
        if open_at >= 0:
            histogram[hi - open_at] += 1


@numba.njit(inline="always")
def _start_bound(planes, t, seq_lo, pad_left, words, n_planes):
    """How many selected cells are on at ``t`` and off at each of its left padding steps (inside
    its sequence): no run starting at ``t`` has a larger ``|C & C'|``."""
    bound = 0
    for w in range(words):
        pad = np.uint64(0)
        for r in range(max(seq_lo, t - pad_left), t):
            pad |= _step_bits(planes, r, w, n_planes)
        bound += _popcount(_step_bits(planes, t, w, n_planes) & ~pad)
    return bound


@numba.njit(cache=True, nogil=True)
def _runs(planes, count, chunk_max, chunk_rise, n, word_slots, level, known, offsets, first_seq, last_seq, pad_left, pad_right, min_length,
          phrase_length, top, cand):
    """In sequences ``[first_seq, last_seq)``, enumerate the candidates that are runs at some level
    ``>= level`` (steps counting fewer than ``level`` end runs) and can reach the ``top`` best, with
    their exact ``|C & C'|``; keep in ``cand`` (rows ``start, stop, lo, hi, |C & C'|``; ``[lo, hi)``:
    the run with its padding inside its sequence) those that fewer than ``top`` others beat on
    ``|C & C'|``; ``known``: a lower bound of the ``top``-th best ``|C & C'|`` (0: none), candidates
    below it are not kept. ``word_slots``: a tuple of ``(n + 63) // 64`` zeros, so that the number
    of bit words per step is known when compiling (2x faster loops). Returns ``(kept, floor,
    n_candidates)``: ``floor`` is the ``top``-th best ``|C & C'|`` found (0 if fewer than ``top``
    were found above ``known``); ``kept``: the candidates kept, rows of ``cand`` or of a larger
    array that replaced it when it filled up.

    A stack holds the open runs of all levels (heights strictly increasing), each with the AND of
    its own steps' bits, the OR of its start's left padding and the *bound* of its start: how many
    selected cells are on at the start and off at its padding (``|C & C'|`` of every run starting
    there is at most that). A step of count ``v`` closes every open run higher than ``v``: the run
    ``[s, t)`` on top is maximal at the levels above ``max(v, height below it)``, one candidate, and
    its AND goes on to the run below. Runs whose bound is below the ``top``-th best ``|C & C'|`` found
    so far (the *floor*), and runs lower than ``level``, are *dead*: they can never be kept. The
    bottom of the stack (entry 0) stands for all the open dead runs: its height is the highest level
    they reach. While no live run is open, the scan only looks for the next step where a run with a
    large enough bound starts (the count rises above the dead height there), skipping 64 steps at a
    time where every count is below ``level``. As the floor rises, ``level`` rises with it: a run
    at level ``m`` has ``|C & C'| <= m``.
    """
    words = len(word_slots)  # ``(n + 63) // 64``, known when compiling: one version per tuple length
    end = offsets[last_seq]
    n_planes = planes.shape[0]
    st_start = np.zeros(n + 2, dtype=np.int64)
    st_height = np.zeros(n + 2, dtype=np.int64)
    st_bound = np.zeros(n + 2, dtype=np.int64)
    st_and = np.zeros((n + 2, words), dtype=np.uint64)
    st_pad = np.zeros((n + 2, words), dtype=np.uint64)
    acc = np.empty(words, dtype=np.uint64)
    by_inter = np.zeros(n + 1, dtype=np.int64)
    kept, floor, at_least_floor, n_candidates, fold = 0, max(known, 1), 0, 0, False
    level = max(level, floor)
    seq = first_seq
    seq_lo = seq_hi = t = offsets[first_seq]  # an empty sequence before the first: its first step "ends" it
    sp = 1  # entries 1 .. sp - 1: live (or not yet folded) runs; entry 0: the dead runs
    while t <= end:
        if fold:  # the bottom entries are dead: into entry 0, the entries above move down
            fold = False
            k = 1
            while k < sp and (st_height[k] < level or st_bound[k] < floor):
                k += 1
            if k > 1:
                st_height[0] = st_height[k - 1]
                for i in range(k, sp):
                    st_start[i - k + 1], st_height[i - k + 1], st_bound[i - k + 1] = st_start[i], st_height[i], st_bound[i]
                    for w in range(words):
                        st_and[i - k + 1, w], st_pad[i - k + 1, w] = st_and[i, w], st_pad[i, w]
                sp -= k - 1
            if st_height[0] < level:
                st_height[0] = 0
        if sp == 1 and t < seq_hi:  # no live run: on to the next step where one starts
            dead = st_height[0]
            while t < seq_hi:
                if t % 64 == 0:
                    if dead == 0 and chunk_max[t // 64] < level:
                        t += 64
                        continue
                    if t != seq_lo and t + 64 <= seq_hi and (chunk_rise[t // 64] if pad_left else chunk_max[t // 64]) < floor:
                        t += 64  # no run with a large enough bound starts in these 64 steps
                        dead = np.int64(count[t - 1])
                        if dead < level:
                            dead = 0
                        continue
                v = np.int64(count[t])
                if v < level:
                    v = 0
                if v > dead and (v if t == seq_lo or pad_left == 0 else
                                 _start_bound(planes, t, seq_lo, pad_left, words, n_planes)) >= floor:
                    break
                dead = v
                t += 1
            t = min(t, seq_hi)
            st_height[0] = dead
        v = np.int64(count[t]) if t < seq_hi else 0
        if v < level:
            v = 0
        if t < seq_hi and st_height[sp - 1] == v:  # the common step: it extends the top run
            for w in range(words):
                st_and[sp - 1, w] &= _step_bits(planes, t, w, n_planes)
            t += 1
            continue
        ending = t == seq_hi  # a sequence ends at t: close every open run (no right padding)
        for w in range(words):
            acc[w] = ~np.uint64(0)
        first = t
        while sp > 1 and st_height[sp - 1] > v:
            sp -= 1
            for w in range(words):
                acc[w] &= st_and[sp, w]
            s = st_start[sp]
            first = s
            length = t - s
            if st_bound[sp] >= floor and st_height[sp] >= level and (
                    (length == phrase_length) if phrase_length > 0 else (length >= min_length)):
                n_candidates += 1
                e_pad = t if ending else min(seq_hi, t + pad_right)
                inter = 0
                for w in range(words):
                    pad = st_pad[sp, w]
                    for r in range(t, e_pad):
                        pad |= _step_bits(planes, r, w, n_planes)
                    inter += _popcount(acc[w] & ~pad)
                if inter >= floor:
                    if kept == len(cand):  # full: drop what the floor now excludes
                        m = 0
                        for i in range(kept):
                            if cand[i, 4] >= floor:
                                cand[m] = cand[i]
                                m += 1
                        kept = m
                        if 2 * kept > len(cand):  # still more than half full: a larger array
                            larger = np.empty((2 * len(cand), 5), dtype=cand.dtype)
                            larger[:kept] = cand[:kept]
                            cand = larger
                    cand[kept, 0], cand[kept, 1], cand[kept, 2] = s, t, max(seq_lo, s - pad_left)
                    cand[kept, 3], cand[kept, 4] = e_pad, inter
                    kept += 1
                    by_inter[inter] += 1
                    at_least_floor += 1
                    while at_least_floor - by_inter[floor] >= top:
                        at_least_floor -= by_inter[floor]
                        floor += 1
                        fold = True
                    level = max(level, floor)
        if st_height[0] > v:  # the dead runs above ``v`` end here too
            st_height[0] = v
        if ending:
            if t == end:
                break
            while offsets[seq + 1] <= t:  # on to the sequence holding t
                seq += 1
            seq_lo, seq_hi = offsets[seq], offsets[seq + 1]
            sp, first, st_height[0] = 1, t, 0
            continue  # t is examined again, inside its sequence
        for w in range(words):
            acc[w] &= _step_bits(planes, t, w, n_planes)
        if st_height[sp - 1] == v:  # the step extends the open run of its own height
            for w in range(words):
                st_and[sp - 1, w] &= acc[w]
        else:
            st_start[sp], st_height[sp] = first, v
            for w in range(words):
                st_and[sp, w] = acc[w]
            if first == t:  # a run starting here: OR of its left padding inside the sequence, its bound
                bound = 0
                for w in range(words):
                    st_pad[sp, w] = 0
                    for r in range(max(seq_lo, t - pad_left), t):
                        st_pad[sp, w] |= _step_bits(planes, r, w, n_planes)
                    bound += _popcount(acc[w] & ~st_pad[sp, w])
                st_bound[sp] = bound
            # else it starts where the last closed run started, in that run's slot: same padding and bound
            sp += 1
        if st_bound[1] < floor or st_height[1] < level:
            fold = fold or sp > 1
        t += 1
    m = 0
    for i in range(kept):
        if cand[i, 4] >= floor:
            cand[m] = cand[i]
            m += 1
    return cand[:m], floor if at_least_floor >= top else 0, n_candidates


@numba.njit(inline="always")
def _before(inter1, union1, length1, start1, inter2, union2, length2, start2):
    """Is the key ``(-inter1, union1, -length1, start1)`` smaller than ``(-inter2, ...)``?"""
    if inter1 != inter2:
        return inter1 > inter2
    if union1 != union2:
        return union1 < union2
    if length1 != length2:
        return length1 > length2
    return start1 < start2


@numba.njit(cache=True, nogil=True)
def _verify(rows, starts, stops, lo, hi, inter, sign_code, k_pos, k_neg, selected, n, top):
    """The ``top`` best candidates: ``(start, stop, |C & C'|, |C | C'|)`` rows, ``C'`` as bit words,
    and how many were read. Candidates come sorted by their bound ``(-inter, n, -length, start)``
    (``|C | C'| >= n``): reading stops when the ``top``-th best key is no worse than the next bound.
    ``C'`` is the AND over the run's rows of the on-bits and over its padding rows of the off-bits.
    """
    d = rows.shape[1]
    words = len(selected)
    best = np.zeros((top, 4), dtype=np.int64)
    best_bits = np.zeros((top, words), dtype=np.uint64)
    cprime = np.empty(words, dtype=np.uint64)
    row = np.empty(words, dtype=np.uint64)
    m, n_verified = 0, 0
    for c in range(len(starts)):
        s, e = starts[c], stops[c]
        if m == top and not _before(inter[c], n, e - s, s, best[m - 1, 2], best[m - 1, 3],
                                    best[m - 1, 1] - best[m - 1, 0], best[m - 1, 0]):
            break
        n_verified += 1
        cprime[:] = ~np.uint64(0)
        for r in range(lo[c], hi[c]):
            row[:] = 0
            if sign_code == 0:
                for j in range(d):
                    row[j >> 6] |= np.uint64(rows[r, j] >= k_pos) << np.uint64(j & 63)
            elif sign_code == 1:
                for j in range(d):
                    row[j >> 6] |= np.uint64(rows[r, j] <= k_neg) << np.uint64(j & 63)
            else:
                for j in range(d):
                    row[j >> 6] |= np.uint64(rows[r, j] >= k_pos) << np.uint64(j & 63)
                    row[(d + j) >> 6] |= np.uint64(rows[r, j] <= k_neg) << np.uint64((d + j) & 63)
            if s <= r < e:
                for w in range(words):
                    cprime[w] &= row[w]
            else:
                for w in range(words):
                    cprime[w] &= ~row[w]
        got, extra = 0, 0
        for w in range(words):
            got += _popcount(cprime[w] & selected[w])
            extra += _popcount(cprime[w] & ~selected[w])
        union = n + extra
        if m == top and not _before(got, union, e - s, s, best[m - 1, 2], best[m - 1, 3],
                                    best[m - 1, 1] - best[m - 1, 0], best[m - 1, 0]):
            continue
        p = min(m, top - 1)  # insertion sort into the best list
        while p > 0 and _before(got, union, e - s, s, best[p - 1, 2], best[p - 1, 3],
                                best[p - 1, 1] - best[p - 1, 0], best[p - 1, 0]):
            best[p] = best[p - 1]
            best_bits[p] = best_bits[p - 1]
            p -= 1
        best[p, 0], best[p, 1], best[p, 2], best[p, 3] = s, e, got, union
        best_bits[p] = cprime
        m = min(m + 1, top)
    return best[:m].copy(), best_bits[:m].copy(), n_verified
