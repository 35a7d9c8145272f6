"""Hostile text: every explanation method and extraction either works or says clearly why not.

Empty, whitespace only, 1 MB (many words, and one 1 MB word), only unknown tokens, control
characters, a character from every Unicode plane, a lone surrogate, combining marks, RTL,
emoji sequences, case mappings that change length, markup. A result must be a finite
explanation whose spans point at the tokens in the original text and that renders (HTML,
terminal, JSON); a refusal must be a ValueError with a message. Extraction must store the
exact text and give the same clear refusals, naming the text in the corpus.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lstmvis
import textexplain
from data.registry import CHECKPOINTS

PLANES = "".join(chr(plane * 0x10000 + 0x141) for plane in range(17))  # one code point in each of the 17 planes

TEXTS = {
    "empty": "",
    "whitespace only": " \t\n\r\u00a0\u2003 ",
    "1 MB of words": "good " * 200_000,
    "one 1 MB word": "a" * 1_000_000,
    "only unknown tokens": "qwxzk zzkqv plorbix",
    "control characters": "\x00\x01 great \x1b[31m film \x7f\u200b\ufeff end\x08\r\n",
    "every unicode plane": PLANES,
    "every plane, spaced": " ".join(PLANES),
    "lone surrogate": "good \ud800 film \udfff",
    "one token": "great",
    "punctuation only": "!!! ??? ...",
    "right to left": "שלום great فيلم",
    "combining marks": "e\u0301\u0301\u0301 great n\u0303",
    "length-changing case": "İİİ GREAT ß film ǅ",
    "emoji sequences": "👩‍👩‍👧 great 🎬🍿 🇫🇷",
    "only NUL": "\x00\x00",
    "markup": "<script>alert(1)</script> <img src=x onerror=alert(1)> &amp;",
}
REFUSED = {"empty": "no tokens", "whitespace only": "no tokens", "1 MB of words": "max_tokens"}

# small settings: the point is robustness, not quality
FAST = {"integrated_gradients": {"n_steps": 8}, "smoothgrad": {"n_samples": 4}, "lime": {"num_samples": 100},
        "shap": {"budget": 256, "exact_max_tokens": 8}}


def _params(method: str) -> dict:
    import inspect
    accepted = inspect.signature(textexplain.METHODS[method].__init__).parameters
    return {k: v for k, v in FAST.get(method, {}).items() if k in accepted}


@pytest.fixture(scope="module", params=["sentiment-lstm", "sentiment-cnn"])
def classifier(request):
    if not (CHECKPOINTS / f"{request.param}.pt").exists():
        pytest.skip(f"{request.param} not trained")
    import data
    torch.set_num_threads(1)
    return data.load_model(request.param)


@pytest.mark.parametrize("method", list(textexplain.METHODS))
def test_every_method_on_hostile_text(classifier, method):
    for name, text in TEXTS.items():
        if name in REFUSED:
            with pytest.raises(ValueError, match=REFUSED[name]):
                textexplain.explain(classifier, text, method, **_params(method))
            continue
        e = textexplain.explain(classifier, text, method, **_params(method))
        assert len(e.tokens) == len(e.scores) >= 1, name
        assert np.all(np.isfinite(e.scores)), (name, e.scores)
        assert np.isclose(np.sum(e.probs), 1.0), name
        if e.spans is not None:
            for tok, (a, b) in zip(e.tokens, e.spans):
                assert text[a:b].lower() == tok.lower() or text[a:b] == tok, (name, tok, text[a:b])
        html = e.to_html()
        assert "<script>" not in html and "<img" not in html, name
        e.to_terminal(color="none")
        back = textexplain.Explanation.from_json(e.to_json())
        assert back.tokens == e.tokens, name
        json.loads(e.to_json())


def test_wrong_types_are_type_errors(classifier):
    for bad in (None, 3, b"bytes", ["a", "list"]):
        with pytest.raises(TypeError):
            textexplain.explain(classifier, bad, "gradient")


@pytest.fixture(scope="module")
def parens_lm():
    if not (CHECKPOINTS / "parens-lstm.pt").exists():
        pytest.skip("parens-lstm not trained")
    import data
    return data.load_model("parens-lstm")


def test_extraction_of_hostile_text_keeps_it_exactly(parens_lm, tmp_path):
    """A char LM takes any text: unknown characters become <unk>, the exact text is stored."""
    texts = [t for name, t in TEXTS.items() if "MB" not in name]
    texts.append("x" * 100_000)  # long enough to cross many chunks
    with lstmvis.extract(parens_lm, texts, tmp_path / "s.h5", progress=False, chunk_size=4096) as store:
        assert store.n_sequences == len(texts)
        for i, text in enumerate(texts):
            a, b = store.sequence_bounds(i)
            assert store.sequence_text(i) == text
            assert b - a == len(parens_lm.tokenize(text))
            spans = store.token_spans(a, b)
            assert all(text[s:e] == tok or tok == "<unk>" for tok, (s, e) in zip(store.tokens(a, b), spans))
        assert np.isfinite(store.states("rnn.l0.h")).all()


def test_extraction_refusals_name_the_text(classifier, tmp_path):
    kinds = "conv" if "cnn" in classifier.name else ("h", "c")
    for name in REFUSED:
        corpus = ["a fine film", "dull", TEXTS[name]]
        with pytest.raises(ValueError, match=f"text 2 of the corpus.*{REFUSED[name]}"):
            lstmvis.extract(classifier, corpus, tmp_path / "r.h5", progress=False, kinds=kinds)
        assert not (tmp_path / "r.h5").exists()
    ok = [t for n, t in TEXTS.items() if n not in REFUSED and "MB" not in n]
    with lstmvis.extract(classifier, ok, tmp_path / "ok.h5", progress=False, kinds=kinds) as store:
        assert [store.sequence_text(i) for i in range(store.n_sequences)] == ok
