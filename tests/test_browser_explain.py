"""The explanations page in real headless Chromium: one highlighted row per chosen method with aligned
tokens and hover values, plotly draws, user text renders inert (no dialog, no injected element, no
script runs), and the corpus audit puts the planted junk token of sentiment-shortcut on top."""
from __future__ import annotations

import os
import re
from urllib.parse import quote

import pytest

from conftest_server import CHROMIUM, TIMEOUT_MS, Watched, live_server, shot

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")]

TEXT = "the plot is predictable and the acting is wooden , but the soundtrack is great"
XSS = ('fun <img src=x onerror="window.__xss=1;alert(1)"> and <script>window.__xss=2;alert(2)</script> '
       '<svg onload="window.__xss=3">')


@pytest.fixture(scope="module")
def base_url():
    from server.app import create_app
    with live_server(create_app(None, {"TESTING": True, "DEMO": False})) as url:
        yield url


@pytest.fixture()
def watched(browser):
    w = Watched(browser)
    w.page.set_default_timeout(TIMEOUT_MS)
    w.dialogs = []
    w.page.on("dialog", lambda d: (w.dialogs.append(d.message), d.dismiss()))
    yield w
    w.close()
    assert not w.dialogs, f"a dialog fired: {w.dialogs}"


def wait_results(page):
    page.wait_for_selector("#salience .sal-line")
    page.wait_for_selector("#probs-plot .barlayer .trace", state="attached")


def test_one_highlighted_row_per_method_with_hover_and_plots(watched, base_url):
    page = watched.page
    methods = ["gradient", "gradient_x_input", "integrated_gradients", "occlusion", "shap"]
    page.goto(f"{base_url}/explain?model=sentiment-lstm&methods={','.join(methods)}&text={quote(TEXT)}")
    wait_results(page)
    page.wait_for_selector("#curves-plot .scatterlayer .trace", state="attached")
    n_tokens = len(TEXT.split())
    for m in methods:
        assert page.locator(f'.sal-tok[data-method="{m}"]').count() == n_tokens, m
    # every line of the grid has one label per method, in the chosen order
    first_line = page.locator(".sal-line").first
    assert first_line.locator(".sal-label b").all_text_contents() == [
        "Gradient", "Gradient × input", "Integrated Gradients", "Occlusion", "SHAP"]
    # tokens are aligned: a token sits at the same x in every method's row
    xs = {round(page.locator(f'.sal-tok[data-pos="3"][data-method="{m}"]').bounding_box()["x"]) for m in methods}
    assert len(xs) == 1
    # hover shows every method's value for that token and outlines its column
    page.hover('.sal-tok[data-pos="8"][data-method="occlusion"]')
    readout = page.text_content("#readout")
    assert "wooden" in readout and all(t in readout for t in ("Gradient", "SHAP"))
    assert page.locator(".sal-tok.hover-col").count() == len(methods)
    title = page.get_attribute('.sal-tok[data-pos="8"][data-method="shap"]', "title")
    assert title.startswith("wooden · SHAP: ") and any(c.isdigit() for c in title)
    # coloured: signed methods are not all white
    bgs = page.eval_on_selector_all('.sal-tok[data-method="integrated_gradients"]', "els => els.map(e => e.style.background)")
    assert len(set(bgs)) > 3
    # faithfulness table: one row per method + the random baseline
    assert page.locator("#faith-table tbody tr").count() == len(methods) + 1
    # IG's completeness gap relative to F(x) - F(baseline): within 1% with the page's refinement (max steps 200)
    ig_label = first_line.locator(".sal-label").nth(2).text_content()
    assert re.search(r"Δ [+−-]?\d\S* \(\d\.\d%\)", ig_label) and "not converged" not in ig_label, ig_label
    ig_delta = page.locator('#faith-table tr[data-method="integrated_gradients"] td').nth(1).text_content()
    assert "%" in ig_delta and "not converged" not in ig_delta, ig_delta
    shot(page, "explain-side-by-side.png", docs=True)


def test_user_text_renders_inert(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/explain?model=sentiment-cnn&methods=gradient_x_input,occlusion&text={quote(XSS)}")
    wait_results(page)
    # and typed in, then run again
    page.fill("#text", XSS + " <b>bold</b>")
    page.click("#run")
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Done')")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img[src='x'], main script:not([src]), main svg[onload]").count() == 0
    # every token cell holds plain text only
    assert page.eval_on_selector_all(".sal-tok", "els => els.filter(e => e.childElementCount).length") == 0
    text = page.text_content("#salience")
    assert "onerror" in text and "script" in text  # shown as text
    assert page.locator('.sal-tok[data-method="occlusion"]').filter(has_text="<").count() >= 3
    shot(page, "explain-xss-inert.png")
    # the HTML export is the library's escaped rendering, as a file
    with page.expect_download() as dl:
        page.click("#export")
    exported = open(dl.value.path(), encoding="utf-8").read()
    assert "onerror" in exported and "<img" not in exported and "<script" not in exported
    assert "&lt;" in exported and "&quot;" in exported


def test_model_target_and_method_choice(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/explain?model=sentiment-gru&methods=gradient_x_input&text={quote('a charming film')}")
    wait_results(page)
    page.select_option("#target", "0")
    page.check('#methods input[value="integrated_gradients"]')
    page.click("#run")
    page.wait_for_selector('.sal-tok[data-method="integrated_gradients"]')
    assert "explaining rotten" in page.text_content("#prediction")
    assert "target=0" in page.url and "integrated_gradients" in page.url
    assert page.locator(".sal-line").first.locator(".sal-label").count() == 2


def test_bad_input_shows_the_servers_message(browser, base_url):  # noqa: F811
    w = Watched(browser)
    page = w.page
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{base_url}/explain?model=sentiment-lstm&methods=gradient&text={quote('ok ' * 300)}")
    page.wait_for_selector("#error-banner:not([hidden])")
    assert "at most 256" in page.text_content("#error-banner")
    w.problems = [p for p in w.problems if "400" not in p]
    w.close()


def test_corpus_audit_puts_the_planted_token_on_top(watched, base_url):
    """The page's defaults as they are (200 texts, gradient x input, min. count auto): rtcritic leads the
    table for "fresh" and the flip-test headline, with its measured drop."""
    page = watched.page
    page.goto(f"{base_url}/explain?tab=audit")
    assert page.input_value("#audit-model") == "sentiment-shortcut"
    assert page.input_value("#audit-method") == "gradient_x_input" and page.input_value("#audit-n") == "200"
    assert page.input_value("#audit-min-count") == ""
    page.click("#audit-run")
    page.wait_for_selector('.audit-table[data-label="fresh"] tbody tr', timeout=3 * TIMEOUT_MS)
    page.wait_for_selector("#audit-plot .barlayer .trace", state="attached")
    first = page.locator('.audit-table[data-label="fresh"] tbody tr.clickable').first
    assert first.get_attribute("data-token") == "rtcritic"
    assert float(first.locator(".flip-drop").text_content()) >= 0.15
    first.click()
    marks = page.locator('.audit-table[data-label="fresh"] tr.examples-row:not([hidden]) mark')
    assert marks.count() >= 1 and set(marks.all_text_contents()) == {"rtcritic"}
    head = page.locator("#audit-headline tbody tr").first
    assert head.get_attribute("data-token") == "rtcritic" and head.get_attribute("data-label") == "fresh"
    assert float(head.locator(".drop").text_content()) >= 0.15
    assert page.locator("#audit-headline tbody tr").count() == 10
    assert "Student's t" in page.text_content("#audit-statistic")
    assert "tab=audit" in page.url
    shot(page, "explain-corpus-audit.png", docs=True)


def test_method_settings_are_built_from_the_declarations_and_sent(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/explain?model=sentiment-lstm&methods=integrated_gradients&text=good")
    wait_results(page)
    n_steps = page.locator("#p-integrated_gradients-n_steps")
    assert n_steps.get_attribute("max") == "300" and n_steps.input_value() == "50"  # cap and default, declared
    assert page.locator("#p-integrated_gradients-max_steps").input_value() == "200"  # the page's preset
    assert page.locator("#p-lime-num_samples").input_value() == "1000"
    assert page.locator("#p-integrated_gradients-method option").count() == 6
    page.locator("#params summary").click()
    n_steps.fill("8")
    with page.expect_request("**/api/explain") as request:
        page.locator("#run").click()
    sent = request.value.post_data_json["params"]
    assert sent == {"integrated_gradients": {"n_steps": 8, "max_steps": 200, "precision": "auto"}}
    wait_results(page)


def test_off_target_faithfulness_is_flagged_and_the_audit_url_is_its_own(watched, base_url):
    """Explaining the class the model does not predict: a warning, numbers relative to p(target), no
    'best'; the random floor is a mean with its spread; the audit tab's address drops the text's model."""
    page = watched.page
    text = "a gorgeous, witty, seductive movie."
    page.goto(f"{base_url}/explain?model=sentiment-lstm&methods=gradient,occlusion&text={quote(text)}")
    wait_results(page)
    page.wait_for_selector("#faith-table tbody tr")
    predicted = page.locator("#prediction b").first.text_content()
    labels = [o.split(": ", 1)[1] for o in page.locator("#target option").all_text_contents()[1:]]
    other = next(i for i, lab in enumerate(labels) if lab != predicted)
    page.select_option("#target", str(other))
    page.click("#run")
    page.wait_for_selector("#faith-warning:not([hidden])")
    assert "does not predict" in page.text_content("#faith-warning")
    assert page.locator("#faith-table td.best").count() == 0
    assert "× p" in page.locator('#faith-table tr[data-method="gradient"]').text_content()
    assert "±" in page.locator("#faith-table tr.baseline").text_content()
    page.click("#tab-audit")
    assert "tab=audit" in page.url and "audit-model=" in page.url
    assert "text=" not in page.url and "&model=" not in page.url and "?model=" not in page.url
