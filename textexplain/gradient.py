"""Gradient and gradient x input at the embedding layer (gradients w.r.t. token ids do not exist)."""
from __future__ import annotations

from .base import OUTPUT_HELP, OUTPUTS, Attribution, Explainer, Prepared, embed, gradient_sum, reduce_dims
from .hyperparameters import Hyper


class Gradient(Explainer, name="gradient", title="Gradient"):
    """Saliency: the gradient of the target output w.r.t. each token's embedding.

    ``reduce="l2"`` (default) scores a token by the L2 norm of its gradient (unsigned: how
    sensitive the output is to that token); ``reduce="sum"`` sums the gradient over embedding
    dimensions (signed).
    """

    reduce = Hyper(str, "l2", choices=("l2", "sum"),
                   help="l2 norm over embedding dims (unsigned, default) or their sum (signed)")
    output = Hyper(str, "logit", choices=OUTPUTS, help=OUTPUT_HELP)

    @property
    def signed(self) -> bool:  # type: ignore[override]
        return self.reduce == "sum"

    def _attribute(self, prepared: Prepared, target) -> Attribution:
        ids = prepared.ids
        grad, logits, target = gradient_sum(self.model, ids, embed(self.model, ids), [1.0], target, self.output)
        return Attribution(reduce_dims(grad, self.reduce), logits[0], target,
                           info={"n_forward_rows": 1, "score": f"{self.reduce} of the gradient over embedding dims"})


class GradientXInput(Explainer, name="gradient_x_input", title="Gradient × input"):
    """Gradient x input: ``sum_d x_d * dF/dx_d`` per token (signed).

    The first-order Taylor contribution of each token relative to an all-zero embedding; exact
    per-token contributions for a model linear in its embeddings.
    """

    output = Hyper(str, "logit", choices=OUTPUTS, help=OUTPUT_HELP)

    def _attribute(self, prepared: Prepared, target) -> Attribution:
        ids = prepared.ids
        x = embed(self.model, ids)
        grad, logits, target = gradient_sum(self.model, ids, x, [1.0], target, self.output)
        return Attribution(reduce_dims(grad * x[0], "sum"), logits[0], target,
                           info={"n_forward_rows": 1, "score": "sum over embedding dims of gradient * embedding"})
