"""The Recorder: which modules to record, the hooks and forward overrides it installs while active,
and what it recorded (``states``, ``calls``, ``lengths``). The capture routes fill it through ``emit``."""
from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .base import CELL_TYPES, RNN_TYPES, ROUTES, Deferred, kinds_of, parse_kinds, resolved, source_name
from .cell_calls import cell_hook
from .conv import conv_hook
from .fused import DispatchHandle, install_dispatch
from .outputs import input_hook, output_hook

_STANDARD_FORWARDS = {nn.LSTM.forward, nn.GRU.forward, nn.RNN.forward}


class Recorder:
    """Records hidden states, cell states, gates and Conv1d outputs inside ``module``, and the
    per-token output of any submodule named in ``modules``.

    ``kinds``: any of ``h, c, gate_i, gate_f, gate_g, gate_o, gate_r, gate_z, gate_n, conv`` or the
    aliases ``gates`` and ``all``. ``modules``: qualified names, glob patterns over them (``*``
    one name part, ``**`` any number: ``"encoder.layer.*.output"``), module types or instances to
    record (default: every recurrent module, cell and Conv1d). A chosen module of any other type
    (a transformer block, an MLP activation, an ``nn.Linear``) is recorded as the source named
    after it, ``(B, T, D)`` by the rule in ``lstmvis.capture.outputs`` (``pad_id``: the pad id
    its lengths come from where the call has no attention mask; default the model's
    ``pad_id`` attribute). ``layers``: recurrent layer indices to record
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
                 detach: bool = True, route: str = "fused", defer: bool = False, pad_id: int | None = None):
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
        self.pad_id = pad_id
        self.outputs: frozenset[str] = frozenset()  # targets recorded by their output (lstmvis.capture.outputs)
        self.targets = self._find_targets(modules)
        self.call_input: tuple[int, int, torch.Tensor] | None = None  # (B, T, lengths) of the model's call
        self._skipped: dict[str, str] = {}
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
        outputs = {}
        if modules is not None:
            if isinstance(modules, (str, type, nn.Module)):
                modules = [modules]
            chosen = {}
            others = {n: m for n, m in self.module.named_modules()
                      if n and n not in named and not isinstance(m, RNN_TYPES + CELL_TYPES + (nn.Conv1d,))}
            for sel in modules:
                hits = {n: m for n, m in {**named, **others}.items() if _selects(sel, n, m)}
                if not hits:
                    raise ValueError(f"modules entry {sel!r} matches no recordable module of {type(self.module).__name__}: its "
                                     f"modules are {_listing([*named, *others])}")
                chosen.update(hits)
            outputs = {n: m for n, m in chosen.items() if n in others}
            named = {n: m for n, m in named.items() if n in chosen}
        rnn_kinds = self.kinds - {"conv"}
        named = {n: m for n, m in named.items() if (isinstance(m, nn.Conv1d) and "conv" in self.kinds)
                 or (not isinstance(m, nn.Conv1d) and rnn_kinds)}
        self.outputs = frozenset(outputs)
        named.update(outputs)
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
            if name in self.outputs:
                out.append(name)
                continue
            if isinstance(m, nn.Conv1d):
                out.append(f"{name}.conv")
                continue
            n_layers = m.num_layers if isinstance(m, RNN_TYPES) else 1
            n_dirs = 2 if getattr(m, "bidirectional", False) else 1
            for layer in range(n_layers):
                if self.layers is not None and layer not in self.layers:
                    continue
                for d in range(n_dirs):
                    out += [source_name(name, layer, kind, d == 1) for kind in kinds_of(m, self.kinds)]
        return out

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "Recorder":
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this Recorder is already recording (in this or another thread): "
                                   "create one Recorder per thread")
            self._thread = threading.get_ident()
        try:
            self._calls, self._skipped, self.call_input = {}, {}, None
            if self.outputs:
                self._handles.append(self.module.register_forward_pre_hook(input_hook(self), with_kwargs=True))
            for name, m in self.targets.items():
                if name in self.outputs:
                    self._handles.append(m.register_forward_hook(output_hook(self, name)))
                elif isinstance(m, RNN_TYPES):
                    install_dispatch(m, self, name)
                    self._handles.append(DispatchHandle(m, self))
                elif isinstance(m, CELL_TYPES):
                    self._handles.append(m.register_forward_hook(cell_hook(self, name), with_kwargs=True))
                else:
                    self._handles.append(m.register_forward_hook(conv_hook(self, name)))
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

    def records_this_thread(self) -> bool:
        """Whether this Recorder records the calling thread's forward passes (it entered it)."""
        return self._thread == threading.get_ident()

    # ------------------------------------------------------------------ results
    def emit(self, source: str, values: torch.Tensor | Deferred, lengths: torch.Tensor) -> None:
        if isinstance(values, Deferred):
            if not self.defer:
                values = values.result()  # another recorder deferred it; this one computes it now
        elif self.detach:
            values = values.detach()
        self._calls.setdefault(source, []).append((values, lengths))

    def skip(self, source: str, reason: str) -> None:
        """Note that a chosen module's output was not recorded, and why (``skipped``)."""
        self._skipped.setdefault(source, reason)

    @property
    def skipped(self) -> dict[str, str]:
        """``{module name: why}`` for chosen modules whose outputs were not per-token ``(B, T, D)``."""
        return dict(self._skipped)

    @property
    def sources(self) -> list[str]:
        return list(self._calls)

    def calls(self, source: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every recorded call of a source: ``[(values (B, T, D), lengths (B,)), ...]``."""
        if source not in self._calls:
            raise KeyError(f"nothing recorded for {source!r}: recorded are {', '.join(self._calls) or 'none'}")
        return [(resolved(v), lengths) for v, lengths in self._calls[source]]

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
        self._calls, self._skipped = {}, {}


def _glob(pattern: str) -> re.Pattern:
    """A module-name glob: ``*`` one name part, ``**`` any number of parts, ``?`` one character."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    rule = {"**": ".*", "*": "[^.]*", "?": "[^.]"}
    return re.compile("".join(rule.get(p, re.escape(p)) for p in parts) + r"\Z")


def _selects(sel, name: str, m: nn.Module) -> bool:
    if isinstance(sel, str):
        return name == sel or (any(c in sel for c in "*?") and _glob(sel).match(name) is not None)
    if isinstance(sel, type):
        return isinstance(m, sel)
    return isinstance(sel, nn.Module) and m is sel


def _listing(names: list[str], most: int = 40) -> str:
    return (", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")) or "none"


def _join(source: str, calls: list) -> tuple[torch.Tensor, torch.Tensor]:
    """One source's recorded calls joined along time: ``(values (B, T, D), lengths (B,))``."""
    calls = [(resolved(v), lengths) for v, lengths in calls]
    if len(calls) == 1:
        return calls[0]
    if len({v.shape[0] for v, _ in calls}) != 1:
        raise ValueError(f"{source} was called with different batch sizes: read rec.calls({source!r})")
    for values, lengths in calls[:-1]:
        if bool((lengths != values.shape[1]).any()):
            raise ValueError(f"{source} has padded steps inside a call that is not the last one, so the calls "
                             f"cannot be joined along time: read rec.calls({source!r})")
    return torch.cat([v for v, _ in calls], 1), sum(lengths for _, lengths in calls)
