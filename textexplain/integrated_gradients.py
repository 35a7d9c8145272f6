"""Integrated Gradients at the embedding layer, with the completeness delta on every result."""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from .base import (OUTPUTS, Attribution, Explainer, Prepared, baseline_embeddings, check_choice,
                   check_positive_int, embed, gradient_sum, reduce_dims)
from .model import TextModel

COMPLETENESS_TOLERANCE = 0.01  # |delta| above this share of |F(x) - F(x')| is flagged as not converged
RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


@lru_cache(maxsize=64)
def quadrature(n_steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alpha`` in [0, 1] and weights (summing to 1) for integrating over the path (cached:
    Gauss-Legendre nodes cost an eigenvalue problem). Treat the arrays as read-only."""
    check_choice("method", rule, RULES)
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        nodes, weights = (nodes + 1) / 2, weights / 2
    elif rule == "riemann_trapezoid":
        if n_steps < 2:
            raise ValueError("the trapezoid rule needs n_steps >= 2")
        nodes, weights = np.linspace(0.0, 1.0, n_steps), np.full(n_steps, 1.0 / (n_steps - 1))
        weights[[0, -1]] /= 2
    else:
        offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
        nodes, weights = (np.arange(n_steps) + offset) / n_steps, np.full(n_steps, 1.0 / n_steps)
    nodes.setflags(write=False)
    weights.setflags(write=False)
    return nodes, weights


class IntegratedGradients(Explainer):
    """IG (Sundararajan et al. 2017) along the straight line from baseline to input embeddings.

    ``baseline``: ``"pad"`` (default: the pad token's embedding at every position, so the sequence
    keeps its length because the ids still say where the text is), ``"zero"``, ``"unk"``, one token
    id, or one id per token. ``method``: Gauss-Legendre (default) or a Riemann rule. Score per token
    = signed sum over embedding dims of ``(x - x') * avg_grad``. Every result carries
    ``delta = sum(scores) - (F(x) - F(x'))``; the input, the baseline and all path points run in
    one batch (split by ``internal_batch_size``), so F(x) and F(x') cost no extra pass.
    ``info["relative_delta"]`` = |delta| / |F(x) - F(x')|; ``info["converged"]`` is False above 1%:
    the path has features the steps miss (RNNs can switch state abruptly along it), so raise
    ``n_steps`` before trusting the scores.
    """

    name = "integrated_gradients"

    def __init__(self, model: TextModel, n_steps: int = 50, method: str = "gausslegendre",
                 baseline: str | int | Sequence[int] = "pad", internal_batch_size: int | None = None,
                 output: str = "logit"):
        super().__init__(model)
        self.n_steps = check_positive_int("n_steps", n_steps)
        check_choice("method", method, RULES)
        if method == "riemann_trapezoid" and n_steps < 2:
            raise ValueError("the trapezoid rule needs n_steps >= 2")
        if internal_batch_size is not None:
            check_positive_int("internal_batch_size", internal_batch_size)
        check_choice("output", output, OUTPUTS)
        if isinstance(baseline, str):
            check_choice("baseline", baseline, ("pad", "zero", "unk"))
        self.method, self.baseline, self.internal_batch_size, self.output = method, baseline, internal_batch_size, output

    def _attribute(self, prepared: Prepared, target) -> Attribution:
        ids = prepared.ids
        x = embed(self.model, ids)[0]
        x_ref = baseline_embeddings(self.model, ids, self.baseline)[0]
        alphas, weights = quadrature(self.n_steps, self.method)
        rows = torch.empty((self.n_steps + 2, *x.shape), dtype=x.dtype)  # input, baseline, path points
        rows[0], rows[1] = x, x_ref
        torch.addcmul(x_ref, torch.tensor(alphas, dtype=x.dtype)[:, None, None], x - x_ref, out=rows[2:])
        grad, logits, target = gradient_sum(self.model, ids, rows, np.concatenate([[0.0, 0.0], weights]),
                                            target, self.output, self.internal_batch_size)
        scores = reduce_dims((x - x_ref) * grad, "sum")
        f_x, f_ref = _output_value(logits[0], target, self.output), _output_value(logits[1], target, self.output)
        delta = float(scores.sum() - (f_x - f_ref))
        relative = abs(delta) / abs(f_x - f_ref) if f_x != f_ref else (0.0 if delta == 0 else float("inf"))
        return Attribution(scores, logits[0], target, delta=delta,
                           info={"f_input": f_x, "f_baseline": f_ref, "relative_delta": relative,
                                 "converged": relative <= COMPLETENESS_TOLERANCE,
                                 "n_forward_rows": int(rows.shape[0])})


def _output_value(logits: np.ndarray, target: int, output: str) -> float:
    if output == "logit":
        return float(logits[target])
    z = np.exp(logits - logits.max())
    return float(z[target] / z.sum())
