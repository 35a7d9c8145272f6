"""Span tensors: a batch of texts that differ from one reference text only inside one window per row.

Occlusion masks one window of a text per model input, so input row ``b`` equals the unperturbed
text everywhere but in ``[starts[b], starts[b] + W)``. A ``SpanTensor`` stores exactly that: the
reference ``ref`` (batch size 1), the row starts and a block ``(B, W, ...)`` of the rows' values
there, in a canonical layout ``(batch, time, rest...)`` (``perm`` maps it to the layout the module
sees, so ``transpose(1, 2)`` costs nothing). The user's module runs unchanged on it:
``__torch_function__`` answers the calls it knows with spans, exactly, and densifies the rows for
every other call (correct, only slower), so correctness never depends on the set of known calls.

Known calls (``SpanRun.fallbacks`` lists the others met):
- elementwise and per-position calls (activations, arithmetic, comparisons, ``masked_fill`` and
  ``where`` with masks whose rows are all equal, dropout in eval mode, ``F.linear`` on a feature
  dim, ``F.embedding``), transposes, ``unsqueeze``, indexing one time step; ``masked_fill`` with a mask
  False everywhere and products with a boolean True everywhere (padding masks on one text) return the
  span as it is;
- ``torch.lstm`` / ``torch.gru`` (what ``nn.LSTM``/``nn.GRU`` call: layers, bidirectional,
  batch_first, biases): a row's trajectory differs from the reference only from its window on; it is
  stepped (batched over the rows of a call, from the reference state at the window start) until its
  state (h, and c for the LSTM) is within ``state_tolerance`` of the reference state at the same step
  (max abs over units; 0 = never cut off), and continues as the reference after. The backward
  direction runs the same code on the reversed text. The reference trajectory comes from the same
  step code (so the comparison is like with like) and is kept for the rows of later calls;
- ``F.conv1d`` (the window grows by the kernel; only the window is recomputed, zero padding exact)
  and ``F.max_pool1d`` (stride, padding, dilation, ceil_mode);
- reductions over time: ``amax``/``amin`` combine the reference's prefix and suffix extrema with the
  block's (exact); ``sum``/``mean`` are the reference total minus the reference's window plus the
  block's, in float64.

An in-place call on a span runs out of place and the span takes the result (``nn.ReLU(inplace=True)``);
one on a span that a view shares (or any other write into a span) raises ``Abandon``, and the caller
runs those rows plain.

``span_logits`` runs a ``TextModel`` on keep-masks with one masked run each (``textexplain.perturb``
uses it for occlusion).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import embed, forward_at_embeddings

STATE_TOLERANCE = 1e-6  # |h - h_ref| and |c - c_ref| below this at one step: the row continues as the reference

_META_PROPERTIES = {"shape", "ndim", "dtype", "device", "layout", "is_cuda", "is_cpu", "is_sparse", "is_quantized",
                    "is_meta", "is_mkldnn", "is_nested", "requires_grad", "is_leaf", "grad_fn", "names", "itemsize",
                    "is_xpu", "is_mps"}
_META_METHODS = {torch.Tensor.size, torch.Tensor.dim, torch.Tensor.ndimension, torch.Tensor.numel,
                 torch.Tensor.nelement, torch.Tensor.__len__, torch.Tensor.is_floating_point,
                 torch.Tensor.is_complex, torch.Tensor.element_size, torch.Tensor.get_device}


def _names(owners: Sequence[Any], names: str) -> set:
    return {getattr(o, n) for o in owners for n in names.split() if hasattr(o, n)}


# calls that act on each element on their own (extra arguments: scalars or broadcastable tensors)
_POINTWISE = _names((torch, torch.Tensor), "add sub mul div true_divide floor_divide remainder pow neg negative abs "
                    "exp expm1 log log1p sqrt rsqrt sigmoid tanh relu clamp clip clamp_min clamp_max maximum minimum "
                    "eq ne lt le gt ge logical_not logical_and logical_or logical_xor bitwise_not where masked_fill "
                    "sin cos erf square reciprocal sign nan_to_num float double half bfloat16 long int bool "
                    "type_as to clone contiguous detach") | _names((torch.Tensor,), (
    "__add__ __radd__ __sub__ __rsub__ __mul__ __rmul__ __truediv__ __rtruediv__ __floordiv__ __rfloordiv__ __mod__ "
    "__pow__ __rpow__ __neg__ __abs__ __invert__ __and__ __or__ __xor__ __rand__ __ror__ __eq__ __ne__ __lt__ __le__ "
    "__gt__ __ge__")) | _names((F,), "relu gelu silu elu selu celu leaky_relu softplus hardtanh relu6 mish hardswish "
                                     "hardsigmoid logsigmoid tanh sigmoid threshold")
_MASKED_FILLS = _names((torch, torch.Tensor), "masked_fill")
_MULTIPLIES = _names((torch, torch.Tensor), "mul multiply __mul__ __rmul__")
_DROPOUTS = {F.dropout, F.alpha_dropout, F.feature_alpha_dropout}
_REDUCTIONS = {torch.sum: "sum", torch.Tensor.sum: "sum", torch.mean: "mean", torch.Tensor.mean: "mean",
               torch.amax: "amax", torch.Tensor.amax: "amax", torch.amin: "amin", torch.Tensor.amin: "amin"}
_TRANSPOSES = {torch.transpose, torch.Tensor.transpose, torch.swapaxes, torch.Tensor.swapaxes, torch.swapdims,
               torch.Tensor.swapdims}
_PERMUTES = {torch.permute, torch.Tensor.permute}
_UNSQUEEZES = {torch.unsqueeze, torch.Tensor.unsqueeze}


class Abandon(Exception):
    """A call the span rules cannot even densify correctly (an in-place write into a span): the caller
    evaluates these rows on the plain path."""


class SpanRun:
    """What the span tensors of one ``MaskedModel`` share: the tolerance, the reference trajectories of
    the recurrent calls (reused by every later call), and the calls that had to be densified."""

    def __init__(self, state_tolerance: float = STATE_TOLERANCE):
        self.state_tolerance = float(state_tolerance)
        self.fallbacks: list[str] = []
        self._references: list[tuple[tuple, list[torch.Tensor], Any]] = []

    def reference(self, key: tuple, inputs: list[torch.Tensor], compute: Callable[[], Any]) -> Any:
        """``compute()``, or its earlier result for the same ``key`` and equal ``inputs``."""
        for k, seen, value in self._references:
            if k == key and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(seen, inputs)):
                return value
        value = compute()
        self._references.append((key, [t.clone() for t in inputs], value))
        return value


def _inverse(perm: Sequence[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def make_span(ref: torch.Tensor, starts: torch.Tensor, block: torch.Tensor, perm: Sequence[int],
              run: SpanRun) -> SpanTensor:
    """A ``SpanTensor`` from canonical ``ref (1, T, ...)``, ``starts (B,)`` and ``block (B, W, ...)``;
    ``perm[i]`` is the module-facing dim of canonical dim ``i``."""
    shape = (block.shape[0], *ref.shape[1:])
    standin = ref.expand(shape).permute(_inverse(perm))  # right shape and dtype, no memory; never read as values
    span = torch.Tensor._make_subclass(SpanTensor, standin, False)
    span._ref, span._starts, span._block, span._perm, span._run = ref, starts, block, tuple(perm), run
    span._aliased = False
    return span


def _positions(starts: torch.Tensor, width: int) -> torch.Tensor:
    return starts[:, None] + torch.arange(width)


def _windows(values: torch.Tensor, starts: torch.Tensor, width: int) -> torch.Tensor:
    """``values[starts[b]:starts[b] + width]`` for each row ``b``: ``(B, width, ...)`` in one strided copy."""
    view = values.as_strided((values.shape[0] - width + 1, width, *values.shape[1:]),
                             (values.stride(0), *values.stride()), values.storage_offset())
    return view.index_select(0, starts)


def _fit(lo: torch.Tensor, hi: torch.Tensor, length: int) -> tuple[torch.Tensor, int]:
    """Common width and starts of windows covering ``[lo, hi)`` per row, inside ``[0, length)``."""
    width = int(min(length, max(1, int((hi - lo).max()))))
    return lo.clamp(max=length - width).clamp(min=0), width


class SpanTensor(torch.Tensor):
    """Rows equal to ``ref`` except in a window each (module docstring); made by ``make_span``."""

    _ref: torch.Tensor
    _starts: torch.Tensor
    _block: torch.Tensor
    _perm: tuple[int, ...]
    _run: SpanRun
    _aliased: bool

    @property
    def length(self) -> int:
        return self._ref.shape[1]

    def local(self, positions: torch.Tensor, fill: float | None = None) -> torch.Tensor:
        """Canonical values ``(B, L, ...)`` of each row at ``positions (B, L)``; out of ``[0, T)``: ``fill``."""
        ref, block, width = self._ref[0], self._block, self._block.shape[1]
        inside_text = (positions >= 0) & (positions < self.length)
        values = ref[positions.clamp(0, self.length - 1)]
        rel = positions - self._starts[:, None]
        inside = (rel >= 0) & (rel < width)
        rows = torch.arange(block.shape[0])[:, None]
        values = torch.where(_trail(inside, values), block[rows, rel.clamp(0, width - 1)], values)
        if fill is not None:
            values = values.masked_fill(~_trail(inside_text, values), fill)
        return values

    def dense(self) -> torch.Tensor:
        """The rows as an ordinary tensor, in the module's layout."""
        full = self._ref.expand(self._block.shape[0], *self._ref.shape[1:]).clone()
        full[torch.arange(full.shape[0])[:, None], _positions(self._starts, self._block.shape[1])] = self._block
        return full.permute(_inverse(self._perm))

    def rewindow(self, starts: torch.Tensor, width: int) -> SpanTensor:
        if starts is self._starts and width == self._block.shape[1]:
            return self
        return make_span(self._ref, starts, self.local(_positions(starts, width)), self._perm, self._run)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _META_METHODS or (getattr(func, "__name__", "") == "__get__" and
                                     getattr(getattr(func, "__self__", None), "__name__", "") in _META_PROPERTIES):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        spans = [a for a in _flat(args, kwargs) if isinstance(a, SpanTensor)]
        try:
            result = _rule(func, args, kwargs, spans)
        except _Densify:
            result = NotImplemented
        if result is NotImplemented:
            result = _densified(func, args, kwargs, spans)
        return result


class _Densify(Exception):
    """Raised inside a rule that finds its case unsupported: the call is densified instead."""


def _trail(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` with trailing singleton dims to broadcast against ``like``."""
    return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim()))


def _flat(args, kwargs) -> list:
    out = []

    def visit(value):
        if isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        else:
            out.append(value)

    visit(args)
    visit(kwargs)
    return out


def _map(value, fn):
    if isinstance(value, SpanTensor):
        return fn(value)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


_INPLACE_DUNDERS = {f"__i{op}__": f"__{op}__" for op in "add sub mul truediv floordiv mod pow and or xor lshift "
                    "rshift matmul".split()}


def _is_inplace(func, args, kwargs) -> bool:
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS or "out" in kwargs or \
        bool(kwargs.get("inplace")) or name in ("__setitem__", "set_", "copy_", "resize_")


def _inplace(func, args, kwargs):
    """An in-place call on a span that no view shares: the out-of-place call, then the span takes
    its result (same shape). Anything else in place into a span: ``Abandon``."""
    name = getattr(func, "__name__", "")
    target = args[0] if args else None
    if not isinstance(target, SpanTensor) or target._aliased or "out" in kwargs:
        return None
    if kwargs.get("inplace"):
        result = func(*args, **{**kwargs, "inplace": False})
    else:
        plain = _INPLACE_DUNDERS.get(name, name[:-1])
        out_of_place = getattr(torch.Tensor, plain, None) if name.endswith("_") or name in _INPLACE_DUNDERS else None
        if out_of_place is None or name in ("set_", "copy_", "resize_"):
            return None
        result = out_of_place(*args, **kwargs)
    if not isinstance(result, SpanTensor) or result.shape != target.shape or result.dtype != target.dtype:
        return None
    target._ref, target._starts, target._block, target._perm = result._ref, result._starts, result._block, result._perm
    return target


def _densified(func, args, kwargs, spans):
    """Run ``func`` on the dense rows (the always-correct fallback)."""
    run = spans[0]._run
    run.fallbacks.append(getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func)))
    dense = {}

    def densify(span):
        if id(span) not in dense:
            dense[id(span)] = span.dense()
        return dense[id(span)]

    with torch._C.DisableTorchFunctionSubclass():
        return func(*_map(args, densify), **_map(kwargs, densify))


# ------------------------------------------------------------------------------------------- rules

def _rule(func, args, kwargs, spans):
    if _is_inplace(func, args, kwargs):
        done = _inplace(func, args, kwargs)
        if done is None and any(isinstance(a, SpanTensor) for a in [*args[:1], kwargs.get("out")]):
            raise Abandon(f"in-place {getattr(func, '__name__', func)} on a span tensor")
        return NotImplemented if done is None else done
    if func in _DROPOUTS:
        training = kwargs.get("training", args[2] if len(args) > 2 else True)
        return args[0] if not training and isinstance(args[0], SpanTensor) else NotImplemented
    if func in _POINTWISE:
        return _pointwise(func, args, kwargs, spans)
    if func in _REDUCTIONS:
        return _reduction(_REDUCTIONS[func], func, args, kwargs)
    if func in _TRANSPOSES or func in _PERMUTES or func in _UNSQUEEZES:
        return _view(func, args, kwargs)
    if func is F.linear:
        return _linear(args, kwargs)
    if func is F.embedding:
        return _embedding(args, kwargs)
    if func is torch.Tensor.__getitem__:
        return _time_step(args)
    if func is F.conv1d:
        return _window_op(args, kwargs, "conv")
    if func is F.max_pool1d:
        return _window_op(args, kwargs, "pool")
    if func in (torch.lstm, torch.gru):
        return _recurrent("lstm" if func is torch.lstm else "gru", args)
    return NotImplemented


def _canonical_plain(t: torch.Tensor, like: SpanTensor) -> torch.Tensor:
    """A plain operand in ``like``'s canonical layout, reduced to one row (its rows must be equal)."""
    n = len(like._perm)
    if t.dim() > n:
        raise _Densify
    t = t.reshape((1,) * (n - t.dim()) + tuple(t.shape)).permute(like._perm)
    if t.shape[0] > 1:
        if not bool((t == t[:1]).all()):
            raise _Densify
        t = t[:1]
    if t.shape[1] not in (1, like.length):
        raise _Densify
    return t


def _aligned(spans: list[SpanTensor]) -> list[SpanTensor]:
    """The spans on one common window (the union of theirs)."""
    first = spans[0]
    if all(s._starts is first._starts and s._block.shape[1] == first._block.shape[1] for s in spans):
        return spans
    for s in spans:
        if s._perm != first._perm or s.length != first.length or s._block.shape[0] != first._block.shape[0]:
            raise _Densify
    lo = torch.stack([s._starts for s in spans]).amin(0)
    hi = torch.stack([s._starts + s._block.shape[1] for s in spans]).amax(0)
    starts, width = _fit(lo, hi, first.length)
    return [s.rewindow(starts, width) for s in spans]


def _all(value, truth: bool) -> bool:
    """Whether ``value`` (a span, a tensor or a Python bool) is a boolean equal to ``truth`` everywhere."""
    if isinstance(value, bool):
        return value is truth
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
        return False
    parts = (value._ref, value._block) if isinstance(value, SpanTensor) else (value,)
    return all(bool(p.all()) if truth else not bool(p.any()) for p in parts)


def _unchanged(func, args, kwargs) -> SpanTensor | None:
    """The span operand as the result where ``func`` leaves it unchanged, exactly: ``masked_fill`` with
    a mask that is False everywhere, a product with a boolean True everywhere (a padding mask on a text
    without padding). Saves the passes over the block; the new span shares its tensors, which no rule
    writes into."""
    if kwargs:
        return None
    if func in _MASKED_FILLS and len(args) == 3:
        pairs, truth = [(args[0], args[1])], False
    elif func in _MULTIPLIES and len(args) == 2:
        pairs, truth = [(args[0], args[1]), (args[1], args[0])], True
    else:
        return None
    for x, other in pairs:
        if isinstance(x, SpanTensor) and _all(other, truth) and \
                (not isinstance(other, torch.Tensor) or torch.broadcast_shapes(x.shape, other.shape) == x.shape):
            return make_span(x._ref, x._starts, x._block, x._perm, x._run)
    return None


def _pointwise(func, args, kwargs, spans):
    if any(isinstance(v, torch.Tensor) for v in _flat((), kwargs)) or any(s._perm != spans[0]._perm for s in spans):
        return NotImplemented
    same = _unchanged(func, args, kwargs)
    if same is not None:
        return same
    aligned = dict(zip(map(id, spans), _aligned(spans)))
    like = aligned[id(spans[0])]
    positions = _positions(like._starts, like._block.shape[1])

    def part(which: int):
        def convert(a):
            if isinstance(a, SpanTensor):
                s = aligned[id(a)]
                return s._ref if which == 0 else s._block
            if isinstance(a, torch.Tensor) and a.dim() > 0:
                c = _canonical_plain(a, like)
                return c if which == 0 or c.shape[1] == 1 else c[0][positions]
            return a
        return [convert(a) if not isinstance(a, (list, tuple)) else a for a in args]

    ref, block = func(*part(0), **kwargs), func(*part(1), **kwargs)
    if ref.dim() != len(like._perm):
        raise _Densify
    return make_span(ref, like._starts, block, like._perm, like._run)


def _time_dim(span: SpanTensor, dim: int) -> int:
    """Canonical index of the module-facing ``dim``."""
    n = len(span._perm)
    return span._perm.index(dim % n)


def _drop_dim(perm: Sequence[int], canonical: int) -> list[int]:
    user = perm[canonical]
    return [p - (p > user) for i, p in enumerate(perm) if i != canonical]


def _reduction(kind: str, func, args, kwargs):
    x = args[0]
    if not isinstance(x, SpanTensor) or any(isinstance(a, torch.Tensor) for a in _flat(args[1:], kwargs)):
        return NotImplemented
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
    dtype = kwargs.get("dtype")
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) != 1):
        return NotImplemented
    dim = int(dim[0] if isinstance(dim, (list, tuple)) else dim)
    axis = _time_dim(x, dim)
    if axis == 0:
        return NotImplemented
    if axis > 1:  # a reduction inside each position
        options = {"keepdim": True, **({"dtype": dtype} if dtype is not None else {})}
        ref, block = func(x._ref, axis, **options), func(x._block, axis, **options)
        if keepdim:
            return make_span(ref, x._starts, block, x._perm, x._run)
        return make_span(ref.squeeze(axis), x._starts, block.squeeze(axis), _drop_dim(x._perm, axis), x._run)
    ref, block, starts, width = x._ref, x._block, x._starts, x._block.shape[1]
    stop = starts + width
    if kind in ("amax", "amin"):
        if ref.dtype.is_floating_point:
            extreme = float("-inf") if kind == "amax" else float("inf")
        else:
            info = torch.iinfo(ref.dtype) if ref.dtype != torch.bool else None
            if info is None:
                return NotImplemented
            extreme = info.min if kind == "amax" else info.max
        scan = torch.cummax if kind == "amax" else torch.cummin
        pick = torch.maximum if kind == "amax" else torch.minimum

        def scans():
            pad = torch.full_like(ref[:, :1], extreme)
            before = torch.cat([pad, scan(ref, 1).values], 1)[0]            # before[t]: extreme of ref[:t]
            after = torch.cat([scan(ref.flip(1), 1).values.flip(1), pad], 1)[0]  # after[t]: extreme of ref[t:]
            return before, after

        before, after = x._run.reference(("scan", kind), [ref], scans)  # every call of a run: the same ref
        inner = block.amax(1) if kind == "amax" else block.amin(1)
        out = pick(pick(before[starts], after[stop]), inner)
    else:
        exact = ref.dtype.is_floating_point or ref.dtype.is_complex
        acc = torch.float64 if exact else torch.int64
        out_dtype = func(ref[:, :1], 1, dtype=dtype).dtype if dtype is not None else func(ref[:, :1], 1).dtype
        sums = x._run.reference(("cumsum", acc), [ref], lambda: torch.cat(
            [torch.zeros_like(ref[:, :1], dtype=acc), ref.to(acc).cumsum(1)], 1)[0])
        out = sums[-1] - (sums[stop] - sums[starts]) + block.sum(1).to(acc)  # float32 within the window: fast
        if kind == "mean":
            out = out.double() / x.length
        out = out.to(out_dtype)
    rest = _drop_dim(x._perm, 1)
    if keepdim:
        out = out.unsqueeze(1)
        rest = list(x._perm)
    return out.permute(_inverse(rest))


def _view(func, args, kwargs):
    """Transposes, permutes and ``unsqueeze``: a new layout of the same span (both marked as aliased:
    an in-place write into either then gives the incremental path up)."""
    x = args[0]
    if not isinstance(x, SpanTensor):
        return NotImplemented
    view = _view_of(func, args, kwargs)
    x._aliased = view._aliased = True
    return view


def _view_of(func, args, kwargs):
    x = args[0]
    n, perm = len(x._perm), x._perm
    if func in _TRANSPOSES:
        a = int(args[1] if len(args) > 1 else kwargs.get("dim0")) % n
        b = int(args[2] if len(args) > 2 else kwargs.get("dim1")) % n
        swap = {a: b, b: a}
        return make_span(x._ref, x._starts, x._block, [swap.get(p, p) for p in perm], x._run)
    if func in _PERMUTES:
        dims = args[1:] if len(args) > 1 else kwargs.get("dims")
        if len(dims) == 1 and isinstance(dims[0], (list, tuple, torch.Size)):
            dims = dims[0]
        dims = [int(d) % n for d in dims]
        return make_span(x._ref, x._starts, x._block, [dims.index(p) for p in perm], x._run)
    d = int(args[1] if len(args) > 1 else kwargs.get("dim"))
    d = d % (n + 1)
    return make_span(x._ref.unsqueeze(-1), x._starts, x._block.unsqueeze(-1), [p + (p >= d) for p in perm] + [d],
                     x._run)


def _per_position(x: SpanTensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> SpanTensor:
    """``fn`` applied to each position on its own (it keeps the leading dims, may add trailing ones)."""
    inv = _inverse(x._perm)
    ref, block = fn(x._ref.permute(inv)), fn(x._block.permute(inv))
    n = len(x._perm)
    if ref.dim() < n:
        raise _Densify
    perm = list(x._perm) + list(range(n, ref.dim()))
    return make_span(ref.permute(perm), x._starts, block.permute(perm), perm, x._run)


def _linear(args, kwargs):
    x = args[0]
    rest = list(args[1:])
    if not isinstance(x, SpanTensor) or any(isinstance(a, SpanTensor) for a in _flat(rest, kwargs)):
        return NotImplemented
    if (len(x._perm) - 1) in x._perm[:2]:  # the last dim is batch or time: not a feature map
        return NotImplemented
    return _per_position(x, lambda t: F.linear(t, *rest, **kwargs))


def _embedding(args, kwargs):
    ids = args[0]
    if not isinstance(ids, SpanTensor) or any(isinstance(a, SpanTensor) for a in _flat(args[1:], kwargs)):
        return NotImplemented
    if kwargs.get("max_norm") is not None or (len(args) > 3 and args[3] is not None):
        return NotImplemented  # renormalises the weight in place
    return _per_position(ids, lambda t: F.embedding(t, *args[1:], **kwargs))


def _time_step(args):
    """``x[..., t, ...]`` with full slices elsewhere: each row's value at step ``t``."""
    x, key = args
    if not isinstance(x, SpanTensor) or isinstance(key, torch.Tensor):
        return NotImplemented
    key = key if isinstance(key, tuple) else (key,)
    n = len(x._perm)
    if sum(k is Ellipsis for k in key) > 1 or any(not (k is Ellipsis or k == slice(None) or type(k) is int)
                                                  for k in key):
        return NotImplemented
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (n - len(key) + 1) + key[i + 1:]
    ints = [(d, k) for d, k in enumerate(key) if type(k) is int]
    if len(key) > n or len(ints) != 1 or ints[0][0] != x._perm[1]:
        return NotImplemented
    t = ints[0][1] % x.length
    rel = t - x._starts
    inside = (rel >= 0) & (rel < x._block.shape[1])
    rows = torch.arange(x._block.shape[0])
    values = torch.where(_trail(inside, x._block[:, 0]), x._block[rows, rel.clamp(0, x._block.shape[1] - 1)],
                         x._ref[0, t])
    return values.permute(_inverse(_drop_dim(x._perm, 1)))


def _single(value) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise _Densify
        value = value[0]
    if not isinstance(value, int):
        raise _Densify
    return value


def _window_op(args, kwargs, kind: str):
    """``F.conv1d`` / ``F.max_pool1d`` on a ``(B, C, T)`` span: recompute the outputs the window reaches."""
    names = (("input", "weight", "bias", "stride", "padding", "dilation", "groups") if kind == "conv" else
             ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"))
    bound = dict(zip(names, args)) | kwargs
    x = bound["input"]
    if not isinstance(x, SpanTensor) or len(x._perm) != 3 or x._perm[:2] != (0, 2) or \
            any(isinstance(v, SpanTensor) for k, v in bound.items() if k != "input"):
        return NotImplemented
    if kind == "pool" and bound.get("return_indices"):
        return NotImplemented
    if kind == "conv":
        weight = bound["weight"]
        kernel, stride = weight.shape[-1], _single(bound.get("stride", 1))
        dilation, padding = _single(bound.get("dilation", 1)), bound.get("padding", 0)
        if padding == "valid":
            padding = 0
        elif padding == "same":
            padding = dilation * (kernel - 1) // 2
        padding = _single(padding)
        fill = 0.0

        def op(t, pad):
            return F.conv1d(t, weight, bound.get("bias"), stride, pad if pad else 0, dilation, bound.get("groups", 1))
    else:
        kernel = _single(bound["kernel_size"])
        stride = _single(bound.get("stride") or kernel)
        padding, dilation = _single(bound.get("padding", 0)), _single(bound.get("dilation", 1))
        fill = float("-inf") if x._ref.dtype.is_floating_point else None
        if fill is None:
            return NotImplemented
        ceil_mode = bool(bound.get("ceil_mode", False))

        def op(t, pad):
            if pad is None:
                return F.max_pool1d(t, kernel, stride, 0, dilation, False)
            return F.max_pool1d(t, kernel, stride, padding, dilation, ceil_mode)
    full = bound.get("padding", 0) if kind == "conv" else padding
    ref_out = op(x._ref.permute(0, 2, 1), full)  # (1, C', T')
    n_out = ref_out.shape[-1]
    reach = (kernel - 1) * dilation
    starts, stop = x._starts, x._starts + x._block.shape[1]
    lo = torch.div(starts + padding - reach + stride - 1, stride, rounding_mode="floor").clamp(0, n_out - 1)
    hi = (torch.div(stop - 1 + padding, stride, rounding_mode="floor") + 1).clamp(1, n_out)
    out_starts, width = _fit(lo, torch.maximum(hi, lo + 1), n_out)
    inputs = x.local(out_starts[:, None] * stride - padding + torch.arange((width - 1) * stride + reach + 1), fill)
    block = op(inputs.permute(0, 2, 1), 0 if kind == "conv" else None)  # (B, C', width)
    return make_span(ref_out.permute(0, 2, 1), out_starts, block.permute(0, 2, 1), (0, 2, 1), x._run)


# ------------------------------------------------------------------------------------- recurrences

def _lstm_step(xp, h, c, w_hh_t, b_hh):
    """One LSTM step (PyTorch's gate order i, f, g, o; ``xp`` holds ``x W_ih^T + b_ih + b_hh``)."""
    gates = torch.addmm(xp, h, w_hh_t)
    hidden = h.shape[1]
    act = torch.sigmoid(gates)
    c = torch.addcmul(act[:, hidden:2 * hidden] * c, act[:, :hidden], torch.tanh(gates[:, 2 * hidden:3 * hidden]))
    return act[:, 3 * hidden:] * torch.tanh(c), c


def _gru_step(xp, h, c, w_hh_t, b_hh):
    """One GRU step (gate order r, z, n; ``xp`` holds ``x W_ih^T + b_ih``)."""
    gh = torch.addmm(b_hh, h, w_hh_t) if b_hh is not None else h @ w_hh_t
    hidden = h.shape[1]
    rz = torch.sigmoid(xp[:, :2 * hidden] + gh[:, :2 * hidden])
    n = torch.tanh(torch.addcmul(xp[:, 2 * hidden:], rz[:, :hidden], gh[:, 2 * hidden:]))
    return torch.lerp(n, h, rz[:, hidden:]), None


CHECK_EVERY = 4  # steps between two comparisons with the reference state (a row may run up to 3 steps longer)


def _trajectory(step, xp: torch.Tensor, h: torch.Tensor, c, w_hh_t, b_hh):
    """States after each step of one row: ``(T, H)`` for h and c (c None for the GRU)."""
    hs, cs = [], []
    for t in range(xp.shape[0]):
        h, c = step(xp[t:t + 1], h, c, w_hh_t, b_hh)
        hs.append(h)
        cs.append(c)
    return torch.cat(hs), (torch.cat(cs) if c is not None else None)


def _direction(kind: str, run: SpanRun, x_ref, starts, block, weights, h0, c0):
    """One direction of one layer, forward in time: the reference output ``(T, H)``, the rows' changed
    outputs ``(rows, steps after the row's start, h)``, the steps each row ran, and the final states."""
    w_ih, w_hh, b_ih, b_hh = weights
    w_hh_t = w_hh.t()
    step = _lstm_step if kind == "lstm" else _gru_step
    fold = b_hh if (kind == "lstm" and b_hh is not None) else None  # the LSTM's b_hh joins the input projection

    def project(x):
        xp = F.linear(x, w_ih, b_ih)
        return xp + fold if fold is not None else xp

    def reference():
        xp = project(x_ref)
        hs, cs = _trajectory(step, xp, h0[None], None if c0 is None else c0[None], w_hh_t, b_hh)
        return xp, hs, cs

    key = (kind, *(id(w) for w in weights if w is not None))
    xp_ref, ref_h, ref_c = run.reference(key, [x_ref, h0] + ([c0] if c0 is not None else []), reference)
    n_rows, width = block.shape[:2]
    length, hidden = ref_h.shape
    xp_block = project(block)
    before = (starts - 1).clamp(min=0)
    at_start = (starts == 0)[:, None]
    h = torch.where(at_start, h0, ref_h[before])
    c = torch.where(at_start, c0, ref_c[before]) if c0 is not None else None
    tol = run.state_tolerance
    steps = torch.zeros(n_rows, dtype=torch.long)
    final_h = ref_h[-1].expand(n_rows, hidden).clone()
    final_c = ref_c[-1].expand(n_rows, hidden).clone() if c0 is not None else None
    rows, row_starts = torch.arange(n_rows), starts
    left = length - starts  # steps until the text's end
    next_end = int(left.min())
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows, h) after each step
    k = 0
    while rows.numel():
        xp = xp_block[:, k] if k < width else xp_ref.index_select(0, row_starts + k)
        h, c = step(xp, h, c, w_hh_t, b_hh)
        outputs.append((rows, h))
        k += 1
        done = None
        if k == next_end:
            done = left[rows] == k
            final_h[rows[done]] = h[done]
            if c is not None:
                final_c[rows[done]] = c[done]
        if tol > 0 and k >= width and k % CHECK_EVERY == 0:
            t = row_starts + (k - 1)
            near = (h - ref_h[t]).abs().amax(1) <= tol
            if c is not None:
                near &= (c - ref_c[t]).abs().amax(1) <= tol
            done = near if done is None else done | near
        if done is not None and bool(done.any()):
            steps[rows[done]] = k
            keep = ~done
            rows, row_starts, h, xp_block = rows[keep], row_starts[keep], h[keep], xp_block[keep]
            if c is not None:
                c = c[keep]
            if rows.numel():
                next_end = int(left[rows].min())
    changed_rows = torch.cat([r for r, _ in outputs])
    changed_steps = torch.repeat_interleave(torch.arange(len(outputs)), torch.tensor([r.shape[0] for r, _ in outputs]))
    return ref_h, (changed_rows, changed_steps, torch.cat([v for _, v in outputs])), steps, final_h, final_c


def _recurrent(kind: str, args):
    if len(args) != 9 or not isinstance(args[3], bool):  # packed sequences: (data, batch_sizes, hx, params, ...)
        return NotImplemented
    x, hx, params, has_biases, n_layers, dropout, train, bidirectional, batch_first = args
    hx = list(hx) if kind == "lstm" else [hx]
    if not isinstance(x, SpanTensor) or any(isinstance(t, SpanTensor) for t in [*hx, *params]):
        return NotImplemented
    if (train and dropout > 0) or x.dim() != 3 or x._perm != ((0, 1, 2) if batch_first else (1, 0, 2)):
        return NotImplemented
    n_dirs, per = (2 if bidirectional else 1), (4 if has_biases else 2)
    if len(params) != n_layers * n_dirs * per:  # e.g. an LSTM with proj_size
        return NotImplemented
    if any(not bool((s == s[:, :1]).all()) for s in hx):
        return NotImplemented
    run, length = x._run, x.length
    x_ref, starts, block = x._ref[0], x._starts, x._block
    finals: list[list[torch.Tensor]] = [[] for _ in hx]
    for layer in range(n_layers):
        refs, changes, lo, hi = [], [], [], []
        width = block.shape[1]
        for d in range(n_dirs):
            j = (layer * n_dirs + d) * per
            weights = (params[j], params[j + 1], *(params[j + 2:j + 4] if has_biases else (None, None)))
            init = [s[layer * n_dirs + d, 0] for s in hx]
            c0 = init[1] if kind == "lstm" else None
            if d == 0:
                ref_h, changed, steps, f_h, f_c = _direction(kind, run, x_ref, starts, block, weights, init[0], c0)
                rows, k, values = changed
                changes.append((rows, starts[rows] + k, values))
                lo.append(starts)
                hi.append(starts + steps)
            else:  # the same code on the reversed text
                rev_starts = length - starts - width
                ref_h, changed, steps, f_h, f_c = _direction(kind, run, x_ref.flip(0), rev_starts, block.flip(1),
                                                             weights, init[0], c0)
                ref_h = ref_h.flip(0)
                rows, k, values = changed
                changes.append((rows, length - 1 - rev_starts[rows] - k, values))
                lo.append(length - rev_starts - steps)
                hi.append(length - rev_starts)
            refs.append(ref_h)
            finals[0].append(f_h)
            if kind == "lstm":
                finals[1].append(f_c)
        x_ref = torch.cat(refs, -1)
        starts, out_width = _fit(torch.stack(lo).amin(0), torch.stack(hi).amax(0), length)
        block = _windows(x_ref, starts, out_width)
        flat = block.view(-1, block.shape[-1])
        for d, (rows, positions, values) in enumerate(changes):
            hidden = values.shape[1]
            flat[:, d * hidden:(d + 1) * hidden].index_copy_(0, rows * out_width + positions - starts[rows], values)
    output = make_span(x_ref[None], starts, block, x._perm, run)
    states = tuple(torch.stack(f) for f in finals)
    return (output, *states)


# ---------------------------------------------------------------------------------- the model call

def span_layers(module: nn.Module) -> set[str]:
    """The kinds of layers in ``module`` the span rules make cheap: "recurrent" (LSTM, GRU),
    "convolution" (Conv1d)."""
    kinds = {nn.LSTM: "recurrent", nn.GRU: "recurrent", nn.Conv1d: "convolution"}
    return {kind for m in module.modules() for cls, kind in kinds.items() if isinstance(m, cls)}


def span_logits(model, token_ids: torch.Tensor, keep: np.ndarray, mask: str | int, pad_vector: torch.Tensor | None,
                run: SpanRun) -> torch.Tensor:
    """Logits ``(B, C)`` of ``model`` on ``token_ids (T,)`` under keep-masks ``(B, T)`` whose masked
    tokens form one run per row; ``mask``: ``"pad"`` (the pad embedding, ``pad_vector``), ``"unk"`` or a
    token id. Raises ``Abandon`` where the module writes into a span in place."""
    keep_t = torch.from_numpy(np.ascontiguousarray(keep))
    masked = ~keep_t
    n_tokens = keep_t.shape[1]
    first = masked.to(torch.int8).argmax(1)
    last = n_tokens - 1 - masked.flip(1).to(torch.int8).argmax(1)
    starts, width = _fit(first, last + 1, n_tokens)
    positions = _positions(starts, width)
    kept = keep_t[torch.arange(keep_t.shape[0])[:, None], positions]
    window_ids = token_ids[positions]
    if mask == "pad":
        ids = make_span(token_ids[None], starts, window_ids, (0, 1), run)
        x = embed(model, token_ids[None])
        block = torch.where(kept[..., None], x[0][positions], pad_vector)
        embeddings = make_span(x, starts, block, (0, 1, 2), run)
        return forward_at_embeddings(model, ids, embeddings)
    replacement = model.unk_id if mask == "unk" else int(mask)
    ids = make_span(token_ids[None], starts, torch.where(kept, window_ids, torch.as_tensor(replacement)), (0, 1), run)
    return model.logits(ids)


def single_runs(keep: np.ndarray) -> np.ndarray:
    """Per keep-mask row: whether its masked tokens form one run (at least one token)."""
    masked = ~np.asarray(keep, dtype=bool)
    count = masked.sum(1)
    first = masked.argmax(1)
    last = masked.shape[1] - 1 - masked[:, ::-1].argmax(1)
    return (count > 0) & (count == last - first + 1)
