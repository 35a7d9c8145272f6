"""Embedding-dimension saliency (Li et al. 2016, "Visualizing and understanding neural models in NLP").

Gradient x input kept per embedding dimension: the matrix ``M[t, d] = e[t, d] * dF/de[t, d]`` over
tokens x embedding dimensions for the target output ``F`` (logit or probability). Its row sums are
the token-level gradient x input scores (``textexplain.GradientXInput``), so the heatmap shows how
each token's score is spread over the dimensions of its embedding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import OUTPUTS, embed, gradient_sum
from .model import TextModel


@dataclass
class EmbeddingSaliency:
    """``matrix`` (T, E) gradient x input per token and dimension; ``scores`` (T,) its row sums."""

    tokens: list[str]
    matrix: np.ndarray
    target: int
    label: str
    logits: np.ndarray

    @property
    def scores(self) -> np.ndarray:
        return self.matrix.sum(1)


def embedding_saliency(model: TextModel, text: str, target: int | str | None = None,
                       output: str = "logit") -> EmbeddingSaliency:
    """Gradient x input of the ``target`` output (default: the predicted class) for every token and
    embedding dimension of ``text``; one forward and one backward pass, the model untouched."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    tokens = model.tokenize(text)
    if not tokens:
        raise ValueError("the text has no tokens to explain")
    ids = torch.tensor([model.vocab.encode(tokens)], dtype=torch.long)
    x = embed(model, ids)
    grad, logits, target = gradient_sum(model, ids, x, [1.0], target, output)
    matrix = (grad * x[0]).detach().double().numpy()
    return EmbeddingSaliency(list(tokens), matrix, int(target), model.labels[int(target)], logits[0])
