"""The workbench API: paged, sorted, filtered rows equal the library's; metrics and slices; a
server-side selection; PCA projection; counterfactuals; the global job; --corpus files validated;
bad input -> 4xx JSON, never 500."""
from __future__ import annotations

import json

import pytest

from conftest_server import wait_for_job
from test_workbench import GOLD, TEXTS, sentiment_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "toy.csv"
    with path.open("w") as fh:
        fh.write("text,label,source\n")
        for i, (t, y) in enumerate(zip(TEXTS, GOLD)):
            fh.write(f"{json.dumps(t)},{y},{'xy'[i % 2]}\n")
    return path


@pytest.fixture(scope="module")
def app(corpus_file):
    from server.app import create_app
    from server.resources import ModelEntry
    app = create_app(None, {"TESTING": True, "DEMO": False, "WORKBENCH_CORPORA": [str(corpus_file)]})
    app.extensions["lstmvis"].models["sent"] = ModelEntry("sent", "user model", "hand-set weights", sentiment_model)
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


def get(client, path, status=200, **query):
    resp = client.get(path, query_string=query)
    assert resp.status_code == status, resp.get_json()
    return resp.get_json()


Q = {"model": "sent", "corpus": "file:toy.csv"}


def test_rows_page_sort_filter(client):
    from textexplain.workbench import RowFilter, Workbench
    wb = Workbench(sentiment_model(), TEXTS, GOLD, {"source": ["x", "y"] * 5})
    out = get(client, "/api/workbench/rows", **Q, sort="confidence", desc="true", offset=2, limit=3)
    assert out["total"] == 10 and [r["id"] for r in out["rows"]] == [
        r["id"] for r in wb.page(sort="confidence", descending=True, offset=2, limit=3)["rows"]]
    out = get(client, "/api/workbench/rows", **Q, regex="movie", correct="correct", meta="source=x")
    assert [r["id"] for r in out["rows"]] == wb.select(RowFilter(regex="movie", correct=True, meta={"source": "x"})).tolist()
    assert out["meta"] == ["source"] and out["rows"][0]["meta"]["source"] == "x"


def test_metrics_slices_threshold(client):
    out = get(client, "/api/workbench/metrics", **Q, slice="meta", slice_meta="source")
    assert out["n"] == 10 and len(out["confusion"]) == 2 and out["calibration"]["ece"] is not None
    assert [s["slice"] for s in out["slices"]] == ["x", "y"] and sum(s["n"] for s in out["slices"]) == 10
    everything_pos = get(client, "/api/workbench/metrics", **Q, threshold=0)
    assert everything_pos["predicted_counts"] == [0, 10] and everything_pos["accuracy"] == pytest.approx(0.6)
    assert get(client, "/api/workbench/metrics", **Q)["predicted_counts"] != [0, 10]  # the cached table is unchanged


def test_selection_token_shared_by_views(client):
    resp = client.post("/api/workbench/selection", json={**Q, "ids": [1, 3, 5]})
    token = resp.get_json()["selection"]
    rows = get(client, "/api/workbench/rows", **Q, selection=token)
    assert [r["id"] for r in rows["rows"]] == [1, 3, 5]
    assert get(client, "/api/workbench/metrics", **Q, selection=token)["n"] == 3
    assert get(client, "/api/workbench/rows", **Q, ids="1,2")["total"] == 2
    get(client, "/api/workbench/rows", 404, **Q, selection="nope")


def test_projection_pca(client):
    out = get(client, "/api/workbench/projection", **Q)
    assert len(out["x"]) == len(out["ids"]) == 10 and out["gold"] is not None


def test_counterfactuals(client):
    out = client.post("/api/workbench/counterfactuals", json={"model": "sent", "text": "good great great movie",
                                                              "kind": "hotflip"}).get_json()
    cf = out["counterfactuals"][0]
    assert cf["flipped"] and cf["n_changes"] == 2 and cf["predicted"] != out["predicted"]
    out = client.post("/api/workbench/counterfactuals", json={"model": "sent", "text": "a good movie", "kind": "replace",
                                                              "replacements": {"good": ["bad", "dull"]}}).get_json()
    assert [c["text"] for c in out["counterfactuals"]] == ["a bad movie", "a dull movie"]


def test_global_job(client):
    resp = client.post("/api/workbench/global", json={**Q, "sample": 10, "importance_top": 2})
    assert resp.status_code == 202
    job = wait_for_job(client, resp.get_json())
    assert job["status"] == "done", job
    res = job["result"]
    assert res["audit"]["n_texts"] == 10 and res["saliency"]["tokens"] and len(res["importance"]) == 4


@pytest.mark.parametrize("query,status", [
    ({"corpus": "nope"}, 404), ({"model": "nope"}, 404), ({"regex": "("}, 400), ({"sort": "nope"}, 400),
    ({"limit": 0}, 400), ({"conf_min": 2}, 400), ({"meta": "nosuch"}, 400), ({"meta": "nosuch=1"}, 400),
    ({"label": "maybe"}, 400), ({"ids": "99"}, 400), ({"unknown": 1}, 400)])
def test_bad_input_is_4xx(client, query, status):
    resp = client.get("/api/workbench/rows", query_string={**Q, **query})
    assert resp.status_code == status, resp.get_json()
    assert resp.get_json()["error"]["message"]


def test_corpus_file_errors(tmp_path):
    from server.workbench_api import read_corpus_file
    bad = tmp_path / "a.csv"
    bad.write_text("words,label\nhi,pos\n")
    with pytest.raises(ValueError, match="text and label"):
        read_corpus_file(bad)
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "hi", "label": "pos"}\n{nope\n')
    with pytest.raises(ValueError, match="line 2"):
        read_corpus_file(bad)
    other = tmp_path / "c.txt"
    other.write_text("text,label\n")
    with pytest.raises(ValueError, match=".csv or .jsonl"):
        read_corpus_file(other)
    good = tmp_path / "c.jsonl"
    good.write_text('{"text": "hi there", "label": "pos", "lang": "en"}\n')
    assert read_corpus_file(good) == {"texts": ["hi there"], "labels": ["pos"], "meta": {"lang": ["en"]}}


def test_page_renders(client):
    resp = client.get("/workbench")
    assert resp.status_code == 200 and b"workbench.js" in resp.data


def test_a_store_with_texts_is_a_corpus(tmp_path):
    """The toy store's three texts, its per-token ``label`` track read at each sequence's start as gold."""
    import textexplain
    from conftest_server import TOY_TEXTS, make_toy_store
    from server.app import create_app
    from server.resources import ModelEntry
    make_toy_store(tmp_path / "toy.h5").close()
    app = create_app(tmp_path, {"TESTING": True})

    def numbered():
        model = sentiment_model()
        return textexplain.TextModel(model.module, model.vocab, ["0", "1"], model.embedding,
                                     tokenizer=model.tokenizer, name="numbered")
    app.extensions["lstmvis"].models["numbered"] = ModelEntry("numbered", "user model", "labels 0/1", numbered)
    client = app.test_client()
    assert "store:toy" in get(client, "/api/workbench/corpora")["corpora"]
    out = get(client, "/api/workbench/rows", model="numbered", corpus="store:toy")
    assert [r["text"] for r in out["rows"]] == TOY_TEXTS and [r["label"] for r in out["rows"]] == ["0", "1", "0"]


def test_tsne_projection_is_a_job(client):
    resp = client.get("/api/workbench/projection", query_string={**Q, "method": "tsne"})
    assert resp.status_code == 202
    job = wait_for_job(client, resp.get_json())
    assert job["status"] == "done", job
    assert len(job["result"]["x"]) == 10 and job["result"]["method"] == "tsne"
