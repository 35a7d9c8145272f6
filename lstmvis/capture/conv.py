"""``nn.Conv1d``: the pre-activation output recorded as it is, as ``(B, T_out, C)``."""
from __future__ import annotations

import torch

from textexplain.hooks import transient  # a copy of the module taken while recording leaves these out


def conv_hook(rec, name: str):
    """The forward hook that records the Conv1d ``name`` for ``rec`` (calls from other threads pass)."""
    def hook(m, args, output):
        if rec.records_this_thread():
            out = output if output.dim() == 3 else output.unsqueeze(0)
            lengths = torch.full((out.shape[0],), out.shape[2], dtype=torch.long)
            rec.emit(f"{name}.conv", out.transpose(1, 2), lengths)
    return transient(hook)
