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

from .base import SEED_HELP
from .hyperparameters import Hyper
from .perturb import PerturbationExplainer

_MASKED = "x"  # what lime writes for a removed placeholder


class Lime(PerturbationExplainer, name="lime", title="LIME"):
    """LIME scores: the ridge surrogate's weight of each token position (signed).

    ``num_samples`` (default 5000, lime's default) neighbourhood samples, ``kernel_width`` 25,
    ``feature_selection="none"`` (every token gets a weight). ``seed`` seeds lime's sampler on
    every call, so repeated calls agree.
    """

    num_samples = Hyper(int, 5000, ge=2, api_ge=10, api_le=5000, help="perturbed texts (default 5000)")
    kernel_width = Hyper(float, 25.0, gt=0, api_le=1000, help="locality kernel width (default 25)")
    feature_selection = Hyper(str, "none", choices=("none", "auto", "forward_selection", "highest_weights",
                                                    "lasso_path"), api=False,
                              help="lime's feature selection (default none: every token gets a weight)")
    seed = Hyper(int, 0, api_ge=0, api_le=2**31 - 1, help=SEED_HELP)

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
