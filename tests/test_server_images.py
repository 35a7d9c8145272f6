"""The image-methods API: an overlay per method that matches the library, PNG uploads decoded safely
(bad, huge or hostile files -> 4xx JSON), the per-model jobs (t-SNE, activation maximization, sanity
check) with checkable results, and concurrent requests equal to one at a time."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest_server import alone_and_together, run_job
from textexplain import image as img

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def app():
    from server.app import create_app
    return create_app(None, {"TESTING": True, "DEMO": False})


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def digits():
    import data
    return data.mnist("test")


def png_url(array_or_image, **save) -> str:
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buf = io.BytesIO()
    im.save(buf, "PNG", **save)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def decode(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def explain(client, body, status=200):
    resp = client.post("/api/images/explain", json=body)
    assert resp.status_code == status, resp.get_json()
    return resp.get_json()


def job_result(client, path, body):
    job = run_job(client, path, body)
    assert job["status"] == "done", job
    return job["result"]


def test_page_and_digit_thumbnails(client):
    resp = client.get("/images")
    assert resp.status_code == 200 and "mnist-cnn" in resp.get_data(as_text=True)
    png = client.get("/api/images/digit/7.png")
    assert png.status_code == 200 and png.mimetype == "image/png"
    assert Image.open(io.BytesIO(png.data)).size == (56, 56)
    assert client.get("/api/images/digit/500.png").status_code == 404
    assert 'href="/images"' in client.get("/").get_data(as_text=True)


def test_every_method_gives_an_overlay_that_matches_the_library(client, digits):
    import data
    x, y = digits
    out = explain(client, {"index": 11})
    assert out["source"] == {"index": 11, "label": int(y[11])}
    assert [o["method"] for o in out["overlays"]] == list(img.METHODS)
    model = data.load_model("mnist-cnn")
    xb = torch.from_numpy(x[11])[None, None]
    with torch.no_grad():
        probs = torch.softmax(model(xb), 1)[0].numpy()
    np.testing.assert_allclose(out["probs"], probs, atol=1e-5)
    assert out["predicted"] == out["target"] == int(probs.argmax())
    for o in out["overlays"]:
        assert decode(o["png"]).shape == (28 * 6, 28 * 6, 3), o["method"]
        ref = img.base.pixel_map(img.METHODS[o["method"]](model).attribute(xb, out["target"]))[0].numpy()
        assert o["min"] == pytest.approx(float(ref.min()), rel=1e-4, abs=1e-6), o["method"]
        assert o["max"] == pytest.approx(float(ref.max()), rel=1e-4, abs=1e-6), o["method"]
    assert [f["layer"] for f in out["feature_maps"]] == ["features.0", "features"]
    # another target class changes the maps
    other = explain(client, {"index": 11, "target": (out["target"] + 1) % 10, "methods": ["gradcam"]})
    assert other["target"] != out["target"] and other["overlays"][0]["png"] != out["overlays"][3]["png"]


def test_uploading_a_test_digit_equals_picking_it(client, digits):
    x, _ = digits
    pixels = (x[5] * 255).round().astype(np.uint8)
    up = explain(client, {"image": png_url(pixels), "methods": ["gradcam", "integrated_gradients"]})
    ref = explain(client, {"index": 5, "methods": ["gradcam", "integrated_gradients"]})
    assert up["source"] == {"width": 28, "height": 28, "inverted": False}
    assert up["predicted"] == ref["predicted"]
    np.testing.assert_allclose(up["probs"], ref["probs"], atol=1e-3)
    for a, b in zip(up["overlays"], ref["overlays"]):
        assert a["max"] == pytest.approx(b["max"], rel=0.02)


@pytest.mark.parametrize("make", ["dark_on_light_rgb", "rgba_transparent", "grey16", "palette"])
def test_uploads_in_other_png_flavours_are_converted(client, make):
    canvas = np.full((90, 60), 255, np.uint8)
    canvas[15:75, 25:35] = 0  # a dark vertical bar on white: a "1"
    if make == "dark_on_light_rgb":
        url = png_url(np.repeat(canvas[..., None], 3, -1))
    elif make == "rgba_transparent":  # the bar drawn on a fully transparent background
        rgba = np.zeros((90, 60, 4), np.uint8)
        rgba[15:75, 25:35] = (0, 0, 0, 255)
        url = png_url(rgba)
    elif make == "grey16":  # 16-bit grey levels are scaled to 8 bits, not clipped
        light = np.where(canvas == 255, 52428, 0).astype(np.uint16)  # 0.8 of full scale
        url = png_url(Image.fromarray(light))
    else:
        url = png_url(Image.fromarray(canvas).convert("P"))
    out = explain(client, {"image": url, "methods": ["saliency"]})
    assert out["source"]["inverted"] is True and out["source"]["width"] == 60
    if make != "grey16":
        assert out["predicted"] == 1
    else:
        same_in_8_bits = png_url(np.where(canvas == 255, 204, 0).astype(np.uint8))
        np.testing.assert_allclose(out["probs"], explain(client, {"image": same_in_8_bits})["probs"], atol=1e-3)


def _bomb() -> str:
    buf = io.BytesIO()
    Image.new("L", (6000, 6000), 0).save(buf, "PNG", optimize=True)  # 36 Mpx in a few kB
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("body,status,fragment", [
    ({}, 400, "exactly one of index"),
    ({"index": 1, "image": "data:image/png;base64,AAAA"}, 400, "exactly one of index"),
    ({"index": 500}, 400, "out of range"),
    ({"index": -1}, 400, "index"),
    ({"index": 1, "target": 10}, 400, "out of range"),
    ({"index": 1, "methods": ["magic"]}, 400, "methods.0"),
    ({"index": 1, "methods": ["cam", "cam"]}, 400, "once"),
    ({"index": 1, "model": "sentiment-lstm"}, 400, "not an image classifier"),
    ({"index": 1, "model": "nope"}, 404, "unknown model"),
    ({"image": "data:image/png;base64,!!not base64!!"}, 400, "base64"),
    ({"image": "data:image/png;base64," + base64.b64encode(b"GIF89a....").decode()}, 400, "not a PNG"),
    ({"image": "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()}, 400,
     "cannot decode"),
    ({"image": "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * (1 << 20)).decode()},
     413, "limit"),
    ({"image": "BOMB"}, 400, "too large"),
    ({"index": 1, "colour": "red"}, 400, "unknown parameter"),
])
def test_bad_input_gets_a_4xx_json_error(client, body, status, fragment):
    if body.get("image") == "BOMB":
        body = {"image": _bomb()}
    resp = client.post("/api/images/explain", json=body)
    assert resp.status_code == status, (resp.status_code, resp.data[:300])
    err = resp.get_json()["error"]
    assert err["status"] == status and fragment in err["message"], err


def test_truncated_real_png_is_refused(client, digits):
    x, _ = digits
    buf = io.BytesIO()
    Image.fromarray((x[0] * 255).astype(np.uint8)).save(buf, "PNG")
    cut = buf.getvalue()[: len(buf.getvalue()) // 2]
    resp = client.post("/api/images/explain", json={"image": base64.b64encode(cut).decode()})
    assert resp.status_code == 400 and "cannot decode" in resp.get_json()["error"]["message"]


def test_filters_endpoint(client):
    out = client.get("/api/images/model?model=mnist-cnn").get_json()
    assert out["n_filters"] == 32 and out["kernel"] == [3, 3]
    assert decode(out["filters"]).ndim == 3
    assert client.get("/api/images/model?model=sentiment-cnn").status_code == 400


def test_tsne_job_is_cached_and_consistent_with_the_model(client, digits):
    import data
    x, y = digits
    r = job_result(client, "/api/images/tsne", {"model": "mnist-cnn"})
    assert len(r["x"]) == len(r["y"]) == len(y) == 500
    assert r["label"] == y.tolist()
    with torch.no_grad():
        pred = data.load_model("mnist-cnn")(torch.from_numpy(x)[:, None]).argmax(1).numpy()
    assert r["predicted"] == pred.tolist() and r["accuracy"] == pytest.approx(float(np.mean(pred == y)))
    # classes form clusters: a digit's nearest neighbour on the map mostly shares its label
    pts = np.stack([r["x"], r["y"]], 1)
    d = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(y[d.argmin(1)] == y) > 0.9
    again = client.post("/api/images/tsne", json={"model": "mnist-cnn"}).get_json()
    assert again["status"] == "done"  # computed once, then served from the job cache


def test_activation_maximization_images_are_classified_as_their_class(client):
    import data
    r = job_result(client, "/api/images/activation-max", {"model": "mnist-cnn", "steps": 128})
    assert r["labels"] == [str(i) for i in range(10)] and len(r["images"]) == 10
    pixels = np.stack([decode(u)[::3, ::3, 0] for u in r["images"]]).astype(np.float32) / 255
    with torch.no_grad():
        pred = data.load_model("mnist-cnn")(torch.from_numpy(pixels)[:, None]).argmax(1)
    assert pred.tolist() == list(range(10))


def test_sanity_job_randomizes_from_the_top(client):
    r = job_result(client, "/api/images/sanity", {"model": "mnist-cnn", "methods": ["gradient", "gradcam"],
                                                "n_images": 4})
    layers = list(dict.fromkeys(row["layer"] for row in r["rows"]))
    assert layers[0] == "fc" and layers[-1] == "features.0"
    assert {row["method"] for row in r["rows"]} == {"gradient", "gradcam"}
    assert r["figure"]["data"] and len(r["images"]) == 4
    for bad in ({"n_images": 1000}, {"mode": "sideways"}, {"methods": []}, {"model": "parens-lstm"}):
        assert client.post("/api/images/sanity", json=bad).status_code == 400


def test_concurrent_requests_equal_one_at_a_time(app):
    """Hooks and guided-backprop rules of one request never touch another's pass (same model, 8 at once)."""
    bodies = [{"index": i, "methods": ["guided_backprop", "gradcam", "deconvnet", "guided_gradcam", "saliency"],
               "target": (i * 3) % 10 if i % 2 else None} for i in range(8)]

    def call(body):
        resp = app.test_client().post("/api/images/explain", json=body)
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()

    for got, ref in alone_and_together(call, bodies):
        assert got["target"] == ref["target"]
        for a, b in zip(got["overlays"], ref["overlays"]):
            assert a["method"] == b["method"]
            assert a["png"] == b["png"], a["method"]
