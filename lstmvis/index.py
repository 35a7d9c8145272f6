"""The match index: the states of one source as order-preserving keys and one-byte codes, on disk.

Every query (``lstmvis.query``) and the cell ranking (``lstmvis.cells``, a column store) read an
index built once per source with a progress bar and kept beside the store (``<store>.index/``; a
cache folder if that is not writable or is a symlink leading out of the store's folder): the states as
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

The folder may hold a stranger's files (a store someone sent, with its index): only files named as
``write_index`` names them, inside the folder, are ever opened or deleted.

A store on object storage keeps its indexes there too: ``publish_index`` uploads a local index
(data files first, ``<source>.json`` last, in one PUT) and ``fetch_index`` copies a current one
down (``lstmvis.cluster`` does both for the parts of a Zarr store).
"""
from __future__ import annotations

import json
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numba
import numpy as np

INDEX_VERSION = 3
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_N_CODES = 256  # buckets per cell (one byte per value)
# Thresholds whose keys are bucket edges in every cell (the explorer's threshold steps by 0.05): for
# these the codes alone decide every step, exactly. Other thresholds read the keys of one bucket.
EDGE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(21))
_BUILD_BYTES = 1 << 25  # rows per index-build block: about 32 MiB of states
FILE_KINDS = ("cell_major", "row_major", "codes", "bounds", "order", "bucket_start", "token_ids")


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
def _check_source(store, source: str) -> int:
    if source not in store.sources:
        raise KeyError(f"unknown source {source!r}: the store has {', '.join(store.sources)}")
    return store.n_cells(source)




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
    def load(cls, store, source: str, index_dir: str | Path | None = None, progress: bool | None = None,
             report: Callable[[int, int, str], None] | None = None) -> "MatchIndex":
        """The index of ``source``: from memory, from disk, or built now (progress bar; ``report(done,
        total, note)`` is told the build's progress too, for a server job)."""
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
            index = cls._open_or_build(store, source, folder, fingerprint, progress, report)
            _OPEN_INDEXES[cache_key] = index
            return index

    @classmethod
    def _open_or_build(cls, store, source: str, folder: Path, fingerprint: dict, progress: bool | None,
                       report: Callable[[int, int, str], None] | None = None) -> "MatchIndex":
        meta = _current_meta(folder, source, fingerprint)
        offsets = np.asarray(store.offsets, dtype=np.int64)
        if meta is not None:
            try:
                return cls(folder, source, meta, offsets)
            except (KeyError, OSError, ValueError):
                pass  # files missing, truncated or from another build: rebuilt below
        meta = write_index(store, source, folder, progress, report)
        return cls(folder, source, meta, offsets)

    @classmethod
    def is_built(cls, store, source: str, index_dir: str | Path | None = None) -> bool:
        """Whether ``load`` would open ``source``'s index (held open, or current files on disk) rather
        than build it: a server asks this before a query that might take minutes."""
        _check_source(store, source)
        folder = Path(index_dir) if index_dir is not None else default_index_dir(store)
        fingerprint = _fingerprint(store, source)
        cached = _OPEN_INDEXES.get((str(folder.resolve()), source))
        if cached is not None and cached.meta["fingerprint"] == fingerprint:
            return True
        return _current_meta(folder, source, fingerprint) is not None

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


def _current_meta(folder: Path, source: str, fingerprint: dict) -> dict | None:
    """``<source>.json`` in ``folder`` if it describes a current index of this store; else ``None``."""
    meta_path = folder / f"{source}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (not isinstance(meta, dict) or meta.get("version") != INDEX_VERSION or meta.get("fingerprint") != fingerprint
            or any(_own_file(folder, source, k, meta.get(k)) is None for k in FILE_KINDS)):
        return None  # stale, or names files this code would not write: rebuilt by load
    return meta


def forget_indexes() -> None:
    """Drop the indexes this process holds open: the next query of a source reads its files again
    (as a new process would), or rebuilds them if they are stale or damaged."""
    _OPEN_INDEXES.clear()


def default_index_dir(store) -> Path:
    """``<store>.index/`` beside the store, or a per-user cache folder if that is not writable or is
    a symlink that leads out of the store's folder (the index is never written outside it)."""
    import hashlib

    url = getattr(store, "url", str(store.path))
    path = Path(store.path).resolve()
    beside = path.with_name(path.name + ".index")
    if "://" not in url and _inside(beside, path.parent) and _writable(beside):
        return beside
    if "://" in url:  # a store on object storage: the index lives on this machine
        path = Path(url)

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lstmvis" / "index"
    return cache / hashlib.sha1(str(path).encode()).hexdigest()[:16]


def _inside(folder: Path, parent: Path) -> bool:
    """Whether ``folder``, symlinks followed, lies strictly inside ``parent`` (a resolved path)."""
    resolved = folder.resolve()
    return resolved != parent and resolved.is_relative_to(parent)


def _own_file(folder: Path, source: str, kind: str, name: Any) -> Path | None:
    """``folder / name`` if ``name`` is a file name ``write_index`` gives the ``kind`` file of ``source``
    (a plain name, no separator, no ``..``) that resolves inside ``folder``; else ``None``. The names are
    read from ``<source>.json``, which whoever can write the folder could have crafted: only these are
    ever opened or deleted."""
    if not _own_name(source, kind, name):
        return None
    path = folder / name
    return path if path.resolve().parent == folder.resolve() else None


def _own_name(source: str, kind: str, name: Any) -> bool:
    """Whether ``name`` is a plain file name (no separator, no ``..``) that ``write_index`` gives the
    ``kind`` file of ``source``."""
    return (isinstance(name, str) and Path(name).name == name and name not in (".", "..") and "\\" not in name
            and re.fullmatch(rf"{re.escape(source)}\.{kind}\.\d+-[0-9a-f]{{8}}\.npy", name) is not None)


def _writable(folder: Path) -> bool:
    if folder.is_dir():
        return os.access(folder, os.W_OK)
    return os.access(folder.parent, os.W_OK)


def _fingerprint(store, source: str) -> dict:
    """Identifies the store's content (its backend says how: ``StateStore.fingerprint``)."""
    return {**store.fingerprint(), "source": source}


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


def write_index(store, source: str, folder: Path, progress: bool | None = None,
                report: Callable[[int, int, str], None] | None = None) -> dict:
    """Build the index files of ``source`` in ``folder`` (atomically: written aside, then renamed),
    replacing and deleting those of a stale index there; returns the new ``<source>.json`` contents.
    ``MatchIndex.load`` calls it, once per source even when threads ask at the same time.
    ``report(done, total, note)``: progress in steps of ``2 * n_tokens`` (reading, then sorting)."""
    from tqdm.auto import tqdm

    fingerprint = _fingerprint(store, source)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(folder, source)
    ds = store.dataset(source)
    n, d = ds.shape
    dtype = np.dtype(ds.dtype)
    if dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"source {source!r} has dtype {dtype}: the index needs float states")
    key_type = _UINT[dtype.itemsize]
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    names = {kind: f"{source}.{kind}.{tag}.npy" for kind in FILE_KINDS}
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
                if report is not None:
                    report(b, 2 * n, f"indexing {source}: reading states")
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
            if report is not None:
                report(n + (j + 1) * n // d, 2 * n, f"indexing {source}: sorting cells")
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
    _replace_meta(folder, source, meta, tag)
    return meta


def _replace_meta(folder: Path, source: str, meta: dict, tag: str) -> None:
    """Put ``meta`` in place as ``<source>.json`` (written aside, renamed) and delete the files of the
    stale index it replaces."""
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
    if isinstance(old, dict):  # files of a stale index of this source
        for k in FILE_KINDS:
            stale = _own_file(folder, source, k, old.get(k))
            if stale is not None and old[k] != meta[k]:
                stale.unlink(missing_ok=True)


def publish_index(folder: Path, source: str, fs, remote: str) -> None:
    """Copy the current index of ``source`` from the local ``folder`` to the folder ``remote`` of the
    fsspec filesystem ``fs`` (object storage), atomically: the data files first (their names are new
    to each build), ``<source>.json`` last, in one PUT, so a reader sees an index only whole; then
    the files of the index it replaced there are deleted."""
    meta_path = folder / f"{source}.json"
    meta = json.loads(meta_path.read_text())
    old = None
    try:
        old = json.loads(fs.cat_file(f"{remote}/{source}.json"))
    except (FileNotFoundError, OSError, ValueError):
        pass
    for kind in FILE_KINDS:
        fs.put_file(str(folder / meta[kind]), f"{remote}/{meta[kind]}")
    fs.pipe_file(f"{remote}/{source}.json", meta_path.read_bytes())
    if isinstance(old, dict):
        for kind in FILE_KINDS:
            name = old.get(kind)
            if _own_name(source, kind, name) and name != meta[kind]:
                try:
                    fs.rm_file(f"{remote}/{name}")
                except (FileNotFoundError, OSError):
                    pass  # removed by another publisher already


def fetch_index(fs, remote: str, folder: Path, source: str, fingerprint: dict) -> bool:
    """Copy the index of ``source`` from ``remote`` (see ``publish_index``) into the local ``folder``
    if the one there describes this ``fingerprint``; ``True`` if copied. Files are written aside
    and renamed, ``<source>.json`` last; only names ``write_index`` gives are read or written."""
    try:
        meta = json.loads(fs.cat_file(f"{remote}/{source}.json"))
    except (FileNotFoundError, OSError, ValueError):
        return False
    if (not isinstance(meta, dict) or meta.get("version") != INDEX_VERSION or meta.get("fingerprint") != fingerprint
            or not all(_own_name(source, kind, meta.get(kind)) for kind in FILE_KINDS)):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(folder, source)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    copied = []
    try:
        for kind in FILE_KINDS:
            tmp = folder / f".{source}.{kind}.{tag}.fetch.tmp"
            copied += [tmp, folder / meta[kind]]
            fs.get_file(f"{remote}/{meta[kind]}", str(tmp))
            os.replace(tmp, folder / meta[kind])
    except (FileNotFoundError, OSError):  # replaced by another build meanwhile: build here instead
        for path in copied:
            path.unlink(missing_ok=True)
        return False
    _replace_meta(folder, source, meta, tag)
    return True


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
