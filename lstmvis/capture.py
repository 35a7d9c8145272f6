"""Recorder: exact per-step hidden states, cell states and gates of PyTorch recurrent modules.

A fused ``nn.LSTM`` only returns the last layer's h_t and the final (h_n, c_n). While a
``Recorder`` is active, every recorded ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` runs layer by layer
through the same fused kernel (``num_layers=1`` per call, which gives bitwise the same outputs as
the multi-layer call), so h_t of every layer comes from the kernel itself. From each layer's
input x_t and h_{t-1} all gates of all steps follow from one matmul per weight matrix
(``gates = x W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh``); the LSTM cell state is the cheap
elementwise recurrence ``c_t = f_t * c_{t-1} + i_t * g_t``. The module returns exactly what it
would have returned (same kernel; in training mode the inter-layer dropout is ``F.dropout`` with
the module's rate, so its random mask differs from an unrecorded call, as any two calls differ).

A float32 ``nn.LSTM`` on CPU (no projection, not packed) skips the matmul: torch runs it through
oneDNN, whose training-mode pass keeps every step's activated gates in a workspace for the
backward; the recorder runs that pass and reads the gates there (about 1.2x the plain forward
instead of 2.5x for h, c and all gates). Its outputs are bitwise what the module returns with
autograd on; the module's no_grad (inference) pass rounds differently in the last bits (~1e-7).

``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell`` called in a user loop are recorded per call
(one time step each) and ``nn.Conv1d`` outputs are recorded as they are.

Source names (one per recorded tensor):

* ``{module}.l{layer}.{kind}`` for recurrent modules and cells (cells are layer 0), with
  ``reverse.`` before the kind for the backward direction: ``rnn.l0.h``, ``rnn.l1.reverse.c``.
  Kinds: ``h`` (the layer output h_t, projected when ``proj_size > 0``), ``c`` (LSTM cell state),
  ``gate_i``, ``gate_f``, ``gate_g``, ``gate_o`` (LSTM, after sigmoid/tanh), ``gate_r``,
  ``gate_z``, ``gate_n`` (GRU, after sigmoid/tanh; ``n`` is the candidate state).
* ``{module}.conv`` for ``nn.Conv1d``: the pre-activation output, as ``(B, T_out, C)``.

``{module}`` is the qualified name inside the recorded model (``named_modules``), or the class
name in lower case when the recorded model is itself the RNN (``lstm.l0.h``).

Every recorded tensor is batch-first ``(B, T, D)`` in the caller's batch order, whatever the
module's ``batch_first`` and whether the input was packed; steps beyond a sequence's length are
zero and ``Recorder.lengths`` gives the valid lengths. The reverse direction runs over each
sequence's valid steps only, as the fused kernel does on packed input.

Thread safety: a Recorder records only forward passes made by the thread that entered it; other
threads calling the same model meanwhile run it unchanged and unrecorded.
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Sequence

import numba
import torch
import torch.nn.functional as F
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from textexplain.hooks import TRANSIENT  # marks hooks that live only while recording (TextModel.float64 skips them)

LSTM_GATES = ("gate_i", "gate_f", "gate_g", "gate_o")
GRU_GATES = ("gate_r", "gate_z", "gate_n")
KINDS = ("h", "c", *LSTM_GATES, *GRU_GATES, "conv")
KIND_ALIASES = {"gates": LSTM_GATES + GRU_GATES, "all": KINDS}
RNN_TYPES = (nn.LSTM, nn.GRU, nn.RNN)
CELL_TYPES = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)
_KERNELS = {"LSTM": _VF.lstm, "GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}
_STANDARD_FORWARDS = {nn.LSTM.forward, nn.GRU.forward, nn.RNN.forward}
ROUTES = ("fused", "unroll")


class Deferred:
    """A recorded value that is computed when first read (``result()``), once, from any thread.

    ``Recorder(defer=True)`` records the LSTM cell state of the workspace route this way, so a
    pipeline (``lstmvis.extract``) computes it on its writer thread while the next forward pass runs.
    """

    __slots__ = ("_compute", "_value", "_lock")

    def __init__(self, compute):
        self._compute, self._value, self._lock = compute, None, threading.Lock()

    def result(self) -> torch.Tensor:
        with self._lock:
            if self._compute is not None:
                self._value, self._compute = self._compute(), None
            return self._value


def _resolved(value):
    return value.result() if isinstance(value, Deferred) else value


def parse_kinds(kinds: str | Iterable[str]) -> frozenset[str]:
    """Kinds from names or aliases (``gates``, ``all``), e.g. ``"h,c,gates"``."""
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    out: set[str] = set()
    for kind in kinds:
        if kind in KIND_ALIASES:
            out.update(KIND_ALIASES[kind])
        elif kind in KINDS:
            out.add(kind)
        else:
            raise ValueError(f"unknown kind {kind!r}: use {', '.join(KINDS)} or the aliases gates, all")
    if not out:
        raise ValueError("no kinds to record: give at least one of h, c, gates, conv")
    return frozenset(out)


def source_name(module_name: str, layer: int, kind: str, reverse: bool = False) -> str:
    return f"{module_name}.l{layer}.{'reverse.' if reverse else ''}{kind}"


class Recorder:
    """Records hidden states, cell states, gates and Conv1d outputs inside ``module``.

    ``kinds``: any of ``h, c, gate_i, gate_f, gate_g, gate_o, gate_r, gate_z, gate_n, conv`` or the
    aliases ``gates`` and ``all``. ``modules``: qualified names, module types or instances to
    record (default: every supported module). ``layers``: recurrent layer indices to record
    (default: all). ``detach``: drop the autograd graph of recorded tensors (set ``False`` to
    take gradients of a cell's activation). ``route``: ``"fused"`` (default) keeps the fused
    kernel, so the module returns what it returns unrecorded (see the module notes for float32
    LSTMs on CPU, which read their gates from the kernel's workspace); ``"unroll"`` computes
    unidirectional, unpacked LSTM/GRU layers that need c or gates in one pass of its own (for a
    GRU about 1x instead of 2.3x the plain forward on CPU; outputs then equal the kernel's to ~1e-6).
    ``defer``: on the workspace route, compute the cell state when it is first read instead of
    during the forward pass (the same values), so a pipeline can compute it on another thread while
    the next forward runs: read ``deferred_states`` there (``lstmvis.extract`` does this).
    Use as a context manager::

        rec = Recorder(model, kinds="h,c,gates")
        with rec:
            logits = model(ids)
        rec.states["rnn.l1.c"]      # (B, T, H)
    """

    def __init__(self, module: nn.Module, kinds: str | Iterable[str] = ("h", "c", "gates", "conv"),
                 modules: Sequence[str | type | nn.Module] | None = None, layers: Iterable[int] | None = None,
                 detach: bool = True, route: str = "fused", defer: bool = False):
        if not isinstance(module, nn.Module):
            raise TypeError(f"Recorder needs an nn.Module, got {type(module).__name__} (for a data.LanguageModel "
                            "or textexplain.TextModel pass its .module)")
        self.module = module
        self.kinds = parse_kinds(kinds)
        self.layers = None if layers is None else frozenset(int(k) for k in layers)
        self.detach = detach
        if route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
        self.route = route
        self.defer = bool(defer)
        self.targets = self._find_targets(modules)
        self._lock = threading.Lock()
        self._thread: int | None = None
        self._handles: list = []
        self._calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    # ------------------------------------------------------------------ discovery
    def _find_targets(self, modules) -> dict[str, nn.Module]:
        named = {}
        for name, sub in self.module.named_modules():
            if isinstance(sub, RNN_TYPES + CELL_TYPES) or (isinstance(sub, nn.Conv1d) and "conv" in self.kinds):
                named[name or type(sub).__name__.lower()] = sub
        if modules is not None:
            chosen = {}
            for sel in modules:
                hits = {n: m for n, m in named.items()
                        if (isinstance(sel, str) and n == sel) or (isinstance(sel, type) and isinstance(m, sel))
                        or (isinstance(sel, nn.Module) and m is sel)}
                if not hits:
                    raise ValueError(f"modules entry {sel!r} matches no recordable module: the recordable ones are "
                                     f"{', '.join(named) or 'none'}")
                chosen.update(hits)
            named = {n: m for n, m in named.items() if n in chosen}
        rnn_kinds = self.kinds - {"conv"}
        named = {n: m for n, m in named.items() if (isinstance(m, nn.Conv1d) and "conv" in self.kinds)
                 or (not isinstance(m, nn.Conv1d) and rnn_kinds)}
        if not named:
            raise ValueError(f"no nn.LSTM/GRU/RNN, LSTMCell/GRUCell/RNNCell or nn.Conv1d to record in "
                             f"{type(self.module).__name__} for kinds {sorted(self.kinds)}")
        for name, m in named.items():
            if isinstance(m, RNN_TYPES) and type(m).forward not in _STANDARD_FORWARDS:
                raise TypeError(f"{name} ({type(m).__name__}) overrides forward(), so its steps cannot be recorded "
                                "exactly: leave it out with modules=[...]")
        return named

    @property
    def sources_expected(self) -> list[str]:
        """Names of the sources this Recorder will produce, in recording order (before any call)."""
        out = []
        for name, m in self.targets.items():
            if isinstance(m, nn.Conv1d):
                out.append(f"{name}.conv")
                continue
            n_layers = m.num_layers if isinstance(m, RNN_TYPES) else 1
            n_dirs = 2 if getattr(m, "bidirectional", False) else 1
            for layer in range(n_layers):
                if self.layers is not None and layer not in self.layers:
                    continue
                for d in range(n_dirs):
                    out += [source_name(name, layer, kind, d == 1) for kind in _kinds_of(m, self.kinds)]
        return out

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "Recorder":
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this Recorder is already recording (in this or another thread): "
                                   "create one Recorder per thread")
            self._thread = threading.get_ident()
        try:
            self._calls = {}
            for name, m in self.targets.items():
                if isinstance(m, RNN_TYPES):
                    _install_dispatch(m, self, name)
                    self._handles.append(_DispatchHandle(m, self))
                elif isinstance(m, CELL_TYPES):
                    self._handles.append(m.register_forward_hook(self._cell_hook(name), with_kwargs=True))
                else:
                    self._handles.append(m.register_forward_hook(self._conv_hook(name)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        try:
            while self._handles:
                self._handles.pop().remove()
        finally:
            with self._lock:
                self._thread = None

    @property
    def recording(self) -> bool:
        return self._thread is not None

    def _mine(self) -> bool:
        return self._thread == threading.get_ident()

    # ------------------------------------------------------------------ results
    def emit(self, source: str, values: torch.Tensor | Deferred, lengths: torch.Tensor) -> None:
        if isinstance(values, Deferred):
            if not self.defer:
                values = values.result()  # another recorder deferred it; this one computes it now
        elif self.detach:
            values = values.detach()
        self._calls.setdefault(source, []).append((values, lengths))

    @property
    def sources(self) -> list[str]:
        return list(self._calls)

    def calls(self, source: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every recorded call of a source: ``[(values (B, T, D), lengths (B,)), ...]``."""
        if source not in self._calls:
            raise KeyError(f"nothing recorded for {source!r}: recorded are {', '.join(self._calls) or 'none'}")
        return [(_resolved(v), lengths) for v, lengths in self._calls[source]]

    @property
    def states(self) -> dict[str, torch.Tensor]:
        """``{source: (B, T, D)}``; several calls (chunks, cell steps) are joined along time."""
        return {s: self._joined(s)[0] for s in self._calls}

    @property
    def deferred_states(self) -> dict[str, Deferred]:
        """Like ``states``, but nothing is computed yet: ``{source: Deferred}``, each joined and
        computed by its ``result()``, from any thread, after this Recorder has moved on (``clear``
        and further calls do not change them)."""
        return {s: Deferred(lambda s=s, calls=list(calls): _join(s, calls)[0]) for s, calls in self._calls.items()}

    @property
    def lengths(self) -> dict[str, torch.Tensor]:
        """``{source: (B,)}`` number of valid steps per sequence."""
        return {s: self._joined(s)[1] for s in self._calls}

    def _joined(self, source: str) -> tuple[torch.Tensor, torch.Tensor]:
        return _join(source, self._calls[source])

    def clear(self) -> None:
        """Forget everything recorded so far (keeps recording if active)."""
        self._calls = {}

    # ------------------------------------------------------------------ cell and conv hooks
    def _cell_hook(self, name: str):
        def hook(m, args, kwargs, output):
            if not self._mine():
                return
            x = args[0]
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            _record_cell(self, name, m, x, hx, output)
        setattr(hook, TRANSIENT, True)
        return hook

    def _conv_hook(self, name: str):
        def hook(m, args, output):
            if self._mine():
                out = output if output.dim() == 3 else output.unsqueeze(0)
                lengths = torch.full((out.shape[0],), out.shape[2], dtype=torch.long)
                self.emit(f"{name}.conv", out.transpose(1, 2), lengths)
        setattr(hook, TRANSIENT, True)
        return hook


def _join(source: str, calls: list) -> tuple[torch.Tensor, torch.Tensor]:
    """One source's recorded calls joined along time: ``(values (B, T, D), lengths (B,))``."""
    calls = [(_resolved(v), lengths) for v, lengths in calls]
    if len(calls) == 1:
        return calls[0]
    if len({v.shape[0] for v, _ in calls}) != 1:
        raise ValueError(f"{source} was called with different batch sizes: read rec.calls({source!r})")
    for values, lengths in calls[:-1]:
        if bool((lengths != values.shape[1]).any()):
            raise ValueError(f"{source} has padded steps inside a call that is not the last one, so the calls "
                             f"cannot be joined along time: read rec.calls({source!r})")
    return torch.cat([v for v, _ in calls], 1), sum(lengths for _, lengths in calls)


def _kinds_of(m: nn.Module, kinds: frozenset[str]) -> list[str]:
    """The requested kinds that module ``m`` has, in canonical order."""
    if isinstance(m, (nn.LSTM, nn.LSTMCell)):
        own = ("h", "c", *LSTM_GATES)
    elif isinstance(m, (nn.GRU, nn.GRUCell)):
        own = ("h", *GRU_GATES)
    else:
        own = ("h",)
    return [k for k in own if k in kinds]


# ---------------------------------------------------------------------- recurrent cells (per call)
def _record_cell(rec: Recorder, name: str, m: nn.Module, x: torch.Tensor, hx, output) -> None:
    kinds = _kinds_of(m, rec.kinds)
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
        values.update(_lstm_gates(gi + gh) if isinstance(m, nn.LSTMCell) else _gru_gates(gi, gh))
    lengths = torch.ones(x.shape[0], dtype=torch.long)
    for kind in kinds:
        rec.emit(source_name(name, 0, kind), values[kind].unsqueeze(1), lengths)


def _lstm_gates(pre: torch.Tensor) -> dict[str, torch.Tensor]:
    i, f, g, o = pre.chunk(4, -1)
    return {"gate_i": torch.sigmoid(i), "gate_f": torch.sigmoid(f), "gate_g": torch.tanh(g), "gate_o": torch.sigmoid(o)}


def _gru_gates(gi: torch.Tensor, gh: torch.Tensor) -> dict[str, torch.Tensor]:
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    return {"gate_r": r, "gate_z": torch.sigmoid(i_z + h_z), "gate_n": torch.tanh(i_n + r * h_n)}


# ---------------------------------------------------------------------- fused modules (per layer)
_DISPATCH_LOCK = threading.Lock()


class _Dispatch:
    """Replaces ``module.forward`` while at least one Recorder records it.

    Calls from a thread with an active Recorder on this module run the layer-by-layer recording
    forward; all other calls run the module's own forward unchanged.
    """

    _textexplain_transient = True  # TRANSIENT: a copy of the module taken while recording leaves it out

    def __init__(self, module: nn.Module):
        self.module = module
        self.previous = module.__dict__.get("forward")  # an instance-level forward set by someone else
        self.recorders: dict[Recorder, str] = {}

    def original(self, *args, **kwargs):
        if self.previous is not None:
            return self.previous(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        active = [(r, name) for r, name in list(self.recorders.items()) if r._mine()]
        if not active:
            return self.original(*args, **kwargs)
        return _recording_forward(self.module, active, *args, **kwargs)


def _install_dispatch(m: nn.Module, rec: Recorder, name: str) -> None:
    with _DISPATCH_LOCK:
        dispatch = m.__dict__.get("forward")
        if not isinstance(dispatch, _Dispatch):
            dispatch = _Dispatch(m)
            m.__dict__["forward"] = dispatch
        dispatch.recorders[rec] = name


class _DispatchHandle:
    def __init__(self, m: nn.Module, rec: Recorder):
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


def _recording_forward(m: nn.RNNBase, active: list[tuple[Recorder, str]], input, hx=None):
    """``m.forward(input, hx)`` run one layer at a time through the fused kernel, recording."""
    is_lstm = m.mode == "LSTM"
    kernel = _KERNELS[m.mode]
    n_dirs = 2 if m.bidirectional else 1
    out_size = m.proj_size if is_lstm and m.proj_size > 0 else m.hidden_size
    if hasattr(m, "_update_flat_weights"):
        m._update_flat_weights()
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
    n_states = m.num_layers * n_dirs
    if hx is None:
        h0 = ref.new_zeros(n_states, batch, out_size)
        c0 = ref.new_zeros(n_states, batch, m.hidden_size) if is_lstm else None
    else:
        h0, c0 = hx if is_lstm else (hx, None)
        want_dim = 2 if unbatched else 3
        if h0.dim() != want_dim or (is_lstm and c0.dim() != want_dim):
            raise RuntimeError(f"For {'unbatched 2-D' if unbatched else 'batched 3-D'} input, hx should also be "
                               f"{want_dim}-D")
        if unbatched:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if is_lstm else None
    m.check_forward_args(data if packed else input, (h0, c0) if is_lstm else h0, batch_sizes)
    h0_run = h0 if sorted_idx is None else h0.index_select(1, sorted_idx)
    c0_run = None if c0 is None else (c0 if sorted_idx is None else c0.index_select(1, sorted_idx))

    wanted = {}  # layer -> kinds requested by any active recorder
    for rec, _ in active:
        kinds = _kinds_of(m, rec.kinds)
        for layer in range(m.num_layers):
            if kinds and (rec.layers is None or layer in rec.layers):
                wanted.setdefault(layer, set()).update(kinds)

    weights = m._flat_weights
    per_dir = len(weights) // n_states
    layer_in = data if packed else input
    padded_in, lengths = None, None
    h_n, c_n = [], []
    unroll = (all(rec.route == "unroll" for rec, _ in active) and not packed and not m.bidirectional
              and m.mode in ("LSTM", "GRU") and not _needs_grad(m, input, h0, c0))
    workspace = (is_lstm and not packed and m.proj_size == 0 and _workspace_usable(layer_in)
                 and not _needs_grad(m, input, h0, c0))
    for layer in range(m.num_layers):
        params = weights[layer * n_dirs * per_dir:(layer + 1) * n_dirs * per_dir]
        sl = slice(layer * n_dirs, (layer + 1) * n_dirs)
        kinds = wanted.get(layer, set())
        padded_out = None
        if unroll and kinds - {"h"}:
            x_tm = layer_in.transpose(0, 1) if m.batch_first else layer_in
            c_init = c0_run[layer] if is_lstm else None
            out_tm, values = _unroll_layer(m.mode, params, m.bias, x_tm, h0_run[layer], c_init)
            out = out_tm.transpose(0, 1) if m.batch_first else out_tm
            h_n.append(out_tm[-1:].clone())
            if is_lstm:
                c_n.append(values["c"][-1:].clone())
            batch_major = {k: v.transpose(0, 1) for k, v in values.items()}
            lengths = torch.full((out_tm.shape[1],), out_tm.shape[0], dtype=torch.long)
            _emit(active, m, layer, False, batch_major, lengths, None)
        elif workspace and kinds - {"h"} and (result := _lstm_layer_from_workspace(
                m, active, layer, kinds, layer_in, h0_run[sl], c0_run[sl], params, per_dir)) is not None:
            out = result[0]
            h_n.append(result[1])
            c_n.append(result[2])
        else:
            hx_layer = (h0_run[sl], c0_run[sl]) if is_lstm else h0_run[sl]
            if packed:
                result = kernel(layer_in, batch_sizes, hx_layer, params, m.bias, 1, 0.0, False, m.bidirectional)
            else:
                result = kernel(layer_in, hx_layer, params, m.bias, 1, 0.0, False, m.bidirectional, m.batch_first)
            out = result[0]
            h_n.append(result[1])
            if is_lstm:
                c_n.append(result[2])
            if kinds:
                if kinds - {"h"} and padded_in is None:
                    padded_in, lengths = _batch_major(m, layer_in, batch_sizes, sorted_idx, unsorted_idx)
                padded_out, lengths = _batch_major(m, out, batch_sizes, sorted_idx, unsorted_idx)
                _record_layer(m, active, layer, kinds, padded_in, padded_out, lengths, params, per_dir,
                              h0[sl], c0[sl] if is_lstm else None)
        next_in = out
        if layer < m.num_layers - 1 and m.training and m.dropout > 0:
            next_in = F.dropout(out, m.dropout, training=True)
            padded_out = None
        layer_in, padded_in = next_in, padded_out
    if not packed:
        layer_in = layer_in.contiguous()  # what the fused kernel returns (the workspace route hands back a view)

    hidden = torch.cat(h_n, 0)
    if is_lstm:
        hidden = (hidden, torch.cat(c_n, 0))
    if packed:
        return PackedSequence(layer_in, batch_sizes, sorted_idx, unsorted_idx), m.permute_hidden(hidden, unsorted_idx)
    if unbatched:
        layer_in = layer_in.squeeze(0 if m.batch_first else 1)
        hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if is_lstm else hidden.squeeze(1)
    return layer_in, hidden


def _batch_major(m, x, batch_sizes, sorted_idx, unsorted_idx) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's input or output as ``(B, T, F)`` in the caller's batch order, with lengths."""
    if batch_sizes is not None:
        padded, lengths = pad_packed_sequence(PackedSequence(x, batch_sizes, sorted_idx, unsorted_idx),
                                              batch_first=True)
        return padded, lengths
    x = x if m.batch_first else x.transpose(0, 1)
    return x, torch.full((x.shape[0],), x.shape[1], dtype=torch.long)


def _flip_valid(x: torch.Tensor, lengths: torch.Tensor, full: bool) -> torch.Tensor:
    """Reverse each sequence's valid steps in place of time (padding stays where it is)."""
    if full:
        return x.flip(1)
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    lens = lengths.to(x.device)[:, None]
    index = torch.where(steps < lens, lens - 1 - steps, steps)
    return x.gather(1, index[:, :, None].expand_as(x))


def _record_layer(m, active, layer, kinds, x, out, lengths, params, per_dir, h0, c0) -> None:
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
            gates = _layer_gates(m.mode, params[d * per_dir:(d + 1) * per_dir], m.bias, xd, h_prev,
                                 with_output_gate="gate_o" in kinds)
            if "c" in kinds:
                gates["c"] = _cell_recurrence(gates["gate_f"], gates["gate_i"], gates["gate_g"], c0[d])
            for kind, v in gates.items():
                if kind in kinds:
                    values[kind] = v if d == 0 else _flip_valid(v, lengths, full)
        _emit(active, m, layer, d == 1, values, lengths, mask)


def _emit(active, m, layer: int, reverse: bool, values: dict[str, torch.Tensor], lengths: torch.Tensor,
          mask: torch.Tensor | None) -> None:
    """Hand one layer-direction's values to every active recorder that wants them."""
    for rec, name in active:
        if rec.layers is not None and layer not in rec.layers:
            continue
        for kind in _kinds_of(m, rec.kinds):
            v = values[kind]
            if mask is not None and kind != "h":
                v = v * mask
            rec.emit(source_name(name, layer, kind, reverse), v, lengths)


def _layer_gates(mode: str, w: Sequence[torch.Tensor], bias: bool, x: torch.Tensor, h_prev: torch.Tensor,
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
            return _lstm_gates(pre)
        pre[..., :2 * H].sigmoid_()
        pre[..., 2 * H:3 * H].tanh_()
        pre[..., 3 * H:].sigmoid_()
        return dict(zip(LSTM_GATES, pre.split(H, -1)))
    gi = (torch.addmm(w[2], x2, w_ih.t()) if bias else torch.mm(x2, w_ih.t())).view(B, T, -1)
    gh = (torch.addmm(w[3], h2, w_hh.t()) if bias else torch.mm(h2, w_hh.t())).view(B, T, -1)
    return _gru_gates(gi, gh)


def _cell_recurrence(f: torch.Tensor, i: torch.Tensor, g: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
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


# oneDNN's LSTM kernel (torch's CPU path for float32 nn.LSTM) run in training mode keeps every
# step's activated gates in its workspace for the backward pass: rows of ``_onednn_ld(4H)`` floats
# in (step, batch) processing order, gates i, f, g, o. Reading them there costs little beyond the
# forward itself. Each use is checked against the kernel's own h and c_n; if a build lays the
# workspace out differently, the check fails and the matmul route takes over for good.
_ONEDNN_LSTM = 2  # ideep::rnn_kind::LSTM
_WORKSPACE = {"usable": True}


def _onednn_ld(width: int) -> int:
    """oneDNN's row stride for ``width`` float32 values (``get_good_ld``): rounded up to 16, plus
    16 more when that is a multiple of 256 (to avoid cache-set aliasing)."""
    ld = -(-width // 16) * 16
    return ld + 16 if ld % 256 == 0 else ld


def _reproduces(ours: torch.Tensor, kernel: torch.Tensor) -> bool:
    """Whether a value computed from the workspace gates matches the kernel's own (its check)."""
    return torch.allclose(ours, kernel, rtol=1e-4, atol=1e-5)


def _workspace_usable(x: torch.Tensor) -> bool:
    return (_WORKSPACE["usable"] and x.device.type == "cpu" and x.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled())


def _workspace_failed(reason: str) -> None:
    _WORKSPACE["usable"] = False
    warnings.warn(f"lstmvis: oneDNN's LSTM workspace is not laid out as expected on this build ({reason}); "
                  "c and gates are now computed by matmul (same values, about 2x slower)", RuntimeWarning)


def _lstm_layer_from_workspace(m, active, layer, kinds, x, h0, c0, params, per_dir):
    """One LSTM layer (every direction) through oneDNN's kernel in training mode, gates read from
    its workspace, c from the recurrence; recorded, and ``(out, h_n, c_n)`` as the fused kernel
    returns them. ``None`` if the workspace fails its check (nothing is recorded then).

    When every active recorder defers and only h and c are wanted, c is recorded as a ``Deferred``:
    the first two steps are checked now, the rest when c is computed (``_workspace_cell_state``)."""
    x_tm = (x.transpose(0, 1) if m.batch_first else x).contiguous()
    T, B = x_tm.shape[:2]
    H = m.hidden_size
    ld = _onednn_ld(4 * H)
    defer = kinds <= {"h", "c"} and all(rec.defer for rec, _ in active)
    outs, h_n, c_n, recorded = [], [], [], []
    for d in range(2 if m.bidirectional else 1):
        w = params[d * per_dir:(d + 1) * per_dir]
        b_ih, b_hh = (w[2], w[3]) if m.bias else (x_tm.new_zeros(4 * H), x_tm.new_zeros(4 * H))
        with torch.enable_grad():  # the kernel hands out its workspace only where autograd could ask for it
            out, hy, cy, ws = torch.ops.aten.mkldnn_rnn_layer(
                x_tm, w[0], w[1], b_ih, b_hh, h0[d], c0[d], d == 1, [], _ONEDNN_LSTM, H, 1, True, False, False, True)
        out, hy, cy = out.detach(), hy.detach(), cy.detach()
        if ws is None or ws.numel() < T * B * ld * 4:
            return _workspace_failed("no workspace or a smaller one")
        gates = ws.view(torch.float32)[:T * B * ld].view(T, B, ld)[..., :4 * H]  # processing order
        i, f, g, o = gates.split(H, -1)
        h_steps = out.flip(0) if d == 1 else out  # processing order
        values = {"h": out.transpose(0, 1)}
        if defer:
            c_state = c0[d]
            for s in range(min(2, T)):
                c_state = f[s] * c_state + i[s] * g[s]
                if not _reproduces(o[s] * torch.tanh(c_state), h_steps[s]):
                    return _workspace_failed(f"gates at step {s} do not reproduce the kernel's h")
            if "c" in kinds:
                values["c"] = Deferred(lambda args=(m, w, x_tm, out, h0[d], c0[d], cy, i, f, g, o, d == 1):
                                       _workspace_cell_state(*args))
        else:
            c = _cell_recurrence(f.transpose(0, 1), i.transpose(0, 1), g.transpose(0, 1), c0[d]).transpose(0, 1)
            for s in (0, T - 1):
                if not _reproduces(o[s] * torch.tanh(c[s]), h_steps[s]):
                    return _workspace_failed(f"gates at step {s} do not reproduce the kernel's h")
            if not _reproduces(c[-1], cy):
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
        _emit(active, m, layer, d == 1, values, lengths, None)
    out = torch.cat(outs, -1) if len(outs) > 1 else outs[0]
    # batch-first as a view: the next layer reads it back time-major without a copy (made contiguous once at the end)
    return (out.transpose(0, 1) if m.batch_first else out), torch.stack(h_n), torch.stack(c_n)


def _workspace_cell_state(m, w, x_tm, out, h0, c0, cy, i, f, g, o, reverse: bool) -> torch.Tensor:
    """The deferred c of one direction, ``(B, T, H)`` in the caller's time order: the recurrence over
    the workspace gates, checked at the last step against the kernel's h and c_n. If the check fails
    (a build whose workspace is laid out otherwise), c comes from the matmul route instead."""
    c = _cell_recurrence(f.transpose(0, 1), i.transpose(0, 1), g.transpose(0, 1), c0).transpose(0, 1)
    h_steps = out.flip(0) if reverse else out  # processing order
    if not (_reproduces(o[-1] * torch.tanh(c[-1]), h_steps[-1]) and _reproduces(c[-1], cy)):
        _workspace_failed("the last step does not reproduce the kernel's h and c_n")
        x_steps = x_tm.flip(0) if reverse else x_tm
        h_prev = torch.cat([h0[None], h_steps[:-1]], 0)
        gates = _layer_gates("LSTM", w, m.bias, x_steps.transpose(0, 1), h_prev.transpose(0, 1),
                             with_output_gate=False)
        c = _cell_recurrence(gates["gate_f"], gates["gate_i"], gates["gate_g"], c0).transpose(0, 1)
    return (c.flip(0) if reverse else c).transpose(0, 1)


def _needs_grad(m: nn.Module, *tensors) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors) or any(p.requires_grad for p in m.parameters())


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """In-place tanh as 2 sigmoid(2x) - 1 (several times faster than torch.tanh on some CPUs)."""
    return x.add_(x).sigmoid_().mul_(2.0).sub_(1.0)


def _unroll_layer(mode: str, w: Sequence[torch.Tensor], bias: bool, x: torch.Tensor, h0: torch.Tensor,
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
