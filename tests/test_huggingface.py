"""Hugging Face models: TextModel.from_huggingface and LanguageModel.from_huggingface.

On tiny BERT (WordPiece, transformers tokenizer), RoBERTa (byte-level BPE, raw tokenizers.Tokenizer)
and GPT-2 models built from configs with tokenizers trained here (tests/hf_tiny.py; nothing
downloads). Known answers: special tokens in every forward pass and never scored, IG completeness
with the special tokens fixed in the baseline, a text's logits the same alone, in batches and as
the tokenizer's own encoding gives them, exact spans, words, labels, and the model left as it was.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
import hf_tiny  # noqa: E402 (after the skip: it builds transformers models)
import textexplain as te  # noqa: E402
from lstmvis import LanguageModel  # noqa: E402
from textexplain import TextModel, metrics  # noqa: E402
from textexplain.testing import (LABELS, _same_snapshot, _snapshot, check_explainer, check_text_model,  # noqa: E402
                                 hooks_left)

FAST = {"integrated_gradients": {"n_steps": 16}, "smoothgrad": {"n_samples": 4, "seed": 1},
        "occlusion": {"window": 2}, "lime": {"num_samples": 60, "seed": 1},
        "shap": {"budget": 24, "seed": 1, "exact_max_tokens": 4}}
TEXT = "The jumping film's ending, unbelievably dull."


@pytest.fixture(scope="module")
def bert() -> TextModel:
    return TextModel.from_huggingface(*hf_tiny.bert())


@pytest.fixture(scope="module")
def roberta() -> TextModel:
    return TextModel.from_huggingface(*hf_tiny.roberta())


def _seen_ids(model: TextModel):
    """A forward pre-hook on the model recording every id row of every forward pass (remove it after)."""
    seen: list[list[int]] = []

    def hook(module, args, kwargs):
        seen.extend((args[0] if args else kwargs["input_ids"]).tolist())

    return seen, model.module.register_forward_pre_hook(hook, with_kwargs=True)


def _framed(row: list[int], model: TextModel) -> bool:
    """The row is prefix + text + suffix + padding (only pads after the suffix)."""
    pre, suf, pad = list(model.frame.prefix), list(model.frame.suffix), model.pad_id
    if row[:len(pre)] != pre:
        return False
    body = row[len(pre):]
    end = len(body)
    while end and body[end - 1] == pad:
        end -= 1
    return body[end - len(suf):end] == suf and pre[0] not in body[:end - len(suf)]


def test_labels_vocab_and_frame_come_from_the_model_and_tokenizer(bert, roberta):
    model, tok = hf_tiny.bert()
    assert bert.labels == ["rotten", "fresh"] and roberta.labels == ["rotten", "fresh", "plot"]
    assert bert.frame.prefix == (tok.cls_token_id,) and bert.frame.suffix == (tok.sep_token_id,)
    rtok = hf_tiny.byte_bpe_tokenizer()
    assert roberta.frame.prefix == (rtok.token_to_id("<s>"),) and roberta.frame.suffix == (rtok.token_to_id("</s>"),)
    assert bert.pad_id == tok.pad_token_id and bert.vocab.itos[tok.unk_token_id] == "[UNK]"
    assert bert.max_tokens == 64 - 2 and roberta.max_tokens == 64 - 2  # RoBERTa numbers positions after the pad id
    assert TextModel.from_huggingface(model, tok, labels=["neg", "pos"], name="tiny").labels == ["neg", "pos"]
    with pytest.raises(ValueError, match="2 logits but 3 labels"):
        TextModel.from_huggingface(model, tok, labels=["a", "b", "c"])
    with pytest.raises(TypeError, match="not a Hugging Face fast tokenizer"):
        TextModel.from_huggingface(model, te.WordTokenizer())


def test_tokens_are_the_texts_own_and_spans_exact(bert, roberta):
    for text in hf_tiny.corpus()[:40]:
        if not text.isascii():
            continue
        for model, marker in ((bert, "##"), (roberta, "Ġ")):
            tokens, spans = model.tokenizer(text), model.token_spans(text)
            assert len(tokens) == len(spans)
            assert model.vocab.encode(tokens) == model.tokenizer.ids(text)
            for tok, (a, b) in zip(tokens, spans):
                piece = tok.replace(marker, "") if marker == "Ġ" else tok.removeprefix(marker)
                if piece and tok != "[UNK]":
                    assert text[a:b].lower() == piece.lower(), (tok, text[a:b])
    assert "[CLS]" not in bert.tokenize(TEXT) and "<s>" not in roberta.tokenize(TEXT)


def test_to_words_merges_sub_word_pieces(bert, roberta):
    e = te.Gradient(bert).explain(TEXT)
    assert "##ing" in e.tokens
    words = e.to_words()
    assert words.tokens == ["The", "jumping", "film's", "ending,", "unbelievably", "dull."]
    np.testing.assert_allclose(words.scores.sum(), e.scores.sum())
    r = te.Gradient(roberta).explain("Jumping around,  the film's ending")
    assert any(t.startswith("Ġ") for t in r.tokens)
    assert r.to_words().tokens == ["Jumping", "around,", "the", "film's", "ending"]


@pytest.mark.parametrize("which", ["bert", "roberta"])
def test_same_logits_alone_in_batches_and_as_the_tokenizer_encodes(which, request):
    model = request.getfixturevalue(which)
    check_text_model(model)
    texts = [t for t in hf_tiny.corpus() if len(model.tokenizer(t)) < 40][:6] + ["good"]
    raw = hf_tiny.roberta()[1] if which == "roberta" else hf_tiny.bert()[1].backend_tokenizer
    with torch.no_grad():
        own = [model.module(input_ids=torch.tensor([raw.encode(t).ids])).logits[0] for t in texts]
    np.testing.assert_allclose(model.logits_ids([model.encode(t) for t in texts]), torch.stack(own).numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("which", ["bert", "roberta"])
def test_special_tokens_are_in_every_forward_pass_and_never_scored(which, request):
    model = request.getfixturevalue(which)
    seen, handle = _seen_ids(model)
    try:
        for name, cls in te.METHODS.items():
            params = FAST.get(name, {})
            masks = [{"mask": "pad"}, {"mask": "unk"}, {"mask": "delete"}] if "mask" in cls.hyperparameters else [{}]
            for mask in masks:
                seen.clear()
                e = cls(model, **{**params, **mask}).explain(TEXT)
                assert e.tokens == model.tokenize(TEXT) and len(e.scores) == len(e.tokens)
                assert seen and all(_framed(row, model) for row in seen), (name, mask)
        seen.clear()
        metrics.faithfulness(model, e)
        metrics.faithfulness_scores(model, e.token_ids, e.scores, e.target, mask="pad")
        assert seen and all(_framed(row, model) for row in seen)
    finally:
        handle.remove()


@pytest.mark.parametrize("which", ["bert", "roberta"])
def test_integrated_gradients_is_complete_with_the_special_tokens_fixed(which, request):
    model = request.getfixturevalue(which)
    e = te.IntegratedGradients(model, n_steps=64, method="gausslegendre").explain(TEXT)
    ids = model.encode(TEXT)
    pre, suf = list(model.frame.prefix), list(model.frame.suffix)
    with torch.no_grad():  # the pad baseline: pad embeddings between the model's own special tokens
        rows = torch.tensor([pre + ids + suf, pre + [model.pad_id] * len(ids) + suf])
        f_x, f_base = model.module(input_ids=rows, attention_mask=torch.ones_like(rows)).logits[:, e.target].tolist()
    assert abs(e.scores.sum() - (f_x - f_base)) < 0.01 * abs(f_x - f_base) + 1e-4
    assert abs(e.delta) < 0.01 * abs(f_x - f_base) + 1e-4


def test_the_model_is_left_as_it_was(bert):
    module = bert.module
    before, hooks = _snapshot(module), hooks_left(module)
    for name, cls in te.METHODS.items():
        cls(bert, **FAST.get(name, {})).explain(TEXT)
    bert.float64()
    _same_snapshot(before, _snapshot(module), "explaining a Hugging Face model")
    assert hooks_left(module) == hooks and all(p.grad is None for p in module.parameters())
    module.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            TextModel.from_huggingface(module, hf_tiny.bert()[1])
        assert module.training
    finally:
        module.eval()


@pytest.fixture(scope="module")
def bert3() -> TextModel:
    """Tiny BERT with check_explainer's three labels (its targets name them)."""
    return TextModel.from_huggingface(*hf_tiny.bert(tuple(LABELS)))


@pytest.mark.parametrize("method", list(te.METHODS))
def test_every_method_keeps_the_contract_on_tiny_bert(method, bert3):
    check_explainer(te.METHODS[method], bert3, FAST.get(method))


def test_gpt2_language_model_is_exact_and_gives_bits_per_token():
    module, tok = hf_tiny.gpt2()
    lm = LanguageModel.from_huggingface(module, tok)
    assert not lm.stateful and lm.max_tokens == 64 and lm.pad_id == tok.token_to_id("<|endoftext|>")
    text = hf_tiny.corpus()[0]
    assert lm.tokenize(text) == tok.encode(text).tokens and lm.encode(text) == tok.encode(text).ids
    assert [text[a:b] for a, b in lm.token_spans(text)][:3] == [t.replace("Ġ", "") for t in lm.tokenize(text)[:3]]
    ids = torch.tensor([lm.encode(text)[:20]])
    padded = torch.cat([ids[:, :12], torch.full((1, 8), lm.pad_id)], 1)
    with torch.no_grad():
        logits, state = lm.step(ids)
        np.testing.assert_array_equal(logits.numpy(), module(ids).logits.numpy())
        assert state is None  # right padding changes nothing before it
        np.testing.assert_allclose(lm.step(padded)[0][:, :12].numpy(), logits[:, :12].numpy(), atol=1e-5)
    stream = lm.encode(" ".join(hf_tiny.corpus()[:60]))
    assert len(stream) // 2 > lm.max_tokens  # two rows longer than the context: run in windows
    bits = lm.bits_per_token([stream], streams=2)
    x = torch.tensor(stream[:len(stream) - 1 - (len(stream) - 1) % 2]).view(2, -1)
    y = torch.tensor(stream[1:1 + x.numel()]).view(2, -1)
    with torch.no_grad():
        nll = sum(torch.nn.functional.cross_entropy(module(x[:, s:s + 64]).logits.flatten(0, 1),
                                                    y[:, s:s + 64].flatten(), reduction="sum").item()
                  for s in range(0, x.shape[1], 64))
    assert bits == pytest.approx(nll / y.numel() / np.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="max_tokens=64"):
        lm.step(torch.tensor([stream[:65]]))


def test_textexplain_and_lstmvis_import_without_transformers():
    code = ("import sys\n"
            "sys.modules['transformers'] = None\nsys.modules['tokenizers'] = None\n"
            "import textexplain, lstmvis\n"
            "from textexplain.testing import tiny_text_model\n"
            "e = textexplain.IntegratedGradients(tiny_text_model()).explain('a good film')\n"
            "assert 'transformers' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print('ok', len(e.tokens))\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok 3", done.stderr[-2000:]


def test_frame_layout_places_the_suffix_after_each_text_and_masks_the_padding():
    from textexplain.frame import Frame

    framed = Frame(prefix=(1,), suffix=(2,)).layout(torch.tensor([[5, 6, 0], [7, 0, 0]]), pad_id=0)
    assert framed.ids.tolist() == [[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]]
    assert framed.attention_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    assert framed.text_index.tolist() == [[-1, 0, 1, -1, 2], [-1, 0, -1, 1, 2]]
    layer = torch.nn.Embedding(8, 2)
    text = torch.randn(2, 3, 2)
    spread = framed.spread(text, layer)
    assert torch.equal(spread[1, 3], text[1, 1]) and torch.equal(spread[0, 3], layer.weight[2].detach())


def test_a_frame_on_any_module_without_attention_mask():
    from textexplain.frame import Frame
    from textexplain.testing import WORDS

    class NeedsCls(torch.nn.Module):
        """Bag of embeddings that refuses input without its start token (id 12, ',' here) first."""

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(len(WORDS), 3)

        def forward(self, ids):
            assert bool((ids[:, 0] == 12).all()), "no start token"
            return self.emb(ids).sum(1)

    module = NeedsCls().eval()
    model = TextModel(module, WORDS, ["a", "b", "c"], module.emb, tokenizer=te.WordTokenizer(),
                      frame=Frame(prefix=(12,), attention_mask=False))
    e = te.IntegratedGradients(model).explain("a good film")
    assert e.tokens == ["a", "good", "film"] and abs(e.delta) < 1e-4
    te.Occlusion(model, mask="delete").explain("a good film")


def test_tokenization_names_the_tokenizer(bert):
    """A store extracted from a Hugging Face model records how it was cut (the pages match stores and models by it)."""
    from textexplain.model import tokenization_of

    assert bert.tokenization == "hf:wordpiece"  # a tokenizers.Tokenizer has no pretrained name: its model's kind
    named = hf_tiny.bert()[1]
    named.name_or_path = "tiny-bert"
    assert TextModel.from_huggingface(hf_tiny.bert()[0], named).tokenization == "hf:tiny-bert"
    assert tokenization_of(str.split) == "whitespace" and tokenization_of(lambda text: text.split()) is None
