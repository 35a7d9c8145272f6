"""What the views over state stores share (explorer, cells): the window model, a store's source, a
window of token positions, rounding for JSON, each token as it reads in the original text, and where
match and cell ranking run (this process, or a Dask cluster for Zarr stores: ``lstmvis.cluster``)."""
from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator

import numpy as np
from flask import Response, current_app, jsonify
from pydantic import Field

from lstmvis import cluster
from lstmvis.backend import backend_kind
from lstmvis.cells import rank_cells
from lstmvis.index import MatchIndex
from lstmvis.query import match

from .context import caches
from .jobs import jobs
from .validation import ApiError, Params

MAX_WINDOW = 2000  # tokens per /tokens, /states or /hypothesis request
CLIENT_KEY = "DASK_CLIENT"  # app config: the dask.distributed.Client of --scheduler (None: every query runs here)


class Window(Params):
    start: int = Field(0, ge=0, description="first token position (global index into the store)")
    stop: int | None = Field(None, ge=0, description=f"one past the last position (default start+{MAX_WINDOW})")


def known_source(store, source: str) -> str:
    """``source`` when the store has it; else a 404 naming the sources it has."""
    if source not in store.sources:
        raise ApiError(404, f"unknown source {source!r} in this store; sources: {', '.join(store.sources)}")
    return source


def cluster_client(store):
    """The Dask client that runs ``store``'s match and cell-ranking queries, or None: this process does.
    A cluster queries Zarr stores (one task per part); an HDF5 store is always queried here."""
    client = current_app.config.get(CLIENT_KEY)
    return client if client is not None and backend_kind(store.url) == "zarr" else None


def _index_key(store, source: str, client=None) -> tuple:
    """What an index job is keyed by: the backend's fingerprint of the store's content (a store replaced
    since a finished job gets a new one), the source, and where the index is built (this process, or the
    parts' indexes on a cluster: ``client``)."""
    where = () if client is None else ("cluster",)
    return (json.dumps(store.fingerprint(), sort_keys=True, default=str), source, *where)


def _build_index(store, source: str, warm: bool = False, client=None) -> Callable:
    """The work of an index job: ``source``'s match index in this process, or with a Dask ``client`` every
    part's index on the cluster (``lstmvis.cluster.build_part_indexes``: progress in parts)."""
    def work(report) -> None:
        if client is None:
            MatchIndex.load(store, source, progress=False, report=report)
            if warm:  # the match kernels' first call in a process loads them (1.4 s under load): here, not in a match
                report(1, 1, "loading the match kernels")
                match(store, source, [0], top=1, progress=False)
            return
        note = f"indexing {source}: parts done on the cluster"
        n_parts = cluster.build_part_indexes(store, client, source,
                                             progress=lambda done, total: report(done, total, note))
        if warm:
            report(n_parts, n_parts, "loading the match kernels on the workers")
            cluster.match(store, client, source, [0], top=1)
    return work


def start_index(store, source: str) -> None:
    """Open (or build) ``source``'s match index and load the match kernels in the background (the job
    "index", once per store and source): called when a page opens a store, so that its first match
    or ranking does not wait for them and the page shows their progress meanwhile. A store queried on a
    cluster (:func:`cluster_client`) has its workers build (or fetch from beside the parts) every part's
    index instead, the job counting parts. A full job queue leaves it to the first request."""
    if source not in store.sources:
        return
    client = cluster_client(store)
    with contextlib.suppress(ApiError):  # 429: too many jobs queued
        jobs().submit("index", _index_key(store, source, client), _build_index(store, source, True, client))


def index_job(store, source: str, client=None) -> Response | None:
    """A 202 naming the background job "index" while one builds or opens ``source``'s match index
    (started by :func:`start_index` when a page opened the store, or here for a large store), so the
    first match shows progress instead of waiting silently (a small store's request first waits up to
    ``INDEX_WAIT_S`` for that job); else ``None`` when the index is built, or small enough to build
    inside this request. ``client``: the Dask client the query runs on (:func:`cluster_client`), whose
    job builds every part's index; with no such job done or running, a small store's query builds them
    on the workers. The client polls ``/api/jobs/<id>`` and asks again when the job is done."""
    key = _index_key(store, source, client)
    small = store.n_tokens * store.n_cells(source) <= current_app.config["INDEX_JOB_VALUES"]
    job = jobs().active("index", key)
    if job is not None and small and job.ended.wait(current_app.config["INDEX_WAIT_S"]):
        job = None  # a small store's job is usually done in a moment: its answer, not a 202, for API clients
    if job is None:
        if small or (client is None and MatchIndex.is_built(store, source)):
            return None
        job = jobs().submit("index", key, _build_index(store, source, client=client))
        if job.status == "done":  # the job that built these indexes (a cluster's parts') has finished
            return None
    resp = jsonify({"status": "building index", "job": job.info()})
    resp.status_code = 202
    resp.headers["Retry-After"] = "2"
    return resp


def run_match(store, source: str, cells, **options):
    """``store.match(source, cells, **options)``, on the cluster when there is one for the store (the
    same hits, counts and histogram: ``lstmvis.cluster.match``)."""
    client = cluster_client(store)
    if client is None:
        return store.match(source, cells, progress=False, **options)
    with cluster_errors(client):
        return cluster.match(store=store, client=client, source=source, cells=cells, **options)


def run_ranking(store, source: str, values: np.ndarray, method: str | None):
    """``lstmvis.rank_cells`` of every cell against one value per token, on the cluster when there is
    one for the store (``lstmvis.cluster.rank_cells``: AUROC bit for bit, Pearson/Spearman to float64
    rounding), in this process otherwise."""
    client = cluster_client(store)
    if client is None:
        return rank_cells(store, source, values, method=method, progress=False)
    with cluster_errors(client):
        return cluster.rank_cells(store=store, client=client, source=source, hypothesis=values, method=method)


@contextlib.contextmanager
def cluster_errors(client) -> Iterator[None]:
    """Failures of the cluster itself (the scheduler gone, a lost connection) as a 503 that says so; the
    library's refusals of bad input (ValueError) stay the client's 400."""
    try:
        yield
    except (OSError, TimeoutError) as exc:
        address = getattr(getattr(client, "scheduler", None), "address", None) or "the scheduler"
        raise ApiError(503, f"the Dask cluster at {address} did not answer ({type(exc).__name__}); try again",
                       retry_after=5) from None


def token_window(store, start: int, stop: int | None, limit: int = MAX_WINDOW) -> tuple[int, int]:
    """``[start, stop)`` inside the store and at most ``limit`` long (``stop=None``: as long as allowed)."""
    stop = min(start + limit, store.n_tokens) if stop is None else stop
    if start >= store.n_tokens and store.n_tokens:
        raise ApiError(400, f"start={start} is past the end of the store ({store.n_tokens} tokens)")
    if stop > store.n_tokens:
        raise ApiError(400, f"stop={stop} is past the end of the store ({store.n_tokens} tokens)")
    if stop < start:
        raise ApiError(400, f"stop={stop} is before start={start}")
    if stop - start > limit:
        raise ApiError(400, f"the range [{start}, {stop}) has {stop - start} tokens; ask for at most {limit}")
    return start, stop


def rounded(arr: np.ndarray) -> np.ndarray:
    """``arr`` as float64 rounded to the app's ``JSON_DIGITS`` decimals."""
    return np.round(np.asarray(arr, dtype=np.float64), current_app.config["JSON_DIGITS"])


class TokenSurface:
    """A store's original texts and token spans, read once and kept in memory (for display).

    Stores up to :attr:`FLAT_TOKENS` tokens keep every token's surface string in one list, so a
    request's contexts are list slices (a match answers 50 of them).
    """

    MAX_TOKENS = 20_000_000  # beyond this, read per request instead of holding every span
    FLAT_TOKENS = 1_000_000  # up to this, one str per token (about 60 bytes each; 8 for single characters)

    def __init__(self, store):
        self.offsets = np.asarray(store.offsets, dtype=np.int64)
        self.spans = store.token_spans() if store.n_tokens <= self.MAX_TOKENS else None
        self.texts: dict[int, str] = {}
        self.lock = threading.Lock()
        self.flat: list[str] | None = None
        if self.spans is not None and store.n_tokens <= self.FLAT_TOKENS:
            spans, flat = self.spans.tolist(), []
            for seq in range(len(self.offsets) - 1):
                text = store.sequence_text(seq)
                flat.extend(text[x:y] for x, y in spans[self.offsets[seq]:self.offsets[seq + 1]])
            self.flat = flat

    def text(self, store, seq: int) -> str:
        t = self.texts.get(seq)
        if t is None:
            t = store.sequence_text(seq)
            with self.lock:
                if sum(map(len, self.texts.values())) > 50_000_000:
                    self.texts.clear()
                self.texts[seq] = t
        return t

    def slice(self, store, start: int, stop: int) -> list[str]:
        if self.flat is not None:
            return self.flat[start:stop]
        spans = self.spans[start:stop] if self.spans is not None else store.token_spans(start, stop)
        spans = spans.tolist()
        out: list[str] = []
        first = int(np.searchsorted(self.offsets, start, side="right") - 1)
        last = int(np.searchsorted(self.offsets, stop - 1, side="right") - 1)
        for seq in range(first, last + 1):
            lo, hi = max(int(self.offsets[seq]), start), min(int(self.offsets[seq + 1]), stop)
            text = self.text(store, seq)
            out.extend(text[x:y] for x, y in spans[lo - start:hi - start])
        return out


def surface(store, start: int, stop: int) -> list[str]:
    """What each token of ``[start, stop)`` looked like in the original text (case kept, no ``<unk>``);
    the vocabulary tokens when the store has no texts."""
    if not store.has_texts or stop <= start:
        return store.tokens(start, stop)
    # built once per store, even when several requests need it at the same time
    token_surface = caches().surfaces.get((id(store), str(store.path)), lambda: TokenSurface(store))
    return token_surface.slice(store, start, stop)
