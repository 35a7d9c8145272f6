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

import numpy as np

from .index import MatchIndex, _check_source, float_keys, threshold_keys
from .kernels import fix_bucket, on_planes, strict_runs, plane_tables, runs, verify

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
    LSTMVis's *strict* histogram over the whole store: how many runs of length ``L`` have every
    selected cell in their ``C'``, i.e. maximal runs (inside one sequence) with all selected cells
    on, every selected cell off at the run's padding steps (clipped to the sequence, as in
    ``select``: with the default ``pad_left=1``, off just before the run unless it starts its
    sequence), and a length of at least ``min_length`` (exactly ``phrase_length`` when given).
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
@dataclass(frozen=True, eq=False)
class MatchQuery:
    """One ``match`` query (fields as ``match``'s arguments), checked once, when built: every later
    step trusts it. ``cells`` become sorted unique ``int64`` ids (read-only), ``context`` a ``(left,
    right)`` pair. Whether ``source`` exists and the ids fit its cells depends on the store: ``run``
    checks that.
    """

    source: str
    cells: np.ndarray
    threshold: float = 0.3
    pad_left: int = 1
    pad_right: int = 0
    sign: str = "positive"
    top: int = 50
    min_length: int = 2
    phrase_length: int | None = None
    context: tuple[int, int] = (5, 5)

    def __post_init__(self) -> None:
        context = self.context
        left, right = (context, context) if isinstance(context, (int, np.integer)) else tuple(context)
        checked = {"threshold": _check_threshold(self.threshold),
                   "pad_left": _check_count("pad_left", self.pad_left, 0),
                   "pad_right": _check_count("pad_right", self.pad_right, 0), "sign": _check_sign(self.sign),
                   "top": _check_count("top", self.top, 1), "min_length": _check_count("min_length", self.min_length, 1),
                   "phrase_length": None if self.phrase_length is None else
                   _check_count("phrase_length", self.phrase_length, 1),
                   "context": (_check_count("context", left, 0), _check_count("context", right, 0)),
                   "cells": _check_cells(self.cells)}
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def run(self, store, index_dir: str | Path | None = None, progress: bool | None = None) -> MatchResult:
        """The ranked matches in ``store`` (its index is built on the first query of a source)."""
        n_virtual = n_virtual_cells(_check_source(store, self.source), self.sign)
        _check_cell_ids(self.cells, n_virtual, self.sign)
        index = MatchIndex.load(store, self.source, index_dir, progress)
        scratch = _take_scratch(((len(self.cells) + 7) // 8) * index.n_tokens)
        try:
            return _match(store, index, self, n_virtual, scratch)
        finally:
            _give_scratch(scratch)


def match(store, source: str, cells: Sequence[int] | np.ndarray, threshold: float = 0.3, pad_left: int = 1,
          pad_right: int = 0, sign: str = "positive", top: int = 50, min_length: int = 2,
          phrase_length: int | None = None, context: int | tuple[int, int] = 5,
          index_dir: str | Path | None = None, progress: bool | None = None) -> MatchResult:
    """Runs anywhere in the store where the selected ``cells`` are on, ranked as LSTMVis does.

    Exact over every position (definitions in the module docstring). ``context``: tokens shown
    around each hit (one number or ``(left, right)``), clipped to the hit's sequence. The index
    is built on the first query of a source and reused afterwards. ``MatchQuery(...).run(store)``
    is the same call.
    """
    query = MatchQuery(source, cells, threshold, pad_left, pad_right, sign, top, min_length, phrase_length, context)
    return query.run(store, index_dir, progress)


def _match(store, index: MatchIndex, query: MatchQuery, n_virtual: int, scratch: np.ndarray) -> MatchResult:
    """``query`` over ``index``, with ``scratch`` bytes for the selected cells' bit planes."""
    cells, n = query.cells, len(query.cells)
    k_pos, k_neg = (index.cell_major.dtype.type(k) for k in threshold_keys(query.threshold, index.dtype))
    planes, count, chunk_max, chunk_rise = _selected_on(index, cells, query.sign, k_pos, k_neg, scratch)
    seq_parts = _sequence_parts(index.offsets, _THREADS)
    histogram = _strict_length_histogram(index, query, count, chunk_max, seq_parts)
    cand, level, n_candidates = _scan(index, query, planes, count, chunk_max, chunk_rise, seq_parts)
    starts, stops, lo, hi, inter = cand.T
    order = np.lexsort((starts, starts - stops, -inter))
    selected = np.zeros((n_virtual + 63) // 64, dtype=np.uint64)
    np.bitwise_or.at(selected, cells // 64, np.left_shift(np.uint64(1), (cells % 64).astype(np.uint64)))
    best, bits, n_verified = verify(index.row_major, starts[order], stops[order], lo[order], hi[order],
                                    inter[order], SIGNS.index(query.sign), k_pos, k_neg, selected, n, query.top)
    hits = [_hit(store, index, query.context, count, n_virtual, row, row_bits) for row, row_bits in zip(best, bits)]
    return MatchResult(query.source, cells, query.threshold, query.sign, query.pad_left, query.pad_right, hits,
                       count, histogram, int(n_candidates), int(n_verified), list(range(n, level - 1, -1)))


def _strict_length_histogram(index: MatchIndex, query: MatchQuery, count: np.ndarray, chunk_max: np.ndarray,
                             seq_parts: list[tuple[int, int]]) -> np.ndarray:
    """``MatchResult.length_histogram``: LSTMVis's strict histogram over the whole store (see there)."""
    longest = int(np.diff(index.offsets).max(initial=0))
    histograms = np.zeros((len(seq_parts), longest + 1), dtype=np.int64)
    n, pad_left, pad_right = len(query.cells), min(query.pad_left, longest), min(query.pad_right, longest)
    list(_pool().map(lambda i: strict_runs(count, chunk_max, n, index.offsets, seq_parts[i][0], seq_parts[i][1],
                                           pad_left, pad_right, query.min_length, query.phrase_length or 0,
                                           histograms[i]), range(len(seq_parts))))
    histogram = histograms.sum(axis=0)
    return histogram[:int(np.flatnonzero(histogram)[-1]) + 1] if histogram.any() else histogram[:1]


def _scan(index: MatchIndex, query: MatchQuery, planes, count, chunk_max, chunk_rise,
          seq_parts: list[tuple[int, int]]) -> tuple[np.ndarray, int, int]:
    """The candidates that can be among the ``top`` best (rows ``start, stop, lo, hi, |C & C'|``),
    the last level scanned and how many candidates were evaluated.

    Scans (each part of the store on its own thread) whose level rises with the top-th best
    |C & C'| found; runs whose start bounds |C & C'| below it are skipped. The first scan is of
    level n only (often enough when few cells are selected): done if the top-th best found is n.
    Otherwise that top-th best is a lower bound ``known`` of the true one, and a scan from level
    ``known`` (runs lower have less) is the last.
    """
    n, top = len(query.cells), query.top
    longest = int(np.diff(index.offsets).max(initial=0))  # padding never reaches past a sequence
    pad_left, pad_right = min(query.pad_left, longest), min(query.pad_right, longest)
    cands = [np.empty((_CANDIDATES, 5), dtype=np.int64) for _ in seq_parts]  # grown by ``runs`` when full

    def scan_part(i: int, level: int, known: int):
        return runs(planes, count, chunk_max, chunk_rise, n, (0,) * ((n + 63) // 64), level, known, index.offsets,
                    seq_parts[i][0], seq_parts[i][1], pad_left, pad_right, query.min_length,
                    query.phrase_length or 0, top, cands[i])

    level, known = n, 0
    while True:
        results = list(_pool().map(lambda i: scan_part(i, level, known), range(len(seq_parts))))
        cand = np.concatenate([r[0] for r in results])
        floor = int(np.partition(cand[:, 4], len(cand) - top)[len(cand) - top]) if len(cand) >= top else 0
        if floor >= level or level <= max(known, 1):
            break
        known = floor
        level = max(known, 1)
    return (cand[cand[:, 4] >= floor] if floor else cand), level, sum(r[2] for r in results)


def _hit(store, index: MatchIndex, context: tuple[int, int], count: np.ndarray, n_virtual: int, row: np.ndarray,
         bits: np.ndarray) -> Hit:
    """One of ``verify``'s best rows ``(start, stop, |C & C'|, |C | C'|)`` and its ``C'`` bits, as a ``Hit``."""
    s, e, inter, union = (int(v) for v in row)
    seq = int(np.searchsorted(index.offsets, s, side="right") - 1)
    seq_lo, seq_hi = int(index.offsets[seq]), int(index.offsets[seq + 1])
    c_lo, c_hi = max(seq_lo, s - context[0]), min(seq_hi, e + context[1])
    cprime = np.flatnonzero(np.unpackbits(bits.astype("<u8").view(np.uint8), count=n_virtual,
                                          bitorder="little")).astype(np.int64)
    tokens = [store.vocab[t] for t in index.token_ids[c_lo:c_hi]]
    return Hit(s, e, seq, inter, union, cprime, c_lo, c_hi, tokens, count[c_lo:c_hi].copy())


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
    rows, flips, least, enable = plane_tables(column, low, split)
    list(_pool().map(lambda part: on_planes(index.codes, rows, flips, least, enable, part[0], part[1], planes, count,
                                             chunk_max, chunk_rise), _token_parts(index.n_tokens, _THREADS)))
    fix_bucket(index.cell_major, index.order, index.bucket_start, column, low, check, k_pos, k_neg, planes, count,
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


def _check_cells(cells) -> np.ndarray:
    """Sorted unique ``int64`` cell ids (read-only) from a non-empty 1-D sequence of integers."""
    arr = np.asarray(cells)
    if arr.ndim != 1:
        raise ValueError(f"cells must be a 1-D list of cell ids, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("no cells selected: lower the threshold, brush fewer steps or use less padding "
                         "(select returned an empty set)")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"cells must be integer cell ids, got dtype {arr.dtype}")
    ids = np.unique(arr).astype(np.int64)
    ids.flags.writeable = False
    return ids


def _check_cell_ids(cells: np.ndarray, n_virtual: int, sign: str) -> None:
    if cells[0] < 0 or cells[-1] >= n_virtual:
        hint = " (sign='both' ids run to 2 x cells)" if sign == "both" else ""
        raise ValueError(f"cell ids must lie in 0..{n_virtual - 1} for sign={sign!r}{hint}, got "
                         f"{cells[0]}..{cells[-1]}")


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
