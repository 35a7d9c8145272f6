"""The explorer in real headless Chromium: brushing selects cells, matching shows results, the
threshold changes the selection, and reloading the URL restores the view (toy store with known answers)."""
from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from conftest_server import CHROMIUM, SCREENSHOTS, TOY_TEXTS, Watched, live_server, make_toy_store

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")]

TOKENS = " ".join(TOY_TEXTS).split()
CAT_SAT = [i for i in range(len(TOKENS) - 1) if TOKENS[i] == "cat" and TOKENS[i + 1] == "sat"]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    from server.app import create_app
    d = tmp_path_factory.mktemp("browserdata")
    make_toy_store(d / "toy.h5").close()
    # compile the match kernels first (numba, cached on disk): in a fresh clone on a busy machine the
    # first compile alone can outlast the page's 30 s wait, which would test the JIT, not the page
    warm = make_toy_store(tmp_path_factory.mktemp("warm") / "warm.h5")
    with warm:
        warm.match(warm.sources[0], [0], progress=False)
    with live_server(create_app(d, {"TESTING": True})) as url:
        yield url



def token(page, pos: int):
    return page.locator(f'#tokens .tok[data-pos="{pos}"]')


def chips(page) -> list[str]:
    return page.locator("#cell-chips .chip").all_text_contents()


def brush(page, a: int, b: int):
    """Drag with the mouse from token a to token b (inclusive)."""
    first, last = token(page, a).bounding_box(), token(page, b).bounding_box()
    page.mouse.move(first["x"] + first["width"] / 2, first["y"] + first["height"] / 2)
    page.mouse.down()
    page.mouse.move(last["x"] + last["width"] / 2, last["y"] + last["height"] / 2, steps=4)
    page.mouse.up()


def wait_plot(page, selector="#lineplot"):
    page.wait_for_selector(f"{selector} .scatterlayer .trace, {selector} .barlayer .trace, "
                           f"{selector} .heatmaplayer .hm", state="attached")


def test_brush_select_match_threshold_and_reload(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/explorer?store=toy")
    wait_plot(page)
    assert page.locator("#tokens .tok").count() == len(TOKENS)
    assert chips(page) == []

    # brush "cat sat" in the first sentence: only cell 0 is on over both tokens and off at "the"
    a = CAT_SAT[0]
    brush(page, a, a + 1)
    expect(page.locator("#cell-chips .chip")).to_have_text(["0"])
    assert token(page, a).get_attribute("class").count("brushed") == 1
    assert f"brush={a},{a + 2}" in page.url

    # match: the three "cat sat" runs, each outlined in the word matrix
    page.click("#match")
    page.wait_for_selector("#word-matrix tr.match-row")
    rows = page.locator("#word-matrix tr.match-row")
    assert sorted(int(p) for p in (rows.nth(i).get_attribute("data-position") for i in range(rows.count()))) == CAT_SAT
    assert page.locator("#word-matrix td.in-match").count() == 2 * len(CAT_SAT)
    wait_plot(page, "#length-hist")
    wait_plot(page, "#match-overview")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "explorer-toy-match.png"), full_page=True)

    # brushing only "cat" selects cells 0 and 1; a threshold above cell 1's 0.8 drops it
    brush(page, a, a)
    expect(page.locator("#cell-chips .chip")).to_have_text(["0", "1"])
    page.fill("#threshold", "0.85")
    with page.expect_response(lambda r: "/match?" in r.url and "threshold=0.85" in r.url):  # matches redone
        page.press("#threshold", "Enter")
    expect(page.locator("#cell-chips .chip")).to_have_text(["0"])
    assert "threshold=0.85" in page.url

    # the URL holds the whole view: reloading it restores brush, threshold, cells and matches
    url = page.url
    page.reload()
    page.wait_for_selector("#word-matrix tr.match-row")
    assert page.url == url
    assert chips(page) == ["0"]
    assert page.input_value("#threshold") == "0.85"
    assert token(page, a).get_attribute("class").count("brushed") == 1
    # and it opens the same view in a fresh tab
    other = watched.context.new_page()
    other.goto(url)
    other.wait_for_selector("#word-matrix tr.match-row")
    assert other.locator("#cell-chips .chip").all_text_contents() == ["0"]
    other.close()


def test_dragging_the_threshold_line_changes_the_selection(watched, base_url):
    page = watched.page
    a = CAT_SAT[0]
    page.goto(f"{base_url}/explorer?store=toy&brush={a},{a + 1}")
    expect(page.locator("#cell-chips .chip")).to_have_text(["0", "1"])
    line = page.locator("#lineplot .layer-above .shapelayer path").first
    box = line.bounding_box()
    # y axis: find the pixel of value 0.85 from plotly's own axis
    y_px = page.evaluate("""() => {
        const gd = document.getElementById('lineplot');
        const ya = gd._fullLayout.yaxis;
        return gd.getBoundingClientRect().top + gd._fullLayout.margin.t + ya.l2p(0.85);
    }""")
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(x, y_px, steps=8)
    page.mouse.up()
    expect(page.locator("#cell-chips .chip")).to_have_text(["0"])
    assert abs(float(page.input_value("#threshold")) - 0.85) < 0.03


def test_search_and_jump(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/explorer?store=toy&w=10")
    wait_plot(page)
    page.fill("#search", "dogs")
    page.press("#search", "Enter")
    page.wait_for_selector("#search-results button")
    page.click("#search-results button")
    pos = TOKENS.index("dogs")
    page.wait_for_selector(f'#tokens .tok[data-pos="{pos}"].found')
    assert int(page.input_value("#pos")) <= pos


def test_bad_url_state_shows_a_message_not_a_crash(browser, base_url):
    w = Watched(browser)
    page = w.page
    page.goto(f"{base_url}/explorer?store=toy&brush=3,9")  # across a sentence end: the API says why
    page.wait_for_selector("#error-banner:not([hidden])")
    assert "sequence" in page.text_content("#error-banner")
    w.problems = [p for p in w.problems if "HTTP 400" not in p and "400 (BAD REQUEST)" not in p]
    w.close()


def test_match_waits_for_the_index_job_of_a_large_store(watched, tmp_path):
    """With every store counted large, the first match answers 202 with an index job (the one opening
    the store started, held in the queue here): the page polls it, shows its progress and then the
    matches, without a reload."""
    import threading

    from server.app import create_app
    from server.jobs import RUNNER_KEY
    make_toy_store(tmp_path / "toy.h5").close()
    app = create_app(tmp_path, {"TESTING": True, "INDEX_JOB_VALUES": 0})
    gate = threading.Event()
    app.extensions[RUNNER_KEY].submit("test", ("hold the worker",), lambda report: gate.wait(120))
    with live_server(app) as url:
        page = watched.page
        try:
            page.goto(f"{url}/explorer?store=toy")
            wait_plot(page)
            with page.expect_response(lambda r: "/match?" in r.url and r.status == 202):
                brush(page, CAT_SAT[0], CAT_SAT[0] + 1)
                expect(page.locator("#cell-chips .chip")).to_have_text(["0"])
                page.click("#match")
            expect(page.locator("#match-summary")).to_contain_text("building the match index")
        finally:
            gate.set()
        page.wait_for_selector("#word-matrix tr.match-row")
        rows = page.locator("#word-matrix tr.match-row")
        assert sorted(int(p) for p in (rows.nth(i).get_attribute("data-position")
                                       for i in range(rows.count()))) == CAT_SAT
