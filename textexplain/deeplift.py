"""DeepLIFT (Shrikumar et al. 2017, the rescale rule) at the embedding layer, with its summation-to-delta gap."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .base import Attribution, Explainer, Prepared, baseline_embeddings, check_choice, embed, forward_at_embeddings, \
    reduce_dims, resolve_target
from .convergence import Convergence
from .hyperparameters import Hyper
from .propagation import DEEPLIFT_EPS, deeplift_multipliers

BASELINE_HELP = "reference input (default pad embeddings)"
EPS_HELP = "|input - reference| below this at a nonlinearity: its multiplier is the gradient (default 1e-6)"


def warn_unruled(name: str, rules) -> None:
    """Say which nonlinearities passed the ordinary gradient (no rule of the method applies to them)."""
    if rules.other_activations:
        warnings.warn(f"{name} has no rule for {', '.join(sorted(rules.other_activations))}: the ordinary gradient "
                      "passed there, so the result is only approximately the method's", UserWarning, stacklevel=3)


class DeepLift(Explainer, name="deeplift", title="DeepLIFT"):
    """DeepLIFT's rescale rule from the baseline's embeddings to the text's (``textexplain.propagation``).

    One forward pass over ``[x; x']`` with the rules active and one backward pass: at every elementwise
    nonlinearity the multiplier is ``(f(x) - f(x')) / (x - x')`` (the gradient where the two are within
    ``eps``); at a max (pooling, max over time) the change is split between the two winners; inside
    ``nn.LSTM``/``nn.GRU`` (unrolled here) each gate product ``a b`` is split exactly as ``da (b + b') / 2
    + db (a + a') / 2``. Score per token = sum over embedding dims of ``(x - x') * multiplier``.
    ``delta = sum(scores) - (F(x) - F(x'))`` is the summation-to-delta gap (rounding only, on models made of
    these operations); ``convergence`` records it as for Integrated Gradients. ``baseline`` as for
    Integrated Gradients. Explains the target's logit.
    """

    baseline = Hyper((str, int, list, tuple, np.ndarray, torch.Tensor), "pad", choices=("pad", "zero", "unk"),
                     other_values="a token id or one token id per token", help=BASELINE_HELP)
    eps = Hyper(float, DEEPLIFT_EPS, gt=0, le=1, help=EPS_HELP)

    def _validate(self) -> None:
        if isinstance(self.baseline, str):
            check_choice("baseline", self.baseline, ("pad", "zero", "unk"))

    def _attribute(self, prepared: Prepared, target) -> Attribution:
        ids = prepared.ids
        x, x_ref = embed(self.model, ids), baseline_embeddings(self.model, ids, self.baseline)
        with torch.no_grad():
            logits = forward_at_embeddings(self.model, ids, x)[0].double().numpy()
        target = resolve_target(self.model, target, logits)

        def run(rows: torch.Tensor) -> torch.Tensor:
            return forward_at_embeddings(self.model, ids.expand(rows.shape[0], -1), rows)[:, target]

        multipliers, f_x, f_ref, rules = deeplift_multipliers(run, x, x_ref, self.eps)
        warn_unruled(type(self).__name__, rules)
        scores = reduce_dims((x - x_ref)[0] * multipliers[0], "sum")
        f_input, f_baseline = float(f_x[0]), float(f_ref[0])
        delta = float(scores.sum() - (f_input - f_baseline))
        convergence = Convergence.measure(delta, f_input, f_baseline, n_gradient_rows=2, n_probe_rows=1,
                                          precision=str(x.dtype).removeprefix("torch."))
        return Attribution(scores, logits, target, delta=delta, convergence=convergence,
                           info={"rules_applied": rules.rewritten})
