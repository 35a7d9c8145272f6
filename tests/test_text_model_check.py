"""textexplain.testing.check_text_model: the batch-invariance check users run on their own models, and its
power to catch a model whose output depends on the padding or on the other texts of a batch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import textexplain as te
from textexplain.testing import LABELS, WORDS, TinyClassifier, check_text_model, tiny_text_model


class _MeanOverPadding(TinyClassifier):
    """The tiny classifier averaging over every position, padding included: a text's logits change
    with the width of its batch (the bug the shipped text CNN had between its conv layers)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(self.emb(ids).mean(1))))


class _NormalisesOverTheBatch(TinyClassifier):
    """Subtracts the batch mean of the pooled features: a text's logits depend on its neighbours."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).to(torch.float32)
        pooled = (self.emb(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(torch.tanh(self.hidden(pooled - pooled.mean(0, keepdim=True))))


def _model(module: nn.Module) -> te.TextModel:
    return te.TextModel(module, WORDS, LABELS, embedding=module.emb, tokenizer=te.WordTokenizer(), name="toy")


def test_a_padding_independent_model_passes_and_is_left_as_it_was():
    model = tiny_text_model()
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    check_text_model(model)
    check_text_model(model, ["good", "a good film", "not a good plot , dull acting"])
    assert not model.module.training
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())


def test_a_padding_sensitive_model_fails_naming_the_text_and_the_difference():
    with pytest.raises(AssertionError, match=r"the logits of 'great' \(1 tokens\) depend on the batch.*max difference"):
        check_text_model(_model(_MeanOverPadding()))


def test_a_model_that_looks_at_the_rest_of_the_batch_fails():
    with pytest.raises(AssertionError, match="depend on the batch"):
        check_text_model(_model(_NormalisesOverTheBatch()))


def test_training_mode_and_texts_of_one_length_are_refused():
    model = tiny_text_model()
    with pytest.raises(AssertionError, match="more than one length"):
        check_text_model(model, ["good film", "bad plot"])
    model.module.train()
    with pytest.raises(AssertionError, match="training mode"):
        check_text_model(model)
    assert model.module.training
