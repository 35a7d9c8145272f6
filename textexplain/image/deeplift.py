"""DeepLIFT (Shrikumar et al. 2017, the rescale rule) for image classifiers."""
from __future__ import annotations

import numpy as np
import torch

from ..deeplift import EPS_HELP, warn_unruled
from ..hyperparameters import Hyper
from ..propagation import DEEPLIFT_EPS, deeplift_multipliers
from .base import BATCH_HELP, ImageMethod, TargetSpec, check_images, logits_of, predicted_or_given, select, \
    warn_if_training


class DeepLift(ImageMethod, name="deeplift", title="DeepLIFT"):
    """DeepLIFT's rescale rule from a baseline image to the input, (B, C, H, W) contributions.

    Rules as for text (``textexplain.propagation.DeepLiftRules``): rescale at ReLU/tanh/sigmoid, the
    exact split of a max-pool window's change between the input's and the baseline's winners (captum's
    rule), linear layers and average pooling as they are. ``baseline``: a number (default 0, a black
    image) or a tensor broadcastable to one image or the batch. ``attribute(..., return_delta=True)``
    also returns the summation-to-delta gap ``sum(attr) - (F(x) - F(x'))`` per image (rounding only).
    """

    baseline = Hyper((float, torch.Tensor, np.ndarray), 0.0, api=False,
                     help="a number or a tensor broadcastable to one image (default 0: a black image)")
    eps = Hyper(float, DEEPLIFT_EPS, gt=0, le=1, help=EPS_HELP)
    batch_size = Hyper(int, 128, ge=1, api=False, help=BATCH_HELP)

    def attribute(self, x: torch.Tensor, target: TargetSpec = None,
                  return_delta: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = check_images(x)
        warn_if_training(self.model)
        targets = predicted_or_given(self.model, x, target)
        attr, delta = self._contributions(x, targets)
        return (attr, delta) if return_delta else attr

    def _contributions(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        try:
            base = torch.broadcast_to(base, x.shape)
        except RuntimeError:
            raise ValueError(f"baseline of shape {tuple(base.shape)} does not broadcast to the images "
                             f"{tuple(x.shape)}: give a number, one image (C, H, W) or a batch") from None
        attrs, deltas = [], []
        for s in range(0, len(x), self.batch_size):
            xs, bs, ts = x[s:s + self.batch_size], base[s:s + self.batch_size], targets[s:s + self.batch_size]
            both = torch.cat([ts, ts])
            multipliers, f_x, f_ref, rules = deeplift_multipliers(
                lambda rows, both=both: select(logits_of(self.model, rows), both), xs, bs, self.eps)
            warn_unruled(type(self).__name__, rules)
            attr = (xs - bs) * multipliers
            attrs.append(attr)
            deltas.append(attr.flatten(1).sum(1) - (f_x - f_ref))
        return torch.cat(attrs).detach(), torch.cat(deltas).detach()

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._contributions(x, targets)[0]
