"""Text-CNN filters: the top-k input n-grams of every Conv1d filter over a corpus.

The text analogue of Zeiler and Fergus's top-9 image patches: for each filter of each Conv1d layer,
the corpus positions where its (pre-activation) output is largest, each shown as the n-gram of
input tokens under that position's receptive field. Receptive fields are mapped back through the
stacked conv and pool layers exactly: a layer position ``p`` sees input tokens
``[offset + p * jump, offset + p * jump + size)`` clipped to the text, where each conv
(kernel ``K``, padding ``P``, stride ``S``, dilation ``D``) maps ``size += (K - 1) * D * jump``,
``offset -= P * jump``, ``jump *= S`` and each max pool (kernel ``K``, stride ``S``)
``size += (K - 1) * jump``, ``jump *= S``.

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


def _conv_step(rf: ReceptiveField, conv: nn.Conv1d) -> ReceptiveField:
    if isinstance(conv.padding, str):
        raise ValueError(f"Conv1d padding={conv.padding!r} is not supported: use integer padding")
    k, d, s, p = conv.kernel_size[0], conv.dilation[0], conv.stride[0], conv.padding[0]
    return ReceptiveField(rf.jump * s, rf.offset - p * rf.jump, rf.size + (k - 1) * d * rf.jump)


def _pool_step(rf: ReceptiveField, kernel: int, stride: int) -> ReceptiveField:
    return ReceptiveField(rf.jump * stride, rf.offset, rf.size + (kernel - 1) * rf.jump)


def conv_stack(module: nn.Module) -> list[tuple[str, nn.Conv1d]]:
    """The Conv1d layers of a ``data.architectures.TextCNN``-style module, in order, with their names."""
    convs = getattr(module, "convs", None)
    if not isinstance(convs, nn.ModuleList) or not all(isinstance(c, nn.Conv1d) for c in convs):
        raise TypeError(f"{type(module).__name__} is not a TextCNN-style module: it needs .convs (a ModuleList "
                        "of Conv1d) with a max pool of .pool between consecutive convs")
    return [(f"convs.{i}", c) for i, c in enumerate(convs)]


def receptive_fields(module: nn.Module) -> dict[str, ReceptiveField]:
    """Receptive field of every Conv1d layer's output positions, in input tokens.

    For ``TextCNN``: conv -> ReLU -> max pool (``.pool``, stride ``.pool``) per block, then the
    last conv. (ReLU is elementwise: it does not widen the field.)
    """
    layers = conv_stack(module)
    pool = int(getattr(module, "pool", 1))
    rf, out = ReceptiveField(1, 0, 1), {}
    for i, (name, conv) in enumerate(layers):
        rf = _conv_step(rf, conv)
        out[name] = rf
        if i < len(layers) - 1:
            rf = _pool_step(rf, pool, pool)
    return out


def _valid_lengths(module: nn.Module, n_tokens: int) -> dict[str, int]:
    """Number of output positions of each conv layer for a text of ``n_tokens``."""
    layers = conv_stack(module)
    pool = int(getattr(module, "pool", 1))
    length, out = n_tokens, {}
    for i, (name, conv) in enumerate(layers):
        k, d, s, p = conv.kernel_size[0], conv.dilation[0], conv.stride[0], conv.padding[0]
        length = (length + 2 * p - d * (k - 1) - 1) // s + 1
        out[name] = length
        if i < len(layers) - 1:
            length = -(-max(length - pool, 0) // pool) + 1  # max pool, ceil_mode=True
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

    ``model``: a ``textexplain.TextModel`` around a ``TextCNN``-style module (e.g. ``sentiment-cnn``).
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
    fields = receptive_fields(module)
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
            lengths = _valid_lengths(module, n_tok)
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
