"""Issue 24, finding 7: markup in untrusted strings (a checkpoint's labels) is text in every plotly
figure, never markup: real headless Chromium, user models in a temporary --data directory whose
labels hold a link, bold and styled text."""
from __future__ import annotations

import json
import os
from urllib.parse import quote

import pytest

from conftest_server import CHROMIUM, live_server

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium at /usr/bin/chromium")]

LINK = '<a href="http://evil.example/">click</a>'
MARKUP = [LINK, '<b style="font-size:90px">huge</b>']


def markup_model(source: str, target, labels: list[str]) -> None:
    """A copy of the shipped checkpoint ``source`` whose labels (checkpoint and card) are ``labels``."""
    import torch

    from data.registry import CHECKPOINTS

    ckpt = torch.load(CHECKPOINTS / f"{source}.pt", weights_only=True)
    torch.save({**ckpt, "labels": labels}, target.with_suffix(".pt"))
    card = json.loads((CHECKPOINTS / f"{source}.json").read_text())
    target.with_suffix(".json").write_text(json.dumps({**card, "labels": labels}))


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    from server.app import create_app

    d = tmp_path_factory.mktemp("markup")
    markup_model("sentiment-cnn", d / "markup-text", MARKUP)
    markup_model("mnist-cnn", d / "markup-image", [*MARKUP, *(f"<i>{i}</i>" for i in range(2, 10))])
    with live_server(create_app(d, {"TESTING": True, "DEMO": False})) as url:
        yield url



def markup_in(page, plot: str) -> dict:
    """Elements that markup in a label would make inside a plot's SVG, and the plot's text."""
    return page.eval_on_selector(plot, """el => ({
        links: el.querySelectorAll("svg a").length,
        styled: [...el.querySelectorAll("svg tspan")].filter(t => /font-weight|font-size|font-style/.test(
            t.getAttribute("style") || "")).length,
        text: [...el.querySelectorAll("svg text")].map(t => t.textContent).join(" | ")})""")


def test_labels_with_markup_are_text_on_the_explain_page(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/explain?model=markup-text&methods=gradient_x_input&target=0&text={quote('a fine film')}")
    page.wait_for_selector("#probs-plot .barlayer .trace", state="attached")
    page.wait_for_selector("#curves-plot .scatterlayer .trace", state="attached")
    for plot in ("#probs-plot", "#curves-plot"):
        found = markup_in(page, plot)
        assert found["links"] == 0 and found["styled"] == 0, (plot, found)
    assert LINK in markup_in(page, "#probs-plot")["text"]  # shown as the text it is
    assert f"p({LINK})" in markup_in(page, "#curves-plot")["text"]


def test_labels_with_markup_are_text_on_the_images_page(watched, base_url):
    page = watched.page
    page.goto(f"{base_url}/images?model=markup-image&index=0")
    page.wait_for_selector("#probs-plot .barlayer .trace", state="attached")
    found = markup_in(page, "#probs-plot")
    assert found["links"] == 0 and found["styled"] == 0, found
    assert LINK in found["text"]
