"""SmoothGrad with the noise added in embedding space (noise on token ids is meaningless)."""
from __future__ import annotations

import torch

from .base import (INTERNAL_BATCH_HELP, OUTPUT_HELP, OUTPUTS, SEED_HELP, Attribution, Explainer, Prepared, embed,
                   gradient_sum, reduce_dims)
from .hyperparameters import Hyper


class SmoothGrad(Explainer, name="smoothgrad", title="SmoothGrad"):
    """Average the embedding gradient over ``n_samples`` noisy copies of the input embeddings.

    Noise is Gaussian with ``sigma = noise_level * (max - min)`` of the model's embedding matrix,
    so one setting means the same thing for every model. ``base="gradient_x_input"`` (default)
    scores a token by ``sum_d x_d * mean_k dF/dx_d(x + noise_k)`` (signed); ``base="gradient"``
    by the L2 norm of the mean gradient (unsigned). The noise comes from a generator seeded with
    ``seed`` on every call, so a result never depends on what ran before.
    """

    n_samples = Hyper(int, 50, ge=1, api_le=200, help="noisy copies (default 50)")
    noise_level = Hyper(float, 0.05, ge=0, api_le=1,
                        help="noise sigma as a fraction of the embedding range (default 0.05)")
    base = Hyper(str, "gradient_x_input", choices=("gradient_x_input", "gradient"), help="what is averaged")
    seed = Hyper(int, 0, api_ge=0, api_le=2**31 - 1, help=SEED_HELP)
    internal_batch_size = Hyper(int, None, ge=1, api=False, help=INTERNAL_BATCH_HELP)
    output = Hyper(str, "logit", choices=OUTPUTS, help=OUTPUT_HELP)

    @property
    def signed(self) -> bool:  # type: ignore[override]
        return self.base == "gradient_x_input"

    def _attribute(self, prepared: Prepared, target) -> Attribution:
        ids = prepared.ids
        x = embed(self.model, ids)[0]
        with torch.no_grad():
            weight = self.model.embedding.weight
            sigma = self.noise_level * float(weight.max() - weight.min())
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((self.n_samples, *x.shape), generator=generator, dtype=x.dtype) * sigma
        rows = torch.cat([x[None], x + noise])
        weights = [0.0] + [1.0 / self.n_samples] * self.n_samples
        grad, logits, target = gradient_sum(self.model, ids, rows, weights, target, self.output,
                                            self.internal_batch_size)
        scores = reduce_dims(grad * x, "sum") if self.base == "gradient_x_input" else reduce_dims(grad, "l2")
        return Attribution(scores, logits[0], target, info={"sigma": sigma, "n_forward_rows": int(rows.shape[0])})
