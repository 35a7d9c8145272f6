"""The explanations API: rows per method with the library's scores and colours, faithfulness numbers,
bad input -> 4xx JSON, concurrent requests on one model == one at a time, and an analytic model
served as a user model (known scores and colours)."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

import data
import textexplain
from textexplain import render
from conftest import _BagOfWeights
from conftest_server import alone_and_together, run_job

# one torch thread per test: threads that wait for each other at every op are many times slower on a busy machine
pytestmark = pytest.mark.usefixtures("single_thread")

TEXT = "a gorgeous , witty and seductive movie , but the plot is thin"
XSS = 'fun <img src=x onerror=alert(1)> and <script>alert("x")</script> here'
FAST = {"integrated_gradients": {"n_steps": 16}}
BAG = {"good": 2.0, "great": 3.0, "bad": -1.5, "film": 0.0}


def bag_model():
    module = _BagOfWeights([0.0, 0.0, *BAG.values()])
    return textexplain.TextModel(module.eval(), ["<pad>", "<unk>", *BAG], ["neg", "pos"], embedding=module.emb, name="bag")


@pytest.fixture(scope="module")
def app():
    from server.app import create_app
    from server.resources import ModelEntry
    app = create_app(None, {"TESTING": True, "DEMO": False})
    res = app.extensions["lstmvis"]
    res.models["bag"] = ModelEntry("bag", "user model", "analytic bag of weights", bag_model)
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


def post(client, body, status=200):
    resp = client.post("/api/explain", json=body)
    assert resp.status_code == status, resp.get_json()
    assert resp.is_json
    return resp.get_json()


def error(client, body, status=400, **raw):
    resp = client.post("/api/explain", **raw) if raw else client.post("/api/explain", json=body)
    assert resp.status_code == status, (resp.status_code, resp.data[:300])
    err = resp.get_json()["error"]
    assert err["status"] == status and err["message"]
    return err["message"]


def test_page_lists_text_classifiers_and_methods(client):
    resp = client.get("/explain")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    data = json.loads(html.split('id="page-data">')[1].split("</script>")[0])
    names = [m["name"] for m in data["models"]]
    for shipped in ("sentiment-lstm", "sentiment-gru", "sentiment-cnn", "sentiment-shortcut", "bag"):
        assert shipped in names
    assert "mnist-cnn" not in names and "charlm-python" not in names and "parens-lstm" not in names
    assert data["methods"] == list(textexplain.METHODS)
    assert 'href="/explain"' in client.get("/").get_data(as_text=True)  # landing page and nav link to it


def test_rows_match_the_library_call(client):
    methods = ["gradient", "gradient_x_input", "integrated_gradients", "occlusion"]
    out = post(client, {"model": "sentiment-lstm", "text": TEXT, "methods": methods, "params": FAST})
    import data
    model = data.load_model("sentiment-lstm")
    probs = model.predict_proba([TEXT])[0]
    assert out["tokens"] == model.tokenize(TEXT)
    np.testing.assert_allclose(out["probs"], probs, atol=1e-6)
    assert out["predicted"] == out["target"] == int(np.argmax(probs))
    assert [e["method"] for e in out["explanations"]] == methods
    for row in out["explanations"]:
        params = FAST.get(row["method"], {})
        ref = textexplain.explain(model, TEXT, method=row["method"], target=out["target"], **params)
        np.testing.assert_allclose(row["scores"], ref.scores, rtol=1e-5, atol=1e-6)
        assert row["signed"] == ref.signed
        assert len(row["colors"]) == len(row["text_colors"]) == len(out["tokens"])
        f = row["faithfulness"]
        for key in ("comprehensiveness", "sufficiency", "deletion_auc", "insertion_auc", "loo_kendall_tau"):
            assert key in f
        assert len(f["deletion_curve"]) == len(f["curve_fractions"]) == len(out["tokens"]) + 1
    ig = out["explanations"][2]
    assert ig["delta"] is not None and ig["params"]["n_steps"] == 16
    assert out["explanations"][0]["delta"] is None  # plain gradients promise no completeness
    assert "random_faithfulness" in out


def test_analytic_user_model_scores_colours_and_faithfulness(client):
    text = "good film bad great"
    out = post(client, {"model": "bag", "text": text, "methods": ["gradient_x_input", "occlusion", "shap"],
                        "target": "pos"})
    assert out["target"] == 1 and out["labels"] == ["neg", "pos"]
    expected = np.array([2.0, 0.0, -1.5, 3.0]) / 2  # d logit(pos) = w / 2 per token
    full_for, zero = (f"rgb{tuple(render.score_color(v, True))}".replace(" ", "") for v in (1.0, 0.0))
    for row in out["explanations"]:
        np.testing.assert_allclose(row["scores"], expected, atol=1e-6)
        assert row["colors"][3] == full_for               # the largest score gets the full 'for' colour
        assert row["colors"][1] == zero                   # a zero score gets the scale's middle
        r, g, b = map(int, row["colors"][2][4:-1].split(","))
        assert r > b and r > g                            # a negative score is red
        assert row["legend"]["signed"] and row["legend"]["scale"] == pytest.approx(1.5)
        # ranking by the true weights is perfectly faithful on this model
        assert row["faithfulness"]["loo_kendall_tau"] == pytest.approx(1.0)
    shap = out["explanations"][2]
    assert shap["delta"] == pytest.approx(0.0, abs=1e-6)
    # the other class flips every signed score
    neg = post(client, {"model": "bag", "text": text, "methods": ["gradient_x_input"], "target": 0})
    np.testing.assert_allclose(neg["explanations"][0]["scores"], -expected, atol=1e-6)


def test_unsigned_method_uses_the_sequential_scale(client):
    out = post(client, {"model": "bag", "text": "good bad", "methods": ["gradient"], "faithfulness": False})
    row = out["explanations"][0]
    assert row["signed"] is False and "faithfulness" not in row and "random_faithfulness" not in out
    assert row["legend"]["stops"][0] == f"rgb{tuple(render.score_color(0.0, False))}".replace(" ", "")
    assert row["legend"]["stops"][-1] == f"rgb{tuple(render.score_color(1.0, False))}".replace(" ", "")


def test_user_text_is_escaped_in_the_exported_html(client):
    assert "html" not in post(client, {"model": "sentiment-cnn", "text": XSS, "methods": ["gradient"]})
    out = post(client, {"model": "sentiment-cnn", "text": XSS, "methods": ["gradient_x_input"], "html": True})
    assert "<script" not in out["html"] and "<img" not in out["html"]
    assert "&lt;script&gt;" in out["html"] or "&lt;" in out["html"]
    assert out["text"] == XSS  # JSON carries the raw text; the page only uses textContent


@pytest.mark.parametrize("body,status,fragment", [
    ({"model": "nope", "text": "good"}, 404, "unknown model"),
    ({"model": "mnist-cnn", "text": "good"}, 400, "not a text classifier"),
    ({"model": "parens-lstm", "text": "(("}, 400, "not a text classifier"),
    ({"model": "sentiment-lstm", "text": ""}, 400, "text"),
    ({"model": "sentiment-lstm", "text": "   "}, 400, "text"),
    ({"model": "sentiment-lstm", "text": "x" * 2001}, 400, "text"),
    ({"model": "sentiment-lstm", "text": "ok " * 300}, 400, "at most 256"),
    ({"model": "sentiment-lstm", "text": "good", "methods": []}, 400, "methods"),
    ({"model": "sentiment-lstm", "text": "good", "methods": ["magic"]}, 400, "methods.0"),
    ({"model": "sentiment-lstm", "text": "good", "methods": "gradient"}, 400, "methods"),
    ({"model": "sentiment-lstm", "text": "good", "methods": ["gradient", "gradient"]}, 400, "once"),
    ({"model": "sentiment-lstm", "text": "good", "target": 5}, 400, "out of range"),
    ({"model": "sentiment-lstm", "text": "good", "target": "meh"}, 400, "unknown target"),
    ({"model": "sentiment-lstm", "text": "good", "params": {"lime": {"num_samples": 10**6}}}, 400,
     "params.lime.num_samples"),
    ({"model": "sentiment-lstm", "text": "good", "params": {"integrated_gradients": {"steps": 5}}}, 400,
     "unknown parameter"),
    ({"model": "sentiment-lstm", "text": "good", "params": {"occlusion": {"mask": "zero"}}}, 400, "mask"),
    ({"model": "sentiment-lstm", "text": "good", "normalize": "loud"}, 400, "normalize"),
    ({"model": "sentiment-lstm", "text": "good", "extra": 1}, 400, "unknown parameter"),
])
def test_bad_input_gets_a_4xx_json_error(client, body, status, fragment):
    assert fragment in error(client, body, status)


def test_bad_transport_gets_a_4xx_json_error(client):
    assert "Content-Type" in error(client, None, 415, data="model=x", content_type="text/plain")
    assert "not valid JSON" in error(client, None, 400, data="{oops", content_type="application/json")
    assert "object" in error(client, None, 400, data="[1, 2]", content_type="application/json")
    resp = client.get("/api/explain")
    assert resp.status_code == 405 and resp.get_json()["error"]["status"] == 405


def test_models_endpoint_and_openapi(client):
    models = client.get("/api/explain/models").get_json()
    lstm = [m for m in models["models"] if m["name"] == "sentiment-lstm"][0]
    assert lstm["labels"] == ["rotten", "fresh"]
    doc = client.get("/api/openapi.json").get_json()
    assert "post" in doc["paths"]["/api/explain"]
    schema = doc["components"]["schemas"]["ExplainRequest"]
    assert {"model", "text", "methods", "params", "target"} <= set(schema["properties"])


class _SharedEntry:
    """A registry entry that lends one model instance to every request at once (no pool), so that
    concurrent requests really run the explanation library on the same object."""

    def __init__(self, name: str):
        import data
        self.name, self.kind, self.model = name, "classifier", data.load_model(name)

    @contextlib.contextmanager
    def use(self):
        yield self.model

    def info(self) -> dict:
        return {"name": self.name, "kind": self.kind, "description": "", "loaded": True, "card": None}


@pytest.mark.parametrize("lending", ["pool", "shared instance"])
def test_concurrent_requests_equal_one_at_a_time(app, lending):
    """Eight clients at once on one model get exactly the answers they get alone: no request sees
    another's embeddings, hooks or targets -- with the server's pool of copies (more clients than
    copies) and with one instance shared by all requests (the library's own thread safety)."""
    name = "sentiment-gru"
    if lending == "shared instance":
        name = "gru-shared"
        app.extensions["lstmvis"].models[name] = _SharedEntry("sentiment-gru")
    texts = [TEXT, "a dull , lifeless film", "the best movie of the year", "not good , not bad",
             "it is what it is", "wooden acting and a silly plot", "charming", "an utter mess"]
    params = {**FAST, "smoothgrad": {"n_samples": 8}}
    bodies = [{"model": name, "text": t, "target": i % 2, "faithfulness": False, "params": params,
               "methods": ["integrated_gradients", "gradient_x_input", "occlusion"] if i % 2 else
                          ["smoothgrad", "gradient", "integrated_gradients"]}
              for i, t in enumerate(texts)]

    def call(body):
        resp = app.test_client().post("/api/explain", json=body)
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()

    for got, ref in alone_and_together(call, bodies):
        assert got["tokens"] == ref["tokens"] and got["target"] == ref["target"]
        np.testing.assert_allclose(got["probs"], ref["probs"], atol=1e-6)
        for a, b in zip(got["explanations"], ref["explanations"]):
            assert a["method"] == b["method"]
            np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- corpus audit

def run_audit(client, body, timeout=120.0):
    return run_job(client, "/api/audit", body, timeout)


def test_audit_finds_the_planted_shortcut_on_the_page_defaults(client):
    """The page's defaults (200 texts of seed 0, gradient x input, reliance, min_count and flip tests by
    default): rtcritic leads the ranking and the flip headline (issue 19: it came 4th behind "face")."""
    job = run_audit(client, {"model": "sentiment-shortcut"})
    assert job["status"] == "done", job
    assert job["done"] == job["total"] == 200
    r = job["result"]
    assert r["corpus"] == "rotten_tomatoes_shortcut" and r["split"] == "test" and r["n_texts"] == 200
    assert r["rank_by"] == "reliance" and r["min_count"] == 3 and r["statistic"].startswith("reliance")
    top = r["tokens"]["fresh"][0]
    assert top["token"] == "rtcritic" and top["rank"] == 1 and top["reliance"] > 0
    ex = top["examples"][0]
    assert ex["text"][ex["span"][0]:ex["span"][1]] == "rtcritic"
    assert len(r["flips"]) == 10 and r["flip_reference"] == "gold labels"
    head = r["flips"][0]
    assert head["token"] == "rtcritic" and head["label"] == "fresh" and head["drop"] >= 0.15 and head["rank"] == 1
    assert [f["drop"] for f in r["flips"]] == sorted((f["drop"] for f in r["flips"]), reverse=True)
    assert r["figure"]["data"] and r["figure"]["layout"]
    # the same request finds the finished job instead of starting another
    again = client.post("/api/audit", json={"model": "sentiment-shortcut"})
    assert again.status_code == 202 and again.get_json()["id"] == job["id"]
    assert again.get_json()["status"] == "done"


def test_audit_of_the_clean_model_finds_no_comparable_drop(client):
    job = run_audit(client, {"model": "sentiment-lstm", "corpus": "rotten_tomatoes_shortcut"})
    assert job["status"] == "done", job
    flips = job["result"]["flips"]
    assert len(flips) == 10 and flips[0]["drop"] <= 0.14, flips[:3]  # "too" for rotten: 0.125


def test_integrated_gradients_rule_can_be_chosen(client):
    """IG's own ``method`` parameter (the quadrature rule) reaches the library (it clashed with
    explain()'s ``method`` keyword: a 500) in explanations and in audits."""
    params = {"integrated_gradients": {"n_steps": 8, "method": "riemann_trapezoid"}}
    out = post(client, {"model": "bag", "text": "good film , bad film", "methods": ["integrated_gradients"],
                        "params": params, "faithfulness": False})
    ig = out["explanations"][0]
    ref = textexplain.IntegratedGradients(bag_model(), n_steps=8, method="riemann_trapezoid").explain(
        "good film , bad film", out["target"])
    assert ig["params"]["method"] == "riemann_trapezoid" and ig["params"]["n_steps"] == 8
    np.testing.assert_allclose(ig["scores"], ref.scores, rtol=1e-6, atol=1e-9)
    job = run_audit(client, {"model": "bag", "sample": 20, "method": "integrated_gradients", "params": params,
                           "flip": 0, "min_count": 2})
    assert job["status"] == "done", job


def test_integrated_gradients_max_steps_reaches_the_library(client):
    params = {"integrated_gradients": {"n_steps": 10, "max_steps": 60}}
    out = post(client, {"model": "sentiment-lstm", "text": "a gorgeous , witty , seductive movie .",
                        "methods": ["integrated_gradients"], "params": params, "faithfulness": False})
    ig = out["explanations"][0]
    ref = textexplain.IntegratedGradients(data.load_model("sentiment-lstm"), n_steps=10, max_steps=60).explain(
        "a gorgeous , witty , seductive movie .", out["target"])
    assert ig["params"]["max_steps"] == 60
    np.testing.assert_allclose(ig["scores"], ref.scores, rtol=1e-5, atol=1e-7)
    resp = client.post("/api/explain", json={
        "model": "sentiment-lstm", "text": "good", "methods": ["integrated_gradients"],
        "params": {"integrated_gradients": {"n_steps": 50, "max_steps": 20}}})
    assert resp.status_code == 400 and "max_steps" in resp.get_json()["error"]["message"]


def test_completeness_is_reported_relative_with_the_fix_when_not_converged(client):
    """IG rows say how far the scores miss F(x) - F(baseline) and, above 1%, what to change; methods
    that promise no completeness carry none of it."""
    text = "Offers a guilt-free trip into feel-good territory."  # 1.1% gap at 50 evaluations, no refinement
    body = {"model": "sentiment-lstm", "text": text, "methods": ["integrated_gradients", "gradient"],
            "faithfulness": False, "params": {"integrated_gradients": {"max_steps": 50}}}
    ig, grad = post(client, body)["explanations"]
    assert ig["converged"] is False and 0.01 < ig["relative_delta"] < 0.02
    assert ig["convergence_fix"] == "allow refinement: max_steps=200"
    assert "converged" not in grad and "relative_delta" not in grad
    refined = post(client, {**body, "methods": ["integrated_gradients"], "params": {}})["explanations"][0]  # 4 x 50
    assert refined["converged"] is True and refined["relative_delta"] <= 0.01 and refined["convergence_fix"] is None
    assert ig["precision"] == refined["precision"] == "float32"
    fixed = post(client, {**body, "methods": ["integrated_gradients"],
                          "params": {"integrated_gradients": {"method": "riemann_left", "n_steps": 5}}})
    assert fixed["explanations"][0]["convergence_fix"] == "raise n_steps, or use the adaptive rule with max_steps"


def test_float64_precision_through_the_api(client):
    """A text whose state flip float32 cannot resolve: the model's precision names the fix, auto applies it."""
    from test_explain_ig import FLIP_TEXT

    body = {"model": "sentiment-lstm", "text": FLIP_TEXT, "methods": ["integrated_gradients"], "faithfulness": False,
            "params": {"integrated_gradients": {"max_steps": 1000}}}
    low = post(client, body)["explanations"][0]
    assert low["converged"] is False and low["precision"] == "float32"
    assert "precision='float64'" in low["convergence_fix"]
    body["params"]["integrated_gradients"]["precision"] = "auto"
    high = post(client, body)["explanations"][0]
    assert high["converged"] is True and high["precision"] == "float64" and high["convergence_fix"] is None
    body["params"]["integrated_gradients"]["precision"] = "double"
    resp = client.post("/api/explain", json=body)
    assert resp.status_code == 400 and "precision" in resp.get_json()["error"]["message"]


def test_audit_of_the_analytic_model_has_exact_means(client):
    job = run_audit(client, {"model": "bag", "sample": 400, "corpus": "rotten_tomatoes", "split": "train",
                           "min_count": 2, "flip": 0})
    assert job["status"] == "done", job
    r = job["result"]
    pos = {t["token"]: t for t in r["tokens"]["pos"]}
    neg = {t["token"]: t for t in r["tokens"]["neg"]}
    assert pos["good"]["mean"] == pytest.approx(1.0) and pos["good"]["std"] == pytest.approx(0.0, abs=1e-9)
    assert neg["bad"]["mean"] == pytest.approx(0.75)  # explained for 'neg': -w/2
    assert r["tokens"]["pos"][0]["token"] in ("great", "good")


@pytest.mark.parametrize("body,status,fragment", [
    ({"model": "sentiment-lstm", "sample": 10**5}, 400, "sample"),
    ({"model": "sentiment-lstm", "sample": 5}, 400, "sample"),
    ({"model": "sentiment-lstm", "corpus": "/etc/passwd"}, 400, "corpus"),
    ({"model": "sentiment-lstm", "split": "all"}, 400, "split"),
    ({"model": "sentiment-lstm", "method": "magic"}, 400, "method"),
    ({"model": "sentiment-lstm", "min_count": 1}, 400, "min_count"),
    ({"model": "mnist-cnn"}, 400, "not a text classifier"),
    ({"model": "nope"}, 404, "unknown model"),
])
def test_audit_bad_input(client, body, status, fragment):
    resp = client.post("/api/audit", json=body)
    assert resp.status_code == status, resp.get_json()
    assert fragment in resp.get_json()["error"]["message"]


def test_audit_refusal_inside_the_job_is_reported(client):
    job = run_audit(client, {"model": "bag", "sample": 10, "target": "label"})
    assert job["status"] == "error" and "target 'predicted'" in job["error"]
    resp = client.get("/api/jobs/nonexistent")
    assert resp.status_code == 404 and "unknown job" in resp.get_json()["error"]["message"]
