"""The explorer page's JSON API: stores, tokens, states, LSTMVis select and match, text search.

Every view validates its parameters with a pydantic model (``server.validation.api``) and calls
the library (``store.select``, ``store.match``) for the real work; the library checks what it is given.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import regex as regex_engine  # re with a time limit: a pattern like (a|aa)+$ must not hang the server
from flask import Blueprint
from pydantic import Field, model_validator

from .context import caches, resources
from .store_views import (Window, cluster_client, index_job, known_source, rounded, run_match, start_index, surface,
                          token_window)
from .validation import ApiError, CsvInts, Params, api

blueprint = Blueprint("explorer_api", __name__, url_prefix="/api")

MAX_VALUES = 400_000  # states values per /states request (tokens x cells)
SEARCH_SECONDS = 2.0  # time limit of one text search


# -------------------------------------------------------------------------------------- models

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


class SelectHintsQuery(SelectQuery):
    """A brush (as for select) whose selection the hints explain."""


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


# ------------------------------------------------------------------------------------ helpers

def _cells(store, source: str, cells: list[int] | None) -> list[int] | None:
    """The requested cells, sorted and unique, when each exists (``None``: every cell)."""
    if cells is None:
        return None
    n = store.n_cells(source)
    bad = [c for c in cells if not 0 <= c < n]
    if bad:
        raise ApiError(400, f"cells {bad[:10]} are out of range: source {source!r} has cells 0..{n - 1}")
    return sorted(set(cells))


def _sequences(store, start: int, stop: int) -> list[dict]:
    """The sequences overlapping ``[start, stop)``: index and token bounds."""
    if stop <= start:
        return []
    first, last = store.sequence_of(start), store.sequence_of(stop - 1)
    return [{"index": i, "start": int(store.offsets[i]), "stop": int(store.offsets[i + 1])}
            for i in range(first, last + 1)]


def _meta(store, start: int, stop: int) -> dict:
    """Every meta track's values over ``[start, stop)``: numbers, or strings for categorical tracks."""
    return {name: store.meta(name, start, stop) for name in store.meta_names}


def _context(store, position: int, length: int, left: int, right: int) -> dict:
    """Tokens around a run, clipped to the run's own sequence."""
    seq = store.sequence_of(position)
    a, b = store.sequence_bounds(seq)
    lo, hi = max(a, position - left), min(b, position + length + right)
    return {"start": lo, "stop": hi, "tokens": store.tokens(lo, hi), "text": surface(store, lo, hi), "sequence": seq}


def _overview(counts: np.ndarray, n_selected: int, bins: int = 600) -> dict:
    """A corpus minimap: per bin of positions, how many steps have every selected cell on. Counts that
    bin themselves (a cluster's, kept on its workers: ``count_at_least``) are binned where they are."""
    n = len(counts)
    size = max(1, -(-n // bins))
    if hasattr(counts, "count_at_least"):
        return {"bin_size": size, "all_on": counts.count_at_least(n_selected, size) if n else []}
    full = np.zeros(-(-n // size) * size, dtype=np.int64)
    full[:n] = np.asarray(counts) >= n_selected
    return {"bin_size": size, "all_on": full.reshape(-1, size).sum(axis=1) if n else []}


class TextSearchIndex:
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


# ---------------------------------------------------------------------------------- endpoints

@blueprint.get("/stores")
@api(summary="All state stores with their sources, sizes and build status", tag="stores", lane=None)
def stores():
    """Every store the server knows: name, title, model, status, sources and cell counts."""
    res = resources()
    res.refresh()  # stores added to --data since the last look
    return {"stores": [s.info() for s in res.stores.values()]}


@blueprint.get("/stores/<path:store>")
@api(summary="One store: sizes, sources, meta tracks and model card", tag="stores")
def store_info(store: str):
    """Details of one store, including its model card."""
    entry = resources().store_entry(store)
    s = entry.open()
    start_index(s, next(iter(s.sources), ""))  # the source a page opens on: its first match need not wait for the index
    return entry.info(detail=True)


@blueprint.get("/stores/<path:store>/tokens")
@api(Window, summary="Tokens, sequence bounds and meta tracks of a range of positions", tag="stores")
def tokens(store: str, params: Window):
    """Tokens of ``[start, stop)`` with the sequences they belong to and every meta track."""
    s = resources().store(store)
    start, stop = token_window(s, params.start, params.stop)
    return {"start": start, "stop": stop, "n_tokens": s.n_tokens, "tokens": s.tokens(start, stop),
            "text": surface(s, start, stop), "sequences": _sequences(s, start, stop), "meta": _meta(s, start, stop)}


@blueprint.get("/stores/<path:store>/states")
@api(StatesQuery, summary="Cell values of one source over a range (cell-major)", tag="stores")
def states(store: str, params: StatesQuery):
    """``values[i][t]`` is cell ``cells[i]`` at position ``start + t`` (rounded)."""
    s = resources().store(store)
    source = known_source(s, params.source)
    start, stop = token_window(s, params.start, params.stop)
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
            "values": rounded(arr.T), "min": float(arr.min()) if arr.size else None,
            "max": float(arr.max()) if arr.size else None}


@blueprint.get("/stores/<path:store>/select")
@api(SelectQuery, summary="Cells that are on over a range and off in its padding (LSTMVis select)", tag="match")
def select(store: str, params: SelectQuery):
    """The cells >= threshold at every step of ``[start, stop)`` and < threshold at the padding steps."""
    s = resources().store(store)
    source = known_source(s, params.source)
    cells = s.select(source, params.start, params.stop, threshold=params.threshold,
                     pad_left=params.pad_left, pad_right=params.pad_right, sign=params.sign)
    return {"source": source, "start": params.start, "stop": params.stop, "threshold": params.threshold,
            "pad_left": params.pad_left, "pad_right": params.pad_right, "sign": params.sign,
            "n_cells": s.n_cells(source), "cells": [int(c) for c in cells]}


HINT_REACH = 200  # steps a suggested range may extend the brush by, each side


def _thresholds_near(threshold: float) -> list[float]:
    """Other thresholds worth trying: half, three quarters, one and a half and twice this one."""
    return sorted({round(threshold * f, 3) for f in (0.5, 0.75, 1.5, 2.0)} - {round(threshold, 3)})


def _covered_range(s, source: str, cells: list[int], start: int, stop: int, threshold: float, sign: str) -> list[int]:
    """The longest range around ``[start, stop)``, inside its sequence, where every one of ``cells`` stays on."""
    a, b = s.sequence_bounds(s.sequence_of(start))
    lo, hi = max(a, start - HINT_REACH), min(b, stop + HINT_REACH)
    values = s.states(source, lo, hi)
    d = values.shape[1]
    on = np.ones(hi - lo, dtype=bool)
    for c in cells:
        negative = sign == "negative" or (sign == "both" and c >= d)
        col = values[:, c % d]
        on &= col <= -threshold if negative else col >= threshold
    first, last = start - lo, stop - lo
    while first > 0 and on[first - 1]:
        first -= 1
    while last < len(on) and on[last]:
        last += 1
    return [lo + first, lo + last]


@blueprint.get("/stores/<path:store>/select/hints")
@api(SelectHintsQuery, summary="Why a brush selects few cells: counts without padding, at other thresholds, "
                          "on other sources, and the range the cells really cover", tag="match")
def select_hints(store: str, params: SelectHintsQuery):
    """What to change when a brush selects no (or few) cells, each with the number of cells it gives.

    ``without_padding``: the cells on over the range (padding ignored) and their count; ``thresholds``:
    the count at nearby thresholds; ``sources``: the count on every other source at the same settings;
    ``cover``: the range around the brush where all ``without_padding`` cells stay on, and how many
    cells a brush of that range selects with the same padding.
    """
    s = resources().store(store)
    source = known_source(s, params.source)

    def count(src=source, start=params.start, stop=params.stop, threshold=params.threshold,
              pad_left=params.pad_left, pad_right=params.pad_right) -> int:
        return len(s.select(src, start, stop, threshold=threshold, pad_left=pad_left, pad_right=pad_right,
                            sign=params.sign))

    unpadded = [int(c) for c in s.select(source, params.start, params.stop, threshold=params.threshold,
                                         pad_left=0, pad_right=0, sign=params.sign)]
    out = {"source": source, "start": params.start, "stop": params.stop, "threshold": params.threshold,
           "pad_left": params.pad_left, "pad_right": params.pad_right, "sign": params.sign, "cells": count(),
           "without_padding": {"cells": len(unpadded), "pad_left": 0, "pad_right": 0},
           "thresholds": [{"threshold": t, "cells": count(threshold=t)} for t in _thresholds_near(params.threshold)],
           "sources": [{"source": src, "cells": count(src=src)} for src in s.sources if src != source],
           "cover": None}
    if unpadded and (params.pad_left or params.pad_right):
        a, b = _covered_range(s, source, unpadded, params.start, params.stop, params.threshold, params.sign)
        if (a, b) != (params.start, params.stop):
            out["cover"] = {"start": a, "stop": b, "cells": count(start=a, stop=b)}
    return out


@blueprint.get("/stores/<path:store>/match")
@api(MatchQuery, summary="Runs elsewhere where the selected cells are on, ranked as LSTMVis does", tag="match")
def match(store: str, params: MatchQuery):
    """Ranked by cells shared (|C∩C'| desc), then fewest extra cells on (|C∪C'| asc), then length.

    Each hit has its context tokens and, per context token, how many selected cells are on there and
    the value of every meta track (``meta``: track name -> values, as ``/tokens`` gives them).
    ``length_histogram[L]`` (LSTMVis's strict histogram, ``n_runs`` its total) counts the runs of length L
    with all selected cells on and off at the run's padding steps. A large store whose index is not
    built yet answers 202 with the job building it (poll ``/api/jobs/<id>``, then ask again).
    """
    s = resources().store(store)
    source = known_source(s, params.source)
    if (building := index_job(s, source, cluster_client(s))) is not None:
        return building
    result = run_match(s, source, params.cells, threshold=params.threshold, pad_left=params.pad_left,
                       pad_right=params.pad_right, sign=params.sign, top=params.top, min_length=params.min_length,
                       phrase_length=params.phrase_length, context=(params.left, params.right))
    out = result.to_dict()
    for hit in out["hits"]:
        hit["text"] = surface(s, hit["context_start"], hit["context_stop"])
        hit["meta"] = _meta(s, hit["context_start"], hit["context_stop"])  # the match view's heatmap strips
    out.update(left=params.left, right=params.right, n_runs=int(result.length_histogram.sum()),
               overview=_overview(result.counts, len(result.cells)))
    return out


@blueprint.get("/stores/<path:store>/search")
@api(SearchQuery, summary="Find a phrase (or regular expression) in the store's text", tag="stores")
def search(store: str, params: SearchQuery):
    """Positions where the text occurs; word-level stores are searched as tokens joined by spaces."""
    s = resources().store(store)
    index = caches().search_indexes.get((store, str(s.path)), lambda: TextSearchIndex(s))
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
