"""SmoothGrad with the noise added in embedding space (noise on token ids is meaningless)."""
from __future__ import annotations

import torch

from .base import (OUTPUTS, Attribution, Explainer, Prepared, check_choice, check_positive_int, embed,
                   gradient_sum, reduce_dims)
from .model import TextModel


class SmoothGrad(Explainer):
    """Average the embedding gradient over ``n_samples`` noisy copies of the input embeddings.

    Noise is Gaussian with ``sigma = noise_level * (max - min)`` of the model's embedding matrix,
    so one setting means the same thing for every model. ``base="gradient_x_input"`` (default)
    scores a token by ``sum_d x_d * mean_k dF/dx_d(x + noise_k)`` (signed); ``base="gradient"``
    by the L2 norm of the mean gradient (unsigned). The noise comes from a generator seeded with
    ``seed`` on every call, so a result never depends on what ran before.
    """

    name = "smoothgrad"

    def __init__(self, model: TextModel, n_samples: int = 50, noise_level: float = 0.05,
                 base: str = "gradient_x_input", seed: int = 0, internal_batch_size: int | None = None,
                 output: str = "logit"):
        super().__init__(model)
        self.n_samples = check_positive_int("n_samples", n_samples)
        if not isinstance(noise_level, (int, float)) or not noise_level >= 0:
            raise ValueError(f"noise_level must be a number >= 0 (a fraction of the embedding range), got {noise_level!r}")
        check_choice("base", base, ("gradient_x_input", "gradient"))
        check_choice("output", output, OUTPUTS)
        if internal_batch_size is not None:
            check_positive_int("internal_batch_size", internal_batch_size)
        self.noise_level, self.base, self.seed = float(noise_level), base, int(seed)
        self.internal_batch_size, self.output = internal_batch_size, output

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
