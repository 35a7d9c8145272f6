"""The seed views in headless Chromium: the images page's Zeiler-Fergus grid and data randomization
table, the explanations page's embedding-dimension heatmap, the text-CNN page's per-token bars."""
from __future__ import annotations

import os

import pytest

from conftest_server import CHROMIUM, REVIEWS, live_server, make_review_store

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")]

TEXTS = REVIEWS


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    from server.app import create_app
    d = tmp_path_factory.mktemp("seeds")
    make_review_store(d)
    with live_server(create_app(d, {"TESTING": True, "DEMO": False})) as url:
        yield url



def test_images_page_shows_reconstructions_and_data_randomization(page, base_url):
    page.goto(f"{base_url}/images")
    page.wait_for_selector("#deconv-grid figure img")
    assert page.locator("#deconv-grid figure").count() == 9
    page.select_option("#deconv-layer", "features.1")
    page.fill("#deconv-unit", "4")
    page.press("#deconv-unit", "Enter")  # the keyboard submits the form
    page.wait_for_function("() => location.search.includes('zf_layer=features.1') && location.search.includes('zf_unit=4')")
    page.wait_for_selector("#deconv-grid figure img")
    page.fill("#datarand-n", "4")
    page.click("#datarand-run")
    page.wait_for_selector("#datarand-table tr td")
    assert page.locator("#datarand-table tr").count() >= 2


def test_explain_page_draws_the_embedding_heatmap_with_a_colour_bar(page, base_url):
    page.goto(f"{base_url}/explain?model=sentiment-cnn")
    page.wait_for_function("() => document.querySelector('#model').value === 'sentiment-cnn'")
    page.fill("#text", "a gorgeous , witty film")
    page.click("#embsal-run")
    page.wait_for_selector("#embsal-plot .hm", state="attached")
    page.wait_for_selector("#embsal-plot .colorbar", state="attached")
    ticks = page.locator("#embsal-plot .colorbar .cbaxis text").all_text_contents()
    assert any(t.strip() for t in ticks)
    page.fill("#textdatarand-n", "2")
    page.click("#textdatarand-run")
    page.wait_for_selector("#textmodelrand-table tr td")
    assert page.locator("#textdatarand-table tr td").count() >= 4


def test_textcnn_page_shows_per_token_bars_for_a_filter(page, base_url):
    page.goto(f"{base_url}/textcnn")
    page.wait_for_selector("#filter-grid *")
    page.fill("#tdeconv-filter", "5")
    page.click("#tdeconv-run")
    page.wait_for_selector("#tdeconv-rows .token")
    assert page.locator("#tdeconv-rows .salience").count() >= 1
    assert "zf_filter=5" in page.url
