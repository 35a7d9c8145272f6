"""Guided backpropagation and deconvnet: gradients with a modified ReLU backward rule.

With x the ReLU input and g the gradient from above, backprop passes g*[x>0], guided backprop
(Springenberg et al. 2015) g*[x>0]*[g>0], and deconvnet (Zeiler & Fergus 2014) max(g, 0).

Module hooks only see ``nn.ReLU`` modules and break on ``ReLU(inplace=True)``; swapping modules
misses ``F.relu``. Here every rectifier call made during the forward pass -- ``nn.ReLU`` (which
calls ``F.relu``), ``F.relu``/``F.relu_``, ``torch.relu``/``torch.relu_``, ``Tensor.relu``/
``relu_`` and ``clamp(min=0)`` -- is rerouted through an autograd function with the chosen rule by
a ``TorchFunctionMode``. The mode is thread-local and lives only for the forward pass, so other
threads and later calls see the ordinary ReLU, and nothing global is patched.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..hyperparameters import Hyper
from .base import BATCH_HELP, ImageMethod, input_gradients

RULES = ("guided", "deconvnet")

_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_INPLACE = {F.relu_, torch.relu_, torch.Tensor.relu_}
_CLAMP = {torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip}
_CLAMP_INPLACE = {torch.clamp_, torch.Tensor.clamp_, torch.clip_, torch.Tensor.clip_}
_CLAMP_MIN = {torch.clamp_min, torch.Tensor.clamp_min}
_CLAMP_MIN_INPLACE = {torch.clamp_min_, torch.Tensor.clamp_min_}
# activations with no guided-backprop rule: their gradients pass unmodified, and we say so
_OTHER_ACTIVATIONS = {F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.prelu, F.rrelu, F.mish,
                      F.hardswish, F.softplus, F.relu6, F.hardtanh, F.logsigmoid}


class _RectifierRule(torch.autograd.Function):
    """ReLU forward; guided or deconvnet backward. In-place calls stay in place (mark_dirty)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rule: str, inplace: bool) -> torch.Tensor:
        if inplace:
            out = torch.relu_(x)
            ctx.mark_dirty(x)
        else:
            out = torch.relu(x)
        ctx.save_for_backward(out)
        ctx.rule = rule
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if ctx.rule == "deconvnet":
            return grad.clamp(min=0), None, None
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0), None, None


def _is_zero(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0


class RectifierRules(TorchFunctionMode):
    """Thread-local mode that gives every rectifier call in a forward pass the backward ``rule``.

    ``relu_calls`` counts rectifiers rerouted; ``other_activations`` names activations that have
    no such rule (their gradients pass as usual).
    """

    def __init__(self, rule: str):
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        super().__init__()
        self.rule = rule
        self.relu_calls = 0
        self.other_activations: set[str] = set()

    def _rectify(self, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        self.relu_calls += 1
        return _RectifierRule.apply(x, self.rule, inplace)

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _RELU or func in _RELU_INPLACE:
            inplace = func in _RELU_INPLACE or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            return self._rectify(args[0], inplace)
        if func in _CLAMP or func in _CLAMP_INPLACE:
            lo = kwargs.get("min", args[1] if len(args) > 1 else None)
            hi = kwargs.get("max", args[2] if len(args) > 2 else None)
            if _is_zero(lo) and hi is None:
                return self._rectify(args[0], func in _CLAMP_INPLACE)
        elif func in _CLAMP_MIN or func in _CLAMP_MIN_INPLACE:
            if _is_zero(kwargs.get("min", args[1] if len(args) > 1 else None)):
                return self._rectify(args[0], func in _CLAMP_MIN_INPLACE)
        elif func in _OTHER_ACTIVATIONS:
            self.other_activations.add(func.__name__)
        return func(*args, **kwargs)


class _ModifiedReLUGradient(ImageMethod):
    """Shared parent of guided backprop and deconvnet: the input gradient under a ReLU ``rule``."""

    rule: ClassVar[str] = ""
    batch_size = Hyper(int, 256, ge=1, api=False, help=BATCH_HELP)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        modes: list[RectifierRules] = []

        @contextlib.contextmanager
        def rules() -> Iterator[None]:
            mode = RectifierRules(self.rule)
            modes.append(mode)
            with mode:
                yield

        grads = input_gradients(self.model, x, targets, self.batch_size, forward_context=rules)
        name = type(self).__name__
        if not any(m.relu_calls for m in modes):
            warnings.warn(f"{name}: the model made no ReLU call, so the result is the plain gradient",
                          UserWarning, stacklevel=3)
        others = sorted(set().union(*(m.other_activations for m in modes)))
        if others:
            warnings.warn(f"{name} is defined for ReLU only; gradients through {', '.join(others)} "
                          "were left unmodified", UserWarning, stacklevel=3)
        return grads


class GuidedBackprop(_ModifiedReLUGradient, name="guided_backprop", title="Guided backprop"):
    """Guided backpropagation: only positive gradients through active ReLUs, (B, C, H, W)."""

    rule = "guided"


class Deconvnet(_ModifiedReLUGradient, name="deconvnet", title="Deconvnet"):
    """Deconvnet (Zeiler & Fergus): positive gradients through every ReLU, ignoring the forward mask."""

    rule = "deconvnet"
