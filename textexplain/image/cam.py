"""Class activation maps: CAM, Grad-CAM, Grad-CAM++, HiResCAM and guided Grad-CAM.

Template method: :class:`BaseCAM` captures the target layer's activations A (B, K, h, w) and,
when needed, the gradients dy/dA, then calls ``cam_weights`` -> ``cam_image`` -> ReLU ->
bilinear upsampling. A new variant overrides one hook.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..hyperparameters import Hyper
from .base import (BATCH_HELP, ImageMethod, capture, default_layer, last_linear, logits_of, resolve_layer,
                   select)
from .guided import GuidedBackprop

UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest")


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (B, h, w) maps to ``size`` with ``F.interpolate`` (align_corners=False)."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES} or None, got {mode!r}")
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(maps[:, None], size=size, mode=mode, **kw)[:, 0]


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return ((flat - lo[:, None]) / span[:, None] * (hi > lo)[:, None]).view_as(maps)


class BaseCAM(ImageMethod):
    """Template for class activation maps on a convolutional layer, returning (B, H, W).

    Parameters: ``layer`` (name or module; default: the last module with a spatial output, e.g.
    ``features`` of a features -> GAP -> fc model), ``relu`` (keep positive evidence only, as in
    the papers), ``upsample`` ("bilinear", "bicubic", "nearest", or None for the layer's h x w),
    ``normalize`` (min-max each map to [0, 1]), ``batch_size``.
    """

    output = "map"
    signed = False
    uses_gradients: ClassVar[bool] = True

    layer = Hyper((str, nn.Module), None, api=False, help="the convolutional layer (default: the last spatial one)")
    relu = Hyper(bool, True, help="keep positive evidence only, as in the papers")
    upsample = Hyper((str, type(None)), "bilinear", choices=(*UPSAMPLE_MODES, None),
                     help="resize to the input (bilinear, bicubic, nearest) or none: the layer's h x w")
    normalize = Hyper(bool, False, help="min-max each map to [0, 1]")
    batch_size = Hyper(int, 256, ge=1, api=False, help=BATCH_HELP)

    # -- hooks a variant overrides -------------------------------------------------------------
    def cam_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor | None:
        """Channel weights (B, K)."""
        raise NotImplementedError

    def cam_image(self, acts: torch.Tensor, grads: torch.Tensor | None, weights: torch.Tensor | None) -> torch.Tensor:
        """The map (B, h, w) before ReLU: by default the weighted sum of activation channels."""
        return (weights[:, :, None, None] * acts).sum(1)

    # -- the template ---------------------------------------------------------------------------
    def layer_maps(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Raw maps (B, h, w) at the layer's resolution, before ReLU and upsampling."""
        layer = resolve_layer(self.model, self.layer if self.layer is not None else default_layer(self.model, x))
        out = []
        step = self.batch_size or len(x)
        for s in range(0, len(x), step):
            xs, ts = x[s:s + step].clone().requires_grad_(self.uses_gradients), targets[s:s + step]
            with capture(layer) as cap, torch.set_grad_enabled(self.uses_gradients):
                logits = logits_of(self.model, xs)
                acts = cap.output
                if acts.dim() != 4:
                    raise ValueError(f"CAM needs a layer with a (B, K, h, w) output; {type(layer).__name__} gives "
                                     f"shape {tuple(acts.shape)}")
                score = select(logits, ts).sum()  # also checks the targets against the classes
                grads = torch.autograd.grad(score, acts)[0] if self.uses_gradients else None
            acts = acts.detach()
            out.append(self.cam_image(acts, grads, self.cam_weights(acts, grads, ts)))
        return torch.cat(out)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cam = self.layer_maps(x, targets)
        if self.relu:
            cam = cam.clamp(min=0)
        if self.upsample is not None:
            cam = upsample(cam, tuple(x.shape[-2:]), self.upsample)
        return minmax_normalize(cam) if self.normalize else cam


class CAM(BaseCAM, name="cam", title="CAM"):
    """CAM (Zhou et al. 2016): sum_k W[c, k] A_k for a layer feeding global-average-pool -> linear.

    ``classifier``: the linear layer after the pooling (default: the model's last nn.Linear).
    """

    uses_gradients = False
    layer = BaseCAM.layer  # redeclared: the constructor takes (layer, classifier, ...)
    classifier = Hyper((str, nn.Module), None, api=False,
                       help="the linear layer after the pooling (default: the model's last nn.Linear)")

    def cam_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
        fc = resolve_layer(self.model, self.classifier) if self.classifier is not None else last_linear(self.model)
        if not isinstance(fc, nn.Linear) or fc.in_features != acts.shape[1]:
            raise ValueError(f"CAM needs a linear classifier taking the layer's {acts.shape[1]} pooled channels; "
                             f"got {fc}. Use Grad-CAM for other heads.")
        return fc.weight.detach()[targets.to(fc.weight.device)].to(acts)


class GradCAM(BaseCAM, name="gradcam", title="Grad-CAM"):
    """Grad-CAM (Selvaraju et al. 2017): channel weights = spatial mean of d logit / dA."""

    def cam_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
        return grads.mean((2, 3))


class GradCAMPlusPlus(BaseCAM, name="gradcam_plus_plus", title="Grad-CAM++"):
    """Grad-CAM++ (Chattopadhay et al. 2018): weights from positive gradients with per-pixel alphas."""

    def cam_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
        g2, g3 = grads.pow(2), grads.pow(3)
        denom = 2 * g2 + acts.sum((2, 3), keepdim=True) * g3
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                            torch.zeros_like(denom))
        return (alpha * grads.clamp(min=0)).sum((2, 3))


class HiResCAM(BaseCAM, name="hirescam", title="HiResCAM"):
    """HiResCAM (Draelos & Carin 2020): sum_k dy/dA_k * A_k elementwise, faithful to the gradient."""

    def cam_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, targets: torch.Tensor) -> None:
        return None

    def cam_image(self, acts: torch.Tensor, grads: torch.Tensor | None, weights: torch.Tensor | None) -> torch.Tensor:
        return (grads * acts).sum(1)


class GuidedGradCAM(ImageMethod, name="guided_gradcam", title="Guided Grad-CAM"):
    """Guided Grad-CAM: guided backprop times the bilinearly upsampled Grad-CAM map, (B, C, H, W)."""

    layer = BaseCAM.layer
    batch_size = Hyper(int, 256, ge=1, api=False, help=BATCH_HELP)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cam = GradCAM(self.model, self.layer, batch_size=self.batch_size)._attribute(x, targets)
        return GuidedBackprop(self.model, self.batch_size)._attribute(x, targets) * cam[:, None]
