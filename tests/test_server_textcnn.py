"""Text-CNN filters API on the shipped sentiment-cnn over a small store's texts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest_server import REVIEWS, make_review_store

TEXTS = REVIEWS


CODE = ["def f(x):\n    return 'a'\n", "x = [1, 2]\n"]


def make_char_store(path, card: dict | None = None):
    """A store of source code cut into characters (as the char-level LSTM reads it)."""
    from lstmvis import StateStore

    tokens = [c for t in CODE for c in t]
    offsets = np.cumsum([0] + [len(t) for t in CODE])
    StateStore.from_arrays(path, {"x": np.zeros((len(tokens), 1), np.float32)}, tokens=tokens, offsets=offsets,
                           texts=CODE, card=card).close()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from server.app import create_app
    d = tmp_path_factory.mktemp("cnn")
    make_review_store(d)
    make_char_store(d / "code.h5")  # char-level by its vocabulary
    make_char_store(d / "digits.h5", card={"tokenization": "char"})  # char-level by its card
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


def test_tokenization_is_listed_and_a_store_cut_otherwise_is_refused(client):
    ok = client.get("/api/textcnn/filters?model=sentiment-cnn&store=reviews&k=1")
    assert ok.status_code == 200, ok.get_json()  # reviews: tokenization not known, offered
    listed = {s["name"]: s for s in client.get("/api/status").get_json()["stores"]}
    assert listed["code"]["tokenization"] == "char" and listed["digits"]["tokenization"] == "char"
    assert listed["reviews"]["tokenization"] is None and listed["reviews"]["has_texts"]
    models = {m["name"]: m for m in client.get("/api/status").get_json()["models"]}
    assert models["sentiment-cnn"]["tokenization"] == "word"
    for store in ("code", "digits"):
        r = client.get(f"/api/textcnn/filters?model=sentiment-cnn&store={store}")
        assert r.status_code == 400, r.get_json()
        message = r.get_json()["error"]["message"]
        assert "'char'" in message and "'word'" in message and "reviews" in message and "lstmvis.extract" in message
        deconv = client.post("/api/textcnn/deconv", json={"model": "sentiment-cnn", "store": store, "filter": 0})
        assert deconv.status_code == 400, deconv.get_json()


def test_the_cells_page_reads_characters_by_the_same_rule(tmp_path):
    """``char_level`` (the explorer's and cells page's token layout) is the store's tokenization, not a
    guess from the vocabulary: a word-level store of one-character words is no char-level store."""
    from lstmvis import StateStore
    from server.app import create_app

    texts = ["1 2 3", "4 5"]
    tokens = [t for x in texts for t in x.split()]
    StateStore.from_arrays(tmp_path / "words.h5", {"x": np.zeros((len(tokens), 1), np.float32)}, tokens=tokens,
                           offsets=[0, 3, 5], texts=texts, card={"tokenization": "whitespace"}).close()
    make_char_store(tmp_path / "code.h5")
    client = create_app(tmp_path, {"TESTING": True}).test_client()
    words, code = client.get("/api/stores/words").get_json(), client.get("/api/stores/code").get_json()
    assert (words["tokenization"], words["char_level"]) == ("whitespace", False)
    assert (code["tokenization"], code["char_level"]) == ("char", True)
