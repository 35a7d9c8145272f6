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

The result is exact: levels are scanned from ``n`` down and the scan stops only when ``top``
matches are already better than anything a lower level can give (a run at level ``m`` has
``|C & C'| <= m``). LSTMVis instead keeps a heuristic shortlist of 1,000 (fast mode, first 500k
steps only) or 10,000 candidates.

**Index.** Every query reads an index built once per source with a progress bar and kept beside
the store (``<store>.index/``; a cache folder if that is not writable): the states as
order-preserving unsigned integer keys (``float_keys``), once cell-major ``(D, N)`` for scanning
the selected cells and once row-major ``(N, D)`` for reading whole candidate runs, both
memory-mapped ``.npy`` files. Comparing keys is comparing the stored floats, so one index serves
every threshold exactly. It is rebuilt when the store file changes.
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

import numpy as np

INDEX_VERSION = 1
SIGNS = ("positive", "negative", "both")
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
_VERIFY_BYTES = 1 << 25  # bound on the (rows x cells) block read per verification batch
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
    """Memory-mapped order-preserving keys of one source: ``cell_major (D, N)``, ``row_major (N, D)``.

    Open or build with ``MatchIndex.load(store, source)`` (or ``build_index(store)`` for all).
    """

    def __init__(self, folder: Path, source: str, meta: dict, offsets: np.ndarray):
        self.folder, self.source, self.meta = folder, source, meta
        self.offsets = offsets
        self.dtype = np.dtype(meta["dtype"])
        # plain ndarray views of the memory maps: np.memmap's __getitem__ is slow on small reads
        self.cell_major = np.asarray(np.load(folder / meta["cell_major"], mmap_mode="r"))
        self.row_major = np.asarray(np.load(folder / meta["row_major"], mmap_mode="r"))
        self.token_ids = np.asarray(np.load(folder / meta["token_ids"], mmap_mode="r"))
        self.n_tokens, self.n_cells = self.row_major.shape
        self.seq_start = sequence_starts(offsets, self.n_tokens)
        self.first_steps = np.flatnonzero(self.seq_start)

    @property
    def nbytes(self) -> int:
        return int(self.cell_major.nbytes + self.row_major.nbytes + self.token_ids.nbytes)

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
        if meta is None:
            meta = _build(store, source, folder, fingerprint, progress)
        return cls(folder, source, meta, np.asarray(store.offsets, dtype=np.int64))

    def values(self, cell: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The stored values of one cell over ``[start, stop)`` (a contiguous read)."""
        return keys_to_floats(self.cell_major[cell, start:stop], self.dtype)

    def selected_on(self, cells: np.ndarray, sign: str, k_pos: int, k_neg: int) -> tuple[np.ndarray, np.ndarray]:
        """For the selected ``cells``: ``count[t]``, how many are on at step ``t``, and their on-bits
        ``planes (ceil(n / 8), N)`` uint8: bit ``j % 8`` of plane ``j // 8`` is cell ``cells[j]``."""
        n = len(cells)
        dtype = np.uint8 if n < 256 else np.uint16 if n < 65536 else np.uint32
        count = np.zeros(self.n_tokens, dtype=dtype)
        planes = np.zeros(((n + 7) // 8, self.n_tokens), dtype=np.uint8)
        on = np.empty(self.n_tokens, dtype=bool)
        shifted = np.empty(self.n_tokens, dtype=np.uint8)
        for j, vid in enumerate(cells):
            cell = int(vid) % self.n_cells
            if sign == "negative" or (sign == "both" and vid >= self.n_cells):
                np.less_equal(self.cell_major[cell], k_neg, out=on)
            else:
                np.greater_equal(self.cell_major[cell], k_pos, out=on)
            np.add(count, on.view(np.uint8), out=count, casting="unsafe")
            np.multiply(on.view(np.uint8), np.uint8(1 << (j % 8)), out=shifted)  # (a shift is 20x slower)
            np.bitwise_or(planes[j // 8], shifted, out=planes[j // 8])
        return count, planes


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
    names = {kind: f"{source}.{kind}.{tag}.npy" for kind in ("cell_major", "row_major", "token_ids")}
    tmp = {k: folder / f".{v}.tmp.npy" for k, v in names.items()}
    try:
        cm = np.lib.format.open_memmap(tmp["cell_major"], mode="w+", dtype=key_type, shape=(d, n))
        rm = np.lib.format.open_memmap(tmp["row_major"], mode="w+", dtype=key_type, shape=(n, d))
        np.save(tmp["token_ids"], store.token_ids().astype(np.int32 if len(store.vocab) < 2**31 else np.int64))
        block = max(1, _BUILD_BYTES // max(1, d * dtype.itemsize))
        with tqdm(total=n, desc=f"indexing {source}", unit="tok", unit_scale=True,
                  disable=(n < 200_000) if progress is None else not progress) as bar:
            for a in range(0, n, block):
                b = min(n, a + block)
                try:
                    keys = float_keys(np.asarray(ds[a:b]))
                except ValueError as exc:
                    raise ValueError(f"source {source!r}, tokens {a}..{b}: {exc}") from None
                rm[a:b] = keys
                cm[:, a:b] = keys.T
                bar.update(b - a)
        cm.flush()
        rm.flush()
        del cm, rm
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


def build_index(store, sources: Sequence[str] | None = None, index_dir: str | Path | None = None,
                progress: bool | None = None) -> dict[str, MatchIndex]:
    """Build (or open, if current) the match index of every source, or of ``sources``."""
    return {s: MatchIndex.load(store, s, index_dir, progress) for s in (sources or store.sources)}


# ---------------------------------------------------------------------------- runs
def sequence_starts(offsets: np.ndarray, n_tokens: int) -> np.ndarray:
    """``(N,)`` booleans: True where a sequence begins."""
    flags = np.zeros(n_tokens, dtype=bool)
    flags[np.asarray(offsets[:-1])[np.asarray(offsets[:-1]) < n_tokens]] = True
    return flags


class LevelRuns:
    """The maximal runs of ``count >= level`` inside sequences, for any level, without rescanning.

    A run at level ``m`` starts at ``s`` iff ``count[s - 1] < m <= count[s]`` (the previous step
    counts as 0 at a sequence start) and stops at ``e`` iff ``count[e] < m <= count[e - 1]``.
    One pass over ``count`` finds the rising and falling steps; each level then only filters them.
    """

    def __init__(self, count: np.ndarray, first_steps: np.ndarray, floor: int = 1):
        self.floor = floor  # levels below ``floor`` are not available (fewer steps to filter per level)
        before = np.empty_like(count)
        after = np.empty_like(count)
        if len(count):
            before[0], after[-1] = 0, 0
            before[1:], after[:-1] = count[:-1], count[1:]
            before[first_steps] = 0  # ``first_steps``: where sequences begin (sorted positions)
            after[first_steps[first_steps > 0] - 1] = 0
        positions = np.int32 if len(count) < 2**31 - 1 else np.int64
        reach = count >= floor
        self.rise = np.flatnonzero((count > before) & reach).astype(positions)
        self.rise_lo, self.rise_hi = before[self.rise], count[self.rise]
        fall = np.flatnonzero((count > after) & reach).astype(positions)
        self.fall_lo, self.fall_hi = after[fall], count[fall]
        self.fall = fall + 1

    def at(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, stops)`` of the runs at ``level`` (>= ``floor``), in order."""
        assert level >= self.floor
        starts = self.rise[(self.rise_lo < level) & (self.rise_hi >= level)]
        stops = self.fall[(self.fall_lo < level) & (self.fall_hi >= level)]
        return starts.astype(np.int64), stops.astype(np.int64)


def _concat_ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    lengths = hi - lo
    total = int(lengths.sum())
    return np.arange(total, dtype=np.int64) + np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)


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
    whose whole ``C'`` was read; ``levels``: levels ``m`` scanned.
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
    k_pos, k_neg = threshold_keys(threshold, index.dtype)
    n = len(cells)
    count, planes = index.selected_on(cells, sign, k_pos, k_neg)
    selected_bits = np.packbits(np.isin(np.arange(n_virtual), cells))
    best, histogram, levels, stats = _search(index, count, planes, cells, top, min_length, phrase_length, pad_left,
                                             pad_right, sign, k_pos, k_neg, selected_bits)
    hits = []
    for i in range(len(best.get("start", ()))):
        s, e = int(best["start"][i]), int(best["stop"][i])
        seq = int(np.searchsorted(index.offsets, s, side="right") - 1)
        seq_lo, seq_hi = int(index.offsets[seq]), int(index.offsets[seq + 1])
        c_lo, c_hi = max(seq_lo, s - left), min(seq_hi, e + right)
        cprime = np.flatnonzero(np.unpackbits(best["bits"][i], count=n_virtual)).astype(np.int64)
        tokens = [store.vocab[t] for t in index.token_ids[c_lo:c_hi]]
        hits.append(Hit(s, e, seq, int(best["intersection"][i]), int(best["union"][i]), cprime, c_lo, c_hi,
                        tokens, count[c_lo:c_hi].copy()))
    return MatchResult(source, cells, threshold, sign, pad_left, pad_right, hits, count, histogram,
                       stats["phase1"], stats["phase2"], levels)


def _search(index: MatchIndex, count: np.ndarray, planes: np.ndarray, cells: np.ndarray, top: int, min_length: int,
            phrase_length: int | None, pad_left: int, pad_right: int, sign: str, k_pos: int, k_neg: int,
            selected_bits: np.ndarray):
    """Exact top matches by best-first search over the candidates, in two phases.

    Rank keys are ``(-|C & C'|, |C | C'|, -length, start)``, smaller is better. Tier ``u = n, n-1,
    ...`` generates the runs of level ``u`` and bounds each new candidate's intersection by
    ``ub = min(level, n - max count at its padding steps)`` (a padding step where ``k`` selected
    cells are on leaves at most ``n - k`` of them off); a candidate with ``ub = u`` cannot appear at a
    lower tier. Phase 1 computes the exact intersection of a tier's candidates from the selected
    cells' on-bits (``planes``). Phase 2 reads whole rows for ``C'`` and the union, only for
    candidates whose key bound ``(-intersection, n, -length, start)`` can still beat the ``top``-th
    best, best bound first. The search ends when the ``top``-th best intersection exceeds every
    unexplored tier.
    """
    n = len(cells)
    best: dict[str, np.ndarray] = {}
    histogram = np.zeros(1, dtype=np.int64)
    pool = {"start": np.zeros(0, np.int64), "stop": np.zeros(0, np.int64), "ub": np.zeros(0, np.int64)}
    exact = {"start": np.zeros(0, np.int64), "stop": np.zeros(0, np.int64), "inter": np.zeros(0, np.int64)}
    levels, stats = [], {"phase1": 0, "phase2": 0}
    level_runs = None
    above = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    for tier in range(n, 0, -1):
        if _kth_intersection(best, top) > tier:
            break
        levels.append(tier)
        if level_runs is None or tier < level_runs.floor:  # lower levels are needed less often: widen lazily
            level_runs = LevelRuns(count, index.first_steps, floor=max(1, tier - (n - tier) - 2))
        starts, stops = level_runs.at(tier)
        if tier == n:
            histogram = np.bincount(stops - starts, minlength=1).astype(np.int64)
        previous, above = above, (starts, stops)
        lengths = stops - starts
        keep = lengths == phrase_length if phrase_length is not None else lengths >= min_length
        starts, stops = starts[keep], stops[keep]
        if len(starts) and len(previous[0]):  # a run that is also a run one level up was pooled there
            i = np.minimum(np.searchsorted(previous[0], starts), len(previous[0]) - 1)
            fresh = (previous[0][i] != starts) | (previous[1][i] != stops)
            starts, stops = starts[fresh], stops[fresh]
        ub = np.minimum(tier, n - _max_count_at_padding(index, count, starts, stops, pad_left, pad_right))
        keep = ub > 0
        pool = {"start": np.concatenate([pool["start"], starts[keep]]),
                "stop": np.concatenate([pool["stop"], stops[keep]]), "ub": np.concatenate([pool["ub"], ub[keep]])}
        now = pool["ub"] == tier
        t_start, t_stop = pool["start"][now], pool["stop"][now]
        pool = {k: v[~now] for k, v in pool.items()}
        # phase 1: exact intersections of this tier's candidates (only those that can still enter the top)
        kth = _kth_intersection(best, top)
        inter = _selected_intersection(index, planes, t_start, t_stop, pad_left, pad_right)
        stats["phase1"] += len(t_start)
        keep = inter >= max(kth, 1)
        exact = {"start": np.concatenate([exact["start"], t_start[keep]]),
                 "stop": np.concatenate([exact["stop"], t_stop[keep]]),
                 "inter": np.concatenate([exact["inter"], inter[keep]])}
        # phase 2: whole rows for candidates no unexplored tier can outrank (intersection >= tier)
        ready = exact["inter"] >= tier
        best = _phase2(index, {k: v[ready] for k, v in exact.items()}, best, top, n, pad_left, pad_right, sign,
                       k_pos, k_neg, selected_bits, stats)
        exact = {k: v[~ready] for k, v in exact.items()}
    if len(exact["start"]):
        best = _phase2(index, exact, best, top, n, pad_left, pad_right, sign, k_pos, k_neg, selected_bits, stats)
    return best, histogram, levels, stats


def _kth_intersection(best: dict, top: int) -> int:
    """The ``top``-th best intersection so far (0 while fewer than ``top`` matches are known)."""
    return int(best["intersection"][top - 1]) if len(best.get("start", ())) >= top else 0


def _phase2(index: MatchIndex, cand: dict, best: dict, top: int, n: int, pad_left: int, pad_right: int, sign: str,
            k_pos: int, k_neg: int, selected_bits: np.ndarray, stats: dict) -> dict:
    """Read ``C'`` for candidates in key-bound order until the bound cannot beat the ``top``-th best."""
    order = np.lexsort((cand["start"], -(cand["stop"] - cand["start"]), -cand["inter"]))
    starts, stops, inter = cand["start"][order], cand["stop"][order], cand["inter"][order]
    first, batch = 0, 64
    while first < len(starts):
        if _cannot_improve(best, top, int(inter[first]), n, int(stops[first] - starts[first]), int(starts[first])):
            break
        last = min(len(starts), first + batch)
        stats["phase2"] += last - first
        for found in _verify(index, starts[first:last], stops[first:last], pad_left, pad_right, sign,
                             k_pos, k_neg, selected_bits, n):
            best = _merge_top(best, found, top)
        first, batch = last, batch * 2
    return best


def _selected_intersection(index: MatchIndex, planes: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                           pad_left: int, pad_right: int) -> np.ndarray:
    """``|C & C'|`` of each run from the selected cells' on-bits: AND over the run's steps of the
    bits, and of the inverted bits over its padding steps."""
    inter = np.zeros(len(starts), dtype=np.int64)
    if len(starts) == 0:
        return inter
    seq = np.searchsorted(index.offsets, starts, side="right") - 1
    lo = np.maximum(starts - pad_left, index.offsets[seq])
    hi = np.minimum(stops + pad_right, index.offsets[seq + 1])
    rows = _concat_ranges(lo, hi)
    lengths = hi - lo
    seg = np.cumsum(lengths) - lengths
    flip = ((rows < np.repeat(starts, lengths)) | (rows >= np.repeat(stops, lengths))).view(np.uint8) * np.uint8(255)
    for plane in planes:  # every run has steps of its own, so inverted padding bits above n clear
        bits = plane.take(rows)
        np.bitwise_xor(bits, flip, out=bits)
        inter += _POPCOUNT8[np.bitwise_and.reduceat(bits, seg)]
    return inter


def _cannot_improve(best: dict, top: int, ub: int, n: int, length: int | None, start: int | None) -> bool:
    """Is the ``top``-th best key no worse than the bound ``(-ub, n, -length, start)``?
    (``length=None``: the best bound of a whole tier.)"""
    if len(best.get("start", ())) < top:
        return False
    k = top - 1
    kth = (-int(best["intersection"][k]), int(best["union"][k]),
           -int(best["stop"][k] - best["start"][k]), int(best["start"][k]))
    if length is None:
        return kth[0] < -ub
    return kth <= (-ub, n, -length, start)


def _max_count_at_padding(index: MatchIndex, count: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                          pad_left: int, pad_right: int) -> np.ndarray:
    """Per run, the largest ``count`` at its padding steps (inside its sequence); 0 without any."""
    out = np.zeros(len(starts), dtype=np.int64)
    inside = np.ones(len(starts), dtype=bool)
    for j in range(1, pad_left + 1):  # step s - j is in the sequence while no sequence starts in (s - j, s]
        inside &= starts - j >= 0
        inside[inside] &= ~index.seq_start[starts[inside] - j + 1]
        if not inside.any():
            break
        np.maximum(out, np.where(inside, count[np.maximum(starts - j, 0)], 0), out=out)
    inside = np.ones(len(starts), dtype=bool)
    for j in range(pad_right):  # step e + j is in the sequence while no sequence starts in [e, e + j]
        inside &= stops + j < index.n_tokens
        inside[inside] &= ~index.seq_start[stops[inside] + j]
        if not inside.any():
            break
        np.maximum(out, np.where(inside, count[np.minimum(stops + j, index.n_tokens - 1)], 0), out=out)
    return out

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


def _verify(index: MatchIndex, starts: np.ndarray, stops: np.ndarray, pad_left: int, pad_right: int, sign: str,
            k_pos: int, k_neg: int, selected_bits: np.ndarray, n_selected: int):
    """Yield, batch by batch, ``C'`` (packed bits), ``|C & C'|`` and ``|C | C'|`` of candidate runs."""
    if len(starts) == 0:
        return
    seq = np.searchsorted(index.offsets, starts, side="right") - 1
    lo = np.maximum(starts - pad_left, index.offsets[seq])
    hi = np.minimum(stops + pad_right, index.offsets[seq + 1])
    width = n_virtual_cells(index.n_cells, sign)
    rows_per_batch = max(1, _VERIFY_BYTES // max(1, width))
    total_rows = np.cumsum(hi - lo)
    first = 0
    while first < len(starts):
        last = int(np.searchsorted(total_rows, (total_rows[first - 1] if first else 0) + rows_per_batch,
                                   side="right"))
        last = max(last, first + 1)
        b_lo, b_hi, b_s, b_e = lo[first:last], hi[first:last], starts[first:last], stops[first:last]
        rows = _concat_ranges(b_lo, b_hi)
        lengths = b_hi - b_lo
        seg = np.cumsum(lengths) - lengths
        pad = (rows < np.repeat(b_s, lengths)) | (rows >= np.repeat(b_e, lengths))
        on = on_mask(index.row_major[rows], sign, k_pos, k_neg)
        on ^= pad[:, None]  # padding steps must be off
        bits = np.bitwise_and.reduceat(np.packbits(on, axis=1), seg, axis=0)
        inter = _POPCOUNT8[bits & selected_bits].sum(axis=1)
        union = n_selected + _POPCOUNT8[bits & ~selected_bits].sum(axis=1)
        yield {"start": b_s, "stop": b_e, "intersection": inter, "union": union, "bits": bits}
        first = last


def _merge_top(best: dict, found: dict, top: int) -> dict:
    keep = found["intersection"] > 0
    found = {k: v[keep] for k, v in found.items()}
    merged = {k: np.concatenate([best[k], found[k]]) for k in found} if best else found
    order = np.lexsort((merged["start"], -(merged["stop"] - merged["start"]), merged["union"],
                        -merged["intersection"]))[:top]
    return {k: v[order] for k, v in merged.items()}
