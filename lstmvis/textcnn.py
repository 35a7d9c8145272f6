"""Text-CNN filters: the top-k input n-grams of every Conv1d filter over a corpus.

The text analogue of Zeiler and Fergus's top-9 image patches: for each filter of each Conv1d layer,
the corpus positions where its (pre-activation) output is largest, each shown as the n-gram of
input tokens under that position's receptive field. Receptive fields are mapped back through the
stacked conv and pool layers exactly: a layer position ``p`` sees input tokens
``[offset + p * jump, offset + p * jump + size)`` clipped to the text, where each conv or pool
(kernel ``K``, padding ``P``, stride ``S``, dilation ``D``) maps ``size += (K - 1) * D * jump``,
``offset -= P * jump``, ``jump *= S``. Any module works whose forward pass runs its Conv1d and
1-d max/avg pools (modules or functional) in one chain over the tokens: a probe pass records
them (``window_ops``); a layout it cannot map raises ``UnsupportedLayout`` naming the layer.

    report = lstmvis.top_ngrams(data.load_model("sentiment-cnn"), texts, k=9)
    report.filters[0].ngrams[0].text      # e.g. 'a gorgeous ,'

Texts run in batches of equal length, so every activation is the one the text gets alone (a
padded batch would change the activations next to the padding after a pool layer).
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ReceptiveField:
    """Input tokens seen by position ``p`` of a layer: ``[offset + p * jump, ... + size)``."""

    jump: int
    offset: int
    size: int

    def tokens(self, position: int, n_tokens: int) -> tuple[int, int]:
        start = self.offset + position * self.jump
        return max(0, start), min(n_tokens, start + self.size)


class UnsupportedLayout(TypeError):
    """The module's conv/pool layout cannot be mapped to receptive fields (the message says why)."""


@dataclass(frozen=True)
class WindowOp:
    """One sliding-window op on the time axis (a conv or a pool) as a probe pass met it."""

    kind: str  # "conv", "max_pool" or "avg_pool"
    layer: str  # the Conv1d's module name; "" for a pool
    kernel: int
    stride: int
    padding: int
    dilation: int
    ceil_mode: bool

    def step(self, rf: ReceptiveField) -> ReceptiveField:
        """The field of this op's output positions from its input's field."""
        return ReceptiveField(rf.jump * self.stride, rf.offset - self.padding * rf.jump,
                              rf.size + (self.kernel - 1) * self.dilation * rf.jump)

    def length(self, n: int) -> int:
        """Output positions for ``n`` input positions (PyTorch's formula, ``ceil_mode`` included)."""
        span = n + 2 * self.padding - self.dilation * (self.kernel - 1) - 1
        if not self.ceil_mode:
            return span // self.stride + 1
        out = -(-span // self.stride) + 1
        return out - 1 if (out - 1) * self.stride >= n + self.padding else out  # a window must start inside


def _first(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


_POOLS = {"max_pool1d": "max_pool", "max_pool1d_with_indices": "max_pool", "avg_pool1d": "avg_pool"}
_SUPPORTED = ("nn.Conv1d (integer padding), nn.MaxPool1d, nn.AvgPool1d, F.max_pool1d and F.avg_pool1d in one chain, "
              "with elementwise layers (activations, dropout, masks, normalisation over channels) between them")


class _Probe(torch.overrides.TorchFunctionMode):
    """Records every conv1d / 1-d pool call of one forward pass, with its input and output lengths."""

    def __init__(self, conv_names: dict[int, str]):
        super().__init__()
        self.conv_names, self.calls = conv_names, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "conv1d" or name in _POOLS:
            self.calls.append((self._op(name, args, kwargs), args[0].shape[-1], _tensor(out).shape[-1]))
        return out

    def _op(self, name: str, args, kwargs) -> WindowOp:
        def arg(i, key, default):
            return args[i] if len(args) > i else kwargs.get(key, default)

        if name == "conv1d":
            padding = arg(4, "padding", 0)
            layer = self.conv_names.get(id(args[1]))
            if layer is None:
                raise UnsupportedLayout(f"a functional conv1d with a weight of no nn.Conv1d: {_SUPPORTED}")
            if isinstance(padding, str):
                raise UnsupportedLayout(f"Conv1d {layer!r} has padding={padding!r}: receptive fields need integer padding")
            return WindowOp("conv", layer, args[1].shape[-1], _first(arg(3, "stride", 1)), _first(padding),
                            _first(arg(5, "dilation", 1)), False)
        kernel = _first(arg(1, "kernel_size", 1))
        stride = arg(2, "stride", None)
        stride = kernel if stride is None or stride == [] or stride == () else _first(stride)
        if name == "avg_pool1d":
            return WindowOp("avg_pool", "", kernel, stride, _first(arg(3, "padding", 0)), 1, bool(arg(4, "ceil_mode", False)))
        return WindowOp("max_pool", "", kernel, stride, _first(arg(3, "padding", 0)), _first(arg(4, "dilation", 1)),
                        bool(arg(5, "ceil_mode", False)))


def _tensor(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _trace(module: nn.Module, n_tokens: int, token_id: int) -> tuple[list[tuple[WindowOp, int, int]], dict]:
    """The window ops of one forward pass on a probe text of ``n_tokens`` copies of ``token_id``, and the
    time length each leaf module saw in and gave out (to name a layer that changed it)."""
    conv_names = {id(m.weight): n for n, m in module.named_modules() if isinstance(m, nn.Conv1d)}
    seen, handles = {}, []
    for name, sub in module.named_modules():
        if not list(sub.children()):
            def hook(m, args, output, name=name):
                if args and isinstance(args[0], torch.Tensor) and isinstance(_tensor(output), torch.Tensor):
                    seen.setdefault(name, (type(m).__name__, tuple(args[0].shape), tuple(_tensor(output).shape)))
            handles.append(sub.register_forward_hook(hook))
    probe = _Probe(conv_names)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), probe:
            module(torch.full((1, n_tokens), int(token_id), dtype=torch.long))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return probe.calls, seen


def window_ops(module: nn.Module, token_id: int = 1) -> list[WindowOp]:
    """The chain of Conv1d and 1-d pool ops that ``module``'s forward pass runs over the tokens, in order.

    Found by running two probe texts (of 37 and 53 tokens) through the module, recording every
    ``conv1d``, ``max_pool1d`` and ``avg_pool1d`` call (modules or functional) and checking that each
    op's input is the previous op's output on the time axis (the first op's: the text). Anything else
    that changes the time axis between them raises ``UnsupportedLayout`` (a ``TypeError``) that names it.
    """
    traces = [_trace(module, n, token_id) for n in (37, 53)]
    ops = [op for op, _, _ in traces[0][0]]
    if [op for op, _, _ in traces[1][0]] != ops:
        raise UnsupportedLayout(f"{type(module).__name__} runs different conv/pool layers for texts of different lengths: "
                         f"receptive fields are mapped for {_SUPPORTED}")
    if not any(op.kind == "conv" for op in ops):
        raise UnsupportedLayout(f"{type(module).__name__} runs no Conv1d on its tokens: receptive fields are mapped for "
                         f"{_SUPPORTED}")
    for (calls, seen), n_tokens in zip(traces, (37, 53)):
        expected, previous = n_tokens, "the text"
        for op, n_in, n_out in calls:
            if n_in != expected:
                culprits = [f"{name} ({kind}: {list(s_in)} -> {list(s_out)})" for name, (kind, s_in, s_out) in seen.items()
                            if expected in s_in and expected not in s_out]
                where = op.layer or f"a {op.kind.replace('_', ' ')} (kernel {op.kernel})"
                raise UnsupportedLayout(
                    f"{type(module).__name__}: {where} gets {n_in} time steps where {previous} gives {expected}: a layer "
                    f"between them changes the time axis in a way receptive fields cannot follow"
                    f"{' (' + ', '.join(culprits) + ')' if culprits else ''}. Supported: {_SUPPORTED}")
            if op.length(n_in) != n_out:
                raise UnsupportedLayout(f"{type(module).__name__}: {op} gives {n_out} positions for {n_in}, not "
                                 f"{op.length(n_in)}: its layout is not supported ({_SUPPORTED})")
            expected, previous = n_out, op.layer or f"the {op.kind.replace('_', ' ')}"
    return ops


def conv_stack(module: nn.Module, token_id: int = 1) -> list[tuple[str, nn.Conv1d]]:
    """The Conv1d layers ``module`` runs over its tokens, in order, with their names
    (``UnsupportedLayout``, a ``TypeError``, where ``window_ops`` cannot map them)."""
    convs = dict(module.named_modules())
    return [(op.layer, convs[op.layer]) for op in window_ops(module, token_id) if op.kind == "conv"]


def receptive_fields(module: nn.Module, token_id: int = 1) -> dict[str, ReceptiveField]:
    """Receptive field of every Conv1d layer's output positions, in input tokens, by module name.

    Works for any stack of ``nn.Conv1d`` and 1-d max/avg pools (modules or ``F.max_pool1d`` /
    ``F.avg_pool1d``) that the module runs in one chain over its tokens (``window_ops``): each op
    (kernel ``K``, stride ``S``, padding ``P``, dilation ``D``) maps ``size += (K - 1) * D * jump``,
    ``offset -= P * jump``, ``jump *= S``; elementwise layers (ReLU, dropout) do not widen the field.
    ``token_id``: the id the probe texts are made of (any id that is not padding).
    """
    return _fields(window_ops(module, token_id))


def _fields(ops: Sequence[WindowOp]) -> dict[str, ReceptiveField]:
    rf, out = ReceptiveField(1, 0, 1), {}
    for op in ops:
        rf = op.step(rf)
        if op.kind == "conv":
            out[op.layer] = rf
    return out


def _valid_lengths(ops: Sequence[WindowOp], n_tokens: int) -> dict[str, int]:
    """Number of output positions of each conv layer for a text of ``n_tokens``."""
    length, out = n_tokens, {}
    for op in ops:
        length = op.length(length)
        if op.kind == "conv":
            out[op.layer] = length
    return out


@dataclass
class NgramHit:
    """One occurrence: the filter's activation at ``position`` of text ``text_index``."""

    activation: float
    text_index: int
    position: int
    start: int
    stop: int
    tokens: list[str]

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def to_dict(self) -> dict:
        return {"activation": self.activation, "text_index": self.text_index, "position": self.position,
                "start": self.start, "stop": self.stop, "tokens": self.tokens}


@dataclass
class FilterNgrams:
    """The top n-grams of one filter."""

    layer: str
    filter: int
    ngrams: list[NgramHit]

    def to_dict(self) -> dict:
        return {"layer": self.layer, "filter": self.filter, "ngrams": [h.to_dict() for h in self.ngrams]}


@dataclass
class TextCNNFilters:
    """Top n-grams of every filter of every Conv1d layer (``filters``), with the layers' fields."""

    fields: dict[str, ReceptiveField]
    filters: list[FilterNgrams] = field(default_factory=list)
    n_texts: int = 0

    def of(self, layer: str, filter: int) -> FilterNgrams:
        for f in self.filters:
            if f.layer == layer and f.filter == filter:
                return f
        raise KeyError(f"no filter {filter} in layer {layer!r}: layers are {', '.join(self.fields)}")

    def to_dict(self) -> dict:
        return {"n_texts": self.n_texts,
                "fields": {k: {"jump": v.jump, "offset": v.offset, "size": v.size} for k, v in self.fields.items()},
                "filters": [f.to_dict() for f in self.filters]}

    def _repr_html_(self, max_filters: int = 24) -> str:
        rows = []
        for f in self.filters[:max_filters]:
            grams = "; ".join(f"<code>{html.escape(h.text)}</code> ({h.activation:.2f})" for h in f.ngrams[:5])
            rows.append(f"<tr><td>{html.escape(f.layer)}</td><td>{f.filter}</td><td>{grams}</td></tr>")
        more = f"<p>... {len(self.filters) - max_filters} more filters</p>" if len(self.filters) > max_filters else ""
        return (f"<div><b>Top n-grams of {len(self.filters)} filters</b> over {self.n_texts:,} texts"
                f"<table><tr><th>layer</th><th>filter</th><th>top n-grams</th></tr>{''.join(rows)}</table>{more}</div>")


def top_ngrams(model, texts: Sequence[str], k: int = 9, layers: Sequence[str] | None = None,
               batch_size: int = 256, unique: bool = True, progress: bool | None = None) -> TextCNNFilters:
    """For every filter of every Conv1d layer (or of ``layers``), the ``k`` highest activations over
    ``texts`` with the input n-gram under each one's receptive field.

    ``model``: a ``textexplain.TextModel`` around a module that runs a chain of Conv1d and 1-d pool
    layers over its tokens (``window_ops``), e.g. ``sentiment-cnn`` or an own ``nn.Sequential`` stack.
    ``unique``: keep each distinct n-gram once per filter (its highest activation), as top-9 patch
    grids show distinct patches. Activations are the conv outputs before the ReLU.
    """
    from tqdm.auto import tqdm

    from .capture import Recorder

    module = getattr(model, "module", None)
    if module is None or not hasattr(model, "tokenize"):
        raise TypeError(f"top_ngrams needs a textexplain.TextModel (with .module and .tokenize), got "
                        f"{type(model).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    probe_id = model.unk_id if model.unk_id != model.pad_id else model.pad_id + 1
    ops = window_ops(module, probe_id)
    fields = _fields(ops)
    names = list(fields) if layers is None else list(layers)
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise ValueError(f"unknown conv layers {unknown}: the model has {', '.join(fields)}")
    token_lists = [model.tokenize(t) for t in texts]
    ids = [model.vocab.encode(toks) for toks in token_lists]
    by_length: dict[int, list[int]] = {}
    for i, toks in enumerate(ids):
        if toks:
            by_length.setdefault(len(toks), []).append(i)
    keep = k * 8 if unique else k  # spare candidates so that k distinct n-grams remain after dedup
    best: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # layer -> (values, text, position) (keep, C)
    batches = [(n, group[a:a + batch_size]) for n, group in sorted(by_length.items())
               for a in range(0, len(group), batch_size)]
    was_training = module.training
    module.eval()
    try:
        for n_tok, group in tqdm(batches, desc="conv filters", unit="batch",
                                 disable=(len(batches) < 20) if progress is None else not progress):
            recorder = Recorder(module, kinds="conv", modules=names)
            with torch.no_grad(), recorder:
                module(torch.tensor([ids[i] for i in group], dtype=torch.long))
            lengths = _valid_lengths(ops, n_tok)
            for name in names:
                act = recorder.states[f"{name}.conv"][:, :lengths[name]].numpy()  # (B, T_l, C)
                b, t_l, c = act.shape
                flat = act.reshape(b * t_l, c)
                text = np.repeat(np.asarray(group), t_l)
                pos = np.tile(np.arange(t_l), b)
                text, pos = np.broadcast_to(text[:, None], flat.shape), np.broadcast_to(pos[:, None], flat.shape)
                if name in best:
                    old_v, old_t, old_p = best[name]
                    flat, text, pos = (np.concatenate(pair) for pair in ((old_v, flat), (old_t, text), (old_p, pos)))
                best[name] = _top_rows(flat, text, pos, keep)
    finally:
        module.train(was_training)
    report = TextCNNFilters(fields, n_texts=len(texts))
    for name in names:
        if name not in best:
            continue
        values, text, pos = best[name]
        for f in range(values.shape[1]):
            order = np.argsort(-values[:, f], kind="stable")
            hits, seen = [], set()
            for r in order:
                if not np.isfinite(values[r, f]):
                    continue
                ti, p = int(text[r, f]), int(pos[r, f])
                a, b = fields[name].tokens(p, len(token_lists[ti]))
                gram = tuple(token_lists[ti][a:b])
                if unique and gram in seen:
                    continue
                seen.add(gram)
                hits.append(NgramHit(float(values[r, f]), ti, p, a, b, list(gram)))
                if len(hits) == k:
                    break
            report.filters.append(FilterNgrams(name, f, hits))
    return report


def _top_rows(values: np.ndarray, text: np.ndarray, pos: np.ndarray, keep: int):
    """Per column, the ``keep`` largest values with their text and position: arrays ``(keep, C)``."""
    if len(values) > keep:
        idx = np.argpartition(-values, keep - 1, axis=0)[:keep]
    else:
        idx = np.broadcast_to(np.arange(len(values))[:, None], values.shape)
    cols = np.arange(values.shape[1])[None, :]
    return (np.ascontiguousarray(values[idx, cols]), np.ascontiguousarray(text[idx, cols]),
            np.ascontiguousarray(pos[idx, cols]))


@dataclass
class FilterReconstruction:
    """Zeiler-Fergus deconvnet for one text-CNN filter at one position: ``embedding`` (T, E) the
    reconstruction in embedding space, ``per_token`` (T,) its sum over embedding dimensions, and
    ``share`` (T,) its dot product with each token's embedding (for one conv layer these add up to
    ``activation * (activation - bias)``: each token's part of the filter's response)."""

    tokens: list[str]
    layer: str
    filter: int
    position: int
    activation: float
    embedding: np.ndarray
    per_token: np.ndarray
    share: np.ndarray

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "layer": self.layer, "filter": self.filter, "position": self.position,
                "activation": self.activation, "per_token": self.per_token.tolist(), "share": self.share.tolist()}


def filter_reconstruction(model, text: str, layer: str, filter: int, position: int) -> FilterReconstruction:
    """Project filter ``filter`` of Conv1d ``layer`` at output ``position`` back to the embeddings of
    ``text`` (Zeiler & Fergus's deconvnet): every other unit zeroed, the (rectified) activation sent
    back through transposed filters, max-pool switches and rectified ReLUs (the deconvnet rule of
    ``textexplain.image.guided``). Only the embedding output gets a gradient; hooks are removed on exit.
    """
    from textexplain.base import substituted_embeddings
    from textexplain.image.guided import RectifierRules

    module = getattr(model, "module", None)
    if module is None or not hasattr(model, "tokenize"):
        raise TypeError(f"filter_reconstruction needs a textexplain.TextModel, got {type(model).__name__}")
    convs = dict(conv_stack(module, model.unk_id if model.unk_id != model.pad_id else model.pad_id + 1))
    if layer not in convs:
        raise ValueError(f"unknown conv layer {layer!r}: the model has {', '.join(convs)}")
    if isinstance(filter, bool) or not 0 <= filter < convs[layer].out_channels:
        raise ValueError(f"filter must be in 0..{convs[layer].out_channels - 1}, got {filter!r}")
    tokens = model.tokenize(text)
    if not tokens:
        raise ValueError("the text has no tokens")
    ids = torch.tensor([model.vocab.encode(tokens)], dtype=torch.long)
    seen: list[torch.Tensor] = []
    handle = convs[layer].register_forward_hook(lambda m, args, out: seen.append(out))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            emb = model.embedding(ids).detach()
        emb.requires_grad_(True)
        with substituted_embeddings(model, emb), torch.enable_grad(), RectifierRules("deconvnet"):
            module(ids)
    finally:
        handle.remove()
        module.train(was_training)
    act = seen[0]
    if not 0 <= position < act.shape[-1]:
        raise ValueError(f"position must be in 0..{act.shape[-1] - 1} for this text, got {position!r}")
    signal = torch.zeros_like(act)
    value = float(act[0, filter, position].detach())
    signal[0, filter, position] = max(value, 0.0)
    (rec,) = torch.autograd.grad(act, emb, grad_outputs=signal)
    rec = rec[0, :len(tokens)].detach().double()
    share = (rec * emb[0, :len(tokens)].detach().double()).sum(-1)
    return FilterReconstruction(list(tokens), layer, int(filter), int(position), value, rec.numpy(),
                                rec.sum(-1).numpy(), share.numpy())
