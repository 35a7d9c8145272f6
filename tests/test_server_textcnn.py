"""Text-CNN filters API on the shipped sentiment-cnn over a small store's texts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest_server import REVIEWS, make_review_store

TEXTS = REVIEWS


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from server.app import create_app
    d = tmp_path_factory.mktemp("cnn")
    make_review_store(d)
    return create_app(d, {"TESTING": True}).test_client()


def test_top_ngrams_are_the_filters_true_maxima(client):
    import data
    r = client.get("/api/textcnn/filters?model=sentiment-cnn&store=reviews&k=3")
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    assert report["n_texts"] == len(TEXTS) and set(report["fields"]) == {"convs.0", "convs.1"}
    model = data.load_model("sentiment-cnn")
    module = model.module
    # reference: the first conv layer's pre-activation outputs, text by text
    best = np.full(module.convs[0].out_channels, -np.inf)
    with torch.no_grad():
        for t in TEXTS:
            x = module.emb(torch.tensor([model.encode(t)])).transpose(1, 2)
            best = np.maximum(best, module.convs[0](x)[0].max(dim=-1).values.numpy())
    layer0 = [f for f in report["filters"] if f["layer"] == "convs.0"]
    assert len(layer0) == module.convs[0].out_channels
    for f in layer0:
        assert f["max"] == pytest.approx(best[f["filter"]], abs=1e-4)
        acts = [h["activation"] for h in f["ngrams"]]
        assert acts == sorted(acts, reverse=True) and len(acts) == 3
        grams = [tuple(h["tokens"]) for h in f["ngrams"]]
        assert len(set(grams)) == len(grams), "distinct n-grams per filter"
        for h in f["ngrams"]:
            text = TEXTS[h["text_index"]]
            assert h["tokens"] == model.tokenize(text)[h["start"]:h["stop"]]
            assert h["original"].lower().replace(" ", "") == "".join(h["tokens"])
    only = client.get("/api/textcnn/filters?model=sentiment-cnn&store=reviews&k=3&layer=convs.1").get_json()
    assert {f["layer"] for f in only["filters"]} == {"convs.1"}


@pytest.mark.parametrize("query,status,needle", [
    ("model=parens-lstm&store=reviews", 400, "not a text classifier"),
    ("model=sentiment-lstm&store=reviews", 400, "no Conv1d"),
    ("model=sentiment-cnn&store=reviews&layer=convs.9", 404, "unknown layer"),
    ("model=sentiment-cnn&store=reviews&k=0", 400, "k"),
    ("model=sentiment-cnn&store=nope", 404, "unknown store"),
    ("model=nope&store=reviews", 404, "unknown model"),
])
def test_textcnn_bad_input(client, query, status, needle):
    r = client.get(f"/api/textcnn/filters?{query}")
    assert r.status_code == status, r.get_json()
    assert needle in r.get_json()["error"]["message"]
