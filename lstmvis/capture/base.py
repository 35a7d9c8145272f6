"""What every capture route shares: the kinds and source names, values computed on first read
(``Deferred``), and handing one layer's values to the recorders that want them (``emit_layer``)."""
from __future__ import annotations

import threading
from collections.abc import Iterable

import torch
from torch import nn


LSTM_GATES = ("gate_i", "gate_f", "gate_g", "gate_o")
GRU_GATES = ("gate_r", "gate_z", "gate_n")
KINDS = ("h", "c", *LSTM_GATES, *GRU_GATES, "conv")
KIND_ALIASES = {"gates": LSTM_GATES + GRU_GATES, "all": KINDS}
RNN_TYPES = (nn.LSTM, nn.GRU, nn.RNN)
CELL_TYPES = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)
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


def resolved(value):
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


def kinds_of(m: nn.Module, kinds: frozenset[str]) -> list[str]:
    """The requested kinds that module ``m`` has, in canonical order."""
    if isinstance(m, (nn.LSTM, nn.LSTMCell)):
        own = ("h", "c", *LSTM_GATES)
    elif isinstance(m, (nn.GRU, nn.GRUCell)):
        own = ("h", *GRU_GATES)
    else:
        own = ("h",)
    return [k for k in own if k in kinds]


def emit_layer(active, m, layer: int, reverse: bool, values: dict[str, torch.Tensor], lengths: torch.Tensor,
          mask: torch.Tensor | None) -> None:
    """Hand one layer-direction's values to every active recorder that wants them."""
    for rec, name in active:
        if rec.layers is not None and layer not in rec.layers:
            continue
        for kind in kinds_of(m, rec.kinds):
            v = values[kind]
            if mask is not None and kind != "h":
                v = v * mask
            rec.emit(source_name(name, layer, kind, reverse), v, lengths)
