"""Every bound of every request model of the lstmvis pages' API (explorer, cells, text CNN, jobs, core) is
enforced at the edge: a value just outside answers a 400 naming the field, a value at the bound passes
validation. The bounds are written down here: a bound added to or removed from a model fails
``test_the_models_declare_exactly_these_bounds``, and one that stops being enforced fails the request test.
(The explanation and image methods' hyperparameters are checked where they are declared.)"""
from __future__ import annotations

import math
import types
import typing

import annotated_types as at
import pytest

from conftest_server import make_toy_store

BLUEPRINTS = ("core", "pages", "explorer_api", "cells_api", "textcnn_api", "jobs")

# model -> the other parameters of a request that passes validation (the toy store has no model)
BASE = {
    "Window": {},
    "StatesQuery": {"source": "rnn.l0.h"},
    "SelectQuery": {"source": "rnn.l0.h", "start": 0, "stop": 2},
    "SelectHintsQuery": {"source": "rnn.l0.h", "start": 0, "stop": 2},
    "MatchQuery": {"source": "rnn.l0.h", "cells": [0]},
    "SearchQuery": {"q": "cat"},
    "RankQuery": {"source": "rnn.l0.h", "hypothesis": "tokens:cat"},
    "HypothesisQuery": {"hypothesis": "tokens:cat"},
    "ContextsQuery": {"source": "rnn.l0.h"},
    "SaturationQuery": {},
    "ExplainCellBody": {"source": "rnn.l0.h", "position": 1},
    "TextCNNQuery": {"model": "nope"},
}

# model -> field -> {constraint: bound}
BOUNDS = {
    "Window": {"start": {"ge": 0}, "stop": {"ge": 0}},
    "StatesQuery": {"start": {"ge": 0}, "stop": {"ge": 0}},
    "SelectQuery": {"start": {"ge": 0}, "stop": {"ge": 1}, "threshold": {"ge": -1e6, "le": 1e6},
                    "pad_left": {"ge": 0, "le": 100}, "pad_right": {"ge": 0, "le": 100}},
    "SelectHintsQuery": {"start": {"ge": 0}, "stop": {"ge": 1}, "threshold": {"ge": -1e6, "le": 1e6},
                         "pad_left": {"ge": 0, "le": 100}, "pad_right": {"ge": 0, "le": 100}},
    "MatchQuery": {"cells": {"min_length": 1, "max_length": 4096}, "threshold": {"ge": -1e6, "le": 1e6},
                   "pad_left": {"ge": 0, "le": 100}, "pad_right": {"ge": 0, "le": 100}, "top": {"ge": 1, "le": 500},
                   "min_length": {"ge": 1, "le": 1000}, "phrase_length": {"ge": 1, "le": 1000},
                   "left": {"ge": 0, "le": 100}, "right": {"ge": 0, "le": 200}},
    "SearchQuery": {"q": {"min_length": 1, "max_length": 200}, "limit": {"ge": 1, "le": 500}},
    "RankQuery": {"hypothesis": {"min_length": 1, "max_length": 300}, "top": {"ge": 1, "le": 4096}},
    "HypothesisQuery": {"start": {"ge": 0}, "stop": {"ge": 0}, "hypothesis": {"min_length": 1, "max_length": 300}},
    "ContextsQuery": {"k": {"ge": 1, "le": 100}, "before": {"ge": 0, "le": 200}, "after": {"ge": 0, "le": 200}},
    "SaturationQuery": {"low": {"ge": 0, "le": 1}, "high": {"ge": 0, "le": 1}},
    "ExplainCellBody": {"position": {"ge": 0}, "n_steps": {"ge": 1, "le": 250}, "max_steps": {"ge": 1, "le": 1000},
                        "window": {"ge": 1, "le": 1000}},
    "TextCNNQuery": {"model": {"max_length": 200}, "store": {"max_length": 300}, "layer": {"max_length": 100},
                     "k": {"ge": 1, "le": 50}},
}

CONSTRAINTS = {at.Ge: "ge", at.Le: "le", at.Gt: "gt", at.Lt: "lt", at.MinLen: "min_length", at.MaxLen: "max_length"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from server.app import create_app
    d = tmp_path_factory.mktemp("bounds")
    make_toy_store(d / "toy.h5").close()
    return create_app(d, {"TESTING": True})


def routes(app) -> dict[str, tuple[str, str, type]]:
    """model name -> (method, URL with the toy store and cell 1 filled in, model) for our blueprints."""
    out = {}
    for rule in app.url_map.iter_rules():
        spec = getattr(app.view_functions[rule.endpoint], "api_spec", None)
        if spec is None or spec["model"] is None or rule.endpoint.split(".")[0] not in BLUEPRINTS:
            continue
        url = rule.rule.replace("<path:store>", "toy").replace("<int:cell>", "1")
        method = "POST" if "POST" in rule.methods else "GET"
        assert spec["model"].__name__ not in out, f"{spec['model'].__name__} serves two routes: name each"
        out[spec["model"].__name__] = (method, url, spec["model"])
    return out


def declared_bounds(model) -> dict[str, dict]:
    out = {}
    for name, field in model.model_fields.items():
        found = {}
        for item in field.metadata:
            for cls, key in CONSTRAINTS.items():
                if isinstance(item, cls):
                    found[key] = getattr(item, key)
            if getattr(item, "pattern", None) is not None:
                found["pattern"] = item.pattern
        if found:
            out[name] = found
    return out


def test_the_models_declare_exactly_these_bounds(app):
    found = routes(app)
    assert set(found) == set(BOUNDS) == set(BASE), "a request model without its row here (or a row without a model)"
    for name, (_, _, model) in found.items():
        assert declared_bounds(model) == BOUNDS[name], name


def scalar_type(model, field: str) -> type:
    annotation = model.model_fields[field].annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) or annotation


def at_and_outside(kind: type, constraint: str, bound):
    """A value at the bound and the nearest value outside it."""
    if constraint in ("min_length", "max_length"):
        step = -1 if constraint == "min_length" else 1
        make = (lambda n: [0] * n) if kind is list else (lambda n: "x" * n)
        return make(bound), make(bound + step)
    if constraint not in ("ge", "le"):
        raise NotImplementedError(f"no test values for a {constraint} bound yet: add them here")
    if kind is float:
        return bound, math.nextafter(float(bound), -math.inf if constraint == "ge" else math.inf)
    return bound, bound - 1 if constraint == "ge" else bound + 1


def send(client, method: str, url: str, params: dict):
    if method == "POST":
        return client.post(url, json=params)
    query = {k: ",".join(map(str, v)) if isinstance(v, list) else repr(v) if isinstance(v, float) else str(v)
             for k, v in params.items()}
    return client.get(url, query_string=query)


CASES = [(model, field, constraint, bound) for model, fields in BOUNDS.items()
         for field, constraints in fields.items() for constraint, bound in constraints.items()]


@pytest.mark.parametrize("model_name,field,constraint,bound", CASES,
                         ids=[f"{m}.{f}.{c}" for m, f, c, _ in CASES])
def test_each_bound_is_enforced_at_the_edge(app, model_name, field, constraint, bound):
    method, url, model = routes(app)[model_name]
    client = app.test_client()
    inside, outside = at_and_outside(scalar_type(model, field), constraint, bound)

    refused = send(client, method, url, {**BASE[model_name], field: outside})
    assert refused.status_code == 400 and refused.is_json, (outside, refused.data[:300])
    problems = refused.get_json()["error"].get("problems")
    assert problems and [p["field"] for p in problems] == [field], problems

    passed = send(client, method, url, {**BASE[model_name], field: inside})
    assert passed.is_json
    # answered (200), or refused by the library or the view for what the value means, never by validation
    assert passed.status_code == 200 or "problems" not in passed.get_json()["error"], passed.get_json()
