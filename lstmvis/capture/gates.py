"""The matmul route: every gate of every step from a layer's inputs and outputs (one matmul per
weight matrix), the LSTM cell state by its recurrence, recorded for a layer the fused kernel ran."""
from __future__ import annotations

from collections.abc import Sequence

import numba
import torch

from .base import LSTM_GATES, emit_layer



def record_layer(m, active, layer, kinds, x, out, lengths, params, per_dir, h0, c0) -> None:
    """Compute and hand the requested kinds of one layer (both directions) to the recorders."""
    n_dirs = 2 if m.bidirectional else 1
    size = out.shape[-1] // n_dirs
    full = bool((lengths == out.shape[1]).all())
    mask = None if full else (torch.arange(out.shape[1])[None, :] < lengths[:, None]).to(out.device)[:, :, None]
    for d in range(n_dirs):
        h = out[..., d * size:(d + 1) * size]
        values = {"h": h}
        if kinds - {"h"}:
            xd, hd = (x, h) if d == 0 else (_flip_valid(x, lengths, full), _flip_valid(h, lengths, full))
            # in the direction's own time order, h_{t-1} is the previous step (h0 before the first)
            h_prev = torch.cat([h0[d].unsqueeze(1), hd[:, :-1]], 1)
            gates = layer_gates(m.mode, params[d * per_dir:(d + 1) * per_dir], m.bias, xd, h_prev,
                                 with_output_gate="gate_o" in kinds)
            if "c" in kinds:
                gates["c"] = cell_recurrence(gates["gate_f"], gates["gate_i"], gates["gate_g"], c0[d])
            for kind, v in gates.items():
                if kind in kinds:
                    values[kind] = v if d == 0 else _flip_valid(v, lengths, full)
        emit_layer(active, m, layer, d == 1, values, lengths, mask)


def _flip_valid(x: torch.Tensor, lengths: torch.Tensor, full: bool) -> torch.Tensor:
    """Reverse each sequence's valid steps in place of time (padding stays where it is)."""
    if full:
        return x.flip(1)
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    lens = lengths.to(x.device)[:, None]
    index = torch.where(steps < lens, lens - 1 - steps, steps)
    return x.gather(1, index[:, :, None].expand_as(x))


def layer_gates(mode: str, w: Sequence[torch.Tensor], bias: bool, x: torch.Tensor, h_prev: torch.Tensor,
                 with_output_gate: bool = True) -> dict[str, torch.Tensor]:
    """All gates of all steps of one direction: one matmul per weight matrix.

    ``x (B, T, in)`` and ``h_prev (B, T, P)`` in the direction's own time order. Without the
    output gate (enough for c) an LSTM needs only the first 3H rows of the weights.
    """
    B, T = x.shape[:2]
    x2, h2 = x.reshape(B * T, -1), h_prev.reshape(B * T, -1)
    w_ih, w_hh = w[0], w[1]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, h_prev, w_ih, w_hh))
    if mode == "LSTM":
        H = w_hh.shape[0] // 4
        rows = 4 * H if with_output_gate or grad else 3 * H
        w_ih, w_hh = w_ih[:rows], w_hh[:rows]
        # x W_ih^T + b_ih + h W_hh^T + b_hh, accumulated inside the second matmul
        pre = torch.addmm(w[2][:rows] + w[3][:rows], x2, w_ih.t()) if bias else torch.mm(x2, w_ih.t())
        pre = torch.addmm(pre, h2, w_hh.t()) if grad else pre.addmm_(h2, w_hh.t())
        pre = pre.view(B, T, -1)
        if grad:
            return lstm_gates(pre)
        pre[..., :2 * H].sigmoid_()
        pre[..., 2 * H:3 * H].tanh_()
        pre[..., 3 * H:].sigmoid_()
        return dict(zip(LSTM_GATES, pre.split(H, -1)))
    gi = (torch.addmm(w[2], x2, w_ih.t()) if bias else torch.mm(x2, w_ih.t())).view(B, T, -1)
    gh = (torch.addmm(w[3], h2, w_hh.t()) if bias else torch.mm(h2, w_hh.t())).view(B, T, -1)
    return gru_gates(gi, gh)


def lstm_gates(pre: torch.Tensor) -> dict[str, torch.Tensor]:
    i, f, g, o = pre.chunk(4, -1)
    return {"gate_i": torch.sigmoid(i), "gate_f": torch.sigmoid(f), "gate_g": torch.tanh(g), "gate_o": torch.sigmoid(o)}


def gru_gates(gi: torch.Tensor, gh: torch.Tensor) -> dict[str, torch.Tensor]:
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    return {"gate_r": r, "gate_z": torch.sigmoid(i_z + h_z), "gate_n": torch.tanh(i_n + r * h_n)}


def cell_recurrence(f: torch.Tensor, i: torch.Tensor, g: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """``c_t = f_t * c_{t-1} + i_t * g_t`` over ``(B, T, H)`` with ``c_{-1} = c0``."""
    steps = f.shape[1]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (f, i, g, c0)):
        ig, out, prev = i * g, [], c0
        for t in range(steps):
            prev = torch.addcmul(ig[:, t], f[:, t], prev)
            out.append(prev)
        return torch.stack(out, 1)
    if f.dtype == torch.float32 and f.device.type == "cpu" and steps > 1:
        # one compiled pass instead of T small torch calls (their dispatch dominates at chunk sizes)
        c = torch.empty(f.shape[1], f.shape[0], f.shape[2], dtype=f.dtype).transpose(0, 1)
        _cell_recurrence_kernel(f.detach().numpy(), i.detach().numpy(), g.detach().numpy(),
                                c0.detach().contiguous().numpy(), c.numpy())
        return c
    ig = i * g
    c = torch.empty_like(ig)
    prev = c0
    for t in range(steps):
        prev = torch.addcmul(ig[:, t], f[:, t], prev, out=c[:, t])
    return c


@numba.njit(cache=True, nogil=True)
def _cell_recurrence_kernel(f, i, g, c0, out):  # pragma: no cover - compiled
    """``out[:, t] = f[:, t] * out[:, t-1] + i[:, t] * g[:, t]`` for (B, T, H) arrays, time outermost."""
    n_batch, n_steps, n_cells = f.shape
    for b in range(n_batch):
        for j in range(n_cells):
            out[b, 0, j] = f[b, 0, j] * c0[b, j] + i[b, 0, j] * g[b, 0, j]
    for t in range(1, n_steps):
        for b in range(n_batch):
            for j in range(n_cells):
                out[b, t, j] = f[b, t, j] * out[b, t - 1, j] + i[b, t, j] * g[b, t, j]
