"""Rendering: inert HTML for hostile tokens, honest colour scales, legends, terminal safety."""
from __future__ import annotations

import html
import re
from dataclasses import replace
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

import textexplain as te
from textexplain import render
from textexplain.convergence import Convergence
from textexplain.render import score_color, side_by_side_html, terminal, write_html

HOSTILE = ['<script>alert(1)</script>', '"><img src=x onerror=alert(2)>', "<b>bold</b>", "a&amp;b",
           "'\" onmouseover='alert(3)"]
ALLOWED_TAGS = {"div", "span", "b", "br", "table", "tr", "td"}
ALLOWED_ATTRS = {"title", "style", "class"}


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.data = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data):
        self.data.append(data)


def _parse(markup: str) -> _Collect:
    parser = _Collect()
    parser.feed(markup)
    return parser


def _explanation(tokens, scores, signed=True, labels=("neg", "pos"), text=None, target=1, spans=True,
                 method="integrated_gradients", model="m"):
    if text is None:
        text = " ".join(tokens)
    span_list = None
    if spans:
        span_list, pos = [], 0
        for tok in tokens:
            a = text.index(tok, pos)
            span_list.append((a, a + len(tok)))
            pos = a + len(tok)
    return te.Explanation(text=text, tokens=list(tokens), token_ids=list(range(len(tokens))),
                          scores=np.asarray(scores, float), method=method, target=target, labels=list(labels),
                          probs=np.array([0.3, 0.7]), signed=signed, spans=span_list, info={"model": model})


@pytest.fixture(scope="module")
def hostile():
    return _explanation(HOSTILE + ["fine"], [1.0, -2.0, 0.5, 0.0, 0.25, 0.1],
                        labels=("<i>neg</i>", '"pos" onclick="x()"'), model="<svg onload=alert(4)>",
                        method="<script>m</script>")


def test_hostile_tokens_labels_and_names_are_inert(hostile):
    for markup in (hostile.to_html(), side_by_side_html([hostile, hostile]), hostile._repr_html_(),
                   render.html_page(hostile.to_html())):
        parsed = _parse(markup)
        assert set(parsed.tags) <= ALLOWED_TAGS | {"html", "head", "meta", "title", "body"}, set(parsed.tags)
        assert {name for name, _ in parsed.attrs} <= ALLOWED_ATTRS | {"charset", "http-equiv", "content"}
        assert "<script" not in markup.lower() and "<img" not in markup.lower() and "<svg" not in markup.lower()
        styles = [value for name, value in parsed.attrs if name == "style"]
        assert not any("url(" in v or "expression" in v or "<" in v for v in styles)
        text = "".join(parsed.data)
        for tok in HOSTILE:
            assert tok in text  # shown literally, as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile.to_html()


@pytest.mark.browser
def test_page_is_inert_in_a_real_browser(tmp_path, hostile, request):
    pytest.importorskip("playwright.sync_api")
    import os

    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("needs /usr/bin/chromium")
    browser = request.getfixturevalue("browser")  # the session's Chromium (one sync_playwright per process)
    path = write_html(tmp_path / "x.html", side_by_side_html([hostile]))
    page = browser.new_page()
    try:
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri())
        for span in page.query_selector_all("span[title]")[:6]:
            span.hover()
        page.wait_for_timeout(200)
        assert dialogs == []
        assert page.evaluate("document.querySelectorAll('script, img, svg, iframe').length") == 0
        shown = page.inner_text("body")
        assert "<script>alert(1)</script>" in shown and '"><img src=x onerror=alert(2)>' in shown
    finally:
        page.close()


def test_diverging_scale_is_symmetric_and_sequential_is_monotone():
    assert score_color(0.0, True) == (255, 255, 255) and score_color(0.0, False) == (255, 255, 255)
    assert score_color(1.0, True) == render.POSITIVE and score_color(-1.0, True) == render.NEGATIVE
    assert score_color(1.0, False) == render.SEQUENTIAL and score_color(-1.0, False) == render.SEQUENTIAL
    assert score_color(5.0, True) == score_color(1.0, True)  # clipped
    for v in (0.1, 0.3, 0.6, 0.9):
        lp = render._srgb_to_lab(score_color(v, True))[0]
        ln = render._srgb_to_lab(score_color(-v, True))[0]
        assert lp == pytest.approx(ln, abs=1.0)  # same lightness for +v and -v
    lightness = [render._srgb_to_lab(score_color(v, False))[0] for v in np.linspace(0, 1, 11)]
    assert all(a > b for a, b in zip(lightness, lightness[1:]))
    diverging = [render._srgb_to_lab(score_color(v, True))[0] for v in np.linspace(0, 1, 11)]
    assert all(a > b for a, b in zip(diverging, diverging[1:]))


def _backgrounds(markup: str) -> list[tuple[int, int, int]]:
    return [tuple(map(int, m)) for m in re.findall(r"<span title=[^>]*background:rgb\((\d+), (\d+), (\d+)\)", markup)]


def test_normalisation_is_applied_and_stated():
    e = _explanation(["good", "bad", "film"], [2.0, -1.0, 0.0])
    markup = e.to_html()
    colours = _backgrounds(markup)
    assert colours == [render.POSITIVE, score_color(-0.5, True), (255, 255, 255)]
    assert "max|score| (2)" in markup and "+2 for pos" in markup and "-2 against pos" in markup
    summed = e.to_html(normalize="sum_abs")
    assert _backgrounds(summed)[0] == score_color(2 / 3, True) and "sum|score| (3)" in summed
    fixed = e.to_html(normalize=4.0)
    assert _backgrounds(fixed)[0] == score_color(0.5, True) and "fixed scale" in fixed
    with pytest.raises(ValueError, match="normalize"):
        e.to_html(normalize="zscore")
    with pytest.raises(ValueError, match="gamma"):
        e.to_html(gamma=0)


def test_hover_values_header_and_legend():
    e = _explanation(["good", "bad"], [0.123456, -0.5], signed=True)
    markup = e.to_html()
    assert 'title="good: +0.123456"' in markup and 'title="bad: -0.5"' in markup
    assert "predicted <b>pos</b> (0.700)" in markup and "target <b>pos</b> (0.700)" in markup
    assert "neg 0.300, pos 0.700" in markup
    unsigned = _explanation(["good", "bad"], [0.2, 0.8], signed=False, target=0).to_html()
    assert "unsigned magnitude" in unsigned and "target <b>neg</b> (0.300)" in unsigned
    assert _backgrounds(unsigned)[1] == render.SEQUENTIAL


def test_unconverged_completeness_is_flagged():
    e = _explanation(["good", "bad"], [1.0, -0.5])
    e.delta = 0.2
    e.convergence = Convergence(f_input=1.0, f_baseline=0.5, relative_delta=0.4, converged=False, n_gradient_rows=50,
                                n_probe_rows=9, precision="float32")
    assert "not converged" in e.to_html() and "40.0% of the output change" in e.to_html()
    assert "NOT CONVERGED: 40.0%" in terminal(e, color="none")
    # the fix it names fits the rule: refinement for the adaptive rule (beyond the default 4 x n_steps, or
    # twice what was allowed), more nodes for a fixed one
    e.params = {"method": "adaptive", "n_steps": 50}
    assert "max_steps=400" in terminal(e, color="none") and "max_steps=400" in e.to_html()
    e.params = {"method": "adaptive", "n_steps": 50, "max_steps": 50}
    assert "max_steps=200" in terminal(e, color="none")
    e.params = {"method": "adaptive", "n_steps": 50, "max_steps": 300}
    assert "max_steps=600" in terminal(e, color="none")
    e.params = {"method": "gausslegendre", "n_steps": 50}
    assert "raise n_steps" in terminal(e, color="none")
    # refinement stopped at a jump narrower than the precision resolves: more precision, not more steps
    e.params = {"method": "adaptive", "n_steps": 50, "max_steps": 200, "precision": "model"}
    e.convergence = replace(e.convergence, unresolved_alpha=(0.0515201, 0.0515202))
    assert "F jumps near alpha=0.05152 faster than float32 resolves" in terminal(e, color="none")
    assert "precision='float64'" in html.unescape(e.to_html()) and "max_steps=400" not in terminal(e, color="none")
    del e.params["precision"]  # lstmvis.explain_cell has no precision to raise
    assert "more steps cannot help)" in terminal(e, color="none") and "precision=" not in terminal(e, color="none")
    e.convergence = replace(e.convergence, precision="float64")
    assert "no quadrature closes this gap" in terminal(e, color="none")
    assert "delta +0.2 (in float64)" in terminal(e, color="none") and "delta +0.2 (in float64)" in e.to_html()
    e.convergence = replace(e.convergence, converged=True)
    assert "not converged" not in side_by_side_html([e]) and "delta +0.2" in side_by_side_html([e])
    # the JSON keeps the keys in info, and reads back into the typed record
    assert e.to_dict()["info"]["converged"] is True and e.to_dict()["info"]["unresolved_alpha"] == [0.0515201, 0.0515202]
    assert te.Explanation.from_json(e.to_json()).convergence == e.convergence


def test_text_between_tokens_is_kept():
    e = _explanation(["Hello", "world"], [1, -1], text="  Hello,\n world!  ")
    parsed = "".join(_parse(e.to_html()).data)
    assert "  Hello,\n world!  " in parsed
    no_spans = _explanation(["hello", "world"], [1, -1], spans=False)
    assert "hello world" in "".join(_parse(no_spans.to_html()).data)


def test_side_by_side_has_one_row_per_method_in_order():
    a = _explanation(["good", "film"], [1, 0.5], method="integrated_gradients")
    b = _explanation(["good", "film"], [0.1, 0.9], method="gradient", signed=False)
    markup = side_by_side_html([a, b])
    rows = re.findall(r"<tr style=\"border-top[^>]*><td[^>]*><b>([^<]+)</b>", markup)
    assert rows == ["integrated_gradients", "gradient"]
    assert "signed, target pos" in markup and "unsigned, target pos" in markup
    assert markup.count("&#10004;") == 1  # the predicted class is marked once
    shared = side_by_side_html([a, b], shared_scale=True)
    assert shared.count("max|score|") == 0 and shared.count("fixed scale") == 2
    with pytest.raises(ValueError, match="different"):
        side_by_side_html([a, _explanation(["bad"], [1])])
    with pytest.raises(ValueError, match="no explanations"):
        side_by_side_html([])


def test_words_option_merges_before_rendering():
    e = _explanation(["un", "believ", "able", "!"], [0.5, 0.25, 0.25, -1.0], text="unbelievable !")
    markup = e.to_html(words=True)
    assert 'title="unbelievable: +1"' in markup and len(_backgrounds(markup)) == 2


def test_terminal_escapes_control_characters():
    e = _explanation(["evil\x1b[2J", "ok"], [1.0, -1.0], text="evil\x1b[2J ok")
    for mode in ("truecolor", "256", "none"):
        out = terminal(e, color=mode)
        without_ours = re.sub(r"\x1b\[[0-9;]*m", "", out)
        assert "\x1b" not in without_ours and "evil\\x1b[2J" in without_ours
    plain = terminal(e, color="none")
    assert "evil\\x1b[2J[+1]" in plain and "ok[-1]" in plain and "against pos" in plain
    assert "\x1b[48;2;20;96;165m" in terminal(e, color="truecolor")  # full positive colour on the max
    with pytest.raises(ValueError, match="color"):
        terminal(e, color="rainbow")


def test_write_html_is_atomic_and_complete(tmp_path):
    e = _explanation(["good"], [1.0])
    path = write_html(tmp_path / "sub" / "e.html", e.to_html())
    content = path.read_text(encoding="utf-8")
    assert content.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in content
    assert "Content-Security-Policy" in content
    assert [p.name for p in path.parent.iterdir()] == ["e.html"]
    with pytest.raises(ValueError, match="folder"):
        write_html(tmp_path, e.to_html())


def test_real_explanation_renders(sentiment_lstm):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        e = te.explain(sentiment_lstm, "a gorgeous, witty <b>film</b>", method="gradient_x_input")
    finally:
        torch.set_num_threads(before)
    markup = e.to_html()
    assert html.escape("<") in markup and "gradient_x_input" in markup and "sentiment-lstm" in markup


def test_a_cell_explanation_is_headed_by_the_cell_and_its_activation():
    """lstmvis.explain_cell results have one label (the cell) and no classes: no 'predicted'."""
    e = te.Explanation(text="a<b", tokens=["a", "<", "b"], token_ids=[0, 1, 2], scores=np.array([0.5, -1.0, 0.0]),
                       method="integrated_gradients", target=0, labels=["rnn.l1.c[3] at step 1 <x>"],
                       probs=np.array([1.0]), signed=True, info={"activation": 2.5, "activation_baseline": 0.25})
    markup = e.to_html()
    assert "explains <b>rnn.l1.c[3] at step 1 &lt;x&gt;</b>: activation 2.5 (baseline 0.25)" in markup
    assert "predicted" not in markup and "probabilities" not in markup
    head = terminal(e, color="none").splitlines()[0]
    assert head == "integrated_gradients: rnn.l1.c[3] at step 1 <x>, activation 2.5 (baseline 0.25)"
