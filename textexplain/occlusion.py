"""Occlusion: how much the output drops when a window of tokens is masked."""
from __future__ import annotations

import numpy as np

from .hyperparameters import Hyper
from .perturb import PerturbationExplainer


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Token ranges ``[start, stop)`` of width ``window`` every ``stride`` tokens; the last one ends
    at the text's end so every token is covered."""
    if window >= n_tokens:
        return [(0, n_tokens)]
    starts = list(range(0, n_tokens - window + 1, stride))
    if starts[-1] != n_tokens - window:
        starts.append(n_tokens - window)
    return [(s, s + window) for s in starts]


class Occlusion(PerturbationExplainer, name="occlusion", title="Occlusion"):
    """Score of a token = mean over the windows covering it of ``F(x) - F(x with the window masked)``.

    With ``window=1`` this is leave-one-out. ``mask`` says what a masked token becomes (see
    ``textexplain.perturb``: ``"pad"`` embedding with the length kept, ``"unk"``, ``"delete"`` or a
    token id). Signed: positive = the token supports the target.
    """

    window = Hyper(int, 1, ge=1, api_le=16, help="tokens hidden at once (default 1)")
    stride = Hyper(int, 1, ge=1, api_le=16, help="step between windows (default 1)")

    def _plan(self, n_tokens: int) -> dict:
        spans = windows(n_tokens, self.window, self.stride)
        keep = np.ones((len(spans), n_tokens), dtype=bool)
        for row, (a, b) in enumerate(spans):
            keep[row, a:b] = False
        return {"masks": keep, "spans": spans}

    def _scores(self, n_tokens: int, value, plan: dict):
        drops = value(np.ones((1, n_tokens), dtype=bool))[0] - value(plan["masks"])
        total = np.zeros(n_tokens)
        count = np.zeros(n_tokens)
        for drop, (a, b) in zip(drops, plan["spans"]):
            total[a:b] += drop
            count[a:b] += 1
        return total / count, None, {"n_windows": len(plan["spans"])}
