"""Interpretable-cell discovery (Karpathy et al. 2015): rank cells against hypotheses, show their
top activating contexts, gate saturation, and explain one cell's activation.

    ranking = lstmvis.rank_cells(store, "rnn.l1.c", lstmvis.hypotheses.inside_quotes)
    ranking.best                     # {'cell': 137, 'score': 0.98, 'direction': 1, ...}
    lstmvis.top_contexts(store, "rnn.l1.c", 137)
    lstmvis.gate_saturation(store).plot()
    lstmvis.explain_cell(lm, text, "rnn.l1.c", 137, step=-1)   # a textexplain.Explanation

Binary hypotheses rank by AUROC (Mann-Whitney, ties count half), scalar ones by Pearson (or
Spearman) correlation. Both are signed: a cell that is *low* inside strings (AUROC 0.02) tracks
them as well as one that is high (0.98); ``strength`` is ``|2 AUROC - 1|`` or ``|r|`` and
``direction`` the sign. Cell columns are read from the match index (``lstmvis.index``), built
once per source and shared with select/match.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import hypotheses as hyp
from .index import MatchIndex, _check_source, float_keys, threshold_keys

METHODS = ("auroc", "pearson", "spearman")


# ---------------------------------------------------------------------------- statistics
def average_ranks(keys: np.ndarray) -> np.ndarray:
    """1-based ranks with ties averaged (like ``scipy.stats.rankdata``), for sortable integer keys.
    16-bit keys rank by counting (no sort)."""
    keys = np.asarray(keys)
    if keys.dtype == np.uint16:
        hist = np.bincount(keys, minlength=1 << 16)
        inverse = keys
    else:
        _, inverse, hist = np.unique(keys, return_inverse=True, return_counts=True)
    below = np.cumsum(hist) - hist
    return (below + (hist + 1) / 2.0)[inverse]


def auroc_from_ranks(ranks: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of a score whose average ranks are ``ranks`` for the boolean labels ``positive``."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _pearson(x: np.ndarray, y_centred: np.ndarray, y_norm: float) -> float:
    xc = x - x.mean()
    denom = np.sqrt(xc @ xc) * y_norm
    return float(xc @ y_centred / denom) if denom > 0 else 0.0


# ---------------------------------------------------------------------------- ranking
@dataclass
class CellRanking:
    """Every cell of one source scored against one hypothesis.

    ``scores[c]`` is the metric of cell ``c`` (AUROC, or a correlation); ``order`` lists cells from
    the strongest (``strength``: ``|2 AUROC - 1|`` or ``|r|``) to the weakest.
    """

    source: str
    hypothesis: str
    kind: str
    metric: str
    scores: np.ndarray
    n_tokens: int
    positive_rate: float | None = None
    pearson: np.ndarray | None = None
    spearman: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def strength(self) -> np.ndarray:
        return np.abs(2 * self.scores - 1) if self.metric == "auroc" else np.abs(self.scores)

    @property
    def direction(self) -> np.ndarray:
        centre = 0.5 if self.metric == "auroc" else 0.0
        return np.sign(self.scores - centre).astype(int)

    @property
    def order(self) -> np.ndarray:
        return np.lexsort((np.arange(len(self.scores)), -self.strength))

    def top(self, k: int = 10) -> list[dict]:
        """The ``k`` strongest cells: ``cell``, ``score``, ``strength``, ``direction`` (+ both correlations)."""
        rows = []
        for rank, cell in enumerate(self.order[:k], 1):
            row = {"rank": rank, "cell": int(cell), "score": float(self.scores[cell]),
                   "strength": float(self.strength[cell]), "direction": int(self.direction[cell])}
            if self.pearson is not None:
                row["pearson"] = float(self.pearson[cell])
            if self.spearman is not None:
                row["spearman"] = float(self.spearman[cell])
            rows.append(row)
        return rows

    @property
    def best(self) -> dict:
        return self.top(1)[0]

    def to_dict(self, k: int | None = None) -> dict:
        return {"source": self.source, "hypothesis": self.hypothesis, "kind": self.kind, "metric": self.metric,
                "n_tokens": self.n_tokens, "positive_rate": self.positive_rate,
                "top": self.top(len(self.scores) if k is None else k)}

    def plot(self, k: int = 20):
        """Plotly bar chart of the ``k`` strongest cells (signed scores)."""
        import plotly.graph_objects as go

        rows = self.top(k)
        fig = go.Figure(go.Bar(x=[f"cell {r['cell']}" for r in rows], y=[r["score"] for r in rows],
                               marker_color=["#1399e4" if r["direction"] > 0 else "#e45613" for r in rows],
                               hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
        base = 0.5 if self.metric == "auroc" else 0.0
        fig.add_hline(y=base, line_dash="dot", line_color="#888")
        fig.update_layout(title=f"{self.source} vs {self.hypothesis}: {self.metric}", yaxis_title=self.metric,
                          template="plotly_white")
        return fig

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("rank", "cell", self.metric, "direction"))
        body = "".join(f"<tr><td>{r['rank']}</td><td>{r['cell']}</td><td>{r['score']:.4f}</td>"
                       f"<td>{'+' if r['direction'] > 0 else '&minus;'}</td></tr>" for r in self.top(10))
        return (f"<div><b>{html.escape(self.source)}</b> vs <b>{html.escape(self.hypothesis)}</b> "
                f"({self.kind}, {self.n_tokens:,} tokens)<table><tr>{head}</tr>{body}</table></div>")

    def __repr__(self) -> str:
        b = self.best
        return (f"CellRanking({self.source!r} vs {self.hypothesis!r}: best cell {b['cell']} "
                f"{self.metric}={b['score']:.4f})")


def rank_cells(store, source: str, hypothesis, method: str | None = None, start: int | None = None,
               stop: int | None = None, index_dir=None, progress: bool | None = None) -> CellRanking:
    """Score every cell of ``source`` against ``hypothesis`` over tokens ``[start, stop)``.

    ``hypothesis``: a ``lstmvis.hypotheses`` object, a name (``"quotes"``, ``"depth"``,
    ``"regex:..."``; see ``hypotheses.resolve``) or an array with one value per token of the
    store. ``method``: ``"auroc"`` (binary hypotheses, default) or ``"pearson"`` (scalar default)
    / ``"spearman"``; scalar rankings report both correlations.
    """
    from tqdm.auto import tqdm

    n_cells = _check_source(store, source)
    name, kind, method, y = ranking_input(store, hypothesis, method, start, stop)
    start = 0 if start is None else int(start)
    stop = store.n_tokens if stop is None else int(stop)
    index = MatchIndex.load(store, source, index_dir, progress)
    bar = tqdm(range(n_cells), desc=f"ranking {source}", unit="cell",
               disable=(n_cells * (stop - start) < 5e7) if progress is None else not progress)
    if method == "auroc":
        positive = y > 0.5
        scores = np.array([auroc_from_ranks(average_ranks(index.cell_major[c, start:stop]), positive)
                           for c in bar])
        return CellRanking(source, name, kind, "auroc", scores, stop - start, float(positive.mean()))
    from scipy.stats import rankdata

    yc = y - y.mean()
    ry = rankdata(y)
    ryc = ry - ry.mean()
    pearson, spearman = np.zeros(n_cells), np.zeros(n_cells)
    for c in bar:
        pearson[c] = _pearson(index.values(c, start, stop).astype(np.float64), yc, np.sqrt(yc @ yc))
        spearman[c] = _pearson(average_ranks(index.cell_major[c, start:stop]), ryc, np.sqrt(ryc @ ryc))
    scores = pearson if method == "pearson" else spearman
    return CellRanking(source, name, "scalar", method, scores, stop - start, None, pearson, spearman)


def ranking_input(store, hypothesis, method: str | None, start: int | None, stop: int | None
                  ) -> tuple[str, str, str, np.ndarray]:
    """The checked input of a cell ranking (here or on a cluster): the hypothesis' name and kind, the
    method (its default for the kind) and the hypothesis' values over tokens ``[start, stop)``."""
    name, kind, values = _hypothesis_values(store, hypothesis)
    start = 0 if start is None else int(start)
    stop = store.n_tokens if stop is None else int(stop)
    if not 0 <= start < stop <= store.n_tokens:
        raise ValueError(f"token range [{start}, {stop}) must be non-empty and inside 0..{store.n_tokens}")
    y = values[start:stop]
    if method is None:
        method = "auroc" if kind == "binary" else "pearson"
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {', '.join(METHODS)}")
    if method == "auroc" and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"hypothesis {name} is not binary (values other than 0/1): use method='pearson' "
                         "or 'spearman'")
    if np.all(y == y[0]):
        raise ValueError(f"hypothesis {name} is constant ({y[0]:g}) over tokens [{start}, {stop}): nothing to "
                         "rank against (check the store's text, or pick another hypothesis)")
    return name, kind, method, y


def _hypothesis_values(store, hypothesis) -> tuple[str, str, np.ndarray]:
    if isinstance(hypothesis, (np.ndarray, list, tuple)):
        values = np.asarray(hypothesis, dtype=np.float64)
        if values.shape != (store.n_tokens,):
            raise ValueError(f"a hypothesis array needs one value per token: shape ({store.n_tokens},), got "
                             f"{values.shape}")
        kind = "binary" if np.isin(values, (0.0, 1.0)).all() else "scalar"
        return "array", kind, values
    h = hyp.resolve(hypothesis)
    values = np.asarray(h(store), dtype=np.float64)
    if values.shape != (store.n_tokens,):
        raise ValueError(f"hypothesis {h.name} returned shape {values.shape}, expected ({store.n_tokens},)")
    return h.name, h.kind, values


# ---------------------------------------------------------------------------- top contexts
@dataclass
class Context:
    """A window of tokens around a step where a cell is extreme."""

    position: int
    sequence: int
    value: float
    start: int
    stop: int
    tokens: list[str]
    values: np.ndarray

    def to_dict(self) -> dict:
        return {"position": self.position, "sequence": self.sequence, "value": self.value, "start": self.start,
                "stop": self.stop, "tokens": self.tokens, "values": self.values.tolist()}

    def text(self, sep: str | None = None) -> str:
        """The window as one string (tokens joined without a separator when they are characters)."""
        if sep is None:
            sep = "" if all(len(t) == 1 for t in self.tokens) else " "
        return sep.join(self.tokens)

    def _repr_html_(self) -> str:
        top = max(float(np.abs(self.values).max()), 1e-12)
        spans = []
        for pos, (tok, v) in enumerate(zip(self.tokens, self.values), self.start):
            colour = f"rgba(19,153,228,{v / top:.2f})" if v >= 0 else f"rgba(228,86,19,{-v / top:.2f})"
            border = "; outline: 1px solid #333" if pos == self.position else ""
            spans.append(f'<span style="background:{colour}{border}" title="{v:.3f}">{html.escape(tok)}</span>')
        return f"<code style='white-space:pre'>{''.join(spans)}</code>"


def top_contexts(store, source: str, cell: int, k: int = 10, before: int = 20, after: int = 5,
                 direction: int = 1, index_dir=None) -> list[Context]:
    """The ``k`` steps where ``cell`` is highest (``direction=-1``: lowest), each with its window of
    ``before``/``after`` tokens inside its sequence; chosen steps are more than ``before + after``
    apart, so the contexts do not repeat one passage."""
    n_cells = _check_source(store, source)
    if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or not 0 <= cell < n_cells:
        raise ValueError(f"cell must be an integer in 0..{n_cells - 1}, got {cell!r}")
    if direction not in (1, -1):
        raise ValueError("direction must be 1 (highest values) or -1 (lowest)")
    index = MatchIndex.load(store, source, index_dir)
    keys = index.cell_major[int(cell)]
    n = len(keys)
    gap = before + after
    pool = min(n, max(4 * k * (gap + 1), 1024))
    order_keys = keys.astype(np.int64) * direction
    chosen: list[int] = []
    while True:
        idx = np.argpartition(-order_keys, pool - 1)[:pool] if pool < n else np.arange(n)
        idx = idx[np.lexsort((idx, -order_keys[idx]))]
        chosen = []
        for p in idx.tolist():
            if all(abs(p - q) > gap for q in chosen):
                chosen.append(p)
                if len(chosen) == k:
                    break
        if len(chosen) == k or pool == n:
            break
        pool = min(n, pool * 4)
    values = index.values(int(cell))
    out = []
    for p in chosen:
        seq = store.sequence_of(p)
        lo, hi = store.sequence_bounds(seq)
        a, b = max(lo, p - before), min(hi, p + after + 1)
        out.append(Context(p, seq, float(values[p]), a, b, store.tokens(a, b), values[a:b].astype(np.float64)))
    return out


# ---------------------------------------------------------------------------- gate saturation
@dataclass
class GateSaturation:
    """Per gate unit, the fraction of steps left-saturated (``< low``) and right-saturated (``> high``)."""

    low: float
    high: float
    left: dict[str, np.ndarray]
    right: dict[str, np.ndarray]
    n_tokens: int

    @property
    def sources(self) -> list[str]:
        return list(self.left)

    def summary(self) -> list[dict]:
        return [{"source": s, "units": len(self.left[s]), "mean_left": float(self.left[s].mean()),
                 "mean_right": float(self.right[s].mean()),
                 "right_saturated_units": int((self.right[s] > 0.5).sum()),
                 "left_saturated_units": int((self.left[s] > 0.5).sum())} for s in self.sources]

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "n_tokens": self.n_tokens,
                "left": {s: v.tolist() for s, v in self.left.items()},
                "right": {s: v.tolist() for s, v in self.right.items()}}

    def plot(self):
        """Karpathy's saturation scatter: one point per unit, x = left, y = right fraction."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for s in self.sources:
            fig.add_trace(go.Scatter(x=self.left[s], y=self.right[s], mode="markers", name=s, opacity=0.7,
                                     text=[f"unit {u}" for u in range(len(self.left[s]))],
                                     hovertemplate="%{text}: left %{x:.3f}, right %{y:.3f}<extra>" + s + "</extra>"))
        fig.add_shape(type="line", x0=0, y0=1, x1=1, y1=0, line=dict(dash="dot", color="#888"))
        fig.update_layout(title="gate saturation", xaxis_title=f"fraction left-saturated (< {self.low:g})",
                          yaxis_title=f"fraction right-saturated (> {self.high:g})", template="plotly_white",
                          xaxis_range=[0, 1], yaxis_range=[0, 1])
        return fig


SIGMOID_GATES = ("gate_i", "gate_f", "gate_o", "gate_r", "gate_z")


def gate_sources(store, sigmoid_only: bool = False) -> list[str]:
    """The store's gate sources (``sigmoid_only``: the 0..1 gates, without LSTM ``g``/GRU ``n``)."""
    kinds = SIGMOID_GATES if sigmoid_only else SIGMOID_GATES + ("gate_g", "gate_n")
    return [s for s in store.sources if s.rsplit(".", 1)[-1] in kinds]


def gate_saturation(store, sources: list[str] | None = None, low: float = 0.1, high: float = 0.9,
                    start: int | None = None, stop: int | None = None) -> GateSaturation:
    """Gate saturation (Karpathy et al.): per unit, the fraction of steps ``< low`` and ``> high``.

    ``sources``: default every sigmoid gate of the store (LSTM ``i``, ``f``, ``o``; GRU ``r``,
    ``z``; the tanh candidates ``g``/``n`` are not gates in this sense). Reads the states once, in
    row blocks; no index needed.
    """
    if not low < high:
        raise ValueError(f"low ({low}) must be below high ({high})")
    if sources is None:
        sources = gate_sources(store, sigmoid_only=True)
        if not sources:
            raise ValueError(f"the store has no sigmoid gate sources (names like rnn.l0.gate_f); it has "
                             f"{', '.join(store.sources)}: extract with kinds including 'gates'")
    start = 0 if start is None else int(start)
    stop = store.n_tokens if stop is None else int(stop)
    if not 0 <= start < stop <= store.n_tokens:
        raise ValueError(f"token range [{start}, {stop}) must be non-empty and inside 0..{store.n_tokens}")
    left, right = {}, {}
    for s in sources:
        d = _check_source(store, s)
        ds = store.dataset(s)
        k_low, _ = threshold_keys(low, ds.dtype)  # x < low  <=>  key < k_low
        _, k_high = threshold_keys(-high, ds.dtype)  # x <= high  <=>  key <= k_high
        n_left, n_right = np.zeros(d, dtype=np.int64), np.zeros(d, dtype=np.int64)
        block = max(1, (1 << 24) // max(1, d * ds.dtype.itemsize))
        for a in range(start, stop, block):
            keys = float_keys(np.asarray(ds[a:min(stop, a + block)]))
            n_left += (keys < k_low).sum(axis=0)
            n_right += (keys > k_high).sum(axis=0)
        left[s], right[s] = n_left / (stop - start), n_right / (stop - start)
    return GateSaturation(low, high, left, right, stop - start)


# ---------------------------------------------------------------------------- explain one cell
def explain_cell(model, text: str, source: str, cell: int, step: int = -1, method: str = "integrated_gradients",
                 n_steps: int = 50, rule: str = "adaptive", baseline: str = "pad",
                 reduce: str | None = None, max_steps: int | None = None):
    """Gradient or Integrated Gradients of one cell's activation at ``step`` w.r.t. the input tokens.

    ``model``: a ``lstmvis.LanguageModel`` or ``textexplain.TextModel`` whose recurrent module reads
    its embedding layer's output (as the shipped models do); ``source`` names the cell as the store
    does (``rnn.l1.c``, ``rnn.l0.gate_f``, ``rnn.l0.reverse.h``). Integrated Gradients is
    ``textexplain.integrated_gradients.integrate`` of the cell's activation (``CellActivation``), with
    its defaults, along the straight path from the baseline embeddings (``"pad"``: the pad token's
    embedding at every position, or ``"zero"``); score per token = signed sum over embedding dims of
    ``(x - x') * mean gradient``, with the completeness ``delta = sum(scores) - (a(x) - a(x'))``.

    ``rule``: the quadrature, as ``textexplain.IntegratedGradients``' ``method``: ``"adaptive"``
    (default: nodes follow where the activation changes, found by forward-only probes) or a fixed
    rule (``"gausslegendre"``, ``"riemann_*"``: ``n_steps`` nodes). With ``"adaptive"``, ``max_steps``
    (default ``4 * n_steps``; ``n_steps`` turns it off) is spent only while the gap is above 1% of
    ``|a(x) - a(x')|``: a cell's activation along the path has many steep flips (on charlm-python, 2%
    of random cells and steps converge with 32 Gauss-Legendre nodes, 98% with 50 refined up to 200).

    ``"gradient"``: the gradient at the input, reduced by its L2 norm per token (unsigned;
    ``reduce="sum"`` for signed). Tokens after ``step`` get exactly 0 (a forward RNN cannot see
    them). Returns a ``textexplain.Explanation`` whose single label is the cell, whose ``info`` holds
    the activation and, for IG, whose ``convergence`` holds the relative gap, ``converged`` and the
    rows evaluated.
    """
    import torch

    from textexplain.base import check_choice, check_positive_int, reduce_dims
    from textexplain.convergence import default_max_steps
    from textexplain.explanation import Explanation
    from textexplain.integrated_gradients import RULES, check_max_steps, gradients_at, integrate

    if method not in ("integrated_gradients", "gradient"):
        raise ValueError(f"method={method!r}: use 'integrated_gradients' or 'gradient'")
    if baseline not in ("pad", "zero"):
        raise ValueError(f"baseline={baseline!r}: use 'pad' or 'zero'")
    check_positive_int("n_steps", n_steps)
    check_choice("rule", rule, RULES)
    check_max_steps(max_steps, n_steps, rule, name="rule")
    module, embedding, vocab = _model_parts(model)
    if module.training:
        raise ValueError("the model is in training mode (dropout changes every run): call .eval() first")
    _recorded_as(module, source)
    tokens = model.tokenize(text)
    if not tokens:
        raise ValueError("the text has no tokens")
    token_ids = vocab.encode(tokens)
    n_tok = len(token_ids)
    if not -n_tok <= step < n_tok:
        raise ValueError(f"step {step} is outside the text's {n_tok} tokens")
    step = step % n_tok
    ids = torch.tensor([token_ids], dtype=torch.long)
    with torch.no_grad():
        x = embedding(ids)[0]
        x_ref = torch.zeros_like(x) if baseline == "zero" else embedding(torch.full_like(ids, vocab.pad_id))[0]
    activation = CellActivation(module, embedding, ids, source, cell, step, forward=_forward_of(model))
    convergence = None
    if method == "gradient":
        grads, values = gradients_at(activation, x[None])
        scores = reduce_dims(grads[0], reduce or "l2")
        a_x, a_ref, delta, params = float(values[0]), None, None, {"reduce": reduce or "l2"}
    else:
        path = integrate(activation, x, x_ref, n_steps, rule, max_steps)
        convergence = path.convergence
        scores = path.scores(reduce or "sum")
        a_x, a_ref = convergence.f_input, convergence.f_baseline
        delta = path.delta if (reduce or "sum") == "sum" else None
        params = {"n_steps": n_steps, "method": rule, "baseline": baseline, "reduce": reduce or "sum",
                  **({"max_steps": default_max_steps(n_steps, max_steps)} if rule == "adaptive" else {})}
    label = f"{source}[{cell}] at step {step}"
    spans = model.token_spans(text) if hasattr(model, "token_spans") else None
    return Explanation(text=text, tokens=list(tokens), token_ids=list(token_ids), scores=scores, method=method,
                       target=0, labels=[label], probs=np.array([1.0]), signed=(reduce or params["reduce"]) == "sum",
                       spans=[tuple(map(int, s)) for s in spans] if spans is not None else None,
                       params={"source": source, "cell": int(cell), "step": int(step), **params}, delta=delta,
                       info={"model": getattr(model, "name", ""), "activation": a_x, "activation_baseline": a_ref,
                             "explains": "one cell's activation (not a class logit)"},
                       convergence=convergence)


class CellActivation:
    """One cell of a recorded ``source`` at one ``step`` as a function of the embedding layer's output:
    the scalar output ``textexplain.integrated_gradients.integrate`` explains for ``explain_cell``.
    Called with substitute embeddings ``(K, T, E)`` for ``ids (1, T)``, it runs ``forward`` (the wrapped
    model's one call: ``LanguageModel.step`` or ``TextModel.logits``) with a ``Recorder`` on
    ``module`` (keeping the autograd graph when the rows need gradients) and returns ``(K,)``."""

    def __init__(self, module, embedding, ids, source: str, cell: int, step: int, forward):
        self.module, self.embedding, self.ids = module, embedding, ids
        self.forward = forward
        self.source, self.cell, self.step = source, cell, step
        self.module_name, self.layer, self.kind = _recorded_as(module, source)

    def __call__(self, rows):
        import torch

        from textexplain.base import substituted_embeddings

        from .capture import Recorder

        recorder = Recorder(self.module, kinds=[self.kind or "h"], modules=[self.module_name],
                            layers=None if self.layer is None else [self.layer], detach=not rows.requires_grad)
        with torch.set_grad_enabled(rows.requires_grad), \
                substituted_embeddings(SimpleNamespace(embedding=self.embedding), rows), recorder:
            self.forward(self.ids.expand(rows.shape[0], -1))
        states = recorder.states
        if self.source not in states:
            raise ValueError(f"{self.source!r} was not recorded; the model records {', '.join(states) or 'nothing'}")
        values = states[self.source]
        if not 0 <= self.cell < values.shape[-1]:
            raise ValueError(f"cell {self.cell} is outside 0..{values.shape[-1] - 1} of {self.source}")
        return values[:, self.step, self.cell]


def explain_stored_cell(store, model, source: str, cell: int, position: int, window: int = 100, **ig):
    """``explain_cell`` of a stored cell at a global token ``position``: the model is run on the
    stored text of that position's sequence, the ``window`` tokens up to and including the step (from
    a zero state, like a fresh reader), or the whole sequence when it is that short or the source is a
    reverse direction. ``ig``: ``explain_cell``'s method and quadrature arguments.

    Returns ``(explanation, where)``: ``where`` holds ``start``/``stop`` (global positions of the text
    fed), ``whole_sequence`` and ``stored_activation`` (the store's value at ``position``, which the
    explanation's ``activation`` reproduces when the whole sequence was fed)."""
    if source not in store.sources:
        raise ValueError(f"unknown source {source!r}; the store has {', '.join(store.sources)}")
    if not 0 <= position < store.n_tokens:
        raise ValueError(f"position {position} is outside the store's {store.n_tokens} tokens")
    if not store.has_texts:
        raise ValueError("this store keeps no original texts to run the model on (extract it with texts)")
    seq = store.sequence_of(position)
    a, b = store.sequence_bounds(seq)
    sees_ahead = ".reverse." in source or _recorded_as(_model_parts(model)[0], source)[1] is None  # e.g. attention
    lo, hi = (a, b) if sees_ahead or b - a <= window else (max(a, position + 1 - window), position + 1)
    spans = store.token_spans(lo, hi)
    text = store.sequence_text(seq)[int(spans[0, 0]):int(spans[-1, 1])]
    e = explain_cell(model, text, source, cell, step=position - lo, **ig)
    if len(e.tokens) != hi - lo:
        raise ValueError(f"the model tokenizes the stored text into {len(e.tokens)} tokens, the store has "
                         f"{hi - lo}: this store was not made by this model from its text")
    stored = float(store.states(source, position, position + 1)[0, cell])
    return e, {"start": lo, "stop": hi, "whole_sequence": (lo, hi) == (a, b), "stored_activation": stored}


def _model_parts(model):
    module = getattr(model, "module", None)
    vocab = getattr(model, "vocab", None)
    if module is None or vocab is None or not hasattr(model, "tokenize"):
        raise TypeError(f"explain_cell needs a lstmvis.LanguageModel or textexplain.TextModel (with .module, .vocab "
                        f"and .tokenize), got {type(model).__name__}")
    embedding = getattr(model, "embedding", None)
    if embedding is None:
        embedding = getattr(module, "emb", None)
    if embedding is None:
        import torch

        found = [m for m in module.modules() if isinstance(m, torch.nn.Embedding)]
        if len(found) != 1:
            raise ValueError("could not find the model's one nn.Embedding: wrap it as a TextModel with embedding=")
        embedding = found[0]
    return module, embedding, vocab


def _forward_of(model):
    """The one call of a wrapped model: ``TextModel.logits`` or ``LanguageModel.step``."""
    from textexplain.language_model import as_language_model
    from textexplain.model import TextModel

    return model.logits if isinstance(model, TextModel) else as_language_model(model).step


def _recorded_as(module, source: str) -> tuple[str, int | None, str | None]:
    """``(module name, layer, kind)`` of a recurrent source, or ``(source, None, None)`` where the source is a
    submodule's output (``Recorder(modules=[source])``, e.g. ``encoder.1.activation``)."""
    from torch import nn

    from .capture import CELL_TYPES, RNN_TYPES

    sub = dict(module.named_modules()).get(source)
    if sub is not None and not isinstance(sub, RNN_TYPES + CELL_TYPES + (nn.Conv1d,)):
        return source, None, None
    return _parse_source(source)


def _parse_source(source: str) -> tuple[str, int, str]:
    """``"rnn.l1.reverse.c"`` -> ``("rnn", 1, "c")``."""
    parts = source.split(".")
    for i in range(len(parts) - 1, 0, -1):
        p = parts[i]
        if p.startswith("l") and p[1:].isdigit():
            kind = parts[-1]
            if parts[i + 1:-1] not in ([], ["reverse"]) or not kind:
                break
            return ".".join(parts[:i]), int(p[1:]), kind
    raise ValueError(f"{source!r} is not a recurrent source name like 'rnn.l0.h', 'rnn.l1.c' or "
                     "'rnn.l0.reverse.gate_f', nor the name of a submodule (a source of Recorder(modules=...))")
