"""The seeds API (server/seeds_api.py): deconvnet reconstructions, data randomization jobs, features
over training, embedding-dimension saliency and the text-CNN deconvnet: shapes, library agreement, 4xx."""
from __future__ import annotations

import numpy as np
import pytest

from conftest_server import REVIEWS, make_review_store, run_job

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = REVIEWS


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from server.app import create_app
    d = tmp_path_factory.mktemp("seeds")
    make_review_store(d)
    return create_app(d, {"TESTING": True}).test_client()


def test_image_deconv_gives_k_patches_and_reconstructions(client):
    r = client.post("/api/images/deconv", json={"model": "mnist-cnn", "layer": "features.4", "unit": 3, "k": 9})
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert len(out["items"]) == 9 and out["n_units"] == 64 and "features.4" in out["layers"]
    values = [i["value"] for i in out["items"]]
    assert values == sorted(values, reverse=True)
    assert all(i["patch"].startswith("data:image/png;base64,") and i["reconstruction"].startswith("data:image/png")
               for i in out["items"])


@pytest.mark.parametrize("body", [{"layer": "fc"}, {"unit": 64, "layer": "features.4"}, {"unit": -1}, {"k": 0},
                                  {"model": "sentiment-cnn"}, {"model": "nope"}])
def test_image_deconv_refuses_bad_input(client, body):
    r = client.post("/api/images/deconv", json={"model": "mnist-cnn", **body})
    assert 400 <= r.status_code < 500, r.get_json()


def test_image_data_randomization_job_gives_one_row_per_method(client):
    job = run_job(client, "/api/images/data-randomization",
                  {"model": "mnist-cnn", "randomized": "mnist-cnn", "methods": ["gradient", "gradcam"], "n_images": 4})
    assert job["status"] == "done", job
    rows = job["result"]["rows"]
    assert [r["method"] for r in rows] == ["gradient", "gradcam"]
    assert all(r["spearman_abs"] == pytest.approx(1.0) for r in rows)  # the model against itself
    assert len(job["result"]["images"]) == 4


def test_text_data_randomization_job_against_the_shipped_randomized_model(client):
    job = run_job(client, "/api/explain/data-randomization",
                  {"model": "sentiment-cnn", "methods": ["gradient_x_input"], "n_texts": 4})
    assert job["status"] == "done", job
    res = job["result"]
    assert res["randomized"] == "sentiment-cnn-randlabels" and len(res["texts"]) == 4
    assert res["summary"][0]["n"] == 4 and -1 <= res["summary"][0]["spearman"] <= 1
    assert [r["method"] for r in res["model_randomization"]] == ["gradient_x_input"]
    assert res["model_randomization"][0]["n"] == 4 and res["check_stage"]


@pytest.mark.parametrize("path,body", [
    ("/api/explain/data-randomization", {"model": "sentiment-lstm"}),  # no sentiment-lstm-randlabels
    ("/api/explain/data-randomization", {"model": "sentiment-cnn", "n_texts": 1}),
    ("/api/explain/data-randomization", {"model": "mnist-cnn"}),
    ("/api/images/data-randomization", {"model": "mnist-cnn", "randomized": "sentiment-cnn"}),
    ("/api/images/data-randomization", {"model": "mnist-cnn", "n_images": 1000}),
    ("/api/images/evolution", {"model": "sentiment-cnn"}),
    ("/api/images/evolution", {"model": "mnist-cnn", "layer": "fc"}),
    ("/api/images/evolution", {"model": "mnist-cnn", "unit": 999}),
    ("/api/explain/embedding-saliency", {"model": "sentiment-cnn", "text": ""}),
    ("/api/explain/embedding-saliency", {"model": "mnist-cnn", "text": "good"}),
    ("/api/explain/embedding-saliency", {"model": "sentiment-cnn", "text": "good", "target": 7}),
    ("/api/textcnn/deconv", {"model": "sentiment-lstm"}),
    ("/api/textcnn/deconv", {"model": "sentiment-cnn", "store": "reviews", "layer": "convs.9"}),
    ("/api/textcnn/deconv", {"model": "sentiment-cnn", "store": "reviews", "filter": 500}),
])
def test_bad_requests_are_4xx(client, path, body):
    r = client.post(path, json=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.get_json())


def test_features_over_training_job_gives_each_snapshot(client):
    job = run_job(client, "/api/images/evolution", {"model": "mnist-cnn", "layer": "features.4", "unit": 2,
                                                    "steps": 8})
    assert job["status"] == "done", job
    snaps = job["result"]["snapshots"]
    assert [s["label"] for s in snaps] == ["epoch 1", "epoch 2", "epoch 5", "final"]
    assert all(len(s["classes"]) == 10 and s["filters"].startswith("data:image/png") for s in snaps)


def test_embedding_saliency_rows_sum_to_the_token_scores(client):
    import data
    import textexplain as te
    r = client.post("/api/explain/embedding-saliency", json={"model": "sentiment-cnn", "text": TEXTS[0]})
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    m = np.asarray(out["matrix"])
    assert m.shape == (len(out["tokens"]), 96)
    gxi = te.explain(data.load_model("sentiment-cnn"), TEXTS[0], method="gradient_x_input", target=out["target"])
    np.testing.assert_allclose(m.sum(1), gxi.scores, rtol=1e-5, atol=1e-6)


def test_textcnn_deconv_gives_per_token_values_for_each_top_ngram(client):
    r = client.post("/api/textcnn/deconv", json={"model": "sentiment-cnn", "store": "reviews", "layer": "convs.0",
                                                 "filter": 5, "k": 3})
    assert r.status_code == 200, r.get_json()
    items = r.get_json()["items"]
    assert 1 <= len(items) <= 3
    for it in items:
        assert len(it["tokens"]) == len(it["per_token"]) == len(it["share"])
        assert 0 <= it["start"] < it["stop"] <= len(it["tokens"])
        assert it["outside"] == pytest.approx(0.0, abs=1e-6)  # one conv: nothing outside the 3-token window
