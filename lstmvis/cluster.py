"""Match and cell ranking over a Zarr store as Dask tasks, one per part, merged exactly.

Runs never span two sequences and every part holds whole sequences, so a part's matches are the
store's matches inside it, and the store's ``top`` best are among the parts' ``top`` best: each
task runs ``lstmvis.query.match`` on its part (the part's match index is built by the worker and
kept beside the part: ``<store>.zarr/parts/<k>.index/`` on a local disk, the worker's cache for a
store on object storage) and the driver merges by the query's total order (``|C & C'|`` desc,
``|C | C'|`` asc, length desc, start asc), so the result equals one process's, ties included.
Counts are joined and histograms summed; ``n_candidates``/``n_verified`` are the parts' sums.

AUROC ranks every cell exactly too: each part counts its positive and negative tokens per distinct
key, the driver adds them up and computes the Mann-Whitney statistic in integers.
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from .cells import CellRanking, _hypothesis_values
from .index import MatchIndex
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


def _parts(store: StateStore) -> list[int]:
    if not isinstance(store.backend, ZarrReadBackend):
        raise ValueError("a cluster queries a Zarr store: convert the store with `lstmvis convert A.h5 B.zarr`")
    return list(range(len(store.backend.root.attrs.get("parts", [0]))))


def _match_part(url: str, manifest_id: str, k: int, query: MatchQuery) -> dict:
    """A task: ``query`` over part ``k``; hits with positions in the whole store."""
    part = part_store(url, manifest_id, k)
    root = part.backend.root
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


def build_part_indexes(store: StateStore, client, source: str) -> None:
    """Build (or open) the match index of ``source`` for every part, on the workers."""
    ks = _parts(store)
    url, manifest = store.url, store.fingerprint()["manifest"]
    client.gather(client.map(lambda k: bool(MatchIndex.load(part_store(url, manifest, k), source, progress=False)),
                             ks, pure=False))


def match(store: StateStore, client, source: str, cells: Sequence[int] | np.ndarray, threshold: float = 0.3,
          pad_left: int = 1, pad_right: int = 0, sign: str = "positive", top: int = 50, min_length: int = 2,
          phrase_length: int | None = None, context: int | tuple[int, int] = 5) -> MatchResult:
    """``lstmvis.match`` over a Zarr store, one Dask task per part on ``client``'s workers: the same
    hits, counts and length histogram as one process (see the module docstring)."""
    ks = _parts(store)
    query = MatchQuery(source, cells, threshold, pad_left, pad_right, sign, top, min_length, phrase_length, context)
    n_virtual = n_virtual_cells(store.n_cells(source), query.sign)
    _check_cell_ids(query.cells, n_virtual, query.sign)
    url, manifest = store.url, store.fingerprint()["manifest"]
    parts = client.gather([client.submit(_match_part, url, manifest, k, query, pure=False) for k in ks])
    merged = sorted((h for p in parts for h in p["hits"]),
                    key=lambda h: (-h["intersection"], h["union"], -h["length"], h["start"]))[:query.top]
    hits = [Hit(h["start"], h["stop"], h["sequence"], h["intersection"], h["union"], np.asarray(h["cells"], np.int64),
                h["context_start"], h["context_stop"], h["tokens"], np.asarray(h["counts"], parts[0]["counts"].dtype))
            for h in merged]
    width = max(len(p["histogram"]) for p in parts)
    histogram = np.zeros(width, dtype=np.int64)
    for p in parts:
        histogram[:len(p["histogram"])] += p["histogram"]
    histogram = histogram[:int(np.flatnonzero(histogram)[-1]) + 1] if histogram.any() else histogram[:1]
    n = len(query.cells)
    return MatchResult(source, query.cells, query.threshold, query.sign, query.pad_left, query.pad_right, hits,
                       np.concatenate([p["counts"] for p in parts]), histogram,
                       sum(p["n_candidates"] for p in parts), sum(p["n_verified"] for p in parts),
                       list(range(n, min(p["level"] for p in parts) - 1, -1)))


def _key_counts_part(url: str, manifest_id: str, k: int, source: str, positive: np.ndarray) -> list:
    """A task: per cell of part ``k``, its distinct keys with the number of positive and negative tokens."""
    index = MatchIndex.load(part_store(url, manifest_id, k), source, progress=False)
    out = []
    for c in range(index.n_cells):
        keys, inverse = np.unique(index.cell_major[c], return_inverse=True)
        pos = np.bincount(inverse, weights=positive, minlength=len(keys)).astype(np.int64)
        out.append((keys, pos, np.bincount(inverse, minlength=len(keys)).astype(np.int64) - pos))
    return out


def rank_cells(store: StateStore, client, source: str, hypothesis) -> CellRanking:
    """``lstmvis.rank_cells(..., method="auroc")`` over the whole store, one Dask task per part: the
    same scores, bit for bit (the statistic is counted in integers)."""
    ks = _parts(store)
    name, kind, values = _hypothesis_values(store, hypothesis)
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"hypothesis {name} is not binary: on a cluster cells are ranked by AUROC only")
    positive = values > 0.5
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"hypothesis {name} is constant over the store: nothing to rank against")
    url, manifest = store.url, store.fingerprint()["manifest"]
    starts = store.backend.root.row_starts()
    futures = [client.submit(_key_counts_part, url, manifest, k, source, positive[starts[k]:starts[k + 1]],
                             pure=False) for k in ks]
    per_part = client.gather(futures)
    scores = np.zeros(store.n_cells(source))
    for c in range(len(scores)):
        keys = np.concatenate([p[c][0] for p in per_part])
        uniq, inverse = np.unique(keys, return_inverse=True)
        pos = np.bincount(inverse, weights=np.concatenate([p[c][1] for p in per_part]), minlength=len(uniq))
        neg = np.bincount(inverse, weights=np.concatenate([p[c][2] for p in per_part]), minlength=len(uniq))
        pos, neg = pos.astype(np.int64), neg.astype(np.int64)
        below = np.cumsum(neg) - neg  # negatives with a smaller key
        twice_u = int((pos * (2 * below + neg)).sum())  # 2 x Mann-Whitney U: ties count one half
        scores[c] = (twice_u / 2) / (n_pos * n_neg)
    return CellRanking(source, name, kind, "auroc", scores, store.n_tokens, float(positive.mean()))
