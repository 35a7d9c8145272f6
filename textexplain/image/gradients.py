"""Gradient attributions: saliency, gradient x input, SmoothGrad, Integrated Gradients."""
from __future__ import annotations

import numpy as np
import torch

from ..hyperparameters import Hyper
from ..integrated_gradients import FIXED_RULES, quadrature
from .base import BATCH_HELP, ImageMethod, TargetSpec, check_images, input_gradients, predicted_or_given, select, \
    logits_of, warn_if_training


class Saliency(ImageMethod, name="saliency", title="Saliency"):
    """Vanilla saliency (Simonyan et al. 2014): |d logit / d x|, reduced over channels by max.

    ``reduce``: "max" (the paper), "sum" of |grad| over channels, or "none" to keep (B, C, H, W).
    """

    signed = False
    output = "map"

    reduce = Hyper(str, "max", choices=("max", "sum", "none"),
                   help="over channels: max of |grad| (the paper), their sum, or none (keep channels)")
    batch_size = Hyper(int, 256, ge=1, api=False, help=BATCH_HELP)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        g = input_gradients(self.model, x, targets, self.batch_size).abs()
        if self.reduce == "max":
            return g.amax(1)
        return g.sum(1) if self.reduce == "sum" else g


class Gradient(ImageMethod, name="gradient", title="Gradient"):
    """The signed gradient d logit / d x, (B, C, H, W)."""

    batch_size = Hyper(int, 256, ge=1, api=False, help=BATCH_HELP)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return input_gradients(self.model, x, targets, self.batch_size)


class GradientXInput(ImageMethod, name="gradient_x_input", title="Gradient × input"):
    """Gradient times input (Shrikumar et al.), (B, C, H, W): first-order Taylor term vs a zero image."""

    batch_size = Hyper(int, 256, ge=1, api=False, help=BATCH_HELP)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return input_gradients(self.model, x, targets, self.batch_size) * x


class SmoothGrad(ImageMethod, name="smoothgrad", title="SmoothGrad"):
    """SmoothGrad (Smilkov et al. 2017): the gradient averaged over noisy copies of the input.

    The noise std is ``noise_level * (max(x) - min(x))`` per image, as in the paper (10-20%);
    popular code divides instead of multiplying. ``kind``: "smoothgrad" (mean gradient, signed),
    "smoothgrad_sq" (mean squared gradient) or "vargrad" (variance). Every image gets the same
    noise pattern from a generator seeded with ``seed`` (scaled to its own range), so a batch
    gives the same result as single calls.
    """

    n_samples = Hyper(int, 50, ge=1, api_le=200, help="noisy copies per image (default 50)")
    noise_level = Hyper(float, 0.15, ge=0, api_le=1, help="noise std as a fraction of the image's range")
    kind = Hyper(str, "smoothgrad", choices=("smoothgrad", "smoothgrad_sq", "vargrad"),
                 help="mean gradient (signed), mean squared gradient, or their variance")
    seed = Hyper(int, 0, api_ge=0, api_le=2**31 - 1, help="seed of the noise")
    batch_size = Hyper(int, 256, ge=1, api=False, help=BATCH_HELP)

    @property
    def signed(self) -> bool:  # type: ignore[override]
        return self.kind == "smoothgrad"

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n = self.n_samples
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        noise = torch.randn((n, *x.shape[1:]), generator=gen).to(x)
        sigma = self.noise_level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
        out = []
        per_chunk = max(1, self.batch_size // n)
        for s in range(0, len(x), per_chunk):
            xs, ts, sig = x[s:s + per_chunk], targets[s:s + per_chunk], sigma[s:s + per_chunk]
            k = len(xs)
            noisy = xs[:, None] + sig[:, None, None, None, None] * noise[None]
            g = input_gradients(self.model, noisy.flatten(0, 1), ts.repeat_interleave(n), self.batch_size)
            g = g.view(k, n, *x.shape[1:])
            if self.kind == "smoothgrad":
                out.append(g.mean(1))
            elif self.kind == "smoothgrad_sq":
                out.append((g * g).mean(1))
            else:
                out.append(g.var(1, unbiased=False))
        return torch.cat(out)


class IntegratedGradients(ImageMethod, name="integrated_gradients", title="Integrated Gradients"):
    """Integrated Gradients (Sundararajan et al. 2017): (x - x') * integral of the gradient on the path.

    ``baseline``: a number (default 0, a black image) or a tensor broadcastable to one image
    (C, H, W) or to the batch. ``attribute(..., return_delta=True)`` also returns the completeness
    gap sum(attr) - (F(x) - F(x')) per image, which tends to 0 as ``n_steps`` grows.
    """

    n_steps = Hyper(int, 50, ge=1, api_le=300, help="points on the path (default 50)")
    method = Hyper(str, "gausslegendre", choices=FIXED_RULES, help="quadrature rule over the path")
    baseline = Hyper((float, torch.Tensor, np.ndarray), 0.0, api=False,
                     help="a number or a tensor broadcastable to one image (default 0: a black image)")
    batch_size = Hyper(int, 256, ge=1, api=False, help=BATCH_HELP)

    def _validate(self) -> None:
        quadrature(self.n_steps, self.method)  # the rule's own limits (the trapezoid needs n_steps >= 2)

    def attribute(self, x: torch.Tensor, target: TargetSpec = None,
                  return_delta: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = check_images(x)
        warn_if_training(self.model)
        targets = predicted_or_given(self.model, x, target)
        base = self._baseline(x)
        attr = self._integrate(x, base, targets)
        if not return_delta:
            return attr
        with torch.no_grad():
            gap = select(logits_of(self.model, x), targets) - select(logits_of(self.model, base), targets)
        return attr, attr.flatten(1).sum(1) - gap

    def _baseline(self, x: torch.Tensor) -> torch.Tensor:
        base = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        try:
            return torch.broadcast_to(base, x.shape).clone()
        except RuntimeError:
            raise ValueError(f"baseline of shape {tuple(base.shape)} does not broadcast to the images "
                             f"{tuple(x.shape)}: give a number, one image (C, H, W) or a batch") from None

    def _integrate(self, x: torch.Tensor, base: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        alphas, weights = quadrature(self.n_steps, self.method)
        alphas_t = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
        weights_t = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
        n = len(alphas)
        out = []
        per_chunk = max(1, self.batch_size // n)
        for s in range(0, len(x), per_chunk):
            xs, bs, ts = x[s:s + per_chunk], base[s:s + per_chunk], targets[s:s + per_chunk]
            k = len(xs)
            path = bs[:, None] + alphas_t.view(1, n, 1, 1, 1) * (xs - bs)[:, None]
            g = input_gradients(self.model, path.flatten(0, 1), ts.repeat_interleave(n), self.batch_size)
            g = g.view(k, n, *x.shape[1:])
            out.append((xs - bs) * (weights_t.view(1, n, 1, 1, 1) * g).sum(1))
        return torch.cat(out)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._integrate(x, self._baseline(x), targets)
