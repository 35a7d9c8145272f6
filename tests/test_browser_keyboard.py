"""The images and text-CNN pages in real headless Chromium without a mouse (issue 20): Tab reaches
every control in document order with a visible focus ring, arrows move inside the digit picker, the
t-SNE map and the filter cards, and every workflow runs by Tab, Enter, Space, arrows and typing only. The text-CNN page
offers only the stores of its model's tokenization. axe-core and 390 px on both pages."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from playwright.sync_api import expect

from conftest_server import CHROMIUM, live_server, make_review_store

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")]

AXE = os.path.join(os.popen("npm root -g").read().strip(), "axe-core", "axe.min.js")
CODE = ["def f(x):\n    return 'a'\n", "x = [1, 2]\n"]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    from lstmvis import StateStore
    from server.app import create_app

    d = tmp_path_factory.mktemp("keyboard")
    make_review_store(d)  # word tokens, no tokenization in its card: offered, marked "not known"
    tokens = [c for t in CODE for c in t]
    StateStore.from_arrays(d / "code.h5", {"x": np.zeros((len(tokens), 1), np.float32)}, tokens=tokens,
                           offsets=np.cumsum([0] + [len(t) for t in CODE]), texts=CODE,
                           card={"tokenization": "char"}).close()  # char-level: not for the word-level CNN
    with live_server(create_app(d, {"TESTING": True})) as url:
        yield url


# the focused element: what it is, whether its focus ring shows, and its place in the document
FOCUSED_JS = """() => {
  const e = document.activeElement;
  if (!e || e === document.body) return null;
  const cs = getComputedStyle(e);
  const ring = (cs.outlineStyle !== "none" && parseFloat(cs.outlineWidth) >= 1) || cs.boxShadow !== "none";
  const all = [...document.querySelectorAll("*")];
  return { id: e.id, tag: e.tagName.toLowerCase(), text: (e.getAttribute("aria-label") || e.textContent || "").trim().slice(0, 40),
           ring, visible: e.matches(":focus-visible"), order: all.indexOf(e), selector: e.id ? "#" + e.id : "" };
}"""

# every control a user can operate that is on screen: each must be reachable by Tab (or by arrows in its group)
CONTROLS_JS = """(root) => [...document.querySelectorAll(`${root} :is(select, input, button, summary, a[href], [tabindex])`)]
  .filter(e => e.offsetParent !== null && !e.disabled && e.tabIndex >= 0 && !e.closest("details:not([open]) > :not(summary)"))
  .map(e => e.id || e.tagName.toLowerCase() + ":" + (e.getAttribute("aria-label") || e.textContent || "").trim().slice(0, 30))"""


def tab_walk(page, limit: int = 120) -> list[dict]:
    """Every element Tab stops at, from the top of the page once round."""
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
    stops, seen = [], set()
    for _ in range(limit):
        page.keyboard.press("Tab")
        f = page.evaluate(FOCUSED_JS)
        if f is None or f["order"] in seen:
            break
        seen.add(f["order"])
        stops.append(f)
    return stops


def check_walk(page, root: str) -> list[dict]:
    stops = tab_walk(page)
    assert len(stops) > 5, stops
    orders = [s["order"] for s in stops]
    assert orders == sorted(orders), f"focus order is not the reading order: {[s['id'] or s['text'] for s in stops]}"
    blind = [s["id"] or s["text"] for s in stops if not (s["ring"] and s["visible"])]
    assert not blind, f"no visible focus ring on {blind}"
    reached = {s["id"] or f"{s['tag']}:{s['text'][:30]}" for s in stops}
    missed = [c for c in page.evaluate(CONTROLS_JS, root) if c not in reached]
    assert not missed, f"Tab never reaches {missed}"
    return stops


def arrow_around(page, announced) -> set:
    """Press the four arrows on a scatter plot that is one Tab stop: the points ``announced()`` names
    (at least 3 different ones)."""
    seen = {announced()}
    for key in ("ArrowRight", "ArrowUp", "ArrowLeft", "ArrowDown", "ArrowRight"):
        page.keyboard.press(key)
        seen.add(announced())
    assert len(seen) >= 3, seen
    return seen


def tab_to(page, selector: str, limit: int = 150) -> None:
    """Press Tab until ``selector`` has the focus."""
    for _ in range(limit):
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")


def retype(page, selector: str, text: str) -> None:
    """Tab to the field ``selector``, replace its value by ``text`` and press Enter: keyboard only."""
    tab_to(page, selector)
    page.keyboard.press("Control+A")
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def active(page) -> dict:
    return page.evaluate("() => ({ id: document.activeElement.id, index: document.activeElement.dataset.index, "
                         "filter: document.activeElement.dataset.filter })")


def test_images_page_by_keyboard_only(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/images?index=0")
    page.wait_for_selector("#overlays .image-card img")
    page.wait_for_selector("#sanity-plot .scatterlayer .trace", state="attached")
    page.wait_for_selector("#deconv-layer option", state="attached")
    check_walk(page, "main")
    # the digit picker is one stop; arrows move along it, Enter and Space explain the digit in focus
    assert page.locator("#picker button[tabindex='0']").count() == 1
    tab_to(page, "#picker button")
    first = active(page)["index"]
    page.keyboard.press("ArrowRight")
    second = active(page)["index"]
    assert second != first
    page.keyboard.press("Enter")
    expect(page.locator("#input-note")).to_have_text(f"test digit {second}, true label " +
                                                      page.locator(f'#picker button[data-index="{second}"]').get_attribute("title")[-2])
    page.keyboard.press("ArrowDown")  # a row down: the next digit of the same class column
    below = active(page)["index"]
    assert below not in (first, second)
    page.keyboard.press("Space")
    expect(page.locator("#input-note")).to_contain_text(f"test digit {below},")
    page.keyboard.press("End")
    page.keyboard.press("Home")
    assert active(page)["index"] == page.locator("#picker button").first.get_attribute("data-index")
    # a digit by its number, then the class to explain by arrows
    retype(page, "#index", "7")
    expect(page.locator("#input-note")).to_contain_text("test digit 7,")
    tab_to(page, "#target")
    page.keyboard.press("ArrowDown")
    expect(page.locator("#overlay-note")).to_contain_text("explaining 0")
    # method settings open with Enter
    tab_to(page, "#params summary")
    page.keyboard.press("Enter")
    assert page.locator("#params").get_attribute("open") is not None
    # the seed views: data randomization (Space), a unit's reconstructions (typing + Enter), features over training
    tab_to(page, "#datarand-run")
    page.keyboard.press("Space")
    page.wait_for_selector("#datarand-table tr td")
    retype(page, "#deconv-unit", "3")
    page.wait_for_selector("#deconv-grid img")
    tab_to(page, "#evolution-run")
    page.keyboard.press("Enter")
    page.wait_for_selector("#evolution-grid img")


def test_textcnn_page_offers_only_stores_of_the_models_tokenization(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/textcnn?model=sentiment-cnn")
    page.wait_for_selector("#filter-grid .ngram-card")
    options = page.locator("#store option").all_text_contents()
    assert len(options) == 1 and "reviews" in options[0] and "tokenization not known" in options[0]
    note = page.locator("#store-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("1 store hidden")
    expect(note).to_contain_text("char")
    assert "word" in page.locator("#model option").first.text_content()
    # asked for by URL, the char store is not loaded: the page falls back to a store that fits
    page.goto(f"{base_url}/textcnn?model=sentiment-cnn&store=code")
    page.wait_for_selector("#filter-grid .ngram-card")
    assert page.locator("#store").input_value() == "reviews"


def test_textcnn_page_by_keyboard_only(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/textcnn?model=sentiment-cnn")
    page.wait_for_selector("#filter-grid .ngram-card")
    check_walk(page, "main")
    # the filter cards are one stop: arrows move, Enter picks the filter (URL, current card, the deconvnet's filter)
    assert page.locator("#filter-grid .ngram-card[tabindex='0']").count() == 1
    tab_to(page, "#filter-grid .ngram-card")
    start = active(page)["filter"]
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    picked = active(page)["filter"]
    assert picked != start
    page.keyboard.press("Enter")
    expect(page.locator(f"#filter-{picked}")).to_have_class(re.compile(r"\bcurrent\b"))
    assert f"filter={picked}" in page.url
    assert page.locator("#tdeconv-filter").input_value() == picked
    assert active(page)["filter"] == picked  # the focus stays on the picked card
    page.keyboard.press("ArrowLeft")
    assert active(page)["filter"] != picked
    # the layer by arrows, the number of n-grams by typing, the search, hiding dead filters by Space
    tab_to(page, "#layer")
    page.keyboard.press("ArrowDown")
    expect(page.locator("#filters-plot .gtitle")).to_contain_text("convs.1")
    retype(page, "#k", "2")
    page.wait_for_function("() => document.querySelector('#filter-grid .ngram-card ol').children.length === 2")
    tab_to(page, "#filter-search")
    page.keyboard.type("bore")
    page.wait_for_function("() => [...document.querySelectorAll('#filter-grid .ngram-card')].every(c => /bore/i.test(c.textContent))")
    page.keyboard.press("Control+A")
    page.keyboard.press("Backspace")
    tab_to(page, "#hide-dead")
    dead = page.locator("#filter-grid .ngram-card.dead").count()
    page.keyboard.press("Space")
    assert page.locator("#hide-dead").is_checked()
    assert page.locator("#filter-grid .ngram-card.dead").count() == 0 or dead == 0
    # the deconvnet rows of the picked filter, by Enter on its button
    tab_to(page, "#tdeconv-run")
    page.keyboard.press("Enter")
    page.wait_for_selector("#tdeconv-rows .token")


@pytest.mark.skipif(not os.path.exists(AXE), reason="needs axe-core from npm")
def test_axe_and_390_px_on_both_pages(browser, base_url):
    for width in (1280, 390):
        context = browser.new_context(viewport={"width": width, "height": 844}, bypass_csp=True)
        page = context.new_page()
        try:
            for path, ready in (("/images", "#overlays .image-card img"), ("/textcnn", "#filter-grid .ngram-card")):
                page.goto(base_url + path)
                page.wait_for_selector(ready)
                page.wait_for_load_state("networkidle")
                page.add_script_tag(path=AXE)
                bad = page.evaluate("""async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
                    .filter(v => v.impact === "serious" || v.impact === "critical")
                    .map(v => `${v.id}: ${v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(" | ")}`)""")
                assert not bad, (path, width, bad)
                wide = page.evaluate("""() => [...document.querySelectorAll('body *')].filter(n => {
                    const r = n.getBoundingClientRect();
                    if (r.right <= innerWidth + 2 || !r.width) return false;
                    for (let p = n.parentElement; p; p = p.parentElement) {
                      const o = getComputedStyle(p).overflowX;
                      if (o === 'auto' || o === 'scroll' || o === 'hidden') return false;
                    }
                    return true; }).slice(0, 5).map(n => `${n.tagName}#${n.id}.${n.className}`)""")
                assert not wide, (path, width, wide)
        finally:
            context.close()


def test_images_tsne_map_by_keyboard_only(watched, base_url):
    """The t-SNE map is one Tab stop: arrows move a ring to the nearest point that way, Page Down the next
    misclassified digit, each announced (aria-live); Enter explains the digit, as a click on it does."""
    page = watched.page
    page.goto(f"{base_url}/images?index=0")
    page.wait_for_selector("#overlays .image-card img")
    page.wait_for_selector("#tsne-plot .scatterlayer .trace", state="attached")
    tab_to(page, "#tsne-plot")
    status = page.locator("#tsne-status")
    assert status.get_attribute("aria-live") == "polite"
    expect(status).to_contain_text("digit 0:")  # it starts on the digit shown

    def announced() -> int:
        m = re.search(r"digit (\d+): label (\S+), predicted (\S+)", status.text_content())
        assert m, status.text_content()
        return int(m[1])

    arrow_around(page, announced)
    # the ring on the map sits on the announced point
    ring = page.evaluate("""() => { const gd = document.getElementById('tsne-plot'), t = gd.data[gd.data.length - 1];
        return { x: t.x[0], y: t.y[0], name: t.name }; }""")
    digit = announced()
    assert page.evaluate(f"""() => {{ const gd = document.getElementById('tsne-plot');
        return gd.data.some(t => t.customdata && t.customdata.some((c, k) => c[0] === {digit} && t.x[k] === {ring['x']} && t.y[k] === {ring['y']})); }}""")
    page.keyboard.press("Enter")
    expect(page.locator("#input-note")).to_contain_text(f"test digit {digit},")
    assert page.evaluate("document.activeElement.id") == "tsne-plot"
    assert f"index={digit}" in page.url
    # Page Down: the next misclassified digit (a cross on the map), Space explains it
    page.keyboard.press("PageDown")
    expect(status).to_contain_text("misclassified")
    wrong = announced()
    page.keyboard.press("Space")
    expect(page.locator("#input-note")).to_contain_text(f"test digit {wrong},")
