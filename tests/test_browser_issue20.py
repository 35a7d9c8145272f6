"""Issue 20 in real headless Chromium, on the toy store (known answers): one colour convention with
numbered legends and AA text contrast, results marked stale when a request fails, the explorer's
hints for a brush that selects nothing, history, keyboard, the cells page's controls, the empty
state, the jobs page and the 404 page."""
from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from conftest_server import CHROMIUM, TOY_TEXTS, Watched, live_server, make_toy_store

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")]

TOKENS = " ".join(TOY_TEXTS).split()
CAT_SAT = [i for i in range(len(TOKENS) - 1) if TOKENS[i] == "cat" and TOKENS[i + 1] == "sat"]

# WCAG contrast of every element's text on its own inline background (the coloured cells), in the page
LOW_CONTRAST_JS = """(selector) => {
  const lum = c => { const m = c.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number).map(v => { v /= 255;
    return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * m[0] + 0.7152 * m[1] + 0.0722 * m[2]; };
  const bad = [];
  let n = 0;
  for (const node of document.querySelectorAll(selector)) {
    if (!node.style.background || !node.textContent.trim()) continue;
    const cs = getComputedStyle(node);
    const [a, b] = [lum(cs.backgroundColor), lum(cs.color)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    n++;
    if (ratio < 4.5) bad.push(`${node.textContent} ${cs.color} on ${cs.backgroundColor}: ${ratio.toFixed(2)}`);
  }
  return { n, bad };
}"""


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    from server.app import create_app
    d = tmp_path_factory.mktemp("issue20")
    make_toy_store(d / "toy.h5").close()
    warm = make_toy_store(tmp_path_factory.mktemp("warm") / "warm.h5")  # compile the match kernels first
    with warm:
        warm.match(warm.sources[0], [0], progress=False)
    with live_server(create_app(d, {"TESTING": True})) as url:
        yield url



def token(page, pos: int):
    return page.locator(f'#tokens .tok[data-pos="{pos}"]')


def brush(page, a: int, b: int):
    first, last = token(page, a).bounding_box(), token(page, b).bounding_box()
    page.mouse.move(first["x"] + first["width"] / 2, first["y"] + first["height"] / 2)
    page.mouse.down()
    page.mouse.move(last["x"] + last["width"] / 2, last["y"] + last["height"] / 2, steps=4)
    page.mouse.up()


def open_explorer(page, base_url, query=""):
    page.goto(f"{base_url}/explorer?store=toy{query}")
    page.wait_for_selector("#lineplot .scatterlayer .trace", state="attached")


def test_one_palette_the_library_colours(watched, base_url):
    """LV.diverging / LV.sequential are textexplain.render's scale: blue for, red against, purples unsigned."""
    from textexplain import render
    page = watched.page
    open_explorer(page, base_url)
    for t in (1.0, 0.5, 0.1, 0.0, -0.3, -1.0):
        want = "rgb({},{},{})".format(*render.score_color(t, True))
        assert page.evaluate(f"LV.diverging({t})") == want, t
    for t in (0.0, 0.4, 1.0):
        assert page.evaluate(f"LV.sequential({t})") == "rgb({},{},{})".format(*render.score_color(t, False))
    # text colour on every level of both scales passes WCAG AA
    worst = page.evaluate("""() => { let w = 99; for (let i = -100; i <= 100; i++) {
        for (const c of [LV.diverging(i / 100), LV.sequential(Math.abs(i) / 100)]) w = Math.min(w, LV.contrast(c, LV.textOn(c))); }
        return w; }""")
    assert worst >= 4.5


def test_explorer_colours_legends_and_contrast(watched, base_url):
    page = watched.page
    a = CAT_SAT[0]
    open_explorer(page, base_url, f"&brush={a},{a + 2}&match=1")
    page.wait_for_selector("#word-matrix tr.match-row")
    # numbered legends for the token shading and the match rows
    expect(page.locator("#token-legend .legend-ticks span").first).to_have_text("0")
    expect(page.locator("#match-legend .legend-ticks span").last).to_have_text("1")
    for selector in ("#tokens .tok", "#word-matrix td"):
        r = page.evaluate(LOW_CONTRAST_JS, selector)
        assert r["n"] > 0 and not r["bad"], (selector, r)
    # the counts say what they count
    summary = page.text_content("#match-summary")
    assert "best-ranked runs" in summary and "runs in the corpus have all 1 cells on" in summary


def test_zero_cell_brush_explains_why_and_one_click_fixes_it(watched, base_url):
    page = watched.page
    open_explorer(page, base_url)
    brush(page, 2, 2)  # "sat": cells 0 and 2 are on, but also at "cat" before it (the padding)
    hints = page.locator("#select-hints")
    expect(hints).to_be_visible()
    expect(hints).to_contain_text("2 cells are on over the brush, but also in the padding")
    expect(hints.locator("button", has_text="brush [1, 3): 1 cells")).to_be_enabled()
    hints.locator("button", has_text="no padding: 2 cells").click()
    expect(page.locator("#cell-chips .chip")).to_have_text(["0", "2"])
    assert "pad=0,0" in page.url
    expect(hints).to_be_hidden()


def test_back_undoes_a_jump_and_matches_come_back(watched, base_url):
    page = watched.page
    a = CAT_SAT[0]
    open_explorer(page, base_url, f"&w=10&brush={a},{a + 2}&match=1")
    page.wait_for_selector("#word-matrix tr.match-row")
    start = page.url
    page.locator(f'#word-matrix tr.match-row[data-position="{CAT_SAT[2]}"] td').nth(3).click()
    expect(page.locator(f'#tokens .tok[data-pos="{CAT_SAT[2]}"]')).to_have_class("tok brushed", timeout=30_000)
    assert page.url != start
    page.go_back()
    page.wait_for_selector("#word-matrix tr.match-row")
    assert page.url == start
    expect(token(page, a)).to_have_class("tok brushed")
    # a threshold with no cell hides the matches; the selection coming back brings them back
    page.fill("#threshold", "0.95")
    page.press("#threshold", "Enter")
    expect(page.locator("#match-view")).to_be_hidden()
    page.fill("#threshold", "0.3")
    page.press("#threshold", "Enter")
    expect(page.locator("#match-view")).to_be_visible()
    page.wait_for_selector("#word-matrix tr.match-row")


def test_threshold_slider_is_scaled_to_the_data_and_shows_its_value(watched, base_url):
    page = watched.page
    open_explorer(page, base_url)
    assert float(page.get_attribute("#threshold-slider", "max")) == pytest.approx(0.9)  # max |value| of the window
    page.locator("#threshold-slider").fill("0.85")
    expect(page.locator("#threshold-readout")).to_have_text("threshold 0.85")
    assert page.input_value("#threshold") == "0.85"


def test_selected_lines_have_their_colours_hover_highlights_and_only_selected(watched, base_url):
    page = watched.page
    a = CAT_SAT[0]
    open_explorer(page, base_url, f"&brush={a},{a + 1}")
    expect(page.locator("#cell-chips .chip")).to_have_text(["0", "1"])
    traces = "() => document.getElementById('lineplot').data.filter(t => t.name && t.name.startsWith('cell ')).map(t => [t.name, t.line.color, t.line.width])"
    lines = page.evaluate(traces)
    assert [n for n, _, _ in lines] == ["cell 0", "cell 1"] and lines[0][1] != lines[1][1]
    page.hover('#cell-chips .chip[data-cell="0"]')
    page.wait_for_function("() => document.getElementById('lineplot').data.some(t => t.name === 'cell 0' && t.line.width === 4)")
    page.check("#only-selected")
    page.wait_for_function("() => document.getElementById('lineplot').data.find(t => t.name === 'cells').x.length === 0")
    assert "only=1" in page.url


def test_keyboard_brush_select_and_match_rows(watched, base_url):
    page = watched.page
    a = CAT_SAT[0]
    open_explorer(page, base_url)
    page.focus('#tokens .tok[tabindex="0"]')
    for _ in range(a):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Enter")
    expect(page.locator("#cell-chips .chip")).to_have_text(["0"])
    assert f"brush={a},{a + 2}" in page.url
    page.focus("#match")
    page.keyboard.press("Enter")
    page.wait_for_selector("#word-matrix tr.match-row")
    row = page.locator(f'#word-matrix tr.match-row[data-position="{CAT_SAT[1]}"]')
    row.focus()
    page.keyboard.press("Enter")
    expect(page.locator(f'#tokens .tok[data-pos="{CAT_SAT[1]}"]')).to_have_class("tok brushed", timeout=30_000)
    # a match opens in a new tab from its link
    href = row.locator("a").get_attribute("href")
    assert f"brush={CAT_SAT[1]},{CAT_SAT[1] + 2}" in href and row.locator("a").get_attribute("target") == "_blank"


def test_a_failed_request_marks_the_old_result_stale(browser, base_url):
    w = Watched(browser)
    page = w.page
    a = CAT_SAT[0]
    open_explorer(page, base_url, f"&brush={a},{a + 1}")
    expect(page.locator("#cell-chips .chip")).to_have_text(["0", "1"])
    brush(page, 4, 8)  # across a sentence end: the API refuses it
    expect(page.locator("#error-banner")).to_contain_text("out of date")
    expect(page.locator("#cell-chips")).to_have_class("cell-chips stale")
    brush(page, a, a + 1)  # a good request clears the mark
    expect(page.locator("#cell-chips")).to_have_class("cell-chips")
    expect(page.locator("#error-banner")).to_be_hidden()
    w.problems = [p for p in w.problems if "400" not in p]
    w.close()


def test_cells_page_offers_what_fits_and_never_sticks(browser, base_url):
    w = Watched(browser)
    page = w.page
    page.goto(f"{base_url}/cells?store=toy&source=rnn.l0.h&hyp=meta:label")
    page.wait_for_selector("#rank-table tr.clickable")
    options = page.locator("#hypothesis option").all_text_contents()
    assert not any(o.startswith(("quotes", "docstring", "indent", "comment")) for o in options), options  # word level
    expect(page.locator("#arg-label")).to_be_hidden()  # only the typed hypotheses show the input
    page.select_option("#hypothesis", "regex:")
    expect(page.locator("#arg-label")).to_be_visible()
    page.fill("#arg", "(unclosed")
    page.click("#rank-go")
    expect(page.locator("#error-banner")).to_be_visible()
    expect(page.locator("#rank-summary")).to_have_text("ranking failed (see the message above)")
    expect(page.locator("#rank-table")).to_have_class("table stale")
    # a cell's heat text: legend with numbers, AA contrast, 0/1 ticks on the binary hypothesis axis
    page.goto(f"{base_url}/cells?store=toy&source=rnn.l0.h&hyp=meta:label&cell=0")
    page.wait_for_selector("#cell-text span[data-pos]")
    expect(page.locator(".heat-legend .legend-ticks span").first).to_have_text("-0.9")
    r = page.evaluate(LOW_CONTRAST_JS, "#cell-text span, #contexts span")
    assert r["n"] > 0 and not r["bad"], r
    page.wait_for_selector("#cell-plot .scatterlayer .trace", state="attached")
    assert page.evaluate("document.getElementById('cell-plot').layout.yaxis2.tickvals") == [0, 1]
    # keyboard: a rank row opens by Enter, a token explains by Enter (the toy store has no model: an error)
    w.problems = [p for p in w.problems if "400" not in p]
    w.close()


def test_low_when_true_cell_opens_on_its_lowest_contexts(watched, base_url):
    page = watched.page
    # cell 0 of the negated source rnn.l0.c is low exactly over "cat sat"
    page.goto(f"{base_url}/cells?store=toy&source=rnn.l0.c&hyp=tokens:cat,sat")
    row = page.locator('#rank-table tr.clickable[data-cell="0"]')
    expect(row).to_contain_text("low when true")
    row.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#direction-note")).to_contain_text("low where tokens:cat,sat holds")
    assert page.input_value("#direction") == "-1"
    first = page.locator("#contexts div").first
    expect(first).to_be_attached()
    assert TOKENS[int(first.get_attribute("data-position"))] in ("cat", "sat")


def test_empty_data_directory_says_how_to_add_a_store(watched, tmp_path):
    from server.app import create_app
    with live_server(create_app(tmp_path, {"TESTING": True})) as url:
        page = watched.page
        page.goto(url + "/explorer")
        expect(page.locator("#empty-state")).to_be_visible()
        expect(page.locator("#empty-state")).to_contain_text("lstmvis extract")
        expect(page.locator("#error-banner")).to_be_hidden()
        page.wait_for_load_state("networkidle")


def test_jobs_page_and_404_page(browser, base_url, tmp_path):
    from server.app import create_app
    w = Watched(browser)
    page = w.page
    with live_server(create_app(tmp_path, {"TESTING": True})) as fresh:  # opening a store starts a job: none here
        page.goto(fresh + "/jobs")
        expect(page.locator("#jobs-empty")).to_be_visible()
    assert page.request.get(base_url + "/api/stores/toy").ok  # opening the store builds its index: a job
    page.goto(base_url + "/jobs")
    expect(page.locator("#jobs-table tbody tr", has_text="index").first).to_be_visible()
    expect(page.locator(".topnav a.active")).to_have_text("Jobs")
    resp = page.goto(base_url + "/no/such/page")
    assert resp.status == 404
    expect(page.locator("h1")).to_have_text("No such page")
    expect(page.locator(".topnav a", has_text="Explorer")).to_be_visible()
    w.problems = [p for p in w.problems if "404" not in p]
    w.close()
