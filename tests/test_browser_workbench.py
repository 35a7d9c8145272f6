"""The workbench page in real headless Chromium, on a hand-set model and a --corpus CSV: the table
(sort, filter, paging, keyboard), the datapoint editor with pinning, a counterfactual into the
generated table, a second model, the projector with a selection that filters the table, the
metrics with slices and threshold, the global view with the audit, state in the URL, 390 px; the
projector by keyboard only (a ring moved by the arrows, a selection made with Space and applied with S)
with axe-core."""
from __future__ import annotations

import json
import os
import re

import pytest
from playwright.sync_api import expect

from conftest_server import CHROMIUM, Watched, live_server
from test_browser_explorer_parity import assert_axe_clean
from test_browser_keyboard import arrow_around, tab_to
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


def test_projector_by_keyboard_only(watched, base_url):
    """The projector is one Tab stop: arrows move a ring to the nearest point that way (announced), Space
    marks the rows under the ring (the corpus repeats each text 3 times: 3 rows at each place) for a
    selection, S applies it as the lasso does (the table and the metrics hold exactly those rows), Enter
    opens the row under the ring, Escape clears the selection. The traces stay the colour groups for mouse users."""
    page = watched.page
    page.goto(f"{base_url}/workbench?model=bag&corpus=file:toy.csv")  # its projection spreads in 2-D
    page.wait_for_selector("#wb-table tbody tr")
    hint = page.locator("#pj-status")
    assert hint.get_attribute("aria-live") == "polite" and "S applies" in hint.text_content()
    tab_to(page, "#pj-run")
    page.keyboard.press("Enter")
    page.wait_for_selector("#pj-plot .scatterlayer .point", state="attached")
    tab_to(page, "#pj-plot")

    def announced() -> int:
        m = re.search(r"row (\d+): gold (\S+), predicted (\S+)", hint.text_content())
        assert m, hint.text_content()
        return int(m[1])

    arrow_around(page, announced)
    # the ring sits on the announced point; the traces are only the colour groups (gold label: pos, neg)
    plot = page.evaluate("""() => { const gd = document.getElementById('pj-plot');
        const ring = (gd.layout.shapes || []).find(s => s.name === 'keyboard');
        return { ring: [ring.xanchor, ring.yanchor], traces: gd.data.map(t => t.name),
                 points: gd.data.flatMap(t => t.customdata.map((id, k) => [id, t.x[k], t.y[k]])) }; }""")
    assert sorted(plot["traces"]) == ["neg", "pos"]
    where = {id_: [x, y] for id_, x, y in plot["points"]}
    assert where[announced()] == plot["ring"]
    assert "at the same place" in hint.text_content()
    # Space marks 3 points, each with the rows at its place
    chosen, marked = [], set()
    for key in ("ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp", "ArrowRight", "ArrowDown"):
        if announced() not in marked:
            chosen.append(announced())
            page.keyboard.press("Space")
            marked |= {i for i, xy in where.items() if xy == where[chosen[-1]]}
            expect(hint).to_contain_text(f"{len(marked)} selected")
        if len(chosen) == 3:
            break
        page.keyboard.press(key)
    assert len(chosen) == 3 and len(marked) == 9, (chosen, marked)
    marks = page.evaluate("""() => document.getElementById('pj-plot').layout.shapes
        .filter(s => s.name === 'keyboard selection').map(s => [s.xanchor, s.yanchor])""")
    assert sorted(marks) == sorted(where[i] for i in marked)
    # Space again takes the place out, and once more puts it back
    page.keyboard.press("Space")
    expect(hint).to_contain_text("6 selected")
    page.keyboard.press("Space")
    expect(hint).to_contain_text("9 selected")
    row = announced()  # the ring stays on the last point marked
    # S applies: the same request as the lasso, the table and the metrics hold exactly those rows
    with page.expect_request(lambda r: r.url.endswith("/api/workbench/selection") and r.method == "POST") as req:
        page.keyboard.press("s")
    assert sorted(json.loads(req.value.post_data)["ids"]) == sorted(marked)
    page.wait_for_function("() => document.querySelector('#wb-total').textContent.startsWith('9 rows')")
    expect(rows(page)).to_have_count(9)
    ids = [int(x) for x in page.locator("#wb-table tbody tr td:nth-child(1)").all_text_contents()]
    assert sorted(ids) == sorted(marked) and "sel=" in page.url
    page.wait_for_function("() => document.querySelector('#m-summary').textContent.startsWith('9 rows')")
    expect(hint).to_contain_text("applied: 9 rows")
    expect(page.locator("#wb-clear-sel")).to_be_visible()
    # Enter opens the row under the ring, as a click on its table row does; the focus stays on the plot
    page.keyboard.press("Enter")
    page.wait_for_selector("#wb-explanation .wb-tokens span")
    assert f"row={row}" in page.url
    text = page.locator(f"#wb-table tbody tr[data-id='{row}'] td.text").text_content()
    assert page.input_value("#wb-text") == text
    expect(page.locator(f"#wb-table tbody tr[data-id='{row}']")).to_have_class(re.compile("current"))
    assert page.evaluate("document.activeElement.id") == "pj-plot"
    assert_axe_clean(watched)
    # Escape clears the selection, as the clear-selection button does
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.querySelector('#wb-total').textContent.startsWith('30 rows')")
    assert "sel=" not in page.url
    expect(page.locator("#wb-clear-sel")).to_be_hidden()
    expect(hint).to_contain_text("cleared")
    assert page.evaluate("""() => document.getElementById('pj-plot').layout.shapes
        .filter(s => s.name === 'keyboard selection').length""") == 0


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
