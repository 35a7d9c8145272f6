"""The demo's sentiment-transformer store (issue 18, points 3 and 5): built by its DemoStore recipe with
Recorder(modules=...), linked to its model, and explored through the API as the RNN stores are."""
from __future__ import annotations

import pytest

from conftest_server import demo_resources

NAME = "sentiment-transformer"
SOURCE = "encoder.1.activation"


@pytest.fixture(scope="module")
def client():
    from server.app import create_app
    res = demo_resources(NAME)
    assert res.stores[NAME].status == "ready", res.stores[NAME].message
    return create_app(None, {"RESOURCES": res, "TESTING": True}).test_client()


def ok(resp):
    assert resp.status_code == 200, (resp.status_code, resp.get_json())
    return resp.get_json()


def test_the_store_holds_the_encoder_neurons_and_names_its_model(client):
    info = ok(client.get(f"/api/stores/{NAME}"))
    assert info["model"] == NAME
    assert sorted(info["sources"]) == ["encoder.0", "encoder.0.activation", "encoder.1", SOURCE]


def test_select_match_and_rank_on_transformer_neurons(client):
    ranked = ok(client.get(f"/api/stores/{NAME}/cells/rank?source={SOURCE}&hypothesis=meta:label=fresh&top=3"))
    assert ranked["n_cells"] == 192 and ranked["top"][0]["strength"] > 0.2
    cell = ranked["top"][0]["cell"]
    contexts = ok(client.get(f"/api/stores/{NAME}/cells/{cell}/contexts?source={SOURCE}&k=3"))
    start = contexts["contexts"][0]["position"]  # the token where the cell is highest
    assert contexts["contexts"][0]["value"] > 0
    states = ok(client.get(f"/api/stores/{NAME}/states?source={SOURCE}&start={start}&stop={start + 1}"))
    assert len(states["values"]) == 192
    chosen = ok(client.get(f"/api/stores/{NAME}/select?source={SOURCE}&start={start}&stop={start + 1}"
                           "&threshold=0.0&pad_left=0"))
    assert chosen["cells"]
    cells = ",".join(str(c) for c in chosen["cells"][:4])
    hits = ok(client.get(f"/api/stores/{NAME}/match?source={SOURCE}&cells={cells}&threshold=0.0&min_length=1"))
    assert hits["hits"]


def test_the_explanations_page_offers_and_explains_it():
    import json

    import textexplain
    from server.app import create_app

    client = create_app(None, {"TESTING": True, "DEMO": False}).test_client()
    html = client.get("/explain").get_data(as_text=True)
    page = json.loads(html.split('id="page-data">')[1].split("</script>")[0])
    assert NAME in [m["name"] for m in page["models"]]
    resp = client.post("/api/explain", json={"model": NAME, "text": "a dull , lifeless film",
                                             "methods": list(textexplain.METHODS),
                                             "params": {"integrated_gradients": {"n_steps": 16},
                                                        "lime": {"num_samples": 200},
                                                        "shap": {"budget": 24}, "smoothgrad": {"n_samples": 8}}})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["model"] == NAME and len(body["explanations"]) == len(textexplain.METHODS)


def test_a_stored_neuron_is_explained_on_its_whole_sentence(client):
    contexts = ok(client.get(f"/api/stores/{NAME}/cells/7/contexts?source={SOURCE}&k=1"))
    position = contexts["contexts"][0]["position"]
    r = ok(client.post(f"/api/stores/{NAME}/cells/7/explain",
                       json={"source": SOURCE, "position": position, "n_steps": 32}))
    assert r["whole_sequence"]  # attention sees the whole sentence: it is fed whole, not up to the step
    assert r["activation"] == pytest.approx(r["stored_activation"], abs=2e-2)  # float16 store
    assert abs(r["delta"]) < 0.05 * max(1.0, abs(r["activation"] - r["activation_baseline"]))
