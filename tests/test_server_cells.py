"""Cell discovery API: ranking, hypothesis series, top contexts, gate saturation (toy store with known
answers) and explaining a cell on a real shipped model (the parens demo store), also concurrently."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from conftest_server import TOY_TEXTS, demo_resources, live_server, make_toy_store

TOKENS = " ".join(TOY_TEXTS).split()
CAT = [i for i, t in enumerate(TOKENS) if t == "cat"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from server.app import create_app
    d = tmp_path_factory.mktemp("cells")
    make_toy_store(d / "toy.h5").close()
    return create_app(d, {"TESTING": True}).test_client()


def ok(resp):
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def err(resp, status=400):
    assert resp.status_code == status, (resp.status_code, resp.get_json())
    return resp.get_json()["error"]["message"]


def test_hypotheses_list(client):
    r = ok(client.get("/api/hypotheses"))
    names = {h["name"] for h in r["named"]}
    assert {"quotes", "comment", "depth", "parens"} <= names
    assert any(f["form"] == "regex:PATTERN" for f in r["forms"])


def test_rank_finds_the_cat_cell(client):
    r = ok(client.get("/api/stores/toy/cells/rank?source=rnn.l0.h&hypothesis=tokens:cat&top=4"))
    assert r["metric"] == "auroc" and r["kind"] == "binary" and r["n_cells"] == 4
    best = r["top"][0]
    assert best["cell"] == 1 and best["score"] == pytest.approx(1.0) and best["direction"] == 1
    # the same cell on the negated source is perfectly *low* at "cat": as strong, opposite direction
    r = ok(client.get("/api/stores/toy/cells/rank?source=rnn.l0.c&hypothesis=tokens:cat"))
    assert r["top"][0]["cell"] == 1 and r["top"][0]["score"] == pytest.approx(0.0) and r["top"][0]["direction"] == -1
    # scalar meta track -> correlation
    r = ok(client.get("/api/stores/toy/cells/rank?source=rnn.l0.h&hypothesis=meta:label&method=spearman"))
    assert r["metric"] == "spearman"


@pytest.mark.parametrize("query,status,needle", [
    ("source=rnn.l0.h", 400, "hypothesis"),
    ("source=rnn.l0.h&hypothesis=nonsense", 400, "unknown hypothesis"),
    ("source=rnn.l0.h&hypothesis=regex:(", 400, "regular expression"),
    ("source=rnn.l0.h&hypothesis=tokens:zebra", 400, "vocabulary"),
    ("source=rnn.l0.h&hypothesis=regex:zebra", 400, "nothing to rank against"),
    ("source=rnn.l0.h&hypothesis=quotes&method=kendall", 400, "method"),
    ("source=nope&hypothesis=quotes", 404, "unknown source"),
])
def test_rank_bad_input(client, query, status, needle):
    assert needle in err(client.get(f"/api/stores/toy/cells/rank?{query}"), status)


def test_hypothesis_window(client):
    r = ok(client.get("/api/stores/toy/hypothesis?hypothesis=tokens:cat&start=0&stop=10"))
    assert r["values"] == [1.0 if t == "cat" else 0.0 for t in TOKENS[:10]]


def test_top_contexts(client):
    r = ok(client.get("/api/stores/toy/cells/1/contexts?source=rnn.l0.h&k=4&before=1&after=1"))
    assert sorted(c["position"] for c in r["contexts"]) == CAT
    for c in r["contexts"]:
        assert c["text"][c["position"] - c["start"]] == "cat" and c["value"] == pytest.approx(0.8)
    low = ok(client.get("/api/stores/toy/cells/1/contexts?source=rnn.l0.h&k=1&direction=-1"))["contexts"]
    assert low[0]["value"] == pytest.approx(0.0)
    assert "direction" in err(client.get("/api/stores/toy/cells/1/contexts?source=rnn.l0.h&direction=0"))
    assert "0..3" in err(client.get("/api/stores/toy/cells/9/contexts?source=rnn.l0.h"))  # the library's check


def test_gate_saturation_exact(client):
    r = ok(client.get("/api/stores/toy/saturation"))
    n = len(TOKENS)
    assert r["left"]["rnn.l0.gate_f"] == pytest.approx([0, 1, 0, (n // 2) / n])
    assert r["right"]["rnn.l0.gate_f"] == pytest.approx([1, 0, 0, (n - n // 2) / n])
    assert r["summary"][0]["source"] == "rnn.l0.gate_f"
    assert "below" in err(client.get("/api/stores/toy/saturation?low=0.9&high=0.1"))
    assert "unknown source" in err(client.get("/api/stores/toy/saturation?sources=rnn.l9.gate_f"), 404)


def test_explain_needs_a_model(client):
    msg = err(client.post("/api/stores/toy/cells/0/explain", json={"source": "rnn.l0.h", "position": 1}), 409)
    assert "model" in msg


# ----------------------------------------------------------- a real model: the parens demo store

@pytest.fixture(scope="module")
def parens_app():
    from server.app import create_app
    res = demo_resources("parens")
    assert res.stores["parens"].status == "ready", res.stores["parens"].message
    return create_app(None, {"RESOURCES": res, "TESTING": True})


def test_explain_a_cell_matches_the_stored_activation(parens_app):
    client = parens_app.test_client()
    store = parens_app.extensions["lstmvis"].store("parens")
    a, b = store.sequence_bounds(3)
    pos = a + 40
    r = ok(client.post("/api/stores/parens/cells/5/explain",
                       json={"source": "rnn.l0.c", "position": pos, "window": 200, "n_steps": 128}))
    assert r["whole_sequence"] and (r["start"], r["stop"]) == (a, b)
    assert r["text"] == store.tokens(a, b)
    # the model, re-run by the server on the stored text, reproduces the stored cell state
    assert r["activation"] == pytest.approx(r["stored_activation"], abs=2e-3)
    # Integrated Gradients is complete, and tokens after the step get nothing (a forward LSTM)
    assert abs(r["delta"]) < 0.05 * max(1.0, abs(r["activation"] - r["activation_baseline"]))
    assert np.allclose(r["scores"][pos - a + 1:], 0.0)
    # the default adaptive rule reports how far it went; a fixed rule gives the same scores here
    body = {"source": "rnn.l0.c", "position": pos, "window": 200}
    r = ok(client.post("/api/stores/parens/cells/5/explain", json=body))
    assert r["params"]["method"] == "adaptive" and r["params"]["max_steps"] == 200
    assert r["converged"] and r["relative_delta"] <= 0.01 and 40 <= r["n_gradient_rows"] <= 200
    fixed = ok(client.post("/api/stores/parens/cells/5/explain",
                           json={**body, "rule": "gausslegendre", "n_steps": 250}))
    assert fixed["params"]["method"] == "gausslegendre" and (fixed["n_gradient_rows"], fixed["n_probe_rows"]) == (250, 2)
    assert np.allclose(fixed["scores"], r["scores"], atol=0.02 * np.abs(r["scores"]).max())
    # a window shorter than the sequence starts from a zero state at the window's start
    r = ok(client.post("/api/stores/parens/cells/5/explain", json={"source": "rnn.l0.c", "position": pos, "window": 10,
                                                                   "n_steps": 4}))
    assert not r["whole_sequence"] and r["stop"] - r["start"] == 10 and r["stop"] == pos + 1


@pytest.mark.parametrize("body,status,needle", [
    ({"source": "rnn.l0.c"}, 400, "position"),
    ({"source": "rnn.l0.c", "position": 10 ** 9}, 400, "outside the store"),
    ({"source": "rnn.l0.c", "position": 5, "method": "lime"}, 400, "method"),
    ({"source": "rnn.l0.c", "position": 5, "n_steps": 0}, 400, "n_steps"),
    ({"source": "rnn.l0.c", "position": 5, "rule": "simpson"}, 400, "rule"),
    ({"source": "rnn.l0.c", "position": 5, "max_steps": 20}, 400, "max_steps (20) must be at least n_steps (50)"),
    ({"source": "rnn.l0.c", "position": 5, "rule": "gausslegendre", "max_steps": 100}, 400, "fixed nodes"),
    ({"source": "rnn.l0.c", "position": 5, "max_steps": 5000}, 400, "max_steps"),
    ({"source": "nope", "position": 5}, 404, "unknown source"),
])
def test_explain_bad_input(parens_app, body, status, needle):
    assert needle in err(parens_app.test_client().post("/api/stores/parens/cells/5/explain", json=body), status)


def test_explaining_a_cell_the_source_lacks_is_a_400(parens_app):
    """The library checks the cell (the view does not check it again)."""
    msg = err(parens_app.test_client().post("/api/stores/parens/cells/999/explain",
                                            json={"source": "rnn.l0.c", "position": 5, "n_steps": 4}))
    assert "999" in msg and "0..63" in msg


def test_concurrent_explanations_equal_sequential_ones(parens_app):
    """Requests on the same model at once give exactly what they give one at a time."""
    jobs = [(cell, pos) for cell, pos in [(1, 30), (7, 55), (12, 80), (20, 140), (33, 210), (40, 260)]]
    client = parens_app.test_client()

    def body(pos):
        return {"source": "rnn.l0.c", "position": pos, "window": 30, "n_steps": 4}
    sequential = [ok(client.post(f"/api/stores/parens/cells/{c}/explain", json=body(p)))["scores"] for c, p in jobs]
    with live_server(parens_app) as base, ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(requests.post, f"{base}/api/stores/parens/cells/{c}/explain", json=body(p), timeout=120)
                   for c, p in jobs]
        concurrent = [f.result().json()["scores"] for f in futures]
    assert concurrent == sequential


def test_a_user_store_is_linked_to_its_model_and_explainable(tmp_path):
    """--data DIR: a store made by lstmvis.extract names its model; the cells page can explain it."""
    import data
    import lstmvis
    from server.app import create_app

    texts = ["".join(toks) for toks, _ in data.parens("test", n_sequences=2, length=40)]
    lstmvis.extract(data.load_model("parens-lstm"), texts, tmp_path / "mine.h5", progress=False).close()
    app = create_app(tmp_path, {"TESTING": True})
    entry = app.extensions["lstmvis"].store_entry("mine")
    assert entry.model == "parens-lstm"
    r = ok(app.test_client().post("/api/stores/mine/cells/2/explain",
                                  json={"source": "rnn.l0.h", "position": 50, "n_steps": 8}))
    assert r["model"] == "parens-lstm" and r["whole_sequence"]
    assert r["activation"] == pytest.approx(r["stored_activation"], abs=1e-4)
