"""Occlusion (Zeiler & Fergus 2014): how much the target logit drops when a patch is covered."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..hyperparameters import Hyper
from .base import BATCH_HELP, ImageMethod, logits_of, select


def _pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(p, int) and p >= 1 for p in pair):
        raise ValueError(f"{what} must be a positive int or a pair (h, w) of positive ints, got {v!r}")
    return pair  # type: ignore[return-value]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets 0, stride, ...: ceil((size - window) / stride) + 1 of them; the last may be cut off."""
    return [k * stride for k in range(math.ceil((size - window) / stride) + 1)]


class Occlusion(ImageMethod, name="occlusion", title="Occlusion"):
    """Occlusion map (B, H, W): f(x) - f(x with a window set to ``baseline``), averaged over windows.

    Every pixel gets the mean drop of the target logit over all windows that cover it (all
    channels are covered at once). ``window`` and ``stride`` are ints or (h, w) pairs; the stride
    may not exceed the window, so every pixel is covered. ``baseline`` is a number or a tensor
    broadcastable to one image (C, H, W). ``batch_size`` occluded copies run per forward pass.
    """

    output = "map"

    window = Hyper((int, tuple, list), 4, api_ge=1, api_le=28, help="side of the covered square (or an (h, w) pair)")
    stride = Hyper((int, tuple, list), 2, api_ge=1, api_le=28, help="step between windows, at most the window")
    baseline = Hyper((float, torch.Tensor, np.ndarray), 0.0, api=False, help="what a covered pixel becomes (default 0)")
    batch_size = Hyper(int, 256, ge=1, api=False, help=BATCH_HELP)

    def _masks(self, height: int, width: int) -> torch.Tensor:
        (wh, ww), (sh, sw) = _pair(self.window, "window"), _pair(self.stride, "stride")
        if wh > height or ww > width:
            raise ValueError(f"window {(wh, ww)} is larger than the image {(height, width)}")
        if sh > wh or sw > ww:
            raise ValueError(f"stride {(sh, sw)} exceeds window {(wh, ww)}: some pixels would never be occluded")
        masks = []
        for y in window_starts(height, wh, sh):
            for x in window_starts(width, ww, sw):
                m = torch.zeros(height, width, dtype=torch.bool)
                m[y:y + wh, x:x + ww] = True
                masks.append(m)
        return torch.stack(masks)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        masks = self._masks(x.shape[2], x.shape[3]).to(x.device)  # (W, H, W')
        coverage = masks.sum(0).to(x.dtype)
        try:
            base = torch.broadcast_to(torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device), x.shape[1:])
        except RuntimeError:
            raise ValueError(f"baseline does not broadcast to one image {tuple(x.shape[1:])}") from None
        out = []
        with torch.no_grad():
            full = select(logits_of(self.model, x), targets)
            for xi, ti, fi in zip(x, targets, full):
                drops = []
                for s in range(0, len(masks), self.batch_size):
                    m = masks[s:s + self.batch_size, None]  # (n, 1, H, W)
                    occluded = torch.where(m, base, xi)
                    drops.append(fi - select(logits_of(self.model, occluded), ti.repeat(len(m))))
                drop = torch.cat(drops)
                out.append((drop[:, None, None] * masks).sum(0) / coverage)
        return torch.stack(out)
