"""The explorer's LSTMVis parity in real headless Chromium: meta tracks as heatmap strips beside each
match row (chosen by checkboxes, mapped onto the token backgrounds by a click), zoom and horizontal
scroll that keep every token readable, a brush with handles that updates the selection while it is
dragged (debounced), brushing by touch on a phone's width, the y axis pinned while the strip scrolls, and
the match minimap by keyboard. Each test also runs axe-core."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from playwright.sync_api import expect

from conftest_server import CHROMIUM, TOY_TEXTS, live_server, toy_states_by_sequence

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")]

AXE = os.path.join(os.popen("npm root -g").read().strip(), "axe-core", "axe.min.js")
# the toy corpus, a sentence with a long word and a long sentence (cell 0 on over each "cat sat", cell 1 at
# every "cat", cell 2 everywhere)
LONG = " ".join(f"w{i}" for i in range(30))
TEXTS = [*TOY_TEXTS, "an unforgettable film", LONG]
SEQS = [t.split() for t in TEXTS]
TOKENS = [t for s in SEQS for t in s]
CAT_SAT = [i for i in range(len(TOKENS) - 1) if TOKENS[i] == "cat" and TOKENS[i + 1] == "sat"]
POS = {"cat": "NOUN", "dogs": "NOUN", "mat": "NOUN", "film": "NOUN", "sat": "VERB", "ran": "VERB",
       "the": "DET", "a": "DET", "an": "DET", "here": "<img src=x onerror=alert(1)>"}  # a category is text, never markup
CODE = ["def f(x):", "    return 'a string'", "print(f(1))"] * 4


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    """A word-level store with a categorical (pos) and a numeric (depth) meta track, and a char-level one."""
    from lstmvis import StateStore
    from server.app import create_app
    d = tmp_path_factory.mktemp("parity")
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in SEQS])])
    StateStore.from_arrays(d / "words.h5", {"rnn.l0.h": toy_states_by_sequence(SEQS)}, tokens=TOKENS, offsets=offsets,
                           meta={"pos": [POS.get(t, "X") for t in TOKENS],
                                 "depth": np.concatenate([np.arange(len(s)) for s in SEQS])},
                           texts=TEXTS).close()
    chars = [c for line in CODE for c in line]
    char_offsets = np.concatenate([[0], np.cumsum([len(line) for line in CODE])])
    states = np.random.default_rng(0).normal(size=(len(chars), 4)).astype(np.float32)
    StateStore.from_arrays(d / "code.h5", {"rnn.l0.h": states}, tokens=chars, offsets=char_offsets, texts=CODE).close()
    warm = d / "warm"  # compile the match kernels first (numba, cached on disk)
    warm.mkdir()
    with StateStore.from_arrays(warm / "w.h5", {"x": states}, tokens=chars, offsets=char_offsets) as w:
        w.match("x", [0], progress=False)
    with live_server(create_app(d, {"TESTING": True})) as url:
        yield url


def token(page, pos: int):
    return page.locator(f'#tokens .tok[data-pos="{pos}"]')


def chips(page):
    return page.locator("#cell-chips .chip")


def url_has(page, text: str):
    """The address comes to hold `text` (it is written when the view changes)."""
    expect(page).to_have_url(re.compile(re.escape(text)))


def open_explorer(page, base_url, query=""):
    page.goto(f"{base_url}/explorer?store=words{query}")
    page.wait_for_selector("#lineplot .scatterlayer .trace", state="attached")


def assert_axe_clean(watched):
    """axe-core (WCAG 2 A/AA) on the page as it is now: no serious or critical violation."""
    if not os.path.exists(AXE):
        pytest.skip("needs axe-core from npm")
    cdp = watched.context.new_cdp_session(watched.page)
    with open(AXE, encoding="utf-8") as f:  # evaluated by the debugger: the app's CSP refuses injected script tags
        cdp.send("Runtime.evaluate", {"expression": f.read()})
    cdp.detach()
    found = watched.page.evaluate("""async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
        .filter(v => v.impact === "serious" || v.impact === "critical")
        .map(v => `${v.id}: ${v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(" | ")}`)""")
    assert not found, found


def colour(locator) -> str:
    return locator.evaluate("n => getComputedStyle(n).backgroundColor")


def test_meta_tracks_beside_each_match_row_choosable_and_mapped_onto_the_tokens(watched, base_url):
    page = watched.page
    a = CAT_SAT[0]
    open_explorer(page, base_url, f"&brush={a},{a + 2}&match=1")
    page.wait_for_selector("#word-matrix tr.match-row")
    rows = page.locator("#word-matrix tr.match-row")
    assert rows.count() == len(CAT_SAT)
    # under each match row one strip per track, one cell per token of the row, in the row's columns
    for name in ("pos", "depth"):
        strips = page.locator(f'#word-matrix tr.meta-row[data-meta="{name}"]')
        expect(strips).to_have_count(len(CAT_SAT))
    row = page.locator(f'#word-matrix tr.match-row[data-position="{a}"]')
    strip = page.locator(f'#word-matrix tr.meta-row[data-meta="pos"][data-position="{a}"]')
    cat = row.locator("td.in-match").first
    cat_strip = strip.locator(f'td[title="pos = NOUN @ {a}"]')
    assert abs(cat.bounding_box()["x"] - cat_strip.bounding_box()["x"]) < 1
    # categorical track: one palette colour per category, a legend naming them; numeric: purples with numbers
    nouns = {colour(strip.locator(f'td[title="pos = NOUN @ {p}"]')) for p in (a,)}
    verb = colour(strip.locator(f'td[title="pos = VERB @ {a + 1}"]'))
    assert len(nouns) == 1 and verb not in nouns
    legend = page.locator('#match-legend .cat-legend[data-meta="pos"]')
    for cat_name in ("DET", "NOUN", "VERB", "X", "<img src=x onerror=alert(1)>"):
        expect(legend).to_contain_text(cat_name)
    assert page.locator("#select-view img, #match-view img").count() == 0
    depth_legend = page.locator("#meta-legend .lv-legend", has_text="depth")
    expect(depth_legend.locator(".legend-ticks span").first).to_have_text("0")
    expect(depth_legend.locator(".legend-ticks span").last).to_have_text("29")  # the long sentence: 30 tokens

    # a click on a track colours the words by it, in the main token row and the match rows (again: back to the cells)
    before = colour(token(page, a + 1))
    strip.locator("button.meta-toggle").click()
    url_has(page, "bg=pos")
    expect(page.locator("#token-legend")).to_contain_text("meta track pos")
    assert colour(token(page, a + 1)) == verb and colour(token(page, a)) in nouns
    assert colour(row.locator("td.in-match").nth(1)) == verb
    # keyboard: the track buttons under the tokens are buttons too
    page.locator('#meta-tracks button.meta-toggle[data-meta="pos"]').focus()
    page.keyboard.press("Enter")
    assert "bg=" not in page.url
    assert colour(token(page, a + 1)) == before
    assert colour(row.locator("td.in-match").nth(1)) != verb

    # the checkboxes choose the tracks shown, under the tokens and beside the matches, kept in the URL
    page.uncheck('#meta-choices input[data-meta="depth"]')
    expect(page.locator('#word-matrix tr.meta-row[data-meta="depth"]')).to_have_count(0)
    expect(page.locator('#meta-tracks .meta-track[data-meta="depth"]')).to_have_count(0)
    expect(page.locator('#word-matrix tr.meta-row[data-meta="pos"]')).to_have_count(len(CAT_SAT))
    url_has(page, "hide_meta=depth")
    page.reload()
    page.wait_for_selector("#word-matrix tr.match-row")
    expect(page.locator('#word-matrix tr.meta-row[data-meta="depth"]')).to_have_count(0)
    assert not page.is_checked('#meta-choices input[data-meta="depth"]')
    assert_axe_clean(watched)


def readable(page) -> dict:
    """Per token: its column width, and whether its whole text shows (now, and while it has focus)."""
    return page.evaluate("""() => [...document.querySelectorAll('#tokens .tok')].map(n => {
        const cut = n.scrollWidth > n.clientWidth + 1;
        n.focus(); const cutFocused = n.scrollWidth > n.clientWidth + 1 || n.getBoundingClientRect().width < n.scrollWidth - 1;
        n.blur();
        return { width: n.getBoundingClientRect().width, cut, cutFocused, title: n.title,
                 rotated: getComputedStyle(n).writingMode !== 'horizontal-tb' || getComputedStyle(n).transform !== 'none' }; })""")


def test_zoom_and_scroll_keep_tokens_readable_and_aligned_with_the_plot(watched, base_url):
    page = watched.page
    page.set_viewport_size({"width": 800, "height": 900})
    open_explorer(page, base_url, "&w=40")
    toks = readable(page)
    assert len(toks) == 40
    assert min(t["width"] for t in toks) >= 28  # readable columns, not 4 px ones
    assert not any(t["rotated"] for t in toks)
    assert not any(t["cutFocused"] for t in toks)  # a long token shows whole while focused ...
    long = TOKENS.index("unforgettable")
    assert '"unforgettable"' in toks[long]["title"]  # ... and in its title
    # the strip is wider than the view: it scrolls, plot and tokens together (one x scale)
    box = page.locator("#track-scroll")
    assert box.evaluate("n => n.scrollWidth > n.clientWidth")

    def x_of_token_in_plot(pos):
        return page.evaluate(f"""() => {{ const gd = document.getElementById('lineplot');
            return gd.getBoundingClientRect().left + gd._fullLayout.margin.l + gd._fullLayout.xaxis.l2p({pos}); }}""")

    def token_centre(pos):
        b = token(page, pos).bounding_box()
        return b["x"] + b["width"] / 2

    for pos in (0, 10, 39):
        assert abs(x_of_token_in_plot(pos) - token_centre(pos)) < 1.5
    box.evaluate("n => { n.scrollLeft = 400; }")
    assert abs(x_of_token_in_plot(10) - token_centre(10)) < 1.5
    # zoom: buttons and the keys + and -, in the URL, and still aligned
    width = toks[0]["width"]
    page.click("#zoom-in")
    expect(page.locator("#zoom-readout")).to_have_text("72 px per token")
    url_has(page, "zoom=72")
    box.focus()
    page.keyboard.press("-")
    page.keyboard.press("-")
    expect(page.locator("#zoom-readout")).to_have_text("40 px per token")
    url_has(page, "zoom=40")
    assert token(page, 0).bounding_box()["width"] < width
    assert abs(x_of_token_in_plot(20) - token_centre(20)) < 1.5
    page.reload()
    page.wait_for_selector("#lineplot .scatterlayer .trace", state="attached")
    expect(page.locator("#zoom-readout")).to_have_text("40 px per token")
    assert_axe_clean(watched)


def test_char_level_tokens_are_readable_too(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/explorer?store=code&w=150")
    page.wait_for_selector("#lineplot .scatterlayer .trace", state="attached")
    toks = readable(page)
    assert len(toks) == 150 and min(t["width"] for t in toks) >= 12
    assert not any(t["cut"] or t["rotated"] for t in toks)
    expect(page.locator("#zoom-readout")).to_have_text("16 px per token")


def handle(page, kind):
    return page.locator(f'#brush-layer [data-drag="{kind}"]')


def drag_x(page, locator, dx: float, steps: int, pause: bool = False):
    """Drag `locator` sideways by dx pixels in `steps` mouse moves (playwright's own steps: no pause between
    them); with `pause`, rest 600 ms half way."""
    b = locator.bounding_box()
    x, y = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    if pause:
        page.mouse.move(x + dx / 2, y, steps=steps // 2)
        page.wait_for_timeout(600)
    page.mouse.move(x + dx, y, steps=steps // 2 if pause else steps)
    page.mouse.up()


def test_brush_handles_move_and_resize_with_live_debounced_selection(watched, base_url):
    page = watched.page
    a = CAT_SAT[1]  # "a cat sat here and a cat ran": cell 0 over "cat sat", cell 1 at "cat"
    open_explorer(page, base_url, f"&brush={a},{a + 1}&pad=1,0")
    expect(chips(page)).to_have_text(["0", "1"])
    px = token(page, a).bounding_box()["width"]
    requests = []
    page.on("request", lambda r: "/select?" in r.url and requests.append(r.url))
    # the right edge: one token further, the selection updates while the mouse is still down (live)
    stop = handle(page, "stop")
    b = stop.bounding_box()
    page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
    page.mouse.down()
    for i in range(1, 21):
        page.mouse.move(b["x"] + b["width"] / 2 + px * i / 20, b["y"] + b["height"] / 2)
    expect(chips(page)).to_have_text(["0"])  # "cat sat": only cell 0, before the mouse is released
    url_has(page, f"brush={a},{a + 2}")
    page.mouse.up()
    page.wait_for_timeout(400)
    assert 1 <= len(requests) <= 2, requests  # 20 moves: one request (and at most one more at the release)

    # and back, resting half way: the selection follows the pause and the end
    requests.clear()
    drag_x(page, handle(page, "stop"), -px, steps=8, pause=True)
    expect(chips(page)).to_have_text(["0", "1"])
    url_has(page, f"brush={a},{a + 1}")
    drag_x(page, handle(page, "stop"), px, steps=8)
    expect(chips(page)).to_have_text(["0"])
    assert len(requests) >= 2, requests

    # the padding handles: the left one dragged one token left makes the padding 2
    drag_x(page, handle(page, "pad-left"), -px, steps=10)
    expect(page.locator("#pad-left")).to_have_value("2")
    url_has(page, "pad=2,0")
    expect(token(page, a - 2)).to_have_class("tok padded")
    # keyboard equivalents: arrows on a focused handle
    handle(page, "stop").focus()
    page.keyboard.press("ArrowLeft")
    url_has(page, f"brush={a},{a + 1}")
    expect(chips(page)).to_have_text(["0", "1"])  # "cat", off at the padding
    handle(page, "pad-left").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#pad-left")).to_have_value("0")
    expect(chips(page)).to_have_text(["0", "1", "2"])  # no padding: the always-on cell 2 too
    assert_axe_clean(watched)


def test_dragging_a_brush_over_many_tokens_sends_few_requests(watched, base_url):
    page = watched.page
    s = TOKENS.index("w0")
    open_explorer(page, base_url, f"&pos={s}&w=40&zoom=40&brush={s},{s + 2}&pad=0,0")
    expect(chips(page)).to_have_text(["2"])
    px = token(page, s).bounding_box()["width"]
    requests = []
    page.on("request", lambda r: "/select?" in r.url and requests.append(r.url))
    drag_x(page, handle(page, "move"), 20 * px, steps=20)  # a new brush at every move
    url_has(page, f"brush={s + 20},{s + 22}")
    expect(chips(page)).to_have_text(["2"])
    page.wait_for_timeout(500)
    assert requests and requests[-1].endswith(f"start={s + 20}&stop={s + 22}&threshold=0.3&pad_left=0&pad_right=0&sign=positive")
    assert len(requests) <= 6, requests  # debounced, one at a time: not 20
    assert_axe_clean(watched)


def touch_drag(page, cdp, x0, y0, x1, y1, steps=8):
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x0, "y": y0}]})
    for i in range(1, steps + 1):
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                                              "touchPoints": [{"x": x0 + (x1 - x0) * i / steps, "y": y0 + (y1 - y0) * i / steps}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def test_touch_brushing_on_a_phone(browser, base_url):
    from conftest_server import TIMEOUT_MS, Watched
    w = Watched(browser)
    w.context.close()
    w.context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = w.page = w.context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda e: w.problems.append(f"page error: {e}"))
    page.on("console", lambda m: m.type == "error" and w.problems.append(f"console: {m.text}"))
    a = CAT_SAT[2]  # "dogs sat the cat sat down"
    open_explorer(page, base_url)
    assert page.evaluate("document.documentElement.scrollWidth") <= 392  # only the strip scrolls sideways
    token(page, a + 1).scroll_into_view_if_needed()
    cdp = w.context.new_cdp_session(page)
    first, last = token(page, a).bounding_box(), token(page, a + 1).bounding_box()
    touch_drag(page, cdp, first["x"] + first["width"] / 2, first["y"] + 8, last["x"] + last["width"] / 2, last["y"] + 8)
    expect(chips(page)).to_have_text(["0"])
    url_has(page, f"brush={a},{a + 2}")
    # the handles answer touch too: the left edge dragged one token right leaves "sat"
    b = handle(page, "start").bounding_box()
    x, y = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2
    touch_drag(page, cdp, x, y, x + first["width"], y)
    expect(page.locator("#brush-label")).to_have_text(f"[{a + 1}, {a + 2})")
    url_has(page, f"brush={a + 1},{a + 2}")
    # a swipe on the plot scrolls the strip sideways (only the token row keeps a drag for brushing)
    page.evaluate("document.getElementById('track-scroll').scrollLeft = 0")
    plot = page.locator("#lineplot").bounding_box()
    touch_drag(page, cdp, 300, plot["y"] + 60, 100, plot["y"] + 60, steps=10)
    page.wait_for_function("() => document.getElementById('track-scroll').scrollLeft > 50")
    w.close()


# the y tick labels a user sees: inside the viewport and the scrolled strip's box, not covered by anything
VISIBLE_Y_TICKS_JS = """() => {
  const box = document.getElementById('track-scroll').getBoundingClientRect();
  return [...document.querySelectorAll('#track-scroll .ytick text')].filter(t => {
    const r = t.getBoundingClientRect();
    if (!r.width || r.left < Math.max(0, box.left) - 1 || r.right > Math.min(innerWidth, box.right) + 1) return false;
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    return hit && t.closest('.js-plotly-plot').contains(hit);
  }).map(t => ({ text: t.textContent, left: t.getBoundingClientRect().left - box.left }));
}"""


@pytest.mark.parametrize("width", [1280, 390])
def test_the_y_axis_stays_at_the_left_while_the_strip_scrolls_sideways(watched, base_url, width):
    page = watched.page
    page.set_viewport_size({"width": width, "height": 900})
    open_explorer(page, base_url, "&w=40")
    box = page.locator("#track-scroll")
    page.evaluate("document.getElementById('lineplot').scrollIntoView({ block: 'start' })")
    before = page.evaluate(VISIBLE_Y_TICKS_JS)
    assert len(before) >= 3, before
    assert box.evaluate("n => n.scrollWidth - n.clientWidth") > 1000
    box.evaluate("n => { n.scrollLeft = n.scrollWidth; }")  # as far right as it goes
    page.wait_for_function("() => document.getElementById('track-scroll').scrollLeft > 1000")
    after = page.evaluate(VISIBLE_Y_TICKS_JS)
    assert [t["text"] for t in after] == [t["text"] for t in before]
    assert all(0 <= t["left"] < 60 for t in after), after  # at the left of the strip
    # a threshold beyond the values widens the y range: the pinned labels follow the plot's own ticks
    page.fill("#threshold", "5")
    page.press("#threshold", "Enter")
    page.wait_for_function("() => document.getElementById('lineplot')._fullLayout.yaxis.range[1] > 5")
    plot_ticks = page.evaluate("() => [...document.querySelectorAll('#lineplot .ytick text')].map(t => t.textContent)")
    wider = page.evaluate(VISIBLE_Y_TICKS_JS)
    assert [t["text"] for t in wider] == plot_ticks and plot_ticks != [t["text"] for t in before]
    assert_axe_clean(watched)


def test_the_match_minimap_by_keyboard(watched, base_url):
    """What a click on the minimap does (go to that place in the corpus) by keyboard: Tab to it, the arrows
    move between the bins where the selected cells are on, Home/End to the first/last, Enter goes there."""
    page = watched.page
    a = CAT_SAT[0]
    open_explorer(page, base_url, f"&w=10&pos=0&brush={a},{a + 2}&match=1")
    page.wait_for_selector("#word-matrix tr.match-row")
    page.wait_for_selector("#match-overview .barlayer .trace", state="attached")
    page.focus("#match")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "match-overview":
            break
    assert page.evaluate("document.activeElement.id") == "match-overview", "Tab never reaches the minimap"
    status = page.locator("#overview-status")
    assert status.get_attribute("aria-live") == "polite"
    on = sorted({p + k for p in CAT_SAT for k in (0, 1)})  # every token of the three "cat sat" runs
    expect(status).to_contain_text(f"token {on[0]}:")
    page.keyboard.press("ArrowRight")
    expect(status).to_contain_text(f"token {on[1]}:")
    page.keyboard.press("ArrowRight")
    expect(status).to_contain_text(f"token {on[2]}:")
    page.keyboard.press("ArrowLeft")
    expect(status).to_contain_text(f"token {on[1]}:")
    page.keyboard.press("End")
    expect(status).to_contain_text(f"token {on[-1]}: 1 step with the selected cell on")
    page.keyboard.press("Enter")
    url_has(page, f"pos={on[-1] - 2}")  # the jump a click makes: the place a quarter into the window
    expect(token(page, on[-1])).to_be_visible()
    page.go_back()  # a jump: Back undoes it
    url_has(page, "pos=0")
    assert_axe_clean(watched)
