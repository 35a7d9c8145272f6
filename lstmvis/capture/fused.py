"""Recurrent modules (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``): while a Recorder is active their
``forward`` is replaced by a dispatcher that runs the module one layer at a time, each layer through
the route that records it: the own unroll (``unroll``), oneDNN's workspace (``workspace``), or the
fused kernel itself with the gates from matmuls (``gates``). Calls from other threads run the
module's own forward unchanged."""
from __future__ import annotations

import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from textexplain.hooks import transient  # a copy of the module taken while recording leaves it out

from .base import emit_layer, kinds_of
from .gates import record_layer
from .unroll import unroll_layer
from .workspace import lstm_layer_from_workspace, workspace_usable

_KERNELS = {"LSTM": _VF.lstm, "GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}
_DISPATCH_LOCK = threading.Lock()


class _Dispatch:
    """Replaces ``module.forward`` while at least one Recorder records it.

    Calls from a thread with an active Recorder on this module run the layer-by-layer recording
    forward; all other calls run the module's own forward unchanged.
    """

    def __init__(self, module: nn.Module):
        transient(self)  # a copy of the module taken while recording leaves it out
        self.module = module
        self.previous = module.__dict__.get("forward")  # an instance-level forward set by someone else
        self.recorders: dict = {}  # Recorder -> the module's name in it

    def original(self, *args, **kwargs):
        if self.previous is not None:
            return self.previous(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        active = [(r, name) for r, name in list(self.recorders.items()) if r.records_this_thread()]
        if not active:
            return self.original(*args, **kwargs)
        return recording_forward(self.module, active, *args, **kwargs)


def install_dispatch(m: nn.Module, rec, name: str) -> None:
    with _DISPATCH_LOCK:
        dispatch = m.__dict__.get("forward")
        if not isinstance(dispatch, _Dispatch):
            dispatch = _Dispatch(m)
            m.__dict__["forward"] = dispatch
        dispatch.recorders[rec] = name


class DispatchHandle:
    def __init__(self, m: nn.Module, rec):
        self.m, self.rec = m, rec

    def remove(self) -> None:
        with _DISPATCH_LOCK:
            dispatch = self.m.__dict__.get("forward")
            if not isinstance(dispatch, _Dispatch):
                return
            dispatch.recorders.pop(self.rec, None)
            if not dispatch.recorders:
                if dispatch.previous is not None:
                    self.m.__dict__["forward"] = dispatch.previous
                else:
                    del self.m.__dict__["forward"]


class _Call(NamedTuple):
    """One ``forward(input, hx)`` call, unpacked: the first layer's input ``x`` (the packed data, or
    the input with a batch dimension), the packing, and the initial states ``h0``/``c0`` (``(layers x
    directions, B, H)``, caller's batch order; ``c0`` None but for LSTMs) and ``h0_run``/``c0_run``
    (the kernel's batch order)."""

    x: torch.Tensor
    packed: bool
    batch_sizes: torch.Tensor | None
    sorted_idx: torch.Tensor | None
    unsorted_idx: torch.Tensor | None
    unbatched: bool
    h0: torch.Tensor
    c0: torch.Tensor | None
    h0_run: torch.Tensor
    c0_run: torch.Tensor | None


def recording_forward(m: nn.RNNBase, active: list, input, hx=None):
    """``m.forward(input, hx)`` run one layer at a time, recording for the ``active`` ``(recorder,
    name)`` pairs: each layer that needs more than h through the own unroll (when every recorder asks
    for it) or oneDNN's workspace (float32 LSTMs on CPU), else through the fused kernel."""
    if hasattr(m, "_update_flat_weights"):
        m._update_flat_weights()
    call = _unpack_call(m, input, hx)
    wanted = _wanted_kinds(m, active)
    n_dirs = 2 if m.bidirectional else 1
    weights = m._flat_weights
    per_dir = len(weights) // (m.num_layers * n_dirs)
    unroll = (all(rec.route == "unroll" for rec, _ in active) and not call.packed and not m.bidirectional
              and m.mode in ("LSTM", "GRU") and not _needs_grad(m, call.x, call.h0, call.c0))
    # under autograd the workspace route is the module's own kernel call on the graph; its gates carry no
    # graph, so a recorder that keeps the graph (detach=False) takes the matmul route
    workspace = (m.mode == "LSTM" and not call.packed and m.proj_size == 0 and workspace_usable(call.x)
                 and (all(rec.detach for rec, _ in active) or not _needs_grad(m, call.x, call.h0, call.c0)))
    layer_in, padded_in = call.x, None
    h_n, c_n = [], []
    for layer in range(m.num_layers):
        params = weights[layer * n_dirs * per_dir:(layer + 1) * n_dirs * per_dir]
        sl = slice(layer * n_dirs, (layer + 1) * n_dirs)
        kinds = wanted.get(layer, set())
        padded_out = None
        if unroll and kinds - {"h"}:
            out, hy, cy = _unrolled_layer(m, active, layer, call, layer_in, params)
        elif workspace and kinds - {"h"} and (result := lstm_layer_from_workspace(
                m, active, layer, kinds, layer_in, call.h0_run[sl], call.c0_run[sl], params, per_dir)) is not None:
            out, hy, cy = result
        else:
            out, hy, cy, padded_in, padded_out = _kernel_layer(m, active, layer, kinds, call, layer_in, padded_in,
                                                               params, per_dir)
        h_n.append(hy)
        if cy is not None:
            c_n.append(cy)
        next_in = out
        if layer < m.num_layers - 1 and m.training and m.dropout > 0:
            next_in = F.dropout(out, m.dropout, training=True)
            padded_out = None
        layer_in, padded_in = next_in, padded_out
    return _repack(m, call, layer_in, h_n, c_n)


def _unpack_call(m: nn.RNNBase, input, hx) -> _Call:
    """The call's input and initial states, checked as ``m.forward`` checks them."""
    is_lstm = m.mode == "LSTM"
    packed = isinstance(input, PackedSequence)
    unbatched, batch_sizes, sorted_idx, unsorted_idx = False, None, None, None
    if packed:
        data, batch_sizes, sorted_idx, unsorted_idx = input
        batch = int(batch_sizes[0])
        ref = data
    else:
        if input.dim() not in (2, 3):
            raise ValueError(f"{type(m).__name__}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        unbatched = input.dim() == 2
        batch_dim = 0 if m.batch_first else 1
        if unbatched:
            input = input.unsqueeze(batch_dim)
        batch = input.size(batch_dim)
        ref = input
    h0, c0 = _initial_states(m, hx, ref, batch, unbatched)
    m.check_forward_args(data if packed else input, (h0, c0) if is_lstm else h0, batch_sizes)
    h0_run = h0 if sorted_idx is None else h0.index_select(1, sorted_idx)
    c0_run = None if c0 is None else (c0 if sorted_idx is None else c0.index_select(1, sorted_idx))
    return _Call(data if packed else input, packed, batch_sizes, sorted_idx, unsorted_idx, unbatched, h0, c0, h0_run,
                 c0_run)


def _initial_states(m: nn.RNNBase, hx, ref: torch.Tensor, batch: int, unbatched: bool):
    """``(h0, c0)`` with a batch dimension: ``hx`` checked, or zeros like ``ref`` (``c0`` None but for LSTMs)."""
    is_lstm = m.mode == "LSTM"
    if hx is None:
        n_states = m.num_layers * (2 if m.bidirectional else 1)
        out_size = m.proj_size if is_lstm and m.proj_size > 0 else m.hidden_size
        h0 = ref.new_zeros(n_states, batch, out_size)
        c0 = ref.new_zeros(n_states, batch, m.hidden_size) if is_lstm else None
        return h0, c0
    h0, c0 = hx if is_lstm else (hx, None)
    want_dim = 2 if unbatched else 3
    if h0.dim() != want_dim or (is_lstm and c0.dim() != want_dim):
        raise RuntimeError(f"For {'unbatched 2-D' if unbatched else 'batched 3-D'} input, hx should also be "
                           f"{want_dim}-D")
    if unbatched:
        h0 = h0.unsqueeze(1)
        c0 = c0.unsqueeze(1) if is_lstm else None
    return h0, c0


def _wanted_kinds(m: nn.RNNBase, active: list) -> dict[int, set[str]]:
    """Layer -> the kinds any active recorder wants of it."""
    wanted: dict[int, set[str]] = {}
    for rec, _ in active:
        kinds = kinds_of(m, rec.kinds)
        for layer in range(m.num_layers):
            if kinds and (rec.layers is None or layer in rec.layers):
                wanted.setdefault(layer, set()).update(kinds)
    return wanted


def _unrolled_layer(m: nn.RNNBase, active: list, layer: int, call: _Call, layer_in: torch.Tensor, params):
    """The unroll route for one unidirectional layer: recorded, and ``(out, h_n, c_n or None)``."""
    is_lstm = m.mode == "LSTM"
    x_tm = layer_in.transpose(0, 1) if m.batch_first else layer_in
    out_tm, values = unroll_layer(m.mode, params, m.bias, x_tm, call.h0_run[layer],
                                  call.c0_run[layer] if is_lstm else None)
    out = out_tm.transpose(0, 1) if m.batch_first else out_tm
    h_n = out_tm[-1:].clone()
    c_n = values["c"][-1:].clone() if is_lstm else None
    batch_major = {k: v.transpose(0, 1) for k, v in values.items()}
    lengths = torch.full((out_tm.shape[1],), out_tm.shape[0], dtype=torch.long)
    emit_layer(active, m, layer, False, batch_major, lengths, None)
    return out, h_n, c_n


def _kernel_layer(m: nn.RNNBase, active: list, layer: int, kinds: set[str], call: _Call, layer_in: torch.Tensor,
                  padded_in: torch.Tensor | None, params, per_dir: int):
    """One layer (every direction) through the fused kernel, its other kinds recorded by matmul
    (``gates.record_layer``). Returns ``(out, h_n, c_n or None, padded_in, padded_out)``: the
    layer's input and output batch-major when recorded (``None`` if not), the next layer reuses
    ``padded_out`` as its ``padded_in``."""
    is_lstm = m.mode == "LSTM"
    n_dirs = 2 if m.bidirectional else 1
    sl = slice(layer * n_dirs, (layer + 1) * n_dirs)
    kernel = _KERNELS[m.mode]
    hx_layer = (call.h0_run[sl], call.c0_run[sl]) if is_lstm else call.h0_run[sl]
    if call.packed:
        result = kernel(layer_in, call.batch_sizes, hx_layer, params, m.bias, 1, 0.0, False, m.bidirectional)
    else:
        result = kernel(layer_in, hx_layer, params, m.bias, 1, 0.0, False, m.bidirectional, m.batch_first)
    out, padded_out = result[0], None
    if kinds:
        if kinds - {"h"} and padded_in is None:
            padded_in, lengths = _batch_major(m, layer_in, call.batch_sizes, call.sorted_idx, call.unsorted_idx)
        padded_out, lengths = _batch_major(m, out, call.batch_sizes, call.sorted_idx, call.unsorted_idx)
        record_layer(m, active, layer, kinds, padded_in, padded_out, lengths, params, per_dir, call.h0[sl],
                     call.c0[sl] if is_lstm else None)
    return out, result[1], result[2] if is_lstm else None, padded_in, padded_out


def _repack(m: nn.RNNBase, call: _Call, out: torch.Tensor, h_n: list, c_n: list):
    """The last layer's output and the final states as ``m.forward`` returns them."""
    if not call.packed:
        out = out.contiguous()  # what the fused kernel returns (the workspace route hands back a view)
    hidden = torch.cat(h_n, 0)
    if m.mode == "LSTM":
        hidden = (hidden, torch.cat(c_n, 0))
    if call.packed:
        return (PackedSequence(out, call.batch_sizes, call.sorted_idx, call.unsorted_idx),
                m.permute_hidden(hidden, call.unsorted_idx))
    if call.unbatched:
        out = out.squeeze(0 if m.batch_first else 1)
        hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if m.mode == "LSTM" else hidden.squeeze(1)
    return out, hidden


def _batch_major(m, x, batch_sizes, sorted_idx, unsorted_idx) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's input or output as ``(B, T, F)`` in the caller's batch order, with lengths."""
    if batch_sizes is not None:
        padded, lengths = pad_packed_sequence(PackedSequence(x, batch_sizes, sorted_idx, unsorted_idx),
                                              batch_first=True)
        return padded, lengths
    x = x if m.batch_first else x.transpose(0, 1)
    return x, torch.full((x.shape[0],), x.shape[1], dtype=torch.long)


def _needs_grad(m: nn.Module, *tensors) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors) or any(p.requires_grad for p in m.parameters())
