"""Modified backward rules for DeepLIFT and LRP, on a copy of the computation.

Both methods are "gradient x input with other backward rules". Here the rules live in a
thread-local ``TorchFunctionMode`` that is active for one forward pass only: every call it knows --
linear and conv layers, elementwise activations, max pooling, ``nn.LSTM``/``nn.GRU`` -- is answered
with the same forward value and a surrogate whose gradient is the rule (``value.detach() + s -
s.detach()``: the forward value is exactly the ordinary one, the backward is ``ds``). Nothing is
installed on the user's module: no hooks, no swapped layers, no changed weights; other threads and
later calls see the ordinary model. Fused recurrent calls (``torch.lstm``/``torch.gru``) are unrolled
here step by step from the module's own weights so the rules can reach their gates.

``DeepLiftRules`` (Shrikumar et al. 2017, the rescale rule): the forward pass runs on the batch
``[x; x_ref]``; at an elementwise nonlinearity the multiplier is ``(f(x) - f(x_ref)) / (x - x_ref)``
(where ``|x - x_ref| < eps``: the gradient ``f'(x)``); at a max (max pooling, ``amax``) the change of
the output is split exactly between the input's and the reference's winners, as captum does; a
product of two signals (the gates of an LSTM/GRU) gets the exact symmetric split ``d(ab) = da (b +
b') / 2 + db (a + a') / 2``. Linear layers are their own multipliers. So on any network of these
operations the contributions sum to ``F(x) - F(x_ref)`` up to rounding (summation-to-delta).

``LrpRules`` (Bach et al. 2015): relevance ``R = a * g`` at every tensor ``a``. Linear and conv
layers take the epsilon, gamma or alpha-beta rule; an elementwise activation passes relevance on
unchanged (``g_in = g_out f(z) / z``; for ReLU that is the ordinary gradient); max pooling is the
ordinary gradient (winner takes all), average pooling and sums are proportional (the ordinary
gradient of a linear map). Recurrent cells follow LSTM-LRP (Arras et al. 2017): in each product of a
gate and a signal the gate gets no relevance and the signal all of it (signal-take-all), the linear
parts take the epsilon rule. Biases enter the surrogates times a ``ones`` tensor (``LrpRules.units``)
so the relevance they absorb is measured: input relevance + bias relevance = F(x) up to the epsilon
stabilisers (conservation).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

DEEPLIFT_EPS = 1e-6   # |x - x_ref| below this: the multiplier is the gradient (DeepLIFT's near-zero fallback)
STABILISER = 1e-9     # keeps LRP's denominators away from 0 (added with the sign of the denominator)

_RELU = {F.relu: torch.relu, torch.relu: torch.relu, torch.Tensor.relu: torch.relu, F.relu_: torch.relu,
         torch.relu_: torch.relu, torch.Tensor.relu_: torch.relu}
_ACTIVATIONS = {**_RELU, torch.tanh: torch.tanh, torch.Tensor.tanh: torch.tanh, F.tanh: torch.tanh,
                torch.sigmoid: torch.sigmoid, torch.Tensor.sigmoid: torch.sigmoid, F.sigmoid: torch.sigmoid}
_MAXES = {F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.amax, torch.Tensor.amax}
_LAYERS = {F.linear: "linear", F.conv1d: "conv", F.conv2d: "conv", F.conv3d: "conv"}
_RECURRENT = {torch.lstm: "lstm", torch.gru: "gru"}
# nonlinearities without a rule here: they pass the ordinary gradient, and the methods say so
_OTHER_ACTIVATIONS = {F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.prelu, F.rrelu, F.mish, F.hardswish,
                      F.softplus, F.relu6, F.hardtanh, F.logsigmoid, F.softmax, torch.softmax, torch.Tensor.softmax}


def with_gradient(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value`` exactly in the forward pass, the gradient of ``surrogate`` in the backward pass."""
    return value.detach() + (surrogate - surrogate.detach())


def stabilised(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + eps * sign(z)`` (sign 0 counts as +): LRP's denominator."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


class _Rules(TorchFunctionMode):
    """What DeepLIFT's and LRP's modes share: dispatch of the calls they rewrite, the recurrent unroll."""

    def __init__(self) -> None:
        super().__init__()
        self.other_activations: set[str] = set()
        self.rewritten = 0

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _ACTIVATIONS:
            self.rewritten += 1
            return self.act(_ACTIVATIONS[func], args[0])
        if func in _LAYERS:
            self.rewritten += 1
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            rest, options = args[3:], {k: v for k, v in kwargs.items() if k != "bias"}
            return self.layer(_LAYERS[func], lambda a, w, b=None: func(a, w, b, *rest, **options), args[0], args[1], bias)
        if func in _MAXES and not kwargs.get("return_indices", False):
            self.rewritten += 1
            return self.maximum(lambda t: func(t, *args[1:], **kwargs), args[0])
        if func in _RECURRENT:
            self.rewritten += 1
            return unroll(_RECURRENT[func], self, args)
        if func in _OTHER_ACTIVATIONS:
            self.other_activations.add(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)

    # the rules; each subclass defines them
    def act(self, f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer(self, kind: str, op: Callable, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def maximum(self, f: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def affine(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], biases: Sequence[torch.Tensor]) -> torch.Tensor:
        """``sum x W^T + sum b`` inside a recurrent cell."""
        raise NotImplementedError

    def add(self, terms: Sequence[torch.Tensor]) -> torch.Tensor:
        """A sum of signals inside a recurrent cell (the LSTM's cell update)."""
        raise NotImplementedError

    def product(self, gate: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        """``gate * signal`` inside a recurrent cell."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ DeepLIFT

class _MaxRescale(torch.autograd.Function):
    """DeepLIFT at a max (pooling window or reduction) ``f``, input half only: ``f(a_x)`` forward; backward
    splits ``f(a_x) - f(a_r)`` into ``max(y_x, y_r) - y_r`` for the input's winner and ``y_x - max(y_x, y_r)``
    for the reference's winner (captum's max-pool rule), divided by each position's ``a_x - a_r``;
    where that is below ``eps`` (or not finite: masked -inf), the ordinary gradient."""

    @staticmethod
    def forward(ctx: Any, a_x: torch.Tensor, a_r: torch.Tensor, f: Callable, eps: float) -> torch.Tensor:
        y_x, y_r = f(a_x), f(a_r)
        ctx.save_for_backward(a_x, a_r, y_x, y_r)
        ctx.f, ctx.eps = f, eps
        return y_x

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple:
        a_x, a_r, y_x, y_r = ctx.saved_tensors
        top = torch.maximum(y_x, y_r)

        def finite(t: torch.Tensor) -> torch.Tensor:
            return torch.where(torch.isfinite(t), t, torch.zeros_like(t))

        with torch.enable_grad():
            ax, ar = a_x.detach().requires_grad_(True), a_r.detach().requires_grad_(True)
            yx, yr = ctx.f(ax), ctx.f(ar)
            (plain,) = torch.autograd.grad(yx, ax, g, retain_graph=True)
            (share_x,) = torch.autograd.grad(yx, ax, finite(g * (top - y_r)))
            (share_r,) = torch.autograd.grad(yr, ar, finite(g * (y_x - top)))
        delta = a_x - a_r
        ok = torch.isfinite(delta) & (delta.abs() >= ctx.eps)
        return torch.where(ok, (share_x + share_r) / torch.where(ok, delta, 1.0), plain), None, None, None


class DeepLiftRules(_Rules):
    """DeepLIFT's rescale rule on a forward pass over the batch ``[x; x_ref]`` (first ``half`` rows: x).

    The reference half runs without gradients; the input half's gradient is the multiplier. Linear
    layers need no rule (they are their own multipliers)."""

    def __init__(self, half: int, eps: float = DEEPLIFT_EPS):
        super().__init__()
        self.half, self.eps = half, eps

    def _split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if t.shape[0] != 2 * self.half:
            raise ValueError(f"DeepLIFT runs the batch [inputs; references] ({2 * self.half} rows) but a layer saw "
                             f"{t.shape[0]}: the model must keep the batch in its first dimension")
        return t[:self.half], t[self.half:].detach()

    def act(self, f, z):
        z_x, z_r = self._split(z)
        y_x, y_r = f(z_x), f(z_r)
        delta = (z_x - z_r).detach()
        with torch.enable_grad():
            probe = z_x.detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(f(probe).sum(), probe)
        near = delta.abs() < self.eps
        multiplier = torch.where(near, slope, (y_x - y_r).detach() / torch.where(near, 1.0, delta))
        return torch.cat([with_gradient(y_x, z_x * multiplier), y_r.detach()])

    def layer(self, kind, op, a, w, b):
        return op(a, w, b)

    def maximum(self, f, a):
        a_x, a_r = self._split(a)
        return torch.cat([_MaxRescale.apply(a_x, a_r, f, self.eps), f(a_r).detach()])

    def affine(self, pairs, biases):
        return sum(F.linear(x, w) for x, w in pairs) + sum(biases)

    def add(self, terms):
        return sum(terms)

    def product(self, gate, signal):
        a_x, a_r = self._split(gate)
        b_x, b_r = self._split(signal)
        surrogate = a_x * ((b_x + b_r) / 2).detach() + b_x * ((a_x + a_r) / 2).detach()
        return torch.cat([with_gradient(a_x * b_x, surrogate), (a_r * b_r).detach()])


def deeplift_multipliers(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, x_ref: torch.Tensor,
                         eps: float = DEEPLIFT_EPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, DeepLiftRules]:
    """DeepLIFT multipliers ``dF/dx`` of ``run(rows) -> F (rows,)`` from ``x_ref`` to ``x`` (same shape,
    batch first), F at the inputs and at the references, and the mode (what it rewrote). Contributions
    are ``(x - x_ref) * multipliers``. Only ``x`` gets gradients: parameters and their ``.grad`` are not
    touched."""
    inputs = x.detach().requires_grad_(True)
    rules = DeepLiftRules(x.shape[0], eps)
    with torch.enable_grad():
        with rules:
            out = run(torch.cat([inputs, x_ref.detach().to(x.dtype)]))
        (multipliers,) = torch.autograd.grad(out[:x.shape[0]].sum(), inputs)
    return multipliers, out[:x.shape[0]].detach(), out[x.shape[0]:].detach(), rules


# ------------------------------------------------------------------------------------------ LRP

LRP_RULES = ("epsilon", "gamma", "alpha_beta")


class LrpRules(_Rules):
    """LRP: ``rule`` (epsilon, gamma or alpha-beta) on conv layers, the epsilon rule on linear layers and
    in recurrent cells, relevance passed through activations, signal-take-all at gates.

    ``units``: the ``ones`` tensors the biases are multiplied by (their gradient x 1 is the relevance the
    biases absorb), batch first."""

    def __init__(self, rule: str = "epsilon", epsilon: float = 1e-3, gamma: float = 0.25, alpha: float = 1.0):
        super().__init__()
        self.rule, self.epsilon, self.gamma, self.alpha = rule, epsilon, gamma, alpha
        self.units: list[torch.Tensor] = []

    def _bias(self, b: torch.Tensor | None, like: torch.Tensor, channels_first: bool = False) -> torch.Tensor | float:
        """``b`` broadcast to ``like`` (along its last dimension, or its second for a conv layer's output) times
        a fresh ``ones`` unit (0 without a bias)."""
        if b is None:
            return 0.0
        unit = torch.ones_like(like).requires_grad_(True)
        self.units.append(unit)
        if channels_first:
            return b.detach().reshape((1, -1) + (1,) * (like.dim() - 2)) * unit
        return b.detach() * unit

    def act(self, f, z):
        y = f(z)
        if f is torch.relu:
            return y  # relu(z) / z = [z > 0]: the ordinary gradient already passes relevance unchanged
        return with_gradient(y, z * (y / stabilised(z, STABILISER)).detach())

    def layer(self, kind, op, a, w, b):
        w = w.detach()
        with torch.no_grad():
            z = op(a, w, None if b is None else b.detach())
        rule = self.rule if kind == "conv" else "epsilon"
        conv = kind == "conv"
        if rule == "epsilon":
            s = op(a, w) + self._bias(b, z, conv)
            return with_gradient(z, s * (z / stabilised(z, self.epsilon)).detach())
        positive = (a > 0).to(a.dtype).detach()
        a_pos, a_neg = a * positive, a * (1 - positive)
        w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
        b_pos, b_neg = (None, None) if b is None else (b.detach().clamp(min=0), b.detach().clamp(max=0))
        if rule == "gamma":  # z + gamma * (positive contributions)
            s = op(a, w) + self.gamma * (op(a_pos, w_pos) + op(a_neg, w_neg)) + self._bias(
                None if b is None else b.detach() + self.gamma * b_pos, z, conv)
            return with_gradient(z, s * (z / stabilised(s.detach(), STABILISER)).detach())
        beta = self.alpha - 1.0
        unit_pos, unit_neg = self._bias(b_pos, z, conv), self._bias(b_neg, z, conv)
        z_pos = op(a_pos, w_pos) + op(a_neg, w_neg) + unit_pos
        z_neg = op(a_pos, w_neg) + op(a_neg, w_pos) + unit_neg
        s = self.alpha * z_pos * (z / stabilised(z_pos.detach(), STABILISER)).detach() - beta * z_neg * (
            z / stabilised(z_neg.detach(), STABILISER)).detach()
        return with_gradient(z, s)

    def maximum(self, f, a):
        return f(a)

    def affine(self, pairs, biases):
        with torch.no_grad():
            z = sum(F.linear(x, w.detach()) for x, w in pairs) + sum(b.detach() for b in biases)
        s = sum(F.linear(x, w.detach()) for x, w in pairs) + sum(self._bias(b, z) for b in biases)
        return with_gradient(z, s * (z / stabilised(z, self.epsilon)).detach())

    def add(self, terms):
        s = sum(terms)
        return with_gradient(s, s * (s / stabilised(s, self.epsilon)).detach())

    def product(self, gate, signal):
        return gate.detach() * signal


def lrp_relevance(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rules: LrpRules
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LRP of ``run(rows) -> F (rows,)`` at ``x`` (batch first): the relevance of each input value
    ``x * g``, F, and the relevance the biases absorbed per row. Only ``x`` and the bias units get
    gradients: parameters and their ``.grad`` are not touched."""
    inputs = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with rules:
            out = run(inputs)
        grads = torch.autograd.grad(out.sum(), [inputs, *rules.units], allow_unused=True)
    bias = torch.zeros(x.shape[0], dtype=torch.float64)
    for g in grads[1:]:
        if g is not None:
            bias += g.reshape(g.shape[0], -1).sum(1).double() if g.dim() else g.double()
    return inputs.detach() * grads[0], out.detach(), bias


# ------------------------------------------------------------------------------------------ recurrent

def unroll(kind: str, rules: _Rules, args: tuple) -> tuple:
    """``torch.lstm``/``torch.gru`` (the fused call inside ``nn.LSTM``/``nn.GRU``), step by step with
    ``rules`` at every gate; returns what the fused call returns."""
    if isinstance(args[1], torch.Tensor) and args[1].dim() == 1:
        raise ValueError("DeepLIFT and LRP run recurrent layers on padded batches, not packed sequences: this "
                         "model packs its input (a text in a batch of other lengths); explain one text at a time")
    x, hx, weights, has_biases, num_layers, _dropout, _train, bidirectional, batch_first = args[:9]
    if kind == "lstm":
        h0, c0 = hx
        if h0.shape[-1] != c0.shape[-1]:
            raise ValueError("LSTMs with proj_size are not supported by DeepLIFT/LRP here")
    else:
        h0, c0 = hx, None
    if not batch_first:
        x = x.transpose(0, 1)
    directions = 2 if bidirectional else 1
    per_layer = 4 if has_biases else 2
    h_n, c_n = [], []
    layer_input = x
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            w_ih, w_hh, *biases = weights[index * per_layer:(index + 1) * per_layer]
            b_ih, b_hh = biases if biases else (None, None)
            h = h0[index]
            c = c0[index] if c0 is not None else None
            steps = range(layer_input.shape[1]) if direction == 0 else reversed(range(layer_input.shape[1]))
            states: list[torch.Tensor | None] = [None] * layer_input.shape[1]
            for t in steps:
                if kind == "lstm":
                    h, c = _lstm_step(rules, layer_input[:, t], h, c, w_ih, w_hh, b_ih, b_hh)
                else:
                    h = _gru_step(rules, layer_input[:, t], h, w_ih, w_hh, b_ih, b_hh)
                states[t] = h
            outputs.append(torch.stack(states, 1))
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, -1) if directions == 2 else outputs[0]
    output = layer_input if batch_first else layer_input.transpose(0, 1)
    if kind == "lstm":
        return output, torch.stack(h_n), torch.stack(c_n)
    return output, torch.stack(h_n)


def _biases(*biases: torch.Tensor | None) -> list[torch.Tensor]:
    return [b for b in biases if b is not None]


def _lstm_step(rules: _Rules, x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step (PyTorch's gate order i, f, g, o): c' = f c + i g, h' = o tanh(c')."""
    w_ih, w_hh = w_ih.chunk(4), w_hh.chunk(4)
    b_ih = b_ih.chunk(4) if b_ih is not None else [None] * 4
    b_hh = b_hh.chunk(4) if b_hh is not None else [None] * 4
    pre = [rules.affine([(x, w_ih[k]), (h, w_hh[k])], _biases(b_ih[k], b_hh[k])) for k in range(4)]
    i, f, o = (rules.act(torch.sigmoid, pre[k]) for k in (0, 1, 3))
    g = rules.act(torch.tanh, pre[2])
    c = rules.add([rules.product(f, c), rules.product(i, g)])
    return rules.product(o, rules.act(torch.tanh, c)), c


def _gru_step(rules: _Rules, x, h, w_ih, w_hh, b_ih, b_hh):
    """One GRU step (PyTorch's r, z, n): n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h."""
    w_ih, w_hh = w_ih.chunk(3), w_hh.chunk(3)
    b_ih = b_ih.chunk(3) if b_ih is not None else [None] * 3
    b_hh = b_hh.chunk(3) if b_hh is not None else [None] * 3
    r, z = (rules.act(torch.sigmoid, rules.affine([(x, w_ih[k]), (h, w_hh[k])], _biases(b_ih[k], b_hh[k])))
            for k in (0, 1))
    recurrent = rules.affine([(h, w_hh[2])], _biases(b_hh[2]))
    n = rules.act(torch.tanh, rules.add([rules.affine([(x, w_ih[2])], _biases(b_ih[2])), rules.product(r, recurrent)]))
    return rules.add([rules.product(1 - z, n), rules.product(z, h)])


__all__ = ["DEEPLIFT_EPS", "LRP_RULES", "DeepLiftRules", "LrpRules", "deeplift_multipliers", "lrp_relevance",
           "stabilised", "unroll", "with_gradient"]
