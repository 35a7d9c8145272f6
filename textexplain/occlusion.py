"""Occlusion: how much the output drops when a window of tokens is masked."""
from __future__ import annotations

import numpy as np

from .hyperparameters import Hyper
from .incremental import STATE_TOLERANCE
from .perturb import EVALUATIONS, PerturbationExplainer


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

    ``evaluation``: how the masked texts run (``textexplain.perturb``). "auto" (default) recomputes
    only what each window changes on recurrent and convolutional models (``textexplain.incremental``:
    5,000 tokens in seconds instead of minutes, the scores of the plain path up to ``state_tolerance``)
    and runs every masked text in full elsewhere; "plain" always runs them in full; "incremental"
    takes the span path whatever the model and text length. ``info["evaluation"]`` says which ran.
    """

    window = Hyper(int, 1, ge=1, api_le=16, help="tokens hidden at once (default 1)")
    stride = Hyper(int, 1, ge=1, api_le=16, help="step between windows (default 1)")
    evaluation = Hyper(str, "auto", choices=EVALUATIONS, api=False,
                       help="auto (default): recompute only what a window changes where the model allows it; "
                            "plain: every masked text in full; incremental: always the span path")
    state_tolerance = Hyper(float, STATE_TOLERANCE, ge=0, le=1e-2, api=False,
                            help="incremental path: a recurrent state within this of the unmasked text's "
                                 "(max abs) continues as the unmasked text (0 = never)")

    def _masked_model_options(self) -> dict:
        return {"evaluation": self.evaluation, "state_tolerance": self.state_tolerance}

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
