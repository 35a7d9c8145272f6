"""Every page of the bundled demo in real headless Chromium: loads with no console errors and no
failed requests, plotly draws its plots; the cell page ranks, shows a cell and explains it.
Screenshots go to test-artifacts/screenshots/."""
from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from conftest_server import CHROMIUM, demo_resources, live_server, shot

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")]

SLOW = 90_000  # ms: a loaded CI machine


@pytest.fixture(scope="module")
def app():
    from server.app import create_app
    res = demo_resources()
    not_ready = {s.name: s.message for s in res.stores.values() if s.status != "ready"}
    assert not not_ready, not_ready
    return create_app(None, {"RESOURCES": res, "TESTING": True})


@pytest.fixture(scope="module")
def base_url(app):
    with live_server(app) as url:
        yield url


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    yield page
    page.wait_for_load_state("networkidle")
    context.close()
    assert not problems, problems


def drawn(page, selector: str):
    """plotly has drawn at least one trace into ``selector``."""
    expect(page.locator(f"{selector} .plot-container .trace").first).to_be_attached(timeout=SLOW)


def test_landing_lists_pages_models_and_stores(page, base_url, app):
    page.goto(base_url + "/")
    for p in app.config["NAV_PAGES"]:
        expect(page.locator(".cards .card h3", has_text=p["title"])).to_have_count(1)
    for name in ("parens", "sentiment", "python-code"):
        expect(page.locator(f'#stores-table tr[data-store="{name}"][data-status="ready"]')).to_have_count(1)
    expect(page.locator('#models-table tr[data-model="charlm-python"]')).to_have_count(1)
    shot(page, "landing.png", docs=True)


def test_every_nav_page_loads_clean(page, base_url, app):
    for p in app.config["NAV_PAGES"]:
        with app.test_request_context():
            from flask import url_for
            path = url_for(p["endpoint"])
        page.goto(base_url + path)
        page.wait_for_load_state("networkidle")
        expect(page.locator("#error-banner")).to_be_hidden()


def test_explorer_on_the_python_demo(page, base_url):
    # brush three characters of a docstring in the char-level LSTM's store; match finds the same cells elsewhere
    page.goto(base_url + "/explorer?store=python-code&source=rnn.l1.h&pos=23384&w=100")
    drawn(page, "#lineplot")
    first = page.locator('#tokens .tok[data-pos="23404"]').bounding_box()
    last = page.locator('#tokens .tok[data-pos="23406"]').bounding_box()
    page.mouse.move(first["x"] + 3, first["y"] + 5)
    page.mouse.down()
    page.mouse.move(last["x"] + 3, last["y"] + 5, steps=3)
    page.mouse.up()
    expect(page.locator("#cell-chips .chip").first).to_be_attached(timeout=SLOW)
    page.click("#match")
    expect(page.locator("#word-matrix tr.match-row").first).to_be_attached(timeout=SLOW)
    drawn(page, "#length-hist")
    drawn(page, "#match-overview")
    assert "brush=23404,23407" in page.url and "match=1" in page.url
    shot(page, "explorer.png", docs=True)


def test_cells_page_ranks_shows_and_explains_a_cell(page, base_url):
    page.goto(base_url + "/cells?store=python-code&source=rnn.l1.c&hyp=quotes")
    expect(page.locator("#rank-table tr.clickable").first).to_be_attached(timeout=SLOW)
    drawn(page, "#rank-plot")
    strength = float(page.locator("#rank-table tr.clickable").first.locator("td").nth(3).text_content())
    assert strength > 0.5, "charlm-python has a cell that tracks string literals"
    page.locator("#rank-table tr.clickable").first.click()
    expect(page.locator("#contexts div").first).to_be_attached(timeout=SLOW)
    drawn(page, "#cell-plot")
    drawn(page, "#saturation-plot")
    page.locator("#cell-text span").nth(120).click()
    expect(page.locator("#explain-text span").first).to_be_attached(timeout=SLOW)
    summary = page.text_content("#explain-summary")
    assert "activation" in summary and "gradient evaluations of at most 200" in summary
    assert "not converged" not in summary, summary  # the adaptive rule refines until the gap is within 1%
    assert "the 100 tokens before the step" in summary
    page.select_option("#explain-window", "300")  # more context for the model: explained again
    expect(page.locator("#explain-summary")).to_contain_text("the 300 tokens before the step", timeout=SLOW)
    assert "step=" in page.url and "cell=" in page.url
    shot(page, "cells.png", docs=True)


def test_textcnn_page_shows_filters(page, base_url):
    page.goto(base_url + "/textcnn")
    expect(page.locator(".ngram-card").first).to_be_attached(timeout=SLOW)
    drawn(page, "#filters-plot")
    assert page.locator(".ngram-card").count() == 128
    page.fill("#filter-search", "boring")
    expect(page.locator(".ngram-card").first).to_contain_text("boring")
    shot(page, "textcnn.png", docs=True)


def test_tokens_from_user_text_render_inert(page, base_url, app, tmp_path):
    """A store whose text holds markup shows it as text: no element, no dialog."""
    import numpy as np

    from lstmvis import StateStore
    from server.app import create_app

    evil = ["<img src=x onerror=alert(1)>", "<script>alert(2)</script>", "ok"]
    StateStore.from_arrays(tmp_path / "evil.h5", {"rnn.l0.h": np.random.default_rng(0).random((3, 4), np.float32)},
                           tokens=evil).close()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    with live_server(create_app(tmp_path, {"TESTING": True})) as url:
        page.goto(url + "/explorer?store=evil")
        drawn(page, "#lineplot")
        expect(page.locator("#tokens .tok").first).to_have_text(evil[0])
        assert page.locator("#tokens img, #tokens script").count() == 0
        page.wait_for_timeout(300)
    assert dialogs == []


AXE = os.path.join(os.popen("npm root -g").read().strip(), "axe-core", "axe.min.js")


def every_page(app) -> list[str]:
    from flask import url_for
    with app.test_request_context():
        return [url_for(p["endpoint"]) for p in app.config["NAV_PAGES"]] + ["/", "/jobs"]


@pytest.mark.skipif(not os.path.exists(AXE), reason="needs axe-core from npm")
def test_axe_finds_no_serious_violation_on_any_page(browser, base_url, app):
    """axe-core (WCAG 2 A/AA rules) on every page once its results are drawn: no serious or critical violation."""
    found = {}
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)  # to inject axe
    page = context.new_page()
    for path in every_page(app):
        page.goto(base_url + path)
        page.wait_for_load_state("networkidle")
        page.add_script_tag(path=AXE)
        result = page.evaluate("""async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
            .filter(v => v.impact === "serious" || v.impact === "critical")
            .map(v => `${v.id}: ${v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(" | ")}`)""")
        if result:
            found[path] = result
    context.close()
    assert not found, found


def test_every_page_is_usable_at_390_px(browser, base_url, app):
    """A phone's width: nothing wider than the screen but scrolling boxes, and the text box keeps its width."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True)
    page = context.new_page()
    try:
        for path in every_page(app):
            page.goto(base_url + path)
            page.wait_for_load_state("networkidle")
            wide = page.evaluate("""() => [...document.querySelectorAll('body *')].filter(n => {
                const r = n.getBoundingClientRect();
                if (r.right <= 392 || !r.width) return false;
                for (let p = n.parentElement; p; p = p.parentElement) {
                  const o = getComputedStyle(p).overflowX;
                  if (o === 'auto' || o === 'scroll' || o === 'hidden') return false;
                }
                return true; }).slice(0, 5).map(n => `${n.tagName}#${n.id}.${n.className} ${Math.round(n.getBoundingClientRect().right)}`)""")
            assert not wide, (path, wide)
        page.goto(base_url + "/explain")
        assert page.locator("#text").bounding_box()["width"] > 300
    finally:
        context.close()
