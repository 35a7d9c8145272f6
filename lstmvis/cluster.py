"""Match and cell ranking over a Zarr store as Dask tasks, one per part, reduced on the workers.

**Parts.** Every part holds whole sequences (``_parts`` checks the store's part list: first
sequences, increasing from 0), runs never span two sequences, and a match's padding and context are
clipped to its sequence. So a part's matches are the store's matches inside it, and the store's
``top`` best are among the parts' ``top`` best.

**Match.** Each task runs ``lstmvis.query.match`` on its part and keeps the result on its worker;
the driver receives only the part's ``top`` best hits (positions in the whole store) and its totals
(length histogram, candidates, verified, level), and merges the hits by the query's total order
(``|C & C'|`` desc, ``|C | C'|`` asc, length desc, start asc: start is global, so ties across parts
break as in one process). The result equals one process's, ties included. The per-token ``counts``
(one byte per token and query: 1 GB at 1B tokens) stay on the workers: ``MatchResult.counts`` is a
``PartCounts``, read by slices, binned on the workers (``count_at_least``), or whole
(``np.asarray``).

**Indexes.** A part's match index is built by the worker that first queries it and kept beside
the part: in ``<store>.zarr/parts/<k>.index/`` on a local disk, and for a store on object storage
in the worker's cache *and* uploaded to ``<store>/parts/<k>.index/`` (data files first, the meta
last, in one PUT), where other workers and later sessions fetch it instead of building it. An index
belongs to the part's fingerprint (the part's id from the manifest, new whenever the part is
written): a changed part's index is rebuilt, the other parts' are kept. ``build_part_indexes`` builds
them all ahead of the first query, one task per part, with progress part by part (a server's index job).

**Ranking.** ``rank_cells`` offers every method of ``lstmvis.cells.rank_cells``. Each part
returns, per cell, its distinct keys (the exact stored values, ``lstmvis.index.float_keys``) with
their token counts and the sums of one or two weights per key; one task per group of cells adds
the parts' histograms up, on the workers (the driver receives only the scores). AUROC: the weight
is the label; the Mann-Whitney statistic is counted in integers, so the scores are the same bit
for bit. Pearson: the weight is the centred hypothesis; the cell's mean,
its centred norm and its covariance are sums over distinct values. Spearman: global average ranks
come from the summed histogram (a value's rank is the number of tokens below it plus half its own
ties), the weight is the centred rank of the hypothesis; then as Pearson on ranks. No sort over the
store is needed: the histogram of exact values is the distributed sort. Pearson and Spearman match
one process to float64 rounding (the sums run in another order).
"""
from __future__ import annotations

import operator
import threading
from typing import Callable, Sequence

import numpy as np

from .backend import StoreError
from .cells import CellRanking, ranking_input
from .index import MatchIndex, _fingerprint, default_index_dir, fetch_index, keys_to_floats, publish_index
from .query import Hit, MatchQuery, MatchResult, n_virtual_cells, _check_cell_ids
from .store import StateStore
from .zarr_backend import PartBackend, ZarrReadBackend

_OPEN: dict[tuple, StateStore] = {}  # stores opened on this worker, by (url, manifest id)
_OPEN_LOCK = threading.Lock()


def part_store(url: str, manifest_id: str, k: int) -> StateStore:
    """Part ``k`` of the store at ``url`` as a ``StateStore`` (the store is opened and checked once per worker)."""
    key = (url, manifest_id)
    with _OPEN_LOCK:
        whole = _OPEN.get(key)
        if whole is None:
            whole = _OPEN[key] = StateStore.open(url)
    if whole.fingerprint().get("manifest") != manifest_id:
        raise RuntimeError(f"{url} was replaced while a query ran: ask again")
    backend = PartBackend(whole.backend, k)
    return StateStore(backend.url, backend)


def part_index(part: StateStore, source: str) -> MatchIndex:
    """The match index of ``source`` in ``part``: held open, on this machine, fetched from beside the
    part on object storage, or built here (and then uploaded there)."""
    backend = part.backend
    if backend.index_fs is None:  # a local store: the index folder is beside the part already
        return MatchIndex.load(part, source, progress=False)
    folder = default_index_dir(part)
    if not MatchIndex.is_built(part, source, folder):
        fetch_index(backend.index_fs, backend.index_path, folder, source, _fingerprint(part, source))
    built_here = not MatchIndex.is_built(part, source, folder)
    index = MatchIndex.load(part, source, folder, progress=False)
    if built_here:
        publish_index(folder, source, backend.index_fs, backend.index_path)
    return index


def _parts(store: StateStore) -> list[int]:
    """The part numbers of a Zarr store, after checking that every part is a run of whole sequences."""
    if not isinstance(store.backend, ZarrReadBackend):
        raise ValueError("a cluster queries a Zarr store: convert the store with `lstmvis convert A.h5 B.zarr`")
    firsts = list(store.backend.root.attrs.get("parts", [0]))
    if (not firsts or firsts[0] != 0 or any(not isinstance(s, int) for s in firsts)
            or any(b <= a for a, b in zip(firsts, firsts[1:])) or firsts[-1] >= max(store.n_sequences, 1)):
        raise StoreError(f"{store.url}: its parts are not runs of whole sequences (first sequences {firsts[:5]}...)")
    return list(range(len(firsts)))


class PartCounts:
    """``MatchResult.counts`` of a cluster match: selected cells on per token, kept on the workers
    (one Dask future per part) and read on demand: ``counts[a:b]`` fetches only the parts it
    overlaps, ``np.asarray(counts)`` all of it, ``count_at_least`` bins on the workers."""

    ndim = 1

    def __init__(self, client, futures: list, row_starts: np.ndarray, dtype: np.dtype):
        self._client, self._futures = client, futures
        self._row_starts = np.asarray(row_starts, dtype=np.int64)
        self.dtype = np.dtype(dtype)
        self.shape = (int(self._row_starts[-1]),)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"position {key} is outside 0..{len(self) - 1}")
            return self[i:i + 1][0]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("counts are read in position ranges: counts[a:b]")
        a, b, _ = key.indices(len(self))
        pieces = [self._client.submit(_counts_slice, self._futures[k], max(a, lo) - lo, min(b, hi) - lo, pure=False)
                  for k, (lo, hi) in enumerate(zip(self._row_starts[:-1], self._row_starts[1:])) if lo < b and hi > a]
        return np.concatenate([np.zeros(0, self.dtype), *self._client.gather(pieces)])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def tolist(self) -> list[int]:
        return self[:].tolist()

    def count_at_least(self, level: int, bin_size: int) -> np.ndarray:
        """Per bin of ``bin_size`` positions (from 0), how many tokens have ``counts >= level``; summed
        on the workers (a heatmap or minimap of the store without moving the counts)."""
        if bin_size < 1:
            raise ValueError(f"bin_size must be at least 1, got {bin_size}")
        futures = [self._client.submit(_count_at_least_part, f, int(lo), int(level), int(bin_size), pure=False)
                   for f, lo in zip(self._futures, self._row_starts[:-1])]
        out = np.zeros(-(-len(self) // bin_size), dtype=np.int64)
        for first, sums in self._client.gather(futures):
            out[first:first + len(sums)] += sums
        return out


def _counts_slice(part: dict, a: int, b: int) -> np.ndarray:
    return part["counts"][a:b]


def _count_at_least_part(part: dict, first_row: int, level: int, bin_size: int) -> tuple[int, np.ndarray]:
    counts = part["counts"]
    first = first_row // bin_size
    bins = (first_row + np.arange(len(counts))) // bin_size - first
    return first, np.bincount(bins, weights=counts >= level, minlength=0).astype(np.int64)


def _match_part(url: str, manifest_id: str, k: int, query: MatchQuery) -> dict:
    """A task: ``query`` over part ``k``; hits with positions in the whole store. The result stays on
    the worker (``_summary`` is what the driver receives; ``counts`` is read on demand)."""
    part = part_store(url, manifest_id, k)
    root = part.backend.root
    part_index(part, query.source)
    result = query.run(part, progress=False)
    hits = []
    for h in result.hits:
        hit = h.to_dict()
        for key in ("start", "stop", "context_start", "context_stop"):
            hit[key] += root.first_row
        hit["sequence"] += root.first_sequence
        hits.append(hit)
    return {"hits": hits, "counts": result.counts, "histogram": result.length_histogram,
            "n_candidates": result.n_candidates, "n_verified": result.n_verified, "level": min(result.levels)}


def _summary(part: dict) -> dict:
    """What the driver receives of a part's match: everything but the per-token counts."""
    return {**{k: v for k, v in part.items() if k != "counts"}, "counts_dtype": part["counts"].dtype}


def _index_part(url: str, manifest_id: str, k: int, source: str) -> int:
    """A task: part ``k``'s match index of ``source`` ready on this worker and beside the part
    (:func:`part_index`, as a match task gets it)."""
    part_index(part_store(url, manifest_id, k), source)
    return k


def build_part_indexes(store: StateStore, client, source: str,
                       progress: Callable[[int, int], None] | None = None) -> int:
    """Build (or open, or fetch from beside the parts) the match index of ``source`` for every part, one
    task per part on ``client``'s workers, so that later matches and rankings build none; ``progress(done,
    total)`` hears each finished part. A task's failure cancels the others and is raised here. Returns
    the number of parts."""
    from distributed import as_completed

    ks = _parts(store)
    if source not in store.sources:
        raise ValueError(f"unknown source {source!r}; the store has {', '.join(store.sources)}")
    url, manifest = store.url, store.fingerprint()["manifest"]
    futures = [client.submit(_index_part, url, manifest, k, source, pure=False) for k in ks]
    if progress is not None:
        progress(0, len(ks))
    try:
        for done, future in enumerate(as_completed(futures), start=1):
            future.result()  # a task's error, raised here
            if progress is not None:
                progress(done, len(ks))
    except BaseException:
        client.cancel(futures)
        raise
    return len(ks)


def match(store: StateStore, client, source: str, cells: Sequence[int] | np.ndarray, threshold: float = 0.3,
          pad_left: int = 1, pad_right: int = 0, sign: str = "positive", top: int = 50, min_length: int = 2,
          phrase_length: int | None = None, context: int | tuple[int, int] = 5) -> MatchResult:
    """``lstmvis.match`` over a Zarr store, one Dask task per part on ``client``'s workers: the same
    hits, counts and length histogram as one process (see the module docstring); ``counts`` is a
    ``PartCounts`` that stays on the workers until read."""
    ks = _parts(store)
    query = MatchQuery(source, cells, threshold, pad_left, pad_right, sign, top, min_length, phrase_length, context)
    n_virtual = n_virtual_cells(store.n_cells(source), query.sign)
    _check_cell_ids(query.cells, n_virtual, query.sign)
    url, manifest = store.url, store.fingerprint()["manifest"]
    results = [client.submit(_match_part, url, manifest, k, query, pure=False) for k in ks]
    parts = client.gather([client.submit(_summary, r, pure=False) for r in results])
    merged = sorted((h for p in parts for h in p["hits"]),
                    key=lambda h: (-h["intersection"], h["union"], -h["length"], h["start"]))[:query.top]
    dtype = parts[0]["counts_dtype"]
    hits = [Hit(h["start"], h["stop"], h["sequence"], h["intersection"], h["union"], np.asarray(h["cells"], np.int64),
                h["context_start"], h["context_stop"], h["tokens"], np.asarray(h["counts"], dtype))
            for h in merged]
    width = max(len(p["histogram"]) for p in parts)
    histogram = np.zeros(width, dtype=np.int64)
    for p in parts:
        histogram[:len(p["histogram"])] += p["histogram"]
    histogram = histogram[:int(np.flatnonzero(histogram)[-1]) + 1] if histogram.any() else histogram[:1]
    n = len(query.cells)
    counts = PartCounts(client, results, store.backend.root.row_starts(), dtype)
    return MatchResult(source, query.cells, query.threshold, query.sign, query.pad_left, query.pad_right, hits,
                       counts, histogram, sum(p["n_candidates"] for p in parts), sum(p["n_verified"] for p in parts),
                       list(range(n, min(p["level"] for p in parts) - 1, -1)))


# ---------------------------------------------------------------------------- ranking
def _key_sums_part(url: str, manifest_id: str, k: int, source: str, lo: int, hi: int, weights: np.ndarray,
                   groups: list[np.ndarray]) -> list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """A task: per group of cells, per cell of part ``k`` over its rows ``[lo, hi)``, the distinct keys,
    the number of tokens of each, and the sums of each row of ``weights (m, hi - lo)`` per key."""
    index = part_index(part_store(url, manifest_id, k), source)
    out = []
    for group in groups:
        cells = []
        for c in group:
            column = index.cell_major[c, lo:hi]
            if column.dtype == np.uint16:  # 16-bit keys: counted in 65,536 bins, no sort
                counts = np.bincount(column, minlength=1 << 16)
                keys = np.flatnonzero(counts).astype(np.uint16)
                sums = np.stack([np.bincount(column, weights=w, minlength=1 << 16)[keys] for w in weights])
                counts = counts[keys]
            else:
                keys, inverse, counts = np.unique(column, return_inverse=True, return_counts=True)
                sums = np.stack([np.bincount(inverse, weights=w, minlength=len(keys)) for w in weights])
            cells.append((keys, counts.astype(np.int64), sums))
        out.append(cells)
    return out


def _rank_group(pieces: list, method: str, n: int, dtype: str, y_norms: tuple[float, float]) -> np.ndarray:
    """A task: the parts' histograms of one group of cells (``pieces[part][cell]``) added up, and the
    cells' ``(scores, pearson, spearman)`` rows (see the module docstring)."""
    out = np.zeros((3, len(pieces[0])))
    for c in range(len(pieces[0])):
        keys, inverse = np.unique(np.concatenate([p[c][0] for p in pieces]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([p[c][1] for p in pieces]),
                             minlength=len(keys)).astype(np.int64)
        sums = [np.bincount(inverse, weights=np.concatenate([p[c][2][i] for p in pieces]), minlength=len(keys))
                for i in range(len(pieces[0][c][2]))]
        if method == "auroc":
            pos = np.rint(sums[0]).astype(np.int64)
            neg = counts - pos
            n_pos = int(pos.sum())
            neg_below = np.cumsum(neg) - neg  # negatives with a smaller key
            twice_u = int((pos * (2 * neg_below + neg)).sum())  # 2 x Mann-Whitney U: ties count one half
            out[0, c] = (twice_u / 2) / (n_pos * (n - n_pos))
            continue
        x = keys_to_floats(keys, dtype).astype(np.float64)
        out[1, c] = _correlation(x, counts, sums[0], y_norms[0])
        ranks = np.cumsum(counts) - counts + (counts + 1) / 2.0  # global average ranks, ties averaged
        out[2, c] = _correlation(ranks, counts, sums[1], y_norms[1])
    return out


def rank_cells(store: StateStore, client, source: str, hypothesis, method: str | None = None,
               start: int | None = None, stop: int | None = None) -> CellRanking:
    """``lstmvis.rank_cells`` over a Zarr store, one Dask task per part and one per group of cells
    (see the module docstring): ``method`` ``"auroc"`` (binary hypotheses, default; the same scores
    bit for bit), ``"pearson"`` (scalar default) or ``"spearman"`` (scalar rankings report both
    correlations), over tokens ``[start, stop)``. The driver receives only the scores."""
    from scipy.stats import rankdata

    ks = _parts(store)
    n_cells = store.n_cells(source)
    name, kind, method, y = ranking_input(store, hypothesis, method, start, stop)
    start = 0 if start is None else int(start)
    stop = store.n_tokens if stop is None else int(stop)
    if method == "auroc":
        weights, y_norms = (y > 0.5)[None], (0.0, 0.0)
    else:
        ry = rankdata(y)
        weights = np.stack([y - y.mean(), ry - ry.mean()])
        y_norms = (float(np.sqrt(weights[0] @ weights[0])), float(np.sqrt(weights[1] @ weights[1])))
    url, manifest = store.url, store.fingerprint()["manifest"]
    row_starts = store.backend.root.row_starts()
    groups = np.array_split(np.arange(n_cells), max(1, min(n_cells, 2 * len(client.scheduler_info()["workers"]))))
    per_part = []
    for k in ks:
        lo, hi = max(start, int(row_starts[k])), min(stop, int(row_starts[k + 1]))
        if lo < hi:
            w = client.scatter(weights[:, lo - start:hi - start])
            per_part.append(client.submit(_key_sums_part, url, manifest, k, source, lo - int(row_starts[k]),
                                          hi - int(row_starts[k]), w, groups, pure=False))
    ranked = [client.submit(_rank_group, [client.submit(operator.getitem, p, g, pure=False) for p in per_part],
                            method, stop - start, str(store.dataset(source).dtype), y_norms, pure=False)
              for g in range(len(groups))]
    scores, pearson, spearman = np.concatenate(client.gather(ranked), axis=1)
    if method == "auroc":
        return CellRanking(source, name, kind, "auroc", scores, stop - start, float(np.mean(y > 0.5)))
    return CellRanking(source, name, "scalar", method, pearson if method == "pearson" else spearman,
                       stop - start, None, pearson, spearman)


def _correlation(x: np.ndarray, counts: np.ndarray, y_sums: np.ndarray, y_norm: float) -> float:
    """Pearson's r between a cell and a centred hypothesis, from the cell's distinct values ``x``, the
    tokens of each (``counts``) and the hypothesis summed per value (``y_sums``); 0 if either is constant."""
    centred = x - (counts @ x) / counts.sum()
    denom = np.sqrt(counts @ (centred * centred)) * y_norm
    return float(centred @ y_sums / denom) if denom > 0 else 0.0
