"""The shipped sentiment-transformer (issue 18, point 3): its card's bar and size, every text method on it
(the method contract and the explain call), and the textexplain command line by name."""
from __future__ import annotations

import numpy as np
import pytest

import data
import textexplain as te
from data.registry import CHECKPOINTS
from textexplain import cli
from textexplain.testing import check_explainer

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one torch thread per module

NAME = "sentiment-transformer"
FAST = {"integrated_gradients": {"n_steps": 16}, "smoothgrad": {"n_samples": 8, "seed": 1},
        "lime": {"num_samples": 300, "seed": 1}, "shap": {"budget": 24, "seed": 1, "exact_max_tokens": 4}}


@pytest.fixture(scope="module")
def transformer():
    return data.load_model(NAME)


def test_card_meets_the_bar_and_the_checkpoint_is_small():
    card = data.model_card(NAME)
    assert card["metrics"]["test_accuracy"] >= 0.70
    assert card["architecture"]["class"] == "data.architectures.TransformerClassifier"
    assert (CHECKPOINTS / f"{NAME}.pt").stat().st_size <= 5_000_000


@pytest.mark.parametrize("method", list(te.METHODS))
def test_every_text_method_meets_the_contract_on_it(transformer, method):
    check_explainer(te.METHODS[method], transformer, FAST.get(method))
    text = "An engaging , funny film that never quite finds its footing ."
    e = te.explain(transformer, text, method=method, **FAST.get(method, {}))
    assert e.scores.shape == (len(transformer.tokenize(text)),) and np.isfinite(e.scores).all()
    np.testing.assert_allclose(e.probs, transformer.predict_proba(text)[0], atol=1e-5)


def test_textexplain_explains_it_by_name(capsys):
    assert cli.main(["explain", "a dull , lifeless film", "--model", NAME, "--method", "gradient,occlusion",
                     "--color", "none"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"model {NAME}: predicted ") and "occlusion: predicted" in out and "dull[" in out
