"""Cells called in a user loop: ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell`` recorded one call
(one time step) at a time, from a forward hook; gates recomputed from the call's input and state."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textexplain.hooks import transient  # a copy of the module taken while recording leaves these out

from .base import kinds_of, source_name
from .gates import gru_gates, lstm_gates


def cell_hook(rec, name: str):
    """The forward hook that records the cell ``name`` for ``rec`` (calls from other threads pass)."""
    def hook(m, args, kwargs, output):
        if not rec.records_this_thread():
            return
        x = args[0]
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        record_cell(rec, name, m, x, hx, output)
    return transient(hook)


def record_cell(rec, name: str, m: nn.Module, x: torch.Tensor, hx, output) -> None:
    kinds = kinds_of(m, rec.kinds)
    unbatched = x.dim() == 1
    if unbatched:
        x = x.unsqueeze(0)
    h_new = output[0] if isinstance(m, nn.LSTMCell) else output
    c_new = output[1] if isinstance(m, nn.LSTMCell) else None
    if unbatched:
        h_new = h_new.unsqueeze(0)
        c_new = c_new.unsqueeze(0) if c_new is not None else None
    values = {"h": h_new, "c": c_new}
    gate_kinds = [k for k in kinds if k.startswith("gate_")]
    if gate_kinds:
        h_prev = hx[0] if isinstance(m, nn.LSTMCell) and hx is not None else hx
        if h_prev is None:
            h_prev = x.new_zeros(x.shape[0], m.hidden_size)
        elif unbatched:
            h_prev = h_prev.unsqueeze(0)
        gi = F.linear(x, m.weight_ih, m.bias_ih)
        gh = F.linear(h_prev, m.weight_hh, m.bias_hh)
        values.update(lstm_gates(gi + gh) if isinstance(m, nn.LSTMCell) else gru_gates(gi, gh))
    lengths = torch.ones(x.shape[0], dtype=torch.long)
    for kind in kinds:
        rec.emit(source_name(name, 0, kind), values[kind].unsqueeze(1), lengths)
