"""LIME through the ``lime`` package, with one feature per token position and our batched model.

``lime.lime_text.LimeTextExplainer`` samples the neighbourhood, weights it (cosine distance x 100,
exponential kernel) and fits the ridge surrogate. It only speaks strings, so it is given a
stand-in text of numbered placeholders, one per token position; the classifier function turns
each perturbed stand-in back into a keep-mask and evaluates it through ``MaskedModel`` (batched,
each distinct mask once). Per-position features (``bow=False``) keep word order meaningful: the
same word twice is two features.
"""
from __future__ import annotations

import numpy as np

from .base import check_choice, check_positive_int
from .model import TextModel
from .perturb import DEFAULT_MAX_BATCH_TOKENS, PerturbationExplainer

_MASKED = "x"  # what lime writes for a removed placeholder


class Lime(PerturbationExplainer):
    """LIME scores: the ridge surrogate's weight of each token position (signed).

    ``num_samples`` (default 5000, lime's default) neighbourhood samples, ``kernel_width`` 25,
    ``feature_selection="none"`` (every token gets a weight). ``seed`` seeds lime's sampler on
    every call, so repeated calls agree.
    """

    name = "lime"

    def __init__(self, model: TextModel, num_samples: int = 5000, kernel_width: float = 25.0,
                 feature_selection: str = "none", seed: int = 0, mask: str | int = "pad",
                 output: str = "logit", max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS):
        super().__init__(model, mask, output, max_batch_tokens)
        self.num_samples = check_positive_int("num_samples", num_samples, minimum=2)
        if not isinstance(kernel_width, (int, float)) or not kernel_width > 0:
            raise ValueError(f"kernel_width must be a positive number, got {kernel_width!r}")
        check_choice("feature_selection", feature_selection, ("none", "auto", "forward_selection",
                                                              "highest_weights", "lasso_path"))
        self.kernel_width, self.feature_selection, self.seed = float(kernel_width), feature_selection, int(seed)

    def _scores(self, n_tokens: int, value, plan=None):
        from lime.lime_text import LimeTextExplainer

        explainer = LimeTextExplainer(kernel_width=self.kernel_width, split_expression=r"\s+", bow=False,
                                      mask_string=_MASKED, feature_selection=self.feature_selection,
                                      random_state=self.seed)
        stand_in = " ".join(str(i) for i in range(n_tokens))

        def classifier_fn(strings: list[str]) -> np.ndarray:
            keep = np.array([[part != _MASKED for part in s.split(" ")] for s in strings], dtype=bool)
            v = value(keep)
            return np.stack([v, v], axis=1)  # lime wants a column per class: explain column 1

        result = explainer.explain_instance(stand_in, classifier_fn, labels=(1,), num_features=n_tokens,
                                            num_samples=self.num_samples)
        scores = np.zeros(n_tokens)
        for feature, weight in result.local_exp[1]:
            scores[feature] = weight
        info = {"surrogate_r2": float(result.score), "surrogate_intercept": float(result.intercept[1]),
                "n_samples": self.num_samples}
        return scores, None, info
