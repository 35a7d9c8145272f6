"""The workbench page in real headless Chromium, on a hand-set model and a --corpus CSV: the table
(sort, filter, paging, keyboard), the datapoint editor with pinning, a counterfactual into the
generated table, a second model, the projector with a selection that filters the table, the
metrics with slices and threshold, the global view with the audit, state in the URL, 390 px."""
from __future__ import annotations

import json
import os

import pytest

from conftest_server import CHROMIUM, Watched, live_server
from test_workbench import GOLD, TEXTS, bag_model, sentiment_model

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")]

Q = "model=sent&corpus=file:toy.csv"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    from server.app import create_app
    from server.resources import ModelEntry
    path = tmp_path_factory.mktemp("corpus") / "toy.csv"
    path.write_text("text,label,source\n" + "".join(f"{json.dumps(t)},{y},{'xy'[i % 2]}\n"
                                                     for i, (t, y) in enumerate(zip(TEXTS * 3, GOLD * 3))))
    app = create_app(None, {"TESTING": True, "DEMO": False, "WORKBENCH_CORPORA": [str(path)]})
    models = app.extensions["lstmvis"].models
    models["sent"] = ModelEntry("sent", "user model", "hand-set weights", sentiment_model)
    models["bag"] = ModelEntry("bag", "user model", "random bag of embeddings", bag_model)
    with live_server(app) as url:
        yield url



def rows(page):
    return page.locator("#wb-table tbody tr")


def test_table_sort_filter_page_and_keyboard(page, base_url):
    page.goto(f"{base_url}/workbench?{Q}&sort=confidence&desc=1")
    page.wait_for_selector("#wb-table tbody tr")
    assert "30 rows selected" in page.text_content("#wb-total") and rows(page).count() == 25
    conf = [float(x) for x in page.locator("#wb-table tbody tr td:nth-child(5)").all_text_contents()]
    assert conf == sorted(conf, reverse=True)
    page.click("#wb-next")
    page.wait_for_function("() => document.querySelector('#wb-pageinfo').textContent.startsWith('rows 26')")
    assert rows(page).count() == 5 and "offset=25" in page.url
    page.fill("#f-regex", "movie")
    page.click("#wb-apply")
    page.wait_for_function("() => document.querySelector('#wb-total').textContent.startsWith('15 rows')")
    assert "regex=movie" in page.url
    rows(page).first.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#wb-explanation .wb-tokens span")
    assert "row=" in page.url and page.input_value("#wb-text")
    # the same address restores the view
    page.goto(page.url)
    page.wait_for_selector("#wb-explanation .wb-tokens span")
    assert page.input_value("#f-regex") == "movie"


def test_pin_edit_compare_and_counterfactual(page, base_url):
    page.goto(f"{base_url}/workbench?{Q}&model2=bag&methods=gradient_x_input&text=good%20great%20great%20movie")
    page.wait_for_selector("#wb-explanation .panel:nth-child(2) .wb-tokens span")
    assert "Second model: bag" in page.text_content("#wb-explanation")
    page.click("#wb-pin")
    page.fill("#wb-text", "good awful great movie")
    page.click("#wb-explain")
    page.wait_for_function("() => document.querySelector('#wb-pinned').textContent.includes('Current − pinned')")
    assert "Δp(pos)" in page.text_content("#wb-pinned") and "pin=" in page.url
    page.fill("#wb-text", "good great great movie")
    page.select_option("#cf-kind", "hotflip")
    page.click("#cf-run")
    page.wait_for_selector("#wb-generated tbody tr")
    cells = page.locator("#wb-generated tbody tr").first.locator("td").all_text_contents()
    assert cells[0] == "hotflip" and cells[3] == "neg"  # two substitutions flip 'pos' to 'neg'


def test_projector_selection_filters_table_and_metrics(page, base_url):
    page.goto(f"{base_url}/workbench?{Q}&slice=label")
    page.wait_for_selector("#m-slices tbody tr")
    assert page.locator("#m-slices tbody tr").count() == 2
    page.wait_for_selector("#m-confusion .heatmaplayer", state="attached")
    page.wait_for_selector("#m-reliability .barlayer", state="attached")
    page.click("#pj-run")
    page.wait_for_selector("#pj-plot .scatterlayer .point", state="attached")
    page.select_option("#pj-colour", "meta:source")  # any meta column colours the points
    page.wait_for_function("() => document.querySelectorAll('#pj-plot .legend .traces').length === 2")
    page.evaluate("document.getElementById('pj-plot').emit('plotly_selected', {points: [{customdata: 1}, {customdata: 3}]})")
    page.wait_for_function("() => document.querySelector('#wb-total').textContent.startsWith('2 rows')")
    assert "sel=" in page.url
    page.wait_for_function("() => document.querySelector('#m-summary').textContent.startsWith('2 rows')")
    page.check("#m-use-threshold")
    page.wait_for_function("() => document.querySelector('#m-summary').textContent.includes('threshold')")
    assert "thr=" in page.url


def test_global_view_with_audit_links(page, base_url):
    page.goto(f"{base_url}/workbench?{Q}&g_method=gradient_x_input")
    page.wait_for_selector("#wb-table tbody tr")
    page.fill("#g-sample", "30")
    page.click("#g-run")
    page.wait_for_selector("#g-results table")
    text = page.text_content("#g-results")
    assert "Expected saliency over 30 texts" in text and "Audit" in text and "Token importance" in text
    link = page.locator("#g-results a", has_text="open").first
    assert "/workbench?" in link.get_attribute("href") and "text=" in link.get_attribute("href")


def test_readable_at_390_px(browser, base_url):
    w = Watched(browser)
    try:
        w.page.set_viewport_size({"width": 390, "height": 800})
        w.page.goto(f"{base_url}/workbench?{Q}")
        w.page.wait_for_selector("#wb-table tbody tr")
        # the page's own content fits (the shared navigation bar is the base template's)
        overflow = w.page.evaluate("() => document.querySelector('main').scrollWidth")
        assert overflow <= 390, overflow
    finally:
        w.close()


def test_opens_on_a_shipped_model_and_split_without_parameters(page, base_url):
    page.goto(f"{base_url}/workbench")
    page.wait_for_selector("#wb-table tbody tr")
    assert page.input_value("#wb-corpus") == "rotten_tomatoes:test"
    assert "1275 rows selected" in page.text_content("#wb-total")
