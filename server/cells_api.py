"""The cells page's JSON API: hypotheses, ranking cells against one, a hypothesis over a window,
a cell's top contexts, gate saturation, and explaining one cell at one step.

Every view validates its parameters with a pydantic model (``server.validation.api``) and calls
``lstmvis.cells`` for the real work; the library checks what it is given.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from flask import Blueprint
from pydantic import Field, field_validator

from lstmvis import explain_stored_cell, gate_saturation, hypotheses, top_contexts
from lstmvis.cells import gate_sources
from textexplain.integrated_gradients import RULES as IG_RULES

from .context import caches, client_gone, resources
from .store_views import Window, cluster_client, index_job, known_source, rounded, run_ranking, surface, \
    token_window
from .validation import ApiError, CsvStrs, Params, api

blueprint = Blueprint("cells_api", __name__, url_prefix="/api")

HYPOTHESIS_HELP = ("quotes, comment, depth, indent, line, parens, regex:PATTERN, tokens:a,b,c, meta:TRACK or "
                   "meta:TRACK=VALUE (see lstmvis.hypotheses.resolve)")


# -------------------------------------------------------------------------------------- models

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


# ------------------------------------------------------------------------------------ helpers

def hypothesis_values(name: str, store, spec: str) -> tuple[object, np.ndarray]:
    """A hypothesis and its per-token values over the whole store (cached per store and spec)."""
    h = hypotheses.resolve(spec)

    def compute() -> np.ndarray:  # text hypotheses (regex:) stop when the client has gone away
        return np.asarray(h(store, cancelled=client_gone) if isinstance(h, hypotheses.TextHypothesis) else h(store),
                          dtype=np.float64)

    values = caches().hypotheses.get((name, str(store.path), spec), compute)
    return h, values


# ---------------------------------------------------------------------------------- endpoints

@blueprint.get("/hypotheses")
@api(summary="Named hypotheses to rank cells against", tag="cells", lane=None)
def hypotheses_list():
    """Built-in hypotheses (name, kind, description) and the parameterised forms."""
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
    s = resources().store(store)
    start, stop = token_window(s, params.start, params.stop)
    h, values = hypothesis_values(store, s, params.hypothesis)
    return {"hypothesis": h.name, "kind": h.kind, "start": start, "stop": stop, "values": values[start:stop]}


@blueprint.get("/stores/<path:store>/cells/rank")
@api(RankQuery, summary="Rank every cell of a source against a hypothesis (AUROC or correlation)", tag="cells")
def rank(store: str, params: RankQuery):
    """Cells from strongest to weakest: ``score`` is the AUROC or correlation, ``direction`` its sign."""
    s = resources().store(store)
    source = known_source(s, params.source)
    if (building := index_job(s, source, cluster_client(s))) is not None:  # every method runs on a cluster
        return building

    def ranking():
        _, values = hypothesis_values(store, s, params.hypothesis)
        return run_ranking(s, source, values, params.method)

    key = (store, str(s.path), source, params.hypothesis, params.method)
    out = caches().rankings.get(key, ranking).to_dict(params.top)
    out["hypothesis"] = params.hypothesis
    out["n_cells"] = s.n_cells(source)
    return out


@blueprint.get("/stores/<path:store>/cells/<int:cell>/contexts")
@api(ContextsQuery, summary="Where one cell is highest (or lowest): its top contexts", tag="cells")
def contexts(store: str, cell: int, params: ContextsQuery):
    """The ``k`` most extreme steps of a cell, each with the tokens around it and the cell's values."""
    s = resources().store(store)
    source = known_source(s, params.source)
    if (building := index_job(s, source)) is not None:
        return building
    found = top_contexts(s, source, cell, k=params.k, before=params.before, after=params.after,
                         direction=params.direction)
    out = []
    for c in found:
        d = c.to_dict()
        d["text"] = surface(s, c.start, c.stop)
        d["values"] = rounded(c.values)
        out.append(d)
    return {"source": source, "cell": cell, "direction": params.direction, "contexts": out}


@blueprint.get("/stores/<path:store>/saturation")
@api(SaturationQuery, summary="Gate saturation: per gate unit, the fraction of steps < low and > high", tag="cells")
def saturation(store: str, params: SaturationQuery):
    """Karpathy's saturation plot data for the store's gate sources."""
    s = resources().store(store)
    if params.sources:
        for src in params.sources:
            known_source(s, src)
    elif not gate_sources(s):
        raise ApiError(409, f"store {store!r} recorded no gates (it has {', '.join(s.sources)}); extract with "
                            "kinds including 'gates' to see gate saturation")
    sat = gate_saturation(s, sources=params.sources or None, low=params.low, high=params.high)
    out = sat.to_dict()
    out["summary"] = sat.summary()
    return out


@blueprint.post("/stores/<path:store>/cells/<int:cell>/explain")
@api(ExplainCellBody, summary="Explain one cell at one step: which input tokens drive it", tag="cells", lane="model")
def explain(store: str, cell: int, params: ExplainCellBody):
    """Integrated Gradients (or the gradient) of the cell's activation at ``position`` with respect to
    the input tokens, run on the store's own model over the text leading up to the step."""
    entry = resources().store_entry(store)
    s = entry.open()
    source = known_source(s, params.source)
    if not entry.model:
        raise ApiError(409, f"store {store!r} does not name the model it came from, so a cell cannot be explained")
    if not s.has_texts:
        raise ApiError(409, f"store {store!r} keeps no original texts to run the model on")
    with resources().model(entry.model) as model:
        e, where = explain_stored_cell(s, model, source, cell, params.position, window=params.window,
                                       method=params.method, n_steps=params.n_steps, rule=params.rule,
                                       max_steps=params.max_steps)
    c = e.convergence  # None for the gradient
    return {"source": source, "cell": cell, "position": params.position, **where, "model": entry.model,
            "text": surface(s, where["start"], where["stop"]), "tokens": e.tokens, "scores": e.scores,
            "signed": e.signed, "method": e.method, "delta": e.delta, "activation": e.info.get("activation"),
            "activation_baseline": e.info.get("activation_baseline"), "params": e.params,
            "relative_delta": c.relative_delta if c else None, "converged": c.converged if c else None,
            "n_gradient_rows": c.n_gradient_rows if c else None, "n_probe_rows": c.n_probe_rows if c else None}
