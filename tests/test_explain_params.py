"""Every declared hyperparameter bound of every registered method (text and image) is enforced: the
library refuses a value just outside its bound, the API answers 400 just outside the server's cap; the
caps that bound one request's cost are the ones chosen; the page and the CLI get the declarations."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

import textexplain as te
from textexplain import image
from textexplain.cli.options import parse_settings
from textexplain.testing import TinyCNN, just_outside, tiny_text_model

pytestmark = pytest.mark.usefixtures("single_thread")

TEXT_METHODS = te.METHODS
IMAGE_METHODS = image.METHODS


def library_bounds(registry):
    return [pytest.param(name, hyper, bound, value, id=f"{name}.{hyper.name}.{bound}")
            for name, cls in registry.items() for hyper in cls.hyperparameters.values()
            for bound, value in just_outside(hyper)]


def api_bounds(registry):
    out = []
    for name, cls in registry.items():
        for hyper in cls.api_hyperparameters().values():
            capped = replace(hyper, **{k: hyper.api_bounds().get(k) for k in ("ge", "gt", "le")})
            out += [pytest.param(name, hyper.name, bound, value, id=f"{name}.{hyper.name}.{bound}")
                    for bound, value in just_outside(capped)]
    return out


# The caps that keep one request cheap (and the library's own limits), as chosen: a declaration that loses
# one fails here, and the walks below check that every declared bound is enforced where it is declared.
CHOSEN = {
    ("integrated_gradients", "n_steps"): ({"ge": 1}, {"ge": 1, "le": 300}),
    ("integrated_gradients", "max_steps"): ({"ge": 1}, {"ge": 1, "le": 1000}),
    ("smoothgrad", "n_samples"): ({"ge": 1}, {"ge": 1, "le": 200}),
    ("smoothgrad", "noise_level"): ({"ge": 0}, {"ge": 0, "le": 1}),
    ("occlusion", "window"): ({"ge": 1}, {"ge": 1, "le": 16}),
    ("occlusion", "stride"): ({"ge": 1}, {"ge": 1, "le": 16}),
    ("lime", "num_samples"): ({"ge": 2}, {"ge": 10, "le": 5000}),
    ("lime", "kernel_width"): ({"gt": 0}, {"gt": 0, "le": 1000}),
    ("shap", "budget"): ({"ge": 4}, {"ge": 4, "le": 4096}),
    ("shap", "exact_max_tokens"): ({"ge": 1, "le": 20}, {"ge": 1, "le": 14}),
    ("shap", "seed"): ({}, {"ge": 0, "le": 2**31 - 1}),
}


@pytest.mark.parametrize("key", list(CHOSEN))
def test_the_chosen_bounds_are_declared(key):
    method, name = key
    hyper = TEXT_METHODS[method].hyperparameters[name]
    library = {k: getattr(hyper, k) for k in ("ge", "gt", "le") if getattr(hyper, k) is not None}
    assert (library, hyper.api_bounds()) == CHOSEN[key]


@pytest.mark.parametrize("method, hyper, bound, value", library_bounds(TEXT_METHODS))
def test_the_text_library_refuses_a_value_just_outside_each_bound(method, hyper, bound, value):
    with pytest.raises(ValueError, match=hyper.name):
        TEXT_METHODS[method](tiny_text_model(), **{hyper.name: value})


@pytest.mark.parametrize("method, hyper, bound, value", library_bounds(IMAGE_METHODS))
def test_the_image_library_refuses_a_value_just_outside_each_bound(method, hyper, bound, value):
    with pytest.raises(ValueError, match=hyper.name):
        IMAGE_METHODS[method](TinyCNN(), **{hyper.name: value})


def test_the_trapezoid_rule_needs_two_steps_at_construction():
    with pytest.raises(ValueError, match="trapezoid"):
        te.IntegratedGradients(tiny_text_model(), n_steps=1, method="riemann_trapezoid")
    with pytest.raises(ValueError, match="trapezoid"):
        image.IntegratedGradients(TinyCNN(), n_steps=1, method="riemann_trapezoid")


@pytest.fixture(scope="module")
def client():
    from server.app import create_app
    return create_app(None, {"TESTING": True, "DEMO": False}).test_client()


def _refused(resp, field: str) -> None:
    assert resp.status_code == 400, resp.get_json()
    assert field in resp.get_json()["error"]["message"]


@pytest.mark.parametrize("method, name, bound, value", api_bounds(TEXT_METHODS))
def test_the_explain_api_refuses_a_value_just_outside_each_cap(client, method, name, bound, value):
    resp = client.post("/api/explain", json={"model": "sentiment-lstm", "text": "good", "methods": [method],
                                             "params": {method: {name: value}}})
    _refused(resp, f"params.{method}.{name}")


@pytest.mark.parametrize("method, name, bound, value", api_bounds(IMAGE_METHODS))
def test_the_images_api_refuses_a_value_just_outside_each_cap(client, method, name, bound, value):
    resp = client.post("/api/images/explain", json={"model": "mnist-cnn", "index": 0, "methods": [method],
                                                    "params": {method: {name: value}}})
    _refused(resp, f"params.{method}.{name}")


def test_the_api_refuses_choices_the_server_does_not_offer(client):
    resp = client.post("/api/explain", json={"model": "sentiment-lstm", "text": "good", "methods": ["occlusion"],
                                             "params": {"occlusion": {"mask": 7}}})  # a token id: library only
    _refused(resp, "params.occlusion.mask")
    resp = client.post("/api/explain", json={"model": "sentiment-lstm", "text": "good",
                                             "params": {"lime": {"max_batch_tokens": 5}}})  # not offered
    _refused(resp, "params.lime.max_batch_tokens")


def test_the_pages_build_their_inputs_from_the_declarations(client):
    html = client.get("/explain").get_data(as_text=True)
    page = json.loads(html.split('id="page-data">')[1].split("</script>")[0])
    ig = page["method_inputs"]["integrated_gradients"]
    assert ig["title"] == "Integrated Gradients" and ig["presets"]["max_steps"] == 200
    n_steps = next(p for p in ig["params"] if p["name"] == "n_steps")
    assert (n_steps["type"], n_steps["default"], n_steps["ge"], n_steps["le"]) == ("int", 50, 1, 300)
    assert page["titles"] == {name: cls.title for name, cls in TEXT_METHODS.items()}
    openapi = client.get("/api/openapi.json").get_json()["components"]["schemas"]
    assert "IntegratedGradientsParams" in openapi and "ImageSmoothGradParams" in openapi


def test_the_cli_checks_set_values_against_the_declarations():
    assert parse_settings(["n_steps=20"], ["integrated_gradients"]) == {"integrated_gradients": {"n_steps": 20}}
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        parse_settings(["n_steps=0"], ["integrated_gradients"])
    with pytest.raises(ValueError, match="reduce='max' is not supported"):
        parse_settings(["gradient.reduce=max"], ["gradient"])
