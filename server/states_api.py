"""JSON API over state stores: tokens, states, select & match, search, cell discovery, text CNN.

Every view validates its parameters with a pydantic model (``server.validation.api``) and calls
the library (``lstmvis.match``, ``lstmvis.cells``, ``lstmvis.textcnn``) for the real work.
"""
from __future__ import annotations

import threading
from typing import Literal

import numpy as np
from flask import Blueprint, current_app
from pydantic import Field, field_validator, model_validator

from textexplain.integrated_gradients import RULES as IG_RULES

from .app import resources
from .validation import ApiError, CsvInts, CsvStrs, Params, api

blueprint = Blueprint("states_api", __name__, url_prefix="/api")

MAX_WINDOW = 2000  # tokens per /tokens or /states request
MAX_VALUES = 400_000  # states values per /states request (tokens x cells)


# ------------------------------------------------------------------------------------ helpers

def _store(name: str):
    return resources().store(name)


def _source(store, source: str) -> str:
    if source not in store.sources:
        raise ApiError(404, f"unknown source {source!r} in this store; sources: {', '.join(store.sources)}")
    return source


def _window(store, start: int, stop: int | None, limit: int = MAX_WINDOW) -> tuple[int, int]:
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


def _cells(store, source: str, cells: list[int] | None) -> list[int] | None:
    if cells is None:
        return None
    n = store.n_cells(source)
    bad = [c for c in cells if not 0 <= c < n]
    if bad:
        raise ApiError(400, f"cells {bad[:10]} are out of range: source {source!r} has cells 0..{n - 1}")
    return sorted(set(cells))


def _round(arr: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(arr, dtype=np.float64), current_app.config["JSON_DIGITS"])


def _sequences(store, start: int, stop: int) -> list[dict]:
    """The sequences overlapping ``[start, stop)``: index and token bounds."""
    if stop <= start:
        return []
    first, last = store.sequence_of(start), store.sequence_of(stop - 1)
    return [{"index": i, "start": int(store.offsets[i]), "stop": int(store.offsets[i + 1])}
            for i in range(first, last + 1)]


def _meta(store, start: int, stop: int) -> dict:
    return {name: store.meta(name, start, stop) for name in store.meta_names}


def _context(store, position: int, length: int, left: int, right: int) -> dict:
    """Tokens around a run, clipped to the run's own sequence."""
    seq = store.sequence_of(position)
    a, b = store.sequence_bounds(seq)
    lo, hi = max(a, position - left), min(b, position + length + right)
    return {"start": lo, "stop": hi, "tokens": store.tokens(lo, hi), "text": surface(store, lo, hi), "sequence": seq}


class _Surface:
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


_surfaces: dict[str, _Surface] = {}
_surfaces_lock = threading.Lock()


def surface(store, start: int, stop: int) -> list[str]:
    """What each token of ``[start, stop)`` looked like in the original text (case kept, no ``<unk>``);
    the vocabulary tokens when the store has no texts."""
    if not store.has_texts or stop <= start:
        return store.tokens(start, stop)
    key = f"{id(store)}:{store.path}"
    cached = _surfaces.get(key)
    if cached is None:
        with _surfaces_lock:  # built once per store, even when several requests need it at the same time
            cached = _surfaces.get(key)
            if cached is None:
                cached = _surfaces[key] = _Surface(store)
    return cached.slice(store, start, stop)


# -------------------------------------------------------------------------------------- models

class Window(Params):
    start: int = Field(0, ge=0, description="first token position (global index into the store)")
    stop: int | None = Field(None, ge=0, description=f"one past the last position (default start+{MAX_WINDOW})")


class StatesQuery(Window):
    source: str = Field(description="state source, e.g. rnn.l0.h")
    cells: CsvInts | None = Field(None, description="only these cells (comma-separated); default all")


Sign = Literal["positive", "negative", "both"]
SIGN_HELP = ("when a cell is on: positive (value >= threshold, as LSTMVis), negative (value <= -threshold), or "
             "both (cell ids D..2D-1 stand for cells 0..D-1 on negatively)")


class SelectQuery(Params):
    source: str = Field(description="state source")
    start: int = Field(ge=0, description="first brushed position")
    stop: int = Field(ge=1, description="one past the last brushed position")
    threshold: float = Field(0.3, ge=-1e6, le=1e6, description="a cell is on at a step when its value >= threshold")
    pad_left: int = Field(1, ge=0, le=100, description="steps before the range where the cell must be off")
    pad_right: int = Field(0, ge=0, le=100, description="steps after the range where the cell must be off")
    sign: Sign = Field("positive", description=SIGN_HELP)

    @model_validator(mode="after")
    def _order(self):
        if self.stop <= self.start:
            raise ValueError(f"stop ({self.stop}) must be greater than start ({self.start})")
        return self


class MatchQuery(Params):
    source: str = Field(description="state source")
    cells: CsvInts = Field(min_length=1, max_length=4096, description="selected cell ids (comma-separated)")
    threshold: float = Field(0.3, ge=-1e6, le=1e6, description="a cell is on at a step when its value >= threshold")
    pad_left: int = Field(1, ge=0, le=100, description="steps before a run where the cells must be off")
    pad_right: int = Field(0, ge=0, le=100, description="steps after a run where the cells must be off")
    sign: Sign = Field("positive", description=SIGN_HELP)
    top: int = Field(50, ge=1, le=500, description="number of ranked matches returned")
    min_length: int = Field(2, ge=1, le=1000, description="shortest run that counts as a match")
    phrase_length: int | None = Field(None, ge=1, le=1000, description="only runs of exactly this length")
    left: int = Field(3, ge=0, le=100, description="context tokens shown before each match")
    right: int = Field(10, ge=0, le=200, description="context tokens shown after each match")


class SearchQuery(Params):
    q: str = Field(min_length=1, max_length=200, description="text to find (a regular expression with regex=true)")
    regex: bool = Field(False, description="treat q as a regular expression")
    case: bool = Field(False, description="case-sensitive")
    limit: int = Field(50, ge=1, le=500, description="at most this many hits")


# ---------------------------------------------------------------------------------- endpoints

@blueprint.get("/stores")
@api(summary="All state stores with their sources, sizes and build status", tag="stores", lane=None)
def stores():
    """Every store the server knows: name, title, model, status, sources and cell counts."""
    return {"stores": [s.info() for s in resources().stores.values()]}


@blueprint.get("/stores/<path:store>")
@api(summary="One store: sizes, sources, meta tracks and model card", tag="stores")
def store_info(store: str):
    """Details of one store, including its model card."""
    entry = resources().store_entry(store)
    entry.open()
    return entry.info(detail=True)


@blueprint.get("/stores/<path:store>/tokens")
@api(Window, summary="Tokens, sequence bounds and meta tracks of a range of positions", tag="stores")
def tokens(store: str, params: Window):
    """Tokens of ``[start, stop)`` with the sequences they belong to and every meta track."""
    s = _store(store)
    start, stop = _window(s, params.start, params.stop)
    return {"start": start, "stop": stop, "n_tokens": s.n_tokens, "tokens": s.tokens(start, stop),
            "text": surface(s, start, stop), "sequences": _sequences(s, start, stop), "meta": _meta(s, start, stop)}


@blueprint.get("/stores/<path:store>/states")
@api(StatesQuery, summary="Cell values of one source over a range (cell-major)", tag="stores")
def states(store: str, params: StatesQuery):
    """``values[i][t]`` is cell ``cells[i]`` at position ``start + t`` (rounded)."""
    s = _store(store)
    source = _source(s, params.source)
    start, stop = _window(s, params.start, params.stop)
    cells = _cells(s, source, params.cells)
    n = len(cells) if cells is not None else s.n_cells(source)
    if (stop - start) * n > MAX_VALUES:
        raise ApiError(400, f"{stop - start} tokens x {n} cells is too much for one request (at most "
                            f"{MAX_VALUES} values): ask for fewer tokens or fewer cells")
    arr = s.states(source, start, stop)
    if cells is not None:
        arr = arr[:, cells]
    return {"source": source, "start": start, "stop": stop, "n_cells": s.n_cells(source),
            "cells": cells if cells is not None else list(range(arr.shape[1])),
            "values": _round(arr.T), "min": float(arr.min()) if arr.size else None,
            "max": float(arr.max()) if arr.size else None}


@blueprint.get("/stores/<path:store>/select")
@api(SelectQuery, summary="Cells that are on over a range and off in its padding (LSTMVis select)", tag="match")
def select(store: str, params: SelectQuery):
    """The cells >= threshold at every step of ``[start, stop)`` and < threshold at the padding steps."""
    s = _store(store)
    source = _source(s, params.source)
    _window(s, params.start, params.stop, limit=s.n_tokens)
    cells = s.select(source, params.start, params.stop, threshold=params.threshold,
                     pad_left=params.pad_left, pad_right=params.pad_right, sign=params.sign)
    return {"source": source, "start": params.start, "stop": params.stop, "threshold": params.threshold,
            "pad_left": params.pad_left, "pad_right": params.pad_right, "sign": params.sign,
            "n_cells": s.n_cells(source), "cells": [int(c) for c in cells]}


_index_locks: dict[tuple[str, str], threading.Lock] = {}
_index_locks_guard = threading.Lock()


_index_ready: set[tuple[int, str, str]] = set()


def _ensure_index(store, source: str) -> None:
    """Build a source's match index once, even when several requests ask for it at the same time
    (afterwards a set lookup: the library finds the built index itself)."""
    from lstmvis.index import MatchIndex

    ready = (id(store), str(store.path), source)
    if ready in _index_ready:
        return
    key = (str(store.path), source)
    with _index_locks_guard:
        lock = _index_locks.setdefault(key, threading.Lock())
    with lock:
        MatchIndex.load(store, source, progress=False)
        _index_ready.add(ready)


@blueprint.get("/stores/<path:store>/match")
@api(MatchQuery, summary="Runs elsewhere where the selected cells are on, ranked as LSTMVis does", tag="match")
def match(store: str, params: MatchQuery):
    """Ranked by cells shared (|C∩C'| desc), then fewest extra cells on (|C∪C'| asc), then length.

    Each hit has its context tokens and, per context token, how many selected cells are on there.
    ``length_histogram[L]`` counts the maximal runs (all selected cells on) of length L.
    """
    s = _store(store)
    source = _source(s, params.source)
    n_virtual = s.n_cells(source) * (2 if params.sign == "both" else 1)
    bad = [c for c in params.cells if not 0 <= c < n_virtual]
    if bad:
        raise ApiError(400, f"cells {bad[:10]} are out of range: source {source!r} has cell ids 0..{n_virtual - 1}"
                            f" for sign={params.sign}")
    _ensure_index(s, source)
    result = s.match(source, params.cells, threshold=params.threshold, pad_left=params.pad_left,
                     pad_right=params.pad_right, sign=params.sign, top=params.top, min_length=params.min_length,
                     phrase_length=params.phrase_length, context=(params.left, params.right))
    out = result.to_dict()
    for hit in out["hits"]:
        hit["text"] = surface(s, hit["context_start"], hit["context_stop"])
    out.update(left=params.left, right=params.right, n_runs=int(result.length_histogram.sum()),
               overview=_overview(result.counts, len(result.cells)))
    return out


def _overview(counts: np.ndarray, n_selected: int, bins: int = 600) -> dict:
    """A corpus minimap: per bin of positions, how many steps have every selected cell on."""
    n = len(counts)
    size = max(1, -(-n // bins))
    full = np.zeros(-(-n // size) * size, dtype=np.int64)
    full[:n] = counts >= n_selected
    return {"bin_size": size, "all_on": full.reshape(-1, size).sum(axis=1) if n else []}


# -- text search over the token stream (one joined string per store, built once and cached)

class _SearchIndex:
    """The store's text as one string, with each character mapped back to its token.

    The original texts when the store keeps them (so words the vocabulary lacks are found too),
    else the tokens, joined without a separator at character level and with spaces otherwise.
    """

    def __init__(self, store):
        if store.has_texts:
            texts = [store.sequence_text(i) for i in range(store.n_sequences)]
            text_starts = np.zeros(len(texts) + 1, dtype=np.int64)
            np.cumsum([len(t) + 1 for t in texts], out=text_starts[1:])
            self.text = "\n".join(texts)
            seq_of_token = np.repeat(np.arange(store.n_sequences), np.diff(store.offsets))
            self.starts = text_starts[seq_of_token] + store.token_spans()[:, 0]
        else:
            toks = store.tokens()
            sep = "" if all(len(t) <= 1 for t in store.vocab) else " "
            self.text = sep.join(toks)
            lengths = np.fromiter((len(t) + len(sep) for t in toks), dtype=np.int64, count=len(toks))
            self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

    def token_at(self, char: int) -> int:
        return max(0, int(np.searchsorted(self.starts, char, side="right") - 1))


_search_indexes: dict[str, _SearchIndex] = {}
_search_lock = threading.Lock()


def _search_index(name: str, store) -> _SearchIndex:
    key = f"{id(resources())}:{name}"
    with _search_lock:
        if key not in _search_indexes:
            _search_indexes[key] = _SearchIndex(store)
        return _search_indexes[key]


@blueprint.get("/stores/<path:store>/search")
@api(SearchQuery, summary="Find a phrase (or regular expression) in the store's text", tag="stores")
def search(store: str, params: SearchQuery):
    """Positions where the text occurs; word-level stores are searched as tokens joined by spaces."""
    import regex as regex_engine  # re with a time limit: a pattern like (a|aa)+$ must not hang the server

    s = _store(store)
    index = _search_index(store, s)
    flags = 0 if params.case else regex_engine.IGNORECASE
    try:
        pattern = regex_engine.compile(params.q if params.regex else regex_engine.escape(params.q), flags)
    except regex_engine.error as exc:
        raise ApiError(400, f"q is not a valid regular expression: {exc}") from None
    hits = []
    try:
        for m in pattern.finditer(index.text, timeout=SEARCH_SECONDS, concurrent=True):
            if m.end() == m.start():
                continue
            a, b = index.token_at(m.start()), index.token_at(m.end() - 1) + 1
            hits.append({"position": a, "length": b - a, **_context(s, a, b - a, 5, 5)})
            if len(hits) >= params.limit:
                break
    except TimeoutError:
        raise ApiError(400, f"the regular expression ran longer than {SEARCH_SECONDS} s over the store's text: "
                            "simplify it (nested repetition such as (a+)+ can take exponential time)") from None
    return {"q": params.q, "hits": hits, "truncated": len(hits) >= params.limit}


SEARCH_SECONDS = 2.0  # time limit of one text search


# ------------------------------------------------------------------------- cell discovery

HYPOTHESIS_HELP = ("quotes, comment, depth, indent, line, parens, regex:PATTERN, tokens:a,b,c, meta:TRACK or "
                   "meta:TRACK=VALUE (see lstmvis.hypotheses.resolve)")


class RankQuery(Params):
    source: str = Field(description="state source")
    hypothesis: str = Field(min_length=1, max_length=300, description=HYPOTHESIS_HELP)
    method: Literal["auroc", "pearson", "spearman"] | None = Field(
        None, description="auroc for binary hypotheses (default), pearson (scalar default) or spearman")
    top: int = Field(50, ge=1, le=4096, description="strongest cells returned")


class HypothesisQuery(Window):
    hypothesis: str = Field(min_length=1, max_length=300, description=HYPOTHESIS_HELP)


class ContextsQuery(Params):
    source: str = Field(description="state source")
    k: int = Field(10, ge=1, le=100, description="number of contexts")
    before: int = Field(20, ge=0, le=200, description="tokens shown before the peak")
    after: int = Field(5, ge=0, le=200, description="tokens shown after the peak")
    direction: int = Field(1, description="1: where the cell is highest; -1: lowest")

    @field_validator("direction")
    @classmethod
    def _sign(cls, v: int) -> int:
        if v not in (1, -1):
            raise ValueError("must be 1 (highest values) or -1 (lowest)")
        return v


class SaturationQuery(Params):
    sources: CsvStrs | None = Field(None, description="gate sources (default: every *.gate_* source)")
    low: float = Field(0.1, ge=0, le=1, description="left-saturated: value < low")
    high: float = Field(0.9, ge=0, le=1, description="right-saturated: value > high")


class ExplainCellBody(Params):
    source: str = Field(description="recurrent source of the cell, e.g. rnn.l1.c")
    position: int = Field(ge=0, description="global token position of the step to explain")
    method: Literal["integrated_gradients", "gradient"] = Field("integrated_gradients")
    n_steps: int = Field(50, ge=1, le=250, description="gradient evaluations (integrated_gradients): nodes of a "
                         "fixed rule, or the adaptive rule's first pass (refined up to 4 x n_steps by default)")
    rule: Literal[IG_RULES] = Field("adaptive",  # type: ignore[valid-type]
                                    description="quadrature over the path (integrated_gradients)")
    max_steps: int | None = Field(None, ge=1, le=1000, description="adaptive rule only: keep refining while the "
                                  "completeness gap is above 1%, up to this many gradient evaluations (default "
                                  "4 x n_steps; n_steps turns refinement off)")
    window: int = Field(100, ge=1, le=1000, description="at most this many tokens of the sequence are fed "
                        "to the model, ending at the step (starting from a zero state)")


_hypothesis_cache: dict[tuple, np.ndarray] = {}  # per store and spec; rankings are deterministic too
_ranking_cache: dict[tuple, object] = {}
_hypothesis_lock = threading.Lock()


def hypothesis_values(name: str, store, spec: str) -> tuple[object, np.ndarray]:
    """A hypothesis and its per-token values over the whole store (cached per store and spec)."""
    from lstmvis import hypotheses

    h = hypotheses.resolve(spec)
    key = (id(resources()), name, str(store.path), spec)
    with _hypothesis_lock:
        values = _hypothesis_cache.get(key)
    if values is None:
        values = np.asarray(h(store), dtype=np.float64)
        with _hypothesis_lock:
            if len(_hypothesis_cache) > 64:
                _hypothesis_cache.clear()
            _hypothesis_cache[key] = values
    return h, values


@blueprint.get("/hypotheses")
@api(summary="Named hypotheses to rank cells against", tag="cells", lane=None)
def hypotheses_list():
    """Built-in hypotheses (name, kind, description) and the parameterised forms."""
    from lstmvis import hypotheses
    seen, named = set(), []
    for name, h in hypotheses.NAMED.items():
        if id(h) not in seen:
            seen.add(id(h))
            named.append({"name": name, "kind": h.kind, "description": h.description or h.name})
    named.append({"name": "parens", "kind": "scalar", "description": "depth of ( ) only"})
    forms = [{"form": "regex:PATTERN", "kind": "binary", "description": "1 on characters a regular expression matches"},
             {"form": "tokens:a,b,c", "kind": "binary", "description": "1 where the token is one of these"},
             {"form": "meta:TRACK", "kind": "binary or scalar", "description": "a meta track of the store"},
             {"form": "meta:TRACK=VALUE", "kind": "binary", "description": "1 where the meta track equals VALUE"}]
    return {"named": named, "forms": forms}


@blueprint.get("/stores/<path:store>/hypothesis")
@api(HypothesisQuery, summary="A hypothesis's values over a range of positions", tag="cells")
def hypothesis_window(store: str, params: HypothesisQuery):
    """The per-token hypothesis series for ``[start, stop)``, to draw next to a cell."""
    s = _store(store)
    start, stop = _window(s, params.start, params.stop)
    h, values = hypothesis_values(store, s, params.hypothesis)
    return {"hypothesis": h.name, "kind": h.kind, "start": start, "stop": stop, "values": values[start:stop]}


@blueprint.get("/stores/<path:store>/cells/rank")
@api(RankQuery, summary="Rank every cell of a source against a hypothesis (AUROC or correlation)", tag="cells")
def rank(store: str, params: RankQuery):
    """Cells from strongest to weakest: ``score`` is the AUROC or correlation, ``direction`` its sign."""
    from lstmvis.cells import rank_cells

    s = _store(store)
    source = _source(s, params.source)
    key = (id(resources()), store, str(s.path), source, params.hypothesis, params.method)
    with _hypothesis_lock:
        ranking = _ranking_cache.get(key)
    if ranking is None:
        _, values = hypothesis_values(store, s, params.hypothesis)
        if len(values) and np.all(values == values[0]):
            raise ApiError(400, f"hypothesis {params.hypothesis!r} is {values[0]:g} at every token of store "
                                f"{store!r}: nothing to rank against; pick a hypothesis that varies over this text")
        _ensure_index(s, source)
        ranking = rank_cells(s, source, values, method=params.method, progress=False)
        with _hypothesis_lock:
            if len(_ranking_cache) > 64:
                _ranking_cache.clear()
            _ranking_cache[key] = ranking
    out = ranking.to_dict(params.top)
    out["hypothesis"] = params.hypothesis
    out["n_cells"] = s.n_cells(source)
    return out


@blueprint.get("/stores/<path:store>/cells/<int:cell>/contexts")
@api(ContextsQuery, summary="Where one cell is highest (or lowest): its top contexts", tag="cells")
def contexts(store: str, cell: int, params: ContextsQuery):
    """The ``k`` most extreme steps of a cell, each with the tokens around it and the cell's values."""
    from lstmvis.cells import top_contexts

    s = _store(store)
    source = _source(s, params.source)
    _cells(s, source, [cell])
    _ensure_index(s, source)
    found = top_contexts(s, source, cell, k=params.k, before=params.before, after=params.after,
                         direction=params.direction)
    out = []
    for c in found:
        d = c.to_dict()
        d["text"] = surface(s, c.start, c.stop)
        d["values"] = _round(c.values)
        out.append(d)
    return {"source": source, "cell": cell, "direction": params.direction, "contexts": out}


@blueprint.get("/stores/<path:store>/saturation")
@api(SaturationQuery, summary="Gate saturation: per gate unit, the fraction of steps < low and > high", tag="cells")
def saturation(store: str, params: SaturationQuery):
    """Karpathy's saturation plot data for the store's gate sources."""
    from lstmvis.cells import gate_saturation
    from lstmvis.cells import gate_sources

    s = _store(store)
    if params.sources:
        for src in params.sources:
            _source(s, src)
    elif not gate_sources(s):
        raise ApiError(409, f"store {store!r} recorded no gates (it has {', '.join(s.sources)}); extract with "
                            "kinds including 'gates' to see gate saturation")
    if not params.low < params.high:
        raise ApiError(400, f"low ({params.low}) must be below high ({params.high})")
    sat = gate_saturation(s, sources=params.sources or None, low=params.low, high=params.high)
    out = sat.to_dict()
    out["summary"] = sat.summary()
    return out


@blueprint.post("/stores/<path:store>/cells/<int:cell>/explain")
@api(ExplainCellBody, summary="Explain one cell at one step: which input tokens drive it", tag="cells", lane="model")
def explain(store: str, cell: int, params: ExplainCellBody):
    """Integrated Gradients (or the gradient) of the cell's activation at ``position`` with respect to
    the input tokens, run on the store's own model over the text leading up to the step."""
    from lstmvis.cells import explain_stored_cell

    entry = resources().store_entry(store)
    s = entry.open()
    source = _source(s, params.source)
    _cells(s, source, [cell])
    if params.position >= s.n_tokens:
        raise ApiError(400, f"position {params.position} is past the end of the store ({s.n_tokens} tokens)")
    if not entry.model:
        raise ApiError(409, f"store {store!r} does not name the model it came from, so a cell cannot be explained")
    if not s.has_texts:
        raise ApiError(409, f"store {store!r} keeps no original texts to run the model on")
    with resources().model(entry.model) as model:
        e, where = explain_stored_cell(s, model, source, cell, params.position, window=params.window,
                                       method=params.method, n_steps=params.n_steps, rule=params.rule,
                                       max_steps=params.max_steps)
    return {"source": source, "cell": cell, "position": params.position, **where, "model": entry.model,
            "text": surface(s, where["start"], where["stop"]), "tokens": e.tokens, "scores": e.scores,
            "signed": e.signed, "method": e.method, "delta": e.delta, "activation": e.info.get("activation"),
            "activation_baseline": e.info.get("activation_baseline"), "params": e.params,
            "relative_delta": e.info.get("relative_delta"), "converged": e.info.get("converged"),
            "n_gradient_rows": e.info.get("n_gradient_rows"), "n_probe_rows": e.info.get("n_probe_rows")}


# ------------------------------------------------------------------------------- text CNN

class TextCNNQuery(Params):
    model: str | None = Field(None, max_length=200, description="a text-CNN classifier (default: the first loaded)")
    store: str | None = Field(None, max_length=300, description="corpus: the texts of this store (default: the "
                              "first ready store with texts)")
    layer: str | None = Field(None, max_length=100, description="one Conv1d layer, e.g. convs.0 (default: all)")
    k: int = Field(9, ge=1, le=50, description="top n-grams per filter")


_textcnn_cache: dict[tuple, dict] = {}
_textcnn_locks: dict[tuple, threading.Lock] = {}
_textcnn_guard = threading.Lock()


def _is_textcnn(entry) -> bool:
    arch = (entry.card.get("architecture") or {}).get("class", "") if isinstance(entry.card, dict) else ""
    return entry.kind == "classifier" and arch.endswith("TextCNN")


@blueprint.get("/textcnn/filters")
@api(TextCNNQuery, summary="Top-activating input n-grams of every Conv1d filter of a text CNN", tag="textcnn")
def textcnn_filters(params: TextCNNQuery):
    """For each filter, the ``k`` highest pre-activation outputs over the store's texts, each shown as
    the n-gram under its receptive field (and as it reads in the original text)."""
    from lstmvis.textcnn import conv_stack, top_ngrams

    res = resources()
    cnns = [name for name, m in res.models.items() if _is_textcnn(m)]
    name = params.model or (cnns[0] if cnns else None)
    if name is None:
        raise ApiError(404, "no text-CNN model is loaded")
    entry = res.model_entry(name)
    if entry.kind != "classifier":
        raise ApiError(400, f"model {name!r} is a {entry.kind}, not a text classifier with Conv1d filters")
    stores = [s for s in res.stores.values() if s.status == "ready" and s.open().has_texts]
    store_name = params.store or next((s.name for s in stores if s.name == "sentiment"), None) or \
        (stores[0].name if stores else None)
    if store_name is None:
        raise ApiError(409, "no ready store with texts to use as the corpus")
    s = _store(store_name)
    if not s.has_texts:
        raise ApiError(409, f"store {store_name!r} keeps no original texts to run the model on")
    key = (id(res), name, store_name, str(s.path), params.k)
    with _textcnn_guard:
        lock = _textcnn_locks.setdefault(key, threading.Lock())
    with lock:  # the corpus runs once per model, store and k; concurrent first requests wait for it
        report = _textcnn_cache.get(key)
        if report is None:
            texts = [s.sequence_text(i) for i in range(s.n_sequences)]
            with res.model(name) as model:
                try:
                    conv_stack(model.module)
                except TypeError as exc:
                    raise ApiError(400, f"model {name!r} has no Conv1d filters to show: {exc}") from None
                result = top_ngrams(model, texts, k=params.k, progress=False)
                spans = {h.text_index: model.token_spans(texts[h.text_index])
                         for f in result.filters for h in f.ngrams}
            report = result.to_dict()
            for f, filt in zip(report["filters"], result.filters):
                f["max"] = filt.ngrams[0].activation if filt.ngrams else None
                for hit, h in zip(f["ngrams"], filt.ngrams):
                    sp = spans[h.text_index]
                    hit["original"] = texts[h.text_index][sp[h.start][0]:sp[h.stop - 1][1]] if sp else " ".join(h.tokens)
            report.update(model=name, store=store_name, k=params.k, models=cnns)
            _textcnn_cache[key] = report
    if params.layer is not None:
        if params.layer not in report["fields"]:
            raise ApiError(404, f"unknown layer {params.layer!r}: the model has {', '.join(report['fields'])}")
        return {**report, "filters": [f for f in report["filters"] if f["layer"] == params.layer]}
    return report
