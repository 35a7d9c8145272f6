"""The own-unroll route (``Recorder(route="unroll")``): a unidirectional, unpacked LSTM/GRU layer
computed in one pass of its own, h, c and gates together (outputs equal the kernel's to ~1e-6)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import GRU_GATES, LSTM_GATES



def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """In-place tanh as 2 sigmoid(2x) - 1 (several times faster than torch.tanh on some CPUs)."""
    return x.add_(x).sigmoid_().mul_(2.0).sub_(1.0)


def unroll_layer(mode: str, w: Sequence[torch.Tensor], bias: bool, x: torch.Tensor, h0: torch.Tensor,
                  c0: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One unidirectional LSTM/GRU layer in one pass, time-major: ``x (T, B, in)``.

    The input part of every gate comes from one matmul; each step adds ``h_{t-1} W_hh^T`` and
    applies the nonlinearities in place. Returns ``(h (T, B, P), {kind: (T, B, D)})``.
    """
    T, B = x.shape[:2]
    w_ih, w_hh = w[0], w[1]
    b_ih, b_hh = (w[2], w[3]) if bias else (None, None)
    H = w_hh.shape[0] // (4 if mode == "LSTM" else 3)
    x2 = x.reshape(T * B, -1)
    if mode == "LSTM":
        w_hr = w[4 if bias else 2] if len(w) > (4 if bias else 2) else None
        # tanh(g) = 2 sigmoid(2 g) - 1: doubling the g rows lets one sigmoid cover all four gates
        scale = torch.ones(4 * H, dtype=x.dtype, device=x.device)
        scale[2 * H:3 * H] = 2.0
        b = (b_ih + b_hh) * scale if bias else None
        pre = (torch.addmm(b, x2, (w_ih * scale[:, None]).t()) if bias
               else torch.mm(x2, (w_ih * scale[:, None]).t())).view(T, B, 4 * H)
        w_hh_t = (w_hh * scale[:, None]).t()
        c_all = torch.empty(T, B, H, dtype=x.dtype, device=x.device)
        out = torch.empty(T, B, h0.shape[-1], dtype=x.dtype, device=x.device)
        tmp = torch.empty(B, H, dtype=x.dtype, device=x.device)
        h, c = h0, c0
        for t in range(T):
            g = pre[t].addmm_(h, w_hh_t).sigmoid_()
            g[:, 2 * H:3 * H].mul_(2.0).sub_(1.0)
            torch.mul(g[:, :H], g[:, 2 * H:3 * H], out=tmp)
            c = torch.addcmul(tmp, g[:, H:2 * H], c, out=c_all[t])
            _tanh_(tmp.copy_(c))
            if w_hr is None:
                h = torch.mul(g[:, 3 * H:], tmp, out=out[t])
            else:
                h = torch.mm(tmp.mul_(g[:, 3 * H:]), w_hr.t(), out=out[t])
        gates = dict(zip(LSTM_GATES, pre.chunk(4, -1)))
        return out, {"h": out, "c": c_all, **gates}
    gi = (torch.addmm(b_ih, x2, w_ih.t()) if bias else torch.mm(x2, w_ih.t())).view(T, B, 3 * H)
    gh = torch.empty(B, 3 * H, dtype=x.dtype, device=x.device)
    out = torch.empty(T, B, H, dtype=x.dtype, device=x.device)
    tmp = torch.empty(B, H, dtype=x.dtype, device=x.device)
    w_hh_t = w_hh.t()
    h = h0
    for t in range(T):
        if bias:
            torch.addmm(b_hh, h, w_hh_t, out=gh)
        else:
            torch.mm(h, w_hh_t, out=gh)
        g = gi[t]
        rz = g[:, :2 * H].add_(gh[:, :2 * H]).sigmoid_()
        n = _tanh_(g[:, 2 * H:].addcmul_(rz[:, :H], gh[:, 2 * H:]))
        torch.sub(h, n, out=tmp)
        h = torch.addcmul(n, rz[:, H:], tmp, out=out[t])
    return out, {"h": out, **dict(zip(GRU_GATES, gi.chunk(3, -1)))}
