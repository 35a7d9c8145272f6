"""Stores remember (issue 18, point 6): extract on token ids keeps the decoded text with the tokens' spans, and
extract(name=...) writes the model's name into the store's card."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lstmvis
from lstmvis.detokenize import detokenize, join_style
from textexplain.language_model import LanguageModel
from textexplain.model import CharTokenizer, Vocab
from textexplain.testing import tiny_text_model


class TinyLM(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab_size, 4)
        self.rnn = nn.LSTM(4, 5, batch_first=True)
        self.out = nn.Linear(5, vocab_size)

    def forward(self, ids, state=None):
        h, state = self.rnn(self.emb(ids), state)
        return self.out(h), state


TEXTS = ["Apache httpd", "x = 'a' # b", "Aa"]


@pytest.fixture()
def char_lm():
    vocab = Vocab(["<pad>", "<unk>", *sorted(set("".join(TEXTS)))])
    return LanguageModel(TinyLM(len(vocab)), vocab, CharTokenizer(), name="tiny-char")


def test_char_ids_decode_to_the_original_text(char_lm, tmp_path):
    ids = [char_lm.encode(t) for t in TEXTS]
    store = lstmvis.extract(char_lm, ids, tmp_path / "ids.h5", progress=False)
    from_text = lstmvis.extract(char_lm, TEXTS, tmp_path / "text.h5", progress=False)
    with store, from_text:
        assert store.has_texts and [store.sequence_text(i) for i in range(3)] == TEXTS  # not "A p a c h e"
        np.testing.assert_array_equal(store.token_spans(), from_text.token_spans())
        for hypothesis in ("quotes", "comment", "regex:pac"):  # text hypotheses run on the right text
            got = lstmvis.rank_cells(store, "rnn.l0.c", hypothesis)
            want = lstmvis.rank_cells(from_text, "rnn.l0.c", hypothesis)
            np.testing.assert_allclose(got.scores, want.scores)
        quotes = lstmvis.hypotheses.resolve("quotes")(store)
        assert quotes[store.sequence_bounds(1)[0]:][3:8].tolist() == [0, 1, 1, 0, 0]  # 'a' is inside quotes


def test_word_ids_decode_with_spaces_and_spans(tmp_path):
    model = tiny_text_model()
    ids = [model.encode("a good plot , not great acting"), model.encode("dull film") + [model.unk_id]]
    with lstmvis.extract(model, ids, tmp_path / "words.h5", modules=["emb"], progress=False) as store:
        assert store.sources == ["emb"] and store.card["model"] == "tiny"
        assert [store.sequence_text(i) for i in range(2)] == ["a good plot , not great acting", "dull film <unk>"]
        a, b = store.sequence_bounds(1)
        assert [store.sequence_text(1)[x:y] for x, y in store.token_spans(a, b)] == ["dull", "film", "<unk>"]
        assert lstmvis.hypotheses.resolve("regex:film")(store)[a:b].tolist() == [0, 1, 0]


@pytest.mark.parametrize("tokens, style, text", [
    (["[CLS]", "glar", "##ing", "error", "[SEP]"], "wordpiece", "[CLS] glaring error [SEP]"),
    (["<s>", "\u0120gla", "ring", "\u0120error", "</s>"], "bpe", "<s> glaring error</s>"),
    (["\u2581gla", "ring", "\u2581error"], "sentencepiece", "glaring error"),
    (list("Apache"), "char", "Apache"),
])
def test_subword_conventions(tokens, style, text):
    assert join_style(tokens) == style
    got, spans = detokenize(tokens, style)
    assert got == text
    pieces = [got[a:b] for a, b in spans]
    assert "".join(pieces).replace(" ", "") == got.replace(" ", "") and len(pieces) == len(tokens)


def test_plain_module_ids_with_a_vocabulary(tmp_path):
    vocab = ["<pad>", "<unk>", *sorted(set("".join(TEXTS)))]
    module = TinyLM(len(vocab))

    class Logits(nn.Module):  # a plain ids -> anything module
        def __init__(self):
            super().__init__()
            self.lm = module

        def forward(self, ids):
            return self.lm(ids)[0]

    ids = [[vocab.index(c) for c in t] for t in TEXTS]
    with lstmvis.extract(Logits(), ids, tmp_path / "plain.h5", vocab=vocab, progress=False) as store:
        assert store.sequence_text(0) == "Apache httpd"  # a vocabulary of single characters is a char vocabulary
    with lstmvis.extract(Logits(), ids, tmp_path / "bare.h5", progress=False) as bare:
        assert not bare.has_texts  # no vocabulary: ids only, nothing to decode


def test_name_is_written_to_the_card(char_lm, tmp_path):
    with lstmvis.extract(char_lm, TEXTS, tmp_path / "a.h5", progress=False) as store:
        assert store.card["model"] == "tiny-char" and store.info()["model"] == "tiny-char"
    with lstmvis.extract(char_lm, TEXTS, tmp_path / "b.h5", progress=False, name="my-lm") as store:
        assert store.card["model"] == "my-lm" and store.info()["model"] == "my-lm"
