"""Zeiler-Fergus reconstructions: one unit's activation projected back to pixel space (deconvnet).

Zeiler & Fergus (2014) keep one feature map of a conv layer, zero every other unit of the layer,
and run the result backwards: max-unpooling with the switches recorded in the forward pass,
rectification (ReLU of the signal) and transposed filters, down to the pixels. That backward pass
is exactly the vector-Jacobian product of the layer's output with respect to the input under the
deconvnet ReLU rule (``guided.RectifierRules("deconvnet")``): autograd's max-pool backward places
each value at its argmax (the switches), a conv's backward applies its transposed filters, and the
deconvnet rule passes ``max(signal, 0)`` through every ReLU. The seed signal is the unit's own
(rectified) activation, so a reconstruction is in the units of the activation, not a gradient.

    rec = reconstruct(model, x, layer="features.3", unit=5)              # (B, C, H, W)
    top = top_reconstructions(model, images, layer="features.3", unit=5)  # top-9 patches + theirs

Only the input gets a gradient (``torch.autograd.grad``): the model's weights, ``.grad``, mode and
hooks stay as they were; the capture hook is removed on exit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import LayerSpec, capture, check_images, layer_name, resolve_layer, warn_if_training
from .guided import RectifierRules
from .patches import TopPatches


def reconstruct(model: nn.Module, x: torch.Tensor | np.ndarray, layer: LayerSpec, unit: int,
                position: tuple[int, int] | list[tuple[int, int]] | None = None) -> torch.Tensor:
    """Deconvnet reconstruction of feature map ``unit`` of ``layer`` for each image of ``x``.

    ``position``: keep only the activation at (y, x) of the map (one pair for the batch or one per
    image), as Zeiler & Fergus project a unit's strongest activation; ``None`` keeps the whole map.
    Every other unit of the layer is zeroed. Returns (B, C, H, W), the shape of ``x``.
    """
    x = check_images(x)
    warn_if_training(model)
    module = resolve_layer(model, layer)
    xg = x.clone().requires_grad_(True)
    with capture(module, clone=False) as cap, torch.enable_grad(), RectifierRules("deconvnet"):
        model(xg)
    act = cap.output
    if act.dim() != 4:
        raise ValueError(f"layer {layer_name(model, module)!r} gives shape {tuple(act.shape)}: reconstructions need "
                         "a conv layer's feature maps (B, K, H, W)")
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or not 0 <= unit < act.shape[1]:
        raise ValueError(f"unit must be a feature map of {layer_name(model, module)!r}: 0..{act.shape[1] - 1}, "
                         f"got {unit!r}")
    keep = torch.zeros_like(act)
    if position is None:
        keep[:, unit] = 1.0
    else:
        positions = [position] * len(x) if isinstance(position[0], (int, np.integer)) else list(position)
        if len(positions) != len(x):
            raise ValueError(f"got {len(positions)} positions for {len(x)} images: give one (y, x) or one per image")
        for b, (py, px) in enumerate(positions):
            if not (0 <= py < act.shape[2] and 0 <= px < act.shape[3]):
                raise ValueError(f"position {(py, px)} is outside the {act.shape[2]}x{act.shape[3]} feature map")
            keep[b, unit, int(py), int(px)] = 1.0
    signal = F.relu(act.detach()) * keep  # rectified: the deconvnet passes positive evidence only
    (rec,) = torch.autograd.grad(act, xg, grad_outputs=signal)
    return rec.detach()


@dataclass
class UnitReconstructions:
    """The top-k images of one unit: ``patches`` and ``reconstructions`` (k, C, h, w) cropped to the
    receptive field of the strongest position, with ``values`` (k,), ``image_index`` (k,),
    ``positions`` (k, 2) and ``boxes`` (k, 4) ``(y0, y1, x0, x1)``."""

    layer: str
    unit: int
    values: np.ndarray
    image_index: np.ndarray
    positions: np.ndarray
    boxes: np.ndarray
    patches: torch.Tensor
    reconstructions: torch.Tensor


def _crop(images: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """Receptive-field crops of each image (zero outside the image), as ``TopPatches.patches`` cuts them."""
    _, _, h, w = images.shape
    out = []
    for img, (y0, y1, x0, x1) in zip(images, boxes):
        crop = img[:, max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
        out.append(F.pad(crop, (max(-x0, 0), max(x1 - w, 0), max(-y0, 0), max(y1 - h, 0))))
    return torch.stack(out)


def top_reconstructions(model: nn.Module, images: torch.Tensor | np.ndarray, layer: LayerSpec, unit: int,
                        k: int = 9, top: TopPatches | None = None) -> UnitReconstructions:
    """Zeiler & Fergus's figure for one unit: its ``k`` most activating images (over ``images``),
    each as the receptive-field patch next to the reconstruction of its strongest activation.

    ``top``: a ``TopPatches`` already fitted on ``images`` for ``layer`` (reused; else fitted here).
    """
    images = check_images(images)
    if top is None:
        top = TopPatches(model, layer, k=k, progress=False).fit(images)
    if not 0 <= unit < len(top.values_):
        raise ValueError(f"unit must be in [0, {len(top.values_)}), got {unit}")
    n = min(k, top.values_.shape[1])
    index = top.image_index_[unit, :n]
    positions = top.position_[unit, :n]
    boxes = top.boxes_[unit, :n]
    rec = reconstruct(model, images[torch.as_tensor(index)], layer, unit, [tuple(p) for p in positions])
    return UnitReconstructions(layer if isinstance(layer, str) else layer_name(model, layer), int(unit),
                               top.values_[unit, :n], index, positions, boxes,
                               top.patches(unit)[:n], _crop(rec, boxes))
