"""Top-k input patches per unit over a dataset (Zeiler & Fergus's top-9), with receptive fields.

For each channel of a layer, keep the k images where its strongest spatial activation is
highest, and crop the input region that the strongest unit sees: its receptive field, computed
analytically from the conv/pool chain that leads to the layer (size, jump and offset).
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .base import Configurable, LayerSpec, capture, check_images, default_layer, layer_name, resolve_layer, \
    warn_if_training

# modules that act on each position separately: they leave the receptive field unchanged
_POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
              nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
              nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.InstanceNorm2d)


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a layer's units in input pixels, per axis (height, width).

    ``size``: pixels each unit sees; ``jump``: input pixels between neighbouring units;
    ``start``: input coordinate of the centre of unit (0, 0) (may be a half pixel).
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """Input rows ``[y0, y1)`` and columns ``[x0, x1)`` seen by unit (y, x); may extend past the image."""
        y0 = int(round(self.start[0] + y * self.jump[0] - (self.size[0] - 1) / 2))
        x0 = int(round(self.start[1] + x * self.jump[1] - (self.size[1] - 1) / 2))
        return y0, y0 + self.size[0], x0, x0 + self.size[1]


def _geometry(m: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], bool]:
    """(kernel, stride, padding, dilation, ceil_mode) of a conv or pooling layer, per axis."""
    def pair(v: object) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]

    k, s = pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size)
    d = pair(getattr(m, "dilation", 1))
    pad = m.padding
    if pad == "valid":
        pad = 0
    elif pad == "same":
        pad = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
    return k, s, pair(pad), d, bool(getattr(m, "ceil_mode", False))


def receptive_field(model: nn.Module, layer: str | nn.Module, example: torch.Tensor) -> ReceptiveField:
    """Receptive field of ``layer``'s units, from the conv/pool layers run before it on ``example``.

    Works for chains of Conv2d / MaxPool2d / AvgPool2d and pointwise modules (ReLU, batch-norm,
    dropout, ...). Branching networks, functional pooling in ``forward`` or other spatial layers
    are detected (the spatial sizes stop matching) and refused with a ValueError.
    """
    target = resolve_layer(model, layer)
    example = check_images(example)[:1]
    events: list[tuple[nn.Module, tuple, tuple]] = []
    owner = threading.get_ident()
    done = threading.Event()

    def hook(mod: nn.Module, inputs: tuple, output: object) -> None:
        if threading.get_ident() == owner and not done.is_set() and isinstance(output, torch.Tensor):
            if mod is target:
                done.set()
            if not list(mod.children()) or mod is target:
                x_in = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
                events.append((mod, tuple(x_in.shape[2:]) if x_in is not None else (), tuple(output.shape[2:])))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    if not done.is_set():
        raise ValueError(f"layer {layer_name(model, target)!r} did not run in the forward pass")
    size, jump, start = [1, 1], [1, 1], [0.0, 0.0]
    spatial = tuple(example.shape[2:])
    for mod, in_shape, out_shape in events:
        if mod is target and list(mod.children()):
            break  # a container: its leaves were already accounted for
        if in_shape != spatial:
            raise ValueError(f"cannot map receptive fields through {type(mod).__name__}: the network is not a "
                             f"plain chain of conv/pool layers up to {layer_name(model, target)!r}")
        if isinstance(mod, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p, d, _ = _geometry(mod)
            for a in range(2):
                start[a] += ((k[a] - 1) * d[a] / 2 - p[a]) * jump[a]
                size[a] += (k[a] - 1) * d[a] * jump[a]
                jump[a] *= s[a]
        elif not isinstance(mod, _POINTWISE) or out_shape != in_shape:
            raise ValueError(f"cannot map receptive fields through {type(mod).__name__}; supported are "
                             "Conv2d, MaxPool2d, AvgPool2d and pointwise layers")
        spatial = out_shape
        if mod is target:
            break
    rf = ReceptiveField((size[0], size[1]), (jump[0], jump[1]), (start[0], start[1]))
    _verify(model, layer_name(model, target), example, rf)
    return rf


def _verify(model: nn.Module, name: str, example: torch.Tensor, rf: ReceptiveField) -> None:
    """Check the arithmetic against the true footprint of a corner and a centre unit.

    On a copy with positive weights, positive input and max-pools turned into average pools no
    ReLU blocks and no gradient cancels, so the input gradient of a unit is non-zero exactly on
    its receptive field. Branches (parallel convs, residuals) that the chain arithmetic cannot
    see show up as a different footprint.
    """
    probe = copy.deepcopy(model).eval()
    for parent in list(probe.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                k, s, p, _, ceil = _geometry(child)
                setattr(parent, child_name, nn.AvgPool2d(k, s, p, ceil_mode=ceil))
    with torch.no_grad():
        for p in probe.parameters():
            p.fill_(1.0 / p[0].numel() if p.dim() > 1 else 1.0)
    x = torch.ones_like(example[:1]).requires_grad_(True)
    with capture(probe.get_submodule(name), clone=False) as cap, torch.enable_grad():
        probe(x)
    out = cap.output
    h, w = x.shape[2:]
    for y, xx in {(0, 0), (out.shape[2] // 2, out.shape[3] // 2)}:
        (g,) = torch.autograd.grad(out[0, :, y, xx].sum(), x, retain_graph=True)
        rows = torch.nonzero(g[0].abs().sum(0).sum(1)).flatten()
        cols = torch.nonzero(g[0].abs().sum(0).sum(0)).flatten()
        y0, y1, x0, x1 = rf.box(y, xx)
        expected = (max(y0, 0), min(y1, h), max(x0, 0), min(x1, w))
        found = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1) if len(rows) else None
        if found != expected:
            raise ValueError(f"cannot map receptive fields up to {name!r}: unit {(y, xx)} sees input box {found}, "
                             f"the conv/pool chain arithmetic gives {expected}; the network is not a plain chain")


class TopPatches(Configurable):
    """The ``k`` most activating images per channel of ``layer`` and the patches its units see.

    After :meth:`fit`: ``values_`` (K, k) strongest activation, ``image_index_`` (K, k) index in
    the data, ``position_`` (K, k, 2) the unit (y, x) that fired, ``boxes_`` (K, k, 4) its
    receptive field ``(y0, y1, x0, x1)`` in the image, ``receptive_field_``.
    """

    def __init__(self, model: nn.Module, layer: LayerSpec = None, k: int = 9, batch_size: int = 256,
                 progress: bool = True):
        super().__init__(model)
        self.layer = layer
        self.k = k
        self.batch_size = batch_size
        self.progress = progress

    def _batches(self, images: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        for s in tqdm(range(0, len(images), self.batch_size), desc="top patches", disable=not self.progress):
            yield s, images[s:s + self.batch_size]

    def fit(self, images: torch.Tensor | np.ndarray) -> "TopPatches":
        """Scan ``images`` (N, C, H, W) in batches, keeping a running top-k per channel."""
        images = check_images(images)
        if self.k < 1 or self.k > len(images):
            raise ValueError(f"k must be between 1 and the number of images ({len(images)}), got {self.k}")
        warn_if_training(self.model)
        module = resolve_layer(self.model, self.layer if self.layer is not None else default_layer(self.model, images))
        self.receptive_field_ = receptive_field(self.model, module, images[:1])
        best_v = best_i = best_p = None
        for s, xb in self._batches(images):
            with capture(module, clone=False) as cap, torch.no_grad():
                self.model(xb)
            acts = cap.output.detach()
            w = acts.shape[3]
            v, pos = acts.flatten(2).max(2)  # (B, K)
            idx = torch.arange(s, s + len(xb)).expand(acts.shape[1], -1).T  # (B, K)
            cand_v = v.T if best_v is None else torch.cat([best_v, v.T], 1)
            cand_i = idx.T if best_i is None else torch.cat([best_i, idx.T], 1)
            cand_p = pos.T if best_p is None else torch.cat([best_p, pos.T], 1)
            top = cand_v.topk(min(self.k, cand_v.shape[1]), dim=1).indices
            best_v, best_i, best_p = cand_v.gather(1, top), cand_i.gather(1, top), cand_p.gather(1, top)
        self.values_ = best_v.numpy()
        self.image_index_ = best_i.numpy()
        self.position_ = np.stack([best_p.numpy() // w, best_p.numpy() % w], -1)
        rf = self.receptive_field_
        self.boxes_ = np.array([[rf.box(int(y), int(x)) for y, x in row] for row in self.position_])
        self.images_ = images
        return self

    def patches(self, unit: int, pad_value: float = 0.0) -> torch.Tensor:
        """The ``k`` receptive-field crops of channel ``unit``, (k, C, size_h, size_w), padded outside the image."""
        if not hasattr(self, "values_"):
            raise ValueError("call fit(images) first")
        if not 0 <= unit < len(self.values_):
            raise ValueError(f"unit must be in [0, {len(self.values_)}), got {unit}")
        _, _, h, w = self.images_.shape
        out = []
        for i, (y0, y1, x0, x1) in zip(self.image_index_[unit], self.boxes_[unit]):
            img = self.images_[int(i)]
            crop = img[:, max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
            pads = (max(-x0, 0), max(x1 - w, 0), max(-y0, 0), max(y1 - h, 0))
            out.append(F.pad(crop, pads, value=pad_value))
        return torch.stack(out)
