"""Concurrent clients get exactly the answers of a sequential run (a short run of benchmarks/load_server.py).

The full run is ``python benchmarks/load_server.py`` (8 clients x 500 requests against a server in its
own process, with latency and memory figures). Here a live threaded server gets the same mixed pool --
select and match on every demo store, text explanations with every method, image explanations with
every image method -- once sequentially and then from several clients at once, each sending the whole
pool in its own order; every concurrent answer must be a 200 equal to the sequential one.
"""
from __future__ import annotations

import json
import random

import pytest

from conftest_server import demo_resources, live_server, load_benchmark



load = load_benchmark("load_server")


@pytest.fixture(scope="module")
def call():
    from server.app import create_app
    app = create_app(None, {"RESOURCES": demo_resources()})
    with live_server(app) as url:
        yield load.Client(int(url.rsplit(":", 1)[1]))


def test_only_timing_fields_are_ignored():
    a = json.dumps({"explanations": [{"seconds": 0.1, "scores": [0.5, -0.25]}], "probs": [0.2, 0.8]}).encode()
    b = json.dumps({"probs": [0.2, 0.8], "explanations": [{"scores": [0.5, -0.25], "seconds": 9.0}]}).encode()
    c = json.dumps({"probs": [0.2, 0.8], "explanations": [{"scores": [0.5, -0.2500001], "seconds": 0.1}]}).encode()
    assert load.normalized(a) == load.normalized(b)
    assert load.normalized(a) != load.normalized(c)
    where = load.first_difference(json.loads(load.normalized(a)), json.loads(load.normalized(c)))
    assert where.startswith(".explanations[0].scores[1]:")


def test_concurrent_answers_equal_sequential(call):
    pool = load.build_pool(call, random.Random(0), 1, 1)
    labels = {label for label, *_ in pool}
    assert {"select", "match", "explain:lime", "explain:shap", "image:guided_backprop", "image:gradcam"} <= labels
    reference, _ = load.sequential_pass(call, pool)
    plans = [random.Random(c).sample(range(len(pool)), len(pool)) for c in range(3)]
    _, errors, mismatches = load.concurrent_pass(call, pool, reference, plans)
    assert errors == []
    assert mismatches == []
