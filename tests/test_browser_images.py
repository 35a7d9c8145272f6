"""The image-methods page in real headless Chromium: loads cleanly, plotly draws, choosing a digit
shows an overlay for every method, an uploaded PNG is explained, the t-SNE map and sanity check
draw, and a click on the map explains that digit."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from conftest_server import CHROMIUM, TIMEOUT_MS, live_server, shot

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")]


@pytest.fixture(scope="module")
def base_url():
    from server.app import create_app
    with live_server(create_app(None, {"TESTING": True, "DEMO": False})) as url:
        yield url



def n_methods() -> int:
    from textexplain import image
    return len(image.METHODS)


def overlays_loaded(page) -> int:
    return page.eval_on_selector_all("#overlays .image-card img", "els => els.filter(e => e.complete && e.naturalWidth > 0).length")


def test_choosing_a_digit_shows_every_method_and_the_model_views(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/images")
    page.wait_for_selector("#overlays .image-card")
    page.wait_for_selector("#probs-plot .barlayer .trace", state="attached")
    assert page.locator("#picker button").count() == 30
    # pick a "7" from the picker
    seven = page.locator('#picker button[title$="(label 7)"]').first
    index = int(seven.get_attribute("data-index"))
    seven.click()
    page.wait_for_function(f"() => document.querySelector('#input-note').textContent.startsWith('test digit {index},')")
    assert page.locator("#overlays .image-card").count() == n_methods()
    assert overlays_loaded(page) == n_methods()
    titles = page.locator("#overlays .image-card b").all_text_contents()
    for name in ("Saliency", "SmoothGrad", "Gradient × input", "Guided backprop", "Deconvnet", "Integrated Gradients",
                 "Occlusion", "CAM", "Grad-CAM", "Guided Grad-CAM"):
        assert name in titles
    assert f"index={index}" in page.url
    assert "current" in (seven.get_attribute("class") or "")
    assert page.locator("#feature-maps img").count() == 2
    # per-model views: filters, activation maximization, t-SNE, sanity check
    page.wait_for_selector("#tsne-plot .scatterlayer .trace", state="attached", timeout=2 * TIMEOUT_MS)
    page.wait_for_selector("#am .image-card img", timeout=2 * TIMEOUT_MS)
    page.wait_for_selector("#sanity-plot .scatterlayer .trace", state="attached", timeout=2 * TIMEOUT_MS)
    assert page.locator("#am .image-card").count() == 10
    assert page.eval_on_selector("#filters", "e => e.naturalWidth") > 0
    shot(page, "images-methods.png", docs=True)
    # a click on the t-SNE map explains that digit
    page.evaluate("""() => { const gd = document.getElementById('tsne-plot');
        gd.emit('plotly_click', {points: [{customdata: [123, 0, 0]}]}); }""")
    page.wait_for_function("() => document.querySelector('#input-note').textContent.startsWith('test digit 123,')")
    assert page.input_value("#index") == "123"


def test_uploading_a_png_explains_it(watched, base_url, tmp_path):
    page = watched.page
    page.goto(f"{base_url}/images?index=0")
    page.wait_for_selector("#overlays .image-card")
    canvas = np.full((64, 48), 255, np.uint8)
    canvas[8:56, 20:28] = 0  # a dark "1" on white paper
    path = tmp_path / "one.png"
    Image.fromarray(canvas).save(path)
    page.set_input_files("#upload", str(path))
    page.wait_for_function("() => document.querySelector('#input-note').textContent.startsWith('uploaded')")
    assert "48×64" in page.text_content("#input-note") and "inverted" in page.text_content("#input-note")
    page.wait_for_function(f"() => document.querySelectorAll('#overlays .image-card img').length === {n_methods()}")
    assert "predicted 1" in page.text_content("#overlay-note")
    # a file that is not a PNG gets the server's message, not a broken page
    bad = tmp_path / "fake.png"
    bad.write_bytes(b"not an image at all")
    watched.page.set_input_files("#upload", str(bad))
    page.wait_for_selector("#error-banner:not([hidden])")
    assert "PNG" in page.text_content("#error-banner")
    watched.problems = [p for p in watched.problems if "400" not in p]
    shot(page, "images-upload.png")


def test_method_settings_are_built_from_the_declarations_and_sent(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/images?index=0")
    page.wait_for_selector("#overlays .image-card")
    n_samples = page.locator("#p-smoothgrad-n_samples")
    assert n_samples.get_attribute("max") == "200" and n_samples.input_value() == "50"
    page.locator("#params summary").click()
    with page.expect_request("**/api/images/explain") as request:
        n_samples.fill("4")
        n_samples.dispatch_event("change")
    assert request.value.post_data_json["params"] == {"smoothgrad": {"n_samples": 4}}
    page.wait_for_selector("#overlays .image-card")
