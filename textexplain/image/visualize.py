"""Visualizing the network: filters as images, feature maps, activation maximization, DeepDream.

Image transforms are plain torch (``affine_grid``/``grid_sample``, ``torch.roll``, depthwise
convolution), seeded by an explicit generator: no torchvision or kornia.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .base import Configurable, LayerSpec, capture, check_images, default_layer, logits_of, resolve_layer, \
    warn_if_training

# ----------------------------------------------------------------------------- layer views


def filter_images(model: nn.Module, layer: LayerSpec = None) -> torch.Tensor:
    """The kernels of a Conv2d (default: the first) as images in [0, 1], shape (out, in, kh, kw).

    Each filter is scaled by its own largest |weight|, so 0.5 is a zero weight, brighter positive.
    """
    conv = resolve_layer(model, layer) if layer is not None else next(
        (m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"filter images need an nn.Conv2d layer, got {type(conv).__name__ if conv else None}")
    w = conv.weight.detach().float()
    scale = w.flatten(1).abs().amax(1).clamp(min=1e-12)
    return 0.5 + 0.5 * w / scale[:, None, None, None]


def feature_maps(model: nn.Module, x: torch.Tensor, layer: LayerSpec = None) -> torch.Tensor:
    """Activations (B, K, h, w) of ``layer`` (default: the last spatial layer) for images ``x``."""
    x = check_images(x)
    module = resolve_layer(model, layer if layer is not None else default_layer(model, x))
    with capture(module, clone=False) as cap, torch.no_grad():
        model(x)
        return cap.output.detach().clone()


# ----------------------------------------------------------------------------- transforms


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflect padding."""
    if sigma <= 0:
        return img
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[1]
    pad = min(radius, img.shape[2] - 1, img.shape[3] - 1)
    k = k[radius - pad: radius + pad + 1]
    k = k / k.sum()
    out = F.conv2d(F.pad(img, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(out, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)


def random_affine(img: torch.Tensor, gen: torch.Generator, jitter: float = 0.0,
                  scale: tuple[float, float] = (1.0, 1.0), degrees: float = 0.0) -> torch.Tensor:
    """Per-image random translation (+-``jitter`` px), scale and rotation, same output size.

    One ``affine_grid`` + bilinear ``grid_sample`` with reflection padding, differentiable.
    """
    n, _, h, w = img.shape
    u = torch.rand((n, 4), generator=gen).to(img)
    angle = (2 * u[:, 0] - 1) * math.radians(degrees)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    tx, ty = (2 * u[:, 2] - 1) * jitter * 2 / w, (2 * u[:, 3] - 1) * jitter * 2 / h
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _fft_scale(h: int, w: int, decay_power: float) -> torch.Tensor:
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    freq = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / torch.clamp(freq, min=1.0 / max(h, w)) ** decay_power


# ----------------------------------------------------------------------------- activation maximization


class ActivationMaximization(Configurable):
    """Images that maximize a channel of ``layer`` (mean over positions) or a class logit.

    Gradient ascent with Adam on an image parameterized as ``sigmoid`` of free pixels (or, with
    ``fft=True``, of a frequency spectrum scaled by 1/f**``decay_power``), regularized as in
    Yosinski et al. 2015 and Olah et al. 2017: an L2 penalty pulling pixels towards ``center``,
    a Gaussian blur every ``blur_every`` steps (pixel parameterization), and random jitter,
    scale and rotation before every forward pass. ``layer=None`` maximizes class logits.
    ``center`` (default: middle of ``value_range``) is also the starting grey level.
    """

    def __init__(self, model: nn.Module, layer: LayerSpec = None, steps: int = 256, lr: float = 0.05,
                 l2: float = 0.0, blur_every: int = 0, blur_sigma: float = 0.5, jitter: float = 2.0,
                 scale: tuple[float, float] = (0.9, 1.1), degrees: float = 10.0, fft: bool = False,
                 decay_power: float = 1.0, value_range: tuple[float, float] = (0.0, 1.0),
                 center: float | None = None, seed: int = 0, progress: bool = False):
        super().__init__(model)
        self.layer = layer
        self.steps = steps
        self.lr = lr
        self.l2 = l2
        self.blur_every = blur_every
        self.blur_sigma = blur_sigma
        self.jitter = jitter
        self.scale = scale
        self.degrees = degrees
        self.fft = fft
        self.decay_power = decay_power
        self.value_range = value_range
        self.center = center
        self.seed = seed
        self.progress = progress

    def _to_image(self, param: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        lo, hi = self.value_range
        if self.fft:
            spectrum = torch.view_as_complex(param) * _fft_scale(shape[1], shape[2], self.decay_power).to(param.device)
            param = torch.fft.irfftn(spectrum, s=shape[1:], dim=(-2, -1), norm="ortho")
        return lo + (hi - lo) * torch.sigmoid(param)

    def _from_image(self, img: torch.Tensor) -> torch.Tensor:
        lo, hi = self.value_range
        return torch.logit(((img - lo) / (hi - lo)).clamp(1e-3, 1 - 1e-3))

    def _objective(self, img: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Per-image objective (N,): the unit's mean activation or logit."""
        if self.layer is None:
            logits = logits_of(self.model, img)
            if units.max() >= logits.shape[1]:
                raise ValueError(f"class {int(units.max())} out of range: the model has {logits.shape[1]} classes")
            return logits.gather(1, units[:, None])[:, 0]
        with capture(resolve_layer(self.model, self.layer)) as cap:
            self.model(img)
        acts = cap.output
        if units.max() >= acts.shape[1]:
            raise ValueError(f"unit {int(units.max())} out of range: the layer has {acts.shape[1]} channels")
        picked = acts.gather(1, units.view(-1, *[1] * (acts.dim() - 1)).expand(-1, 1, *acts.shape[2:]))
        return picked.flatten(1).mean(1)

    def visualize(self, units: int | Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
        """Optimize one image per unit (channel or class index); returns (N, C, H, W) in ``value_range``.

        ``shape`` is one input image's (C, H, W). All units are optimized together as one batch.
        """
        units_t = torch.as_tensor([units] if isinstance(units, int) else list(units), dtype=torch.long)
        if units_t.numel() == 0 or units_t.min() < 0:
            raise ValueError("units must be one or more non-negative channel or class indices")
        if len(shape) != 3:
            raise ValueError(f"shape must be one image's (C, H, W), got {shape!r}")
        warn_if_training(self.model)
        device = next(self.model.parameters(), torch.empty(0)).device
        units_t = units_t.to(device)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        n, (c, h, w) = len(units_t), shape
        lo, hi = self.value_range
        center = (lo + hi) / 2 if self.center is None else self.center
        if self.fft:
            init = torch.randn((n, c, h, w // 2 + 1, 2), generator=gen) * 0.01
        else:
            init = self._from_image(torch.full((n, c, h, w), center)) + 0.01 * torch.randn((n, c, h, w), generator=gen)
        param = init.to(device).requires_grad_(True)
        opt = torch.optim.Adam([param], lr=self.lr)
        for step in tqdm(range(self.steps), desc="activation maximization", disable=not self.progress):
            with torch.enable_grad():
                img = self._to_image(param, shape)
                seen = random_affine(img, gen, self.jitter, self.scale, self.degrees)
                objective = self._objective(seen, units_t)
                penalty = self.l2 * ((img - center) ** 2).flatten(1).mean(1)
                loss = (penalty - objective).sum()
                (grad,) = torch.autograd.grad(loss, param)
            param.grad = grad
            opt.step()
            if not self.fft and self.blur_every and (step + 1) % self.blur_every == 0:
                with torch.no_grad():
                    param.copy_(self._from_image(gaussian_blur(self._to_image(param, shape), self.blur_sigma)))
        with torch.no_grad():
            return self._to_image(param, shape).detach()


# ----------------------------------------------------------------------------- DeepDream


class DeepDream(Configurable):
    """DeepDream (Mordvintsev et al. 2015): amplify what ``layer`` sees in an image.

    Gradient ascent on 1/2 ||A||^2 of the layer (or of ``channels`` only), over an image pyramid
    of ``octaves`` levels ``octave_scale`` apart (smallest first, carrying the added detail up),
    with a random roll of up to ``jitter`` px before each step and a normalized step
    ``step_size * range * g / mean|g|``; pixels are clipped to ``value_range``.
    """

    def __init__(self, model: nn.Module, layer: LayerSpec = None, channels: Sequence[int] | None = None,
                 octaves: int = 4, octave_scale: float = 1.4, steps: int = 10, step_size: float = 0.01,
                 jitter: int = 4, min_size: int = 8, value_range: tuple[float, float] = (0.0, 1.0), seed: int = 0):
        super().__init__(model)
        self.layer = layer
        self.channels = channels
        self.octaves = octaves
        self.octave_scale = octave_scale
        self.steps = steps
        self.step_size = step_size
        self.jitter = jitter
        self.min_size = min_size
        self.value_range = value_range
        self.seed = seed

    def _step(self, img: torch.Tensor, module: nn.Module, gen: torch.Generator) -> torch.Tensor:
        dy, dx = (torch.randint(-self.jitter, self.jitter + 1, (2,), generator=gen).tolist()
                  if self.jitter else (0, 0))
        shifted = torch.roll(img, (dy, dx), (2, 3)).requires_grad_(True)
        with torch.enable_grad(), capture(module) as cap:
            self.model(shifted)
            acts = cap.output
            if self.channels is not None:
                if not all(0 <= c < acts.shape[1] for c in self.channels):
                    raise ValueError(f"channels must be in [0, {acts.shape[1]}), got {list(self.channels)}")
                acts = acts[:, list(self.channels)]
            (g,) = torch.autograd.grad(0.5 * acts.pow(2).sum(), shifted)
        g = torch.roll(g, (-dy, -dx), (2, 3))
        lo, hi = self.value_range
        step = self.step_size * (hi - lo) / g.abs().flatten(1).mean(1).clamp(min=1e-12)
        return (img + step[:, None, None, None] * g).clamp(lo, hi)

    def dream(self, x: torch.Tensor) -> torch.Tensor:
        """Dreamed versions of the images ``x`` (B, C, H, W), same shape and range."""
        x = check_images(x)
        warn_if_training(self.model)
        module = resolve_layer(self.model, self.layer if self.layer is not None else default_layer(self.model, x))
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        pyramid = [x]
        for _ in range(self.octaves - 1):
            h, w = (round(d / self.octave_scale) for d in pyramid[-1].shape[2:])
            if min(h, w) < self.min_size:
                break
            pyramid.append(F.interpolate(pyramid[-1], size=(h, w), mode="bilinear", align_corners=False))
        detail = torch.zeros_like(pyramid[-1])
        for base in reversed(pyramid):
            if detail.shape != base.shape:
                detail = F.interpolate(detail, size=base.shape[2:], mode="bilinear", align_corners=False)
            img = base + detail
            for _ in range(self.steps):
                img = self._step(img, module, gen)
            detail = img - base
        return img.detach()
