"""Layer-wise relevance propagation (Bach et al. 2015) for image classifiers."""
from __future__ import annotations

import torch

from ..deeplift import warn_unruled
from ..hyperparameters import Hyper
from ..lrp import ALPHA_HELP, EPSILON_HELP, GAMMA_HELP, RULE_HELP
from ..propagation import LRP_RULES, LrpRules, lrp_relevance
from .base import BATCH_HELP, ImageMethod, TargetSpec, check_images, logits_of, predicted_or_given, select, \
    warn_if_training


class LRP(ImageMethod, name="lrp", title="LRP"):
    """LRP of the target logit down to the pixels, (B, C, H, W) relevances (``textexplain.propagation``).

    ``rule`` applies to conv layers: ``"epsilon"`` (default), ``"gamma"`` (favours positive
    contributions) or ``"alpha_beta"`` (``alpha`` times the positive, ``alpha - 1`` times the negative
    contributions); linear layers take the epsilon rule, ReLUs pass relevance on, max pooling gives a
    window's relevance to its winner, average pooling shares it in proportion. ``attribute(...,
    return_delta=True)`` also returns the conservation gap ``sum(attr) - F(x)`` per image: what biases
    and the stabilisers absorbed (0 for bias-free networks at ``epsilon=0``).
    """

    rule = Hyper(str, "epsilon", choices=LRP_RULES, help=RULE_HELP)
    epsilon = Hyper(float, 1e-3, ge=0, le=10, help=EPSILON_HELP)
    gamma = Hyper(float, 0.25, ge=0, le=100, help=GAMMA_HELP)
    alpha = Hyper(float, 1.0, ge=1, le=10, help=ALPHA_HELP)
    batch_size = Hyper(int, 256, ge=1, api=False, help=BATCH_HELP)

    def attribute(self, x: torch.Tensor, target: TargetSpec = None,
                  return_delta: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = check_images(x)
        warn_if_training(self.model)
        targets = predicted_or_given(self.model, x, target)
        attr, delta = self._relevance(x, targets)
        return (attr, delta) if return_delta else attr

    def _relevance(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attrs, deltas = [], []
        for s in range(0, len(x), self.batch_size):
            xs, ts = x[s:s + self.batch_size], targets[s:s + self.batch_size]
            rules = LrpRules(self.rule, self.epsilon, self.gamma, self.alpha)
            relevance, out, _ = lrp_relevance(lambda rows, ts=ts: select(logits_of(self.model, rows), ts), xs, rules)
            warn_unruled(type(self).__name__, rules)
            attrs.append(relevance)
            deltas.append(relevance.flatten(1).sum(1) - out)
        return torch.cat(attrs).detach(), torch.cat(deltas).detach()

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._relevance(x, targets)[0]
