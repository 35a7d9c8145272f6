"""The workspace route: a float32 ``nn.LSTM`` on CPU runs oneDNN's kernel in training mode, and its
gates are read from the workspace the kernel keeps for the backward pass (about 1.1-1.2x the plain
forward instead of 2.5x for h, c and all gates, with or without autograd); c follows from the
recurrence."""
from __future__ import annotations

import warnings

import torch

from ..allocator import keep_heap_for
from . import gates as matmul
from .base import LSTM_GATES, Deferred, emit_layer

# oneDNN's LSTM kernel (torch's CPU path for float32 nn.LSTM) run in training mode keeps every
# step's activated gates in its workspace for the backward pass: rows of ``onednn_ld(4H)`` floats
# in (step, batch) processing order, gates i, f, g, o. Reading them there costs little beyond the
# forward itself. Each use is checked against the kernel's own h and c_n; if a build lays the
# workspace out differently, the check fails and the matmul route takes over for good.
_ONEDNN_LSTM = 2  # ideep::rnn_kind::LSTM
WORKSPACE = {"usable": True}


def onednn_ld(width: int) -> int:
    """oneDNN's row stride for ``width`` float32 values (``get_good_ld``): rounded up to 16, plus
    16 more when that is a multiple of 256 (to avoid cache-set aliasing)."""
    ld = -(-width // 16) * 16
    return ld + 16 if ld % 256 == 0 else ld


def _reproduces(ours: torch.Tensor, kernel: torch.Tensor) -> bool:
    """Whether a value computed from the workspace gates matches the kernel's own (its check)."""
    return torch.allclose(ours, kernel, rtol=1e-4, atol=1e-5)


def workspace_usable(x: torch.Tensor) -> bool:
    return (WORKSPACE["usable"] and x.device.type == "cpu" and x.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled())


def _workspace_failed(reason: str) -> None:
    WORKSPACE["usable"] = False
    warnings.warn(f"lstmvis: oneDNN's LSTM workspace is not laid out as expected on this build ({reason}); "
                  "c and gates are now computed by matmul (same values, about 2x slower)", RuntimeWarning)


def lstm_layer_from_workspace(m, active, layer, kinds, x, h0, c0, params, per_dir):
    """One LSTM layer (every direction) through oneDNN's kernel in training mode, gates read from
    its workspace, c from the recurrence; recorded, and ``(out, h_n, c_n)`` as the fused kernel
    returns them. ``None`` if the workspace fails its check (nothing is recorded then).

    Where autograd needs the layer (parameters or input require grad) the kernel call is on the
    autograd graph: the very call the module's own forward makes under autograd, so outputs and
    gradients are the module's. When every active recorder defers and only h and c are
    wanted, c is recorded as a ``Deferred``: the first two steps are checked now, the rest when c
    is computed (``_workspace_cell_state``). The workspace is large, so glibc's allocator is asked
    once to keep such blocks for reuse (``lstmvis.allocator.keep_heap_for``)."""
    x_tm = (x.transpose(0, 1) if m.batch_first else x).contiguous()
    T, B = x_tm.shape[:2]
    H = m.hidden_size
    on_graph = torch.is_grad_enabled() and any(t.requires_grad for t in (x_tm, h0, c0, *params))
    defer = kinds <= {"h", "c"} and all(rec.defer for rec, _ in active)
    outs, h_n, c_n, recorded = [], [], [], []
    for d in range(2 if m.bidirectional else 1):
        w = params[d * per_dir:(d + 1) * per_dir]
        b_ih, b_hh = (w[2], w[3]) if m.bias else (x_tm.new_zeros(4 * H), x_tm.new_zeros(4 * H))
        weights = (w[0], w[1], b_ih, b_hh)
        out, hy, cy, ws = _training_pass(x_tm, weights, h0[d], c0[d], d == 1, H)
        if not on_graph:
            out, hy, cy = out.detach(), hy.detach(), cy.detach()
        gates = _workspace_gates(ws, T, B, H)
        if gates is None:
            return _workspace_failed("no workspace or a smaller one")
        keep_heap_for(ws.numel())
        i, f, g, o = gates.split(H, -1)
        # the recorded values carry no graph (gates from a workspace have none; see fused.py)
        h_out, c_first, c_last = out.detach(), c0[d].detach(), cy.detach()
        h_steps = h_out.flip(0) if d == 1 else h_out  # processing order
        values = {"h": h_out.transpose(0, 1)}
        if defer:
            c_state = c_first
            for s in range(min(2, T)):
                c_state = f[s] * c_state + i[s] * g[s]
                if not _reproduces(o[s] * torch.tanh(c_state), h_steps[s]):
                    return _workspace_failed(f"gates at step {s} do not reproduce the kernel's h")
            if "c" in kinds:
                values["c"] = Deferred(lambda args=([t.detach() for t in w], x_tm.detach(), h_out, h0[d].detach(),
                                                    c_first, c_last, i, f, g, o, d == 1):
                                       _workspace_cell_state(m, *args))
        else:
            c = matmul.cell_recurrence(f.transpose(0, 1), i.transpose(0, 1), g.transpose(0, 1), c_first).transpose(0, 1)
            for s in (0, T - 1):
                if not _reproduces(o[s] * torch.tanh(c[s]), h_steps[s]):
                    return _workspace_failed(f"gates at step {s} do not reproduce the kernel's h")
            if not _reproduces(c[-1], c_last):
                return _workspace_failed("the cell state does not reproduce the kernel's c_n")
            for kind, v in (("c", c), *zip(LSTM_GATES, (i, f, g, o))):
                if kind in kinds:
                    values[kind] = (v.flip(0) if d == 1 else v).transpose(0, 1)
        recorded.append(values)
        outs.append(out)
        h_n.append(hy)
        c_n.append(cy)
    lengths = torch.full((B,), T, dtype=torch.long)
    for d, values in enumerate(recorded):
        emit_layer(active, m, layer, d == 1, values, lengths, None)
    out = torch.cat(outs, -1) if len(outs) > 1 else outs[0]
    # batch-first as a view: the next layer reads it back time-major without a copy (made contiguous once at the end)
    return (out.transpose(0, 1) if m.batch_first else out), torch.stack(h_n), torch.stack(c_n)


def _training_pass(x_tm, weights, h0, c0, reverse: bool, H: int):
    """oneDNN's training-mode pass over one direction of one layer: ``(out, h_n, c_n, workspace)``."""
    with torch.enable_grad():  # the kernel hands out its workspace only where autograd could ask for it
        return torch.ops.aten.mkldnn_rnn_layer(x_tm, *weights, h0, c0, reverse, [], _ONEDNN_LSTM, H, 1, True,
                                               False, False, True)


def _workspace_gates(ws, steps: int, B: int, H: int) -> torch.Tensor | None:
    """The activated gates ``(steps, B, 4H)`` (processing order) inside a workspace, as a view;
    ``None`` if there is no workspace or it is too small for them."""
    ld = onednn_ld(4 * H)
    if ws is None or ws.numel() < steps * B * ld * 4:
        return None
    return ws.view(torch.float32)[:steps * B * ld].view(steps, B, ld)[..., :4 * H]


def _workspace_cell_state(m, w, x_tm, out, h0, c0, cy, i, f, g, o, reverse: bool) -> torch.Tensor:
    """The deferred c of one direction, ``(B, T, H)`` in the caller's time order: the recurrence over
    the workspace gates, checked at the last step against the kernel's h and c_n. If the check fails
    (a build whose workspace is laid out otherwise), c comes from the matmul route instead."""
    c = matmul.cell_recurrence(f.transpose(0, 1), i.transpose(0, 1), g.transpose(0, 1), c0).transpose(0, 1)
    h_steps = out.flip(0) if reverse else out  # processing order
    if not (_reproduces(o[-1] * torch.tanh(c[-1]), h_steps[-1]) and _reproduces(c[-1], cy)):
        _workspace_failed("the last step does not reproduce the kernel's h and c_n")
        x_steps = x_tm.flip(0) if reverse else x_tm
        h_prev = torch.cat([h0[None], h_steps[:-1]], 0)
        gates = matmul.layer_gates("LSTM", w, m.bias, x_steps.transpose(0, 1), h_prev.transpose(0, 1),
                             with_output_gate=False)
        c = matmul.cell_recurrence(gates["gate_f"], gates["gate_i"], gates["gate_g"], c0).transpose(0, 1)
    return (c.flip(0) if reverse else c).transpose(0, 1)
