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

**Index.** Every query reads an index built once per source with a progress bar and kept beside
the store (``<store>.index/``; a cache folder if that is not writable): the states as
order-preserving unsigned integer keys (``float_keys``), once cell-major ``(D, N)`` and once
row-major ``(N, D)`` (for reading whole candidate runs); one byte per value, ``codes (D, N)``,
the value's bucket among 256 per-cell buckets (``bounds (D, 256)``, keys: 214 quantiles, plus
edges at the keys of the thresholds ``0, 0.05, ..., 1`` and their negatives, ``EDGE_THRESHOLDS``);
and per cell the steps in key order (``order (D, N)``, bucket ``b`` at ``bucket_start[:, b]``).
For a threshold, a cell is on wherever its code is above the threshold's bucket and off wherever
it is below. For a threshold of ``EDGE_THRESHOLDS`` (the explorer's threshold steps by 0.05) the
bucket starts exactly at it and the codes decide everything; for any other, the on-steps of the
threshold's own bucket (about 1/214 of the steps) are a suffix (or a prefix) of that bucket in key
order, found by bisection. So a query reads one byte per step per selected cell, and one index
serves every threshold exactly: comparing keys is comparing the stored floats. It is rebuilt when
the store file changes (or was built by an older version). Size: 4.5x float16 states (2 B keys
twice, 1 B code, 4 B order per value), 3.25x float32 states.
"""
from __future__ import annotations

import html
import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

INDEX_VERSION = 3
SIGNS = ("positive", "negative", "both")
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_N_CODES = 256  # buckets per cell (one byte per value)
# Thresholds whose keys are bucket edges in every cell (the explorer's threshold steps by 0.05): for
# these the codes alone decide every step, exactly. Other thresholds read the keys of one bucket.
EDGE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(21))
_BUILD_BYTES = 1 << 25  # rows per index-build block: about 32 MiB of states


# ---------------------------------------------------------------------------- order-preserving keys
def float_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned integer keys of the same width that sort exactly like the float ``values``.

    ``-0.0`` gets the key of ``+0.0`` (they compare equal). NaN has no place in the order: refused.
    """
    values = np.asarray(values)
    if values.dtype.kind != "f" or values.dtype.itemsize not in _UINT:
        raise TypeError(f"float_keys needs float16/32/64 values, got {values.dtype}")
    if np.isnan(values).any():
        raise ValueError("the states contain NaN, which is neither on nor off at any threshold: "
                         "fix the model or the extraction (NaN means a numerical blow-up)")
    utype = _UINT[values.dtype.itemsize]
    sign_bit = utype(1) << utype(8 * values.dtype.itemsize - 1)
    bits = np.ascontiguousarray(values).view(utype)
    keys = np.where(bits >= sign_bit, ~bits, bits | sign_bit)
    keys[bits == sign_bit] = sign_bit
    return keys


def keys_to_floats(keys: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The inverse of ``float_keys``: the floats of ``dtype`` whose keys are ``keys``."""
    dtype = np.dtype(dtype)
    utype = _UINT[dtype.itemsize]
    sign_bit = utype(1) << utype(8 * dtype.itemsize - 1)
    keys = np.asarray(keys, dtype=utype)
    return np.where(keys >= sign_bit, keys ^ sign_bit, ~keys).view(dtype)


def threshold_keys(threshold: float, dtype: np.dtype) -> tuple[int, int]:
    """``(k_pos, k_neg)``: for values of ``dtype``, ``x >= threshold`` iff ``key(x) >= k_pos`` and
    ``x <= -threshold`` iff ``key(x) <= k_neg``. Exact: the threshold is moved to the nearest
    representable value on the safe side, never rounded across a stored value."""
    ftype = np.dtype(dtype).type
    with np.errstate(over="ignore"):
        up = ftype(threshold)
        if float(up) < threshold:
            up = np.nextafter(up, ftype(np.inf))
        down = ftype(-threshold)
        if float(down) > -threshold:
            down = np.nextafter(down, ftype(-np.inf))
    keys = float_keys(np.array([up, down], dtype=dtype))
    return int(keys[0]), int(keys[1])


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


def _check_source(store, source: str) -> int:
    if source not in store.sources:
        raise KeyError(f"unknown source {source!r}: the store has {', '.join(store.sources)}")
    return store.n_cells(source)


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


# ---------------------------------------------------------------------------- the index
class MatchIndex:
    """Memory-mapped index of one source: order-preserving keys ``cell_major (D, N)`` and
    ``row_major (N, D)``, one-byte quantile ``codes (D, N)`` with their ``bounds (D, 256)``.

    Open or build with ``MatchIndex.load(store, source)`` (or ``build_index(store)`` for all).
    """

    def __init__(self, folder: Path, source: str, meta: dict, offsets: np.ndarray):
        self.folder, self.source, self.meta = folder, source, meta
        self.offsets = offsets
        self.dtype = np.dtype(meta["dtype"])
        # plain ndarray views of the memory maps: np.memmap's __getitem__ is slow on small reads
        self.cell_major = np.asarray(np.load(folder / meta["cell_major"], mmap_mode="r"))
        self.row_major = np.asarray(np.load(folder / meta["row_major"], mmap_mode="r"))
        self.codes = np.asarray(np.load(folder / meta["codes"], mmap_mode="r"))
        self.bounds = np.load(folder / meta["bounds"])
        self.order = np.asarray(np.load(folder / meta["order"], mmap_mode="r"))
        self.bucket_start = np.load(folder / meta["bucket_start"])
        self.token_ids = np.asarray(np.load(folder / meta["token_ids"], mmap_mode="r"))
        self.n_tokens, self.n_cells = self.row_major.shape
        grid = (self.n_cells, self.n_tokens)
        if (self.n_tokens != int(offsets[-1]) or self.cell_major.shape != grid or self.codes.shape != grid
                or self.order.shape != grid or len(self.token_ids) != self.n_tokens
                or self.bounds.shape[0] != self.n_cells or self.bucket_start.shape[0] != self.n_cells):
            raise ValueError(f"the index files in {folder} do not fit together or with the store")

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.cell_major, self.row_major, self.codes, self.bounds, self.order,
                                          self.bucket_start, self.token_ids)))

    @classmethod
    def load(cls, store, source: str, index_dir: str | Path | None = None, progress: bool | None = None
             ) -> "MatchIndex":
        """The index of ``source``: from memory, from disk, or built now (progress bar)."""
        _check_source(store, source)
        folder = Path(index_dir) if index_dir is not None else default_index_dir(store)
        fingerprint = _fingerprint(store, source)
        cache_key = (str(folder.resolve()), source)
        cached = _OPEN_INDEXES.get(cache_key)
        if cached is not None and cached.meta["fingerprint"] == fingerprint:
            return cached
        with _BUILD_LOCKS.setdefault(cache_key, threading.Lock()):  # one build per source (server threads)
            cached = _OPEN_INDEXES.get(cache_key)
            if cached is not None and cached.meta["fingerprint"] == fingerprint:
                return cached
            index = cls._open_or_build(store, source, folder, fingerprint, progress)
            _OPEN_INDEXES[cache_key] = index
            return index

    @classmethod
    def _open_or_build(cls, store, source: str, folder: Path, fingerprint: dict, progress: bool | None
                       ) -> "MatchIndex":
        meta_path = folder / f"{source}.json"
        meta = None
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                meta = None
            if meta is not None and (meta.get("version") != INDEX_VERSION or meta.get("fingerprint") != fingerprint):
                meta = None
        offsets = np.asarray(store.offsets, dtype=np.int64)
        if meta is not None:
            try:
                return cls(folder, source, meta, offsets)
            except (KeyError, OSError, ValueError):
                pass  # files missing, truncated or from another build: rebuilt below
        meta = _build(store, source, folder, fingerprint, progress)
        return cls(folder, source, meta, offsets)

    def values(self, cell: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The stored values of one cell over ``[start, stop)`` (a contiguous read)."""
        return keys_to_floats(self.cell_major[cell, start:stop], self.dtype)

    def cell_tests(self, cells: np.ndarray, sign: str, k_pos: int, k_neg: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per selected (virtual) cell: its column, whether it is on when low (``<= k_neg``), the
        code ``split`` (on above it when high, below it when low) and the code whose steps must read
        the exact key (``-1``: none). Codes are ``max{i : bounds[i] <= key}``."""
        column = (cells % self.n_cells).astype(np.int64)
        low = (cells >= self.n_cells) if sign == "both" else np.full(len(cells), sign == "negative")
        threshold = np.array([k_pos, k_neg], dtype=self.bounds.dtype)[low.astype(np.int64)]
        bounds = self.bounds[column]
        bucket = (bounds <= threshold[:, None]).sum(axis=1).astype(np.int64) - 1  # bounds[:, 0] is the least key
        rows = np.arange(len(cells))
        high_edge = ~low & (bounds[rows, bucket] == threshold)
        upper = bounds[rows, np.minimum(bucket + 1, _N_CODES - 1)].astype(np.int64)
        low_edge = low & (bucket < _N_CODES - 1) & (upper == threshold.astype(np.int64) + 1)
        # high: code > bucket is on, code < bucket off; code == bucket is on when bounds[bucket] == k_pos.
        # low: code < bucket is on, code > bucket off; code == bucket is on when bounds[bucket + 1] == k_neg + 1.
        split = np.where(high_edge, bucket - 1, np.where(low_edge, bucket + 1, bucket))
        check = np.where(high_edge | low_edge, -1, bucket)
        return column, low, split, check


_OPEN_INDEXES: dict[tuple[str, str], MatchIndex] = {}
_BUILD_LOCKS: dict[tuple[str, str], threading.Lock] = {}


def default_index_dir(store) -> Path:
    """``<store>.index/`` beside the store, or a per-user cache folder if that is not writable."""
    path = Path(store.path).resolve()
    beside = path.with_name(path.name + ".index")
    if _writable(beside):
        return beside
    import hashlib

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lstmvis" / "index"
    return cache / hashlib.sha1(str(path).encode()).hexdigest()[:16]


def _writable(folder: Path) -> bool:
    if folder.is_dir():
        return os.access(folder, os.W_OK)
    return os.access(folder.parent, os.W_OK)


def _fingerprint(store, source: str) -> dict:
    """Identifies the store file's content (stores are written once, atomically, then renamed)."""
    stat = os.stat(store.path)
    return {"store": str(Path(store.path).resolve()), "source": source, "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def _remove_dead_builds(folder: Path, source: str) -> None:
    """Delete the temporary files of builds whose process is gone (killed): nothing else ever would.

    Temporary names carry the builder's pid (``.<source>.<kind>.<pid>-<hex>...tmp``); files of a
    live process (this one or another server) are left alone.
    """
    import glob
    import re

    for path in folder.glob(f".{glob.escape(source)}.*.tmp*"):
        found = re.search(r"\.(\d+)-[0-9a-f]{8}\.", path.name[len(source) + 1:])
        if found is None:
            continue
        try:
            os.kill(int(found.group(1)), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (PermissionError, OverflowError):
            pass  # alive under another user, or not a pid


def _build(store, source: str, folder: Path, fingerprint: dict, progress: bool | None) -> dict:
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(folder, source)
    ds = store.dataset(source)
    n, d = ds.shape
    dtype = np.dtype(ds.dtype)
    if dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"source {source!r} has dtype {dtype}: the index needs float states")
    key_type = _UINT[dtype.itemsize]
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    names = {kind: f"{source}.{kind}.{tag}.npy" for kind in ("cell_major", "row_major", "codes", "bounds", "order",
                                                             "bucket_start", "token_ids")}
    tmp = {k: folder / f".{v}.tmp.npy" for k, v in names.items()}
    quiet = (n < 200_000) if progress is None else not progress
    try:
        cm = np.lib.format.open_memmap(tmp["cell_major"], mode="w+", dtype=key_type, shape=(d, n))
        rm = np.lib.format.open_memmap(tmp["row_major"], mode="w+", dtype=key_type, shape=(n, d))
        codes = np.lib.format.open_memmap(tmp["codes"], mode="w+", dtype=np.uint8, shape=(d, n))
        order = np.lib.format.open_memmap(tmp["order"], mode="w+", dtype=np.int32 if n < 2**31 else np.int64,
                                          shape=(d, n))
        bounds = np.zeros((d, _N_CODES), dtype=key_type)
        bucket_start = np.zeros((d, _N_CODES + 1), dtype=np.int64)
        np.save(tmp["token_ids"], store.token_ids().astype(np.int32 if len(store.vocab) < 2**31 else np.int64))
        block = max(1, _BUILD_BYTES // max(1, d * dtype.itemsize))
        cm_arr = np.asarray(cm)
        with tqdm(total=n, desc=f"indexing {source}", unit="tok", unit_scale=True, disable=quiet) as bar:
            for a in range(0, n, block):
                b = min(n, a + block)
                try:
                    keys = float_keys(np.asarray(ds[a:b]))
                except ValueError as exc:
                    raise ValueError(f"source {source!r}, tokens {a}..{b}: {exc}") from None
                rm[a:b] = keys
                _transpose(keys, cm_arr, a)
                bar.update(b - a)
        edges = _edge_keys(dtype)
        n_quantiles = _N_CODES - len(edges)
        rank = (np.arange(n_quantiles) * n) // n_quantiles
        for j in tqdm(range(d), desc=f"sorting {source}", unit="cell", disable=quiet):
            column = cm_arr[j]
            by_value = np.argsort(column, kind="stable")
            ordered = column[by_value]
            quantiles = ordered[rank] if n else np.zeros(n_quantiles, dtype=key_type)
            quantiles[0] = 0  # the least key: every key has a bucket
            bounds[j] = np.sort(np.concatenate([quantiles, edges]))  # ties: empty buckets, harmless
            order[j] = by_value
            bucket_start[j, :-1] = np.searchsorted(ordered, bounds[j], side="left")
            bucket_start[j, -1] = n
            _codes_in_order(ordered, by_value, bounds[j], codes[j])
        np.save(tmp["bounds"], bounds)
        np.save(tmp["bucket_start"], bucket_start)
        for mm in (cm, rm, codes, order):
            mm.flush()
        del cm, rm, codes, order, cm_arr
        for k in names:
            os.replace(tmp[k], folder / names[k])
    except BaseException:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise
    meta = {"version": INDEX_VERSION, "source": source, "fingerprint": fingerprint, "dtype": str(dtype),
            "n_tokens": n, "n_cells": d, **names}
    meta_path = folder / f"{source}.json"
    old = None
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
    part = folder / f".{source}.json.{tag}.tmp"
    part.write_text(json.dumps(meta))
    os.replace(part, meta_path)
    if old is not None:  # files of a stale index of this source
        for k in names:
            if old.get(k) and old[k] != names[k]:
                (folder / old[k]).unlink(missing_ok=True)
    return meta


def _edge_keys(dtype: np.dtype) -> np.ndarray:
    """Keys that are bucket edges in every cell: for each of ``EDGE_THRESHOLDS``, ``k_pos`` (the least
    key on when high) and ``k_neg + 1`` (the least key off when low)."""
    utype = _UINT[np.dtype(dtype).itemsize]
    keys = set()
    for threshold in EDGE_THRESHOLDS:
        k_pos, k_neg = threshold_keys(threshold, dtype)
        keys.update((k_pos, k_neg + 1))
    return np.array(sorted(k for k in keys if k <= np.iinfo(utype).max), dtype=utype)


@numba.njit(cache=True, nogil=True)
def _transpose(keys, cell_major, first):
    """``cell_major[:, first:first + len(keys)] = keys.T``, in tiles that stay in cache."""
    rows, d = keys.shape
    for r0 in range(0, rows, 512):
        r1 = min(rows, r0 + 512)
        for j in range(d):
            for r in range(r0, r1):
                cell_major[j, first + r] = keys[r, j]


@numba.njit(cache=True, nogil=True)
def _codes_in_order(ordered, by_value, bounds, codes):
    """``codes[by_value[i]]`` = the bucket ``max{b : bounds[b] <= ordered[i]}`` of the i-th least key."""
    b = 0
    for i in range(len(ordered)):
        while b + 1 < len(bounds) and bounds[b + 1] <= ordered[i]:
            b += 1
        codes[by_value[i]] = b


def build_index(store, sources: Sequence[str] | None = None, index_dir: str | Path | None = None,
                progress: bool | None = None) -> dict[str, MatchIndex]:
    """Build (or open, if current) the match index of every source, or of ``sources``."""
    return {s: MatchIndex.load(store, s, index_dir, progress) for s in (sources or store.sources)}


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
    planes, count, chunk_max, chunk_rise = _selected_on(index, cells, sign, threshold, scratch)
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


def _selected_on(index: MatchIndex, cells: np.ndarray, sign: str, threshold: float,
                 scratch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For sorted (virtual) ``cells``, over the whole store: ``planes`` (bit ``j & 7`` of
    ``planes[j >> 3, t]``: cell ``j`` on at ``t``; in ``scratch``, uint8, when given), ``count``
    (cells on per step), and per chunk of 64 steps ``chunk_max`` (the largest count) and
    ``chunk_rise`` (at least the largest number of cells on at a step and off at the step before
    it; the count at a part's first step)."""
    n = len(cells)
    k_pos, k_neg = threshold_keys(threshold, index.dtype)
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



_THREADS = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
_POOL: list = []
_POOL_LOCK = threading.Lock()


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
