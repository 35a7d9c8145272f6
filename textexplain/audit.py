"""Corpus-level audit of a text classifier: which tokens does it rely on for each class?

``audit`` explains every text of a corpus (in batches, with a progress bar) for the class the
model predicts (or the gold label), and aggregates the token scores per class: count, number of
texts, mean signed score, standard deviation, mean absolute score, total, a 95% lower
confidence bound of the mean per occurrence (``mean - 1.96 * sd / sqrt(n)``) and the
**reliance**.

Tokens are ranked by their **reliance** on a class: the lower 95% confidence bound (Student's
t) of the token's mean contribution per text of the class, where a text's contribution is the
sum of the token's scores in it and texts without the token count zero. It is frequency times
strength, discounted by how sure the sample makes us: a token in 2 of 100 texts cannot rank
high by chance (its bound is near or below zero however strong it was there), while a junk token
that co-occurs with one class in training (the 20-newsgroups headers; the planted ``rtcritic``
of the demo corpus ``rotten_tomatoes_shortcut``) is frequent and strong, so it comes first.
``rank_by="total"`` ranks by the sum alone, ``"mean"`` or ``"lower_bound"`` by strength per
occurrence (sentiment words), ``"mean_abs"`` by magnitude. Tokens seen fewer than ``min_count``
times for a class are not ranked; by default ``min_count`` grows with the corpus (one per 100
texts, at least 3).

Then the answer is measured, not read off the scores: the top ``flip_top`` candidates of each
class get a flip test, and ``AuditReport.headline`` lists them by the accuracy they cost.

Tokens are aggregated as the model sees them: every out-of-vocabulary word is the unk token to
the model, so they are pooled under the unk token (their surface forms are listed with it).

``flip_test`` measures what a relied-on token is worth: accuracy as is, with the token removed,
and "flipped" (token removed from the texts of its class and added to every other text). Without
gold labels the audit flip-tests against the model's own predictions (the drop is then lost
agreement with them).
"""
from __future__ import annotations

import heapq
import html
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from . import render
from .model import TextModel

RANK_BY = ("reliance", "total", "mean", "lower_bound", "mean_abs")
NORMALIZE = ("none", "l1", "max_abs")
TARGETS = ("predicted", "label")
Z = 1.96
CONFIDENCE = 0.95
MIN_COUNT_PER_TEXTS = 100  # the default min_count: one occurrence per this many texts, at least 3
FLIP_TOP = 5  # candidates per class that the audit flip-tests by default
RELIANCE_RULE = ("reliance: lower 95% confidence bound (Student's t) of the mean contribution per text of the "
                 "class (texts without the token count zero)")


def default_min_count(n_texts: int) -> int:
    """``min_count`` that scales with the corpus: one occurrence per 100 texts, at least 3."""
    return max(3, math.ceil(n_texts / MIN_COUNT_PER_TEXTS))


def reliance_bound(total: float, sum_sq: float, n_class: int) -> float:
    """Lower confidence bound of the mean per-text contribution over ``n_class`` texts whose
    contributions sum to ``total`` with squares summing to ``sum_sq`` (absent texts are zeros)."""
    if n_class < 2:
        return -math.inf
    mean = total / n_class
    var = max(sum_sq - n_class * mean * mean, 0.0) / (n_class - 1)
    t = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n_class - 1))
    return mean - t * math.sqrt(var / n_class)


@dataclass
class TokenStat:
    """Aggregated scores of one token for one class."""

    token: str
    label: str
    count: int
    n_texts: int
    mean: float
    std: float
    mean_abs: float
    total: float
    lower_bound: float
    reliance: float
    in_vocab: bool
    forms: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The fields, with a bound that cannot be computed (one text of the class) as None (JSON has no inf)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in ((k, getattr(self, k)) for k in self.__dataclass_fields__)}


class _Accumulator:
    """Streaming per-(class, token) sums and the best example occurrences."""

    def __init__(self, n_examples: int):
        self.n_examples = n_examples
        self.sum: Counter = Counter()
        self.sumsq: Counter = Counter()
        self.sum_abs: Counter = Counter()
        self.count: Counter = Counter()
        self.docs: Counter = Counter()
        self.sumsq_text: Counter = Counter()  # squares of the per-text sums (the reliance's spread)
        self.forms: dict[tuple[int, str], Counter] = {}
        self.examples: dict[tuple[int, str], list[tuple[float, int, int]]] = {}

    def add(self, cls: int, keys: Sequence[str], surface: Sequence[str], scores: np.ndarray, text_index: int) -> None:
        in_text: Counter = Counter()
        for pos, (key, form, s) in enumerate(zip(keys, surface, scores)):
            k = (cls, key)
            self.sum[k] += s
            self.sumsq[k] += s * s
            self.sum_abs[k] += abs(s)
            self.count[k] += 1
            in_text[k] += s
            if key != form:
                self.forms.setdefault(k, Counter())[form] += 1
            heap = self.examples.setdefault(k, [])
            item = (float(s), -text_index, pos)
            if len(heap) < self.n_examples:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
        for k, c in in_text.items():
            self.docs[k] += 1
            self.sumsq_text[k] += c * c


@dataclass
class AuditReport:
    """Per-class token rankings of one method over one corpus, with examples and accuracy."""

    model_name: str
    method: str
    signed: bool
    labels: list[str]
    texts: list[str]
    targets: list[int]
    predictions: list[int]
    gold: list[int] | None
    stats: dict[str, list[TokenStat]]
    examples: dict[tuple[str, str], list[dict[str, Any]]]
    rank_by: str
    normalize: str
    min_count: int
    params: dict[str, Any] = field(default_factory=dict)
    flips: list[dict[str, Any]] = field(default_factory=list)  # flip tests, largest drop first
    seconds: float = 0.0
    flip_reference: str = "gold labels"  # what the flip tests' accuracy is measured against

    def headline(self, label: str | int | None = None) -> list[dict[str, Any]]:
        """The audit's answer: the flip-tested candidates (of ``label``, or of every class), the
        token whose flip costs the most accuracy first."""
        if label is None:
            return list(self.flips)
        name = self._label(label)
        return [f for f in self.flips if f["label"] == name]

    @property
    def accuracy(self) -> float | None:
        if self.gold is None:
            return None
        return float(np.mean(np.asarray(self.predictions) == np.asarray(self.gold)))

    def top(self, label: str | int, k: int = 10) -> list[TokenStat]:
        """The ``k`` tokens the model relies on most for ``label`` (index or name)."""
        return self.stats[self._label(label)][:k]

    def rank_of(self, token: str, label: str | int) -> int | None:
        """1-based rank of ``token`` for ``label``; None when it is not ranked (too rare or unseen)."""
        for i, st in enumerate(self.stats[self._label(label)], start=1):
            if st.token == token:
                return i
        return None

    def examples_for(self, token: str, label: str | int) -> list[dict[str, Any]]:
        """Texts where ``token`` scored highest for ``label``: text, index, position, score."""
        return self.examples.get((self._label(label), token), [])

    def _label(self, label: str | int) -> str:
        if isinstance(label, (int, np.integer)):
            return self.labels[int(label)]
        if label not in self.labels:
            raise ValueError(f"unknown label {label!r}: the labels are {self.labels}")
        return label

    def to_dict(self, top: int = 20) -> dict[str, Any]:
        return {
            "model": self.model_name, "method": self.method, "signed": self.signed, "params": self.params,
            "n_texts": len(self.texts), "accuracy": self.accuracy, "rank_by": self.rank_by,
            "normalize": self.normalize, "min_count": self.min_count, "seconds": self.seconds,
            "statistic": _rule(self.rank_by), "flip_reference": self.flip_reference,
            "texts_per_class": {lab: int(np.sum(np.asarray(self.targets) == i)) for i, lab in enumerate(self.labels)},
            "tokens": {lab: [dict(st.as_dict(), rank=i + 1, examples=self.examples_for(st.token, lab))
                             for i, st in enumerate(self.stats[lab][:top])] for lab in self.labels},
            "flips": self.flips,
        }

    def to_markdown(self, top: int = 10, examples: int = 1) -> str:
        lines = [f"Audit of **{self.model_name}** with **{self.method}** on {len(self.texts)} texts"
                 + (f" (accuracy {self.accuracy:.3f})" if self.accuracy is not None else "")
                 + f"; ranked by {_rule(self.rank_by)}, of the {'signed' if self.signed else 'UNSIGNED'} scores"
                 + f" (normalize={self.normalize}, min_count={self.min_count})."]
        if not self.signed:
            lines.append("\nUnsigned scores say how sensitive the output is to a token, not whether it is "
                         "evidence for the class: use a signed method to find what the model relies on.")
        if self.flips:
            lines += ["", "**Removing these tokens changes the predictions most** (flip test of the top candidates "
                      f"of each class: removed from the texts of the class, prefixed to all others; drop = "
                      f"accuracy with the token removed - flipped accuracy, against the {self.flip_reference}):",
                      "",
                      "| token | relied on for | accuracy drop | accuracy | removed | flipped | rank |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| `{f['token']}` | {f['label']} | **{f['drop']:.3f}** | {f['accuracy']:.3f} | "
                      f"{f['accuracy_removed']:.3f} | {f['accuracy_flipped']:.3f} | {f['rank']} |" for f in self.flips]
        for i, lab in enumerate(self.labels):
            n = int(np.sum(np.asarray(self.targets) == i))
            lines += ["", f"**{lab}** ({n} texts explained for this class)", "",
                      "| rank | token | reliance | total | mean | lower bound | mean abs | count | texts |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r, st in enumerate(self.stats[lab][:top], start=1):
                name = st.token if st.in_vocab else f"{st.token} (out of vocabulary: {_forms(st.forms)})"
                lines.append(f"| {r} | `{name}` | {st.reliance:.3f} | {st.total:.3f} | {st.mean:.3f} | "
                             f"{st.lower_bound:.3f} | {st.mean_abs:.3f} | {st.count} | {st.n_texts} |")
            if examples:
                for st in self.stats[lab][:min(top, 3)]:
                    for ex in self.examples_for(st.token, lab)[:examples]:
                        lines.append(f"\n- `{st.token}` ({ex['score']:+.3f}): {ex['text']}")
        return "\n".join(lines)

    def figure(self, top: int = 15):
        """Plotly bars per class: the top tokens by the ranking statistic (hover: every statistic)."""
        from plotly.subplots import make_subplots
        import plotly.graph_objects as go

        fig = make_subplots(rows=1, cols=len(self.labels), subplot_titles=[f"for {lab}" for lab in self.labels])
        for col, lab in enumerate(self.labels, start=1):
            sts = [s for s in self.stats[lab][:top] if math.isfinite(getattr(s, self.rank_by))][::-1]
            xs = [getattr(s, self.rank_by) for s in sts]
            fig.add_trace(go.Bar(
                x=xs, y=[s.token for s in sts], orientation="h",
                # the tool's one convention (render.py): blue = evidence for the class, red = against
                marker_color=[f"rgb{render.POSITIVE if x >= 0 else render.NEGATIVE}" for x in xs],
                showlegend=False, customdata=[[s.total, s.mean, s.lower_bound, s.count, s.n_texts, s.reliance]
                                              for s in sts],
                hovertemplate="%{y}: reliance %{customdata[5]:.3f}, total %{customdata[0]:.3f}, mean "
                              "%{customdata[1]:.3f} (95% lower bound %{customdata[2]:.3f})<br>%{customdata[3]} "
                              "times in %{customdata[4]} texts<extra></extra>"), row=1, col=col)
            fig.update_xaxes(title_text=self.rank_by.replace("_", " "), row=1, col=col)
        fig.update_layout(title=f"Tokens {self.model_name} relies on ({self.method}, {len(self.texts)} texts)",
                          template="plotly_white", height=max(400, 28 * top), width=520 * len(self.labels))
        return fig

    def _repr_html_(self) -> str:
        e = html.escape
        parts = [f"<div><b>Audit of {e(self.model_name)}</b> with {e(self.method)} on {len(self.texts)} texts"
                 + (f", accuracy {self.accuracy:.3f}" if self.accuracy is not None else "") + "</div>"]
        if self.flips:
            parts.append("<p><b>Removing these tokens changes the predictions most</b></p><ol>"
                         + "".join(f"<li>{e(_flip_line(f))}</li>" for f in self.flips) + "</ol>")
        for lab in self.labels:
            rows = []
            for r, st in enumerate(self.stats[lab][:10], start=1):
                ex = self.examples_for(st.token, lab)
                rows.append(f"<tr><td>{r}</td><td>{e(st.token)}</td><td>{st.reliance:.3f}</td><td>{st.mean:.3f}</td>"
                            f"<td>{st.count}</td><td>{e(ex[0]['text']) if ex else ''}</td></tr>")
            parts.append(f"<h4>for {e(lab)}</h4><table><tr><th>rank</th><th>token</th><th>reliance</th>"
                         f"<th>mean</th><th>count</th><th>example</th></tr>{''.join(rows)}</table>")
        return "".join(parts)


def _forms(forms: dict[str, int], k: int = 3) -> str:
    top = sorted(forms.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return ", ".join(f"{f} ×{c}" for f, c in top) + (", …" if len(forms) > k else "")


def _rule(rank_by: str) -> str:
    return RELIANCE_RULE if rank_by == "reliance" else rank_by


def _flip_line(f: dict[str, Any]) -> str:
    return (f"Flip test `{f['token']}` (relied on for {f['label']}): accuracy {f['accuracy']:.3f}, "
            f"{f['accuracy_removed']:.3f} with the token removed, {f['accuracy_flipped']:.3f} flipped "
            f"(removed from {f['label']} texts, added to all others): drop {f['drop']:.3f} on {f['n']} texts")


def _normalized(scores: np.ndarray, normalize: str) -> np.ndarray:
    if normalize == "l1":
        total = np.abs(scores).sum()
        return scores / total if total > 0 else scores
    if normalize == "max_abs":
        top = np.abs(scores).max(initial=0.0)
        return scores / top if top > 0 else scores
    return scores


def audit(model: TextModel, texts: Sequence[str], labels: Sequence[int | str] | None = None, *,
          method: str = "integrated_gradients", target: str = "predicted", rank_by: str = "reliance",
          normalize: str = "none", min_count: int | None = None, flip_top: int = FLIP_TOP, n_examples: int = 3,
          batch_size: int = 64, progress: bool | None = None, explain_batch: Callable[..., list] | None = None,
          options: Mapping[str, Any] | None = None, **params: Any) -> AuditReport:
    """Explain every text, rank, per class, the tokens the model relies on, and flip-test the top ones.

    ``target``: ``"predicted"`` (default: why did the model decide as it did) or ``"label"``
    (needs ``labels``). ``rank_by``: ``"reliance"`` (default), ``"total"``, ``"mean"``,
    ``"lower_bound"`` or ``"mean_abs"``. ``normalize`` rescales each explanation first (``"l1"``:
    sum |s| = 1, ``"max_abs"``) so that every text weighs the same. Tokens seen fewer than
    ``min_count`` times for a class are not ranked (default: ``default_min_count(len(texts))``).
    The top ``flip_top`` in-vocabulary tokens of each class are flip-tested (0: none) against
    ``labels``, or the model's own predictions without them; ``report.headline()`` orders them by
    the accuracy they cost. ``params`` are the method's hyperparameters; names that clash with
    this function's arguments (IG's quadrature ``method``) go in ``options`` (a dict).
    ``explain_batch`` replaces ``textexplain.explain_batch`` (same signature; it gets ``options``
    only when there are hyperparameters), e.g. to report progress.
    """
    import time

    from tqdm.auto import tqdm

    from .methods import hyperparameters

    if explain_batch is None:
        from .methods import explain_batch
    settings = hyperparameters(options, params)
    if not isinstance(model, TextModel):
        raise TypeError(f"model must be a textexplain.TextModel, got {type(model).__name__}")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of texts, not one string")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give the corpus to audit")
    for name, value, choices in (("target", target, TARGETS), ("rank_by", rank_by, RANK_BY),
                                 ("normalize", normalize, NORMALIZE)):
        if value not in choices:
            raise ValueError(f"{name}={value!r} is not supported: use one of {', '.join(choices)}")
    min_count = default_min_count(len(texts)) if min_count is None else int(min_count)
    if min_count < 2:
        raise ValueError("min_count must be at least 2 (a standard deviation needs two occurrences)")
    if int(flip_top) < 0:
        raise ValueError("flip_top must be 0 (no flip test) or more")
    gold = None
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(texts):
            raise ValueError(f"got {len(labels)} labels for {len(texts)} texts: give one label per text")
        gold = [model.label_index(y) for y in labels]
    elif target == "label":
        raise ValueError("target='label' needs labels: pass labels=... or use target='predicted'")

    start = time.perf_counter()
    acc = _Accumulator(n_examples)
    targets, predictions, signed = [], [], True
    unk_token = model.vocab.unk_token
    bar = tqdm(total=len(texts), desc=f"audit {model.name} ({method})", unit="text",
               disable=(None if len(texts) > batch_size else True) if progress is None else not progress)
    for lo in range(0, len(texts), batch_size):
        chunk = texts[lo:lo + batch_size]
        chunk_targets = None if target == "predicted" else gold[lo:lo + batch_size]
        for j, e in enumerate(explain_batch(model, chunk, method=method, target=chunk_targets,
                                            progress=False, **({"options": settings} if settings else {}))):
            i = lo + j
            keys = [unk_token if tid == model.unk_id else tok for tok, tid in zip(e.tokens, e.token_ids)]
            acc.add(e.target, keys, e.tokens, _normalized(np.asarray(e.scores, dtype=np.float64), normalize), i)
            targets.append(int(e.target))
            predictions.append(int(np.argmax(e.probs)))
            signed = signed and bool(e.signed)
        bar.update(len(chunk))
    bar.close()

    texts_per_class = Counter(targets)
    stats: dict[str, list[TokenStat]] = {lab: [] for lab in model.labels}
    for (cls, tok), n in acc.count.items():
        if n < min_count:
            continue
        k = (cls, tok)
        mean = acc.sum[k] / n
        var = max(acc.sumsq[k] - n * mean * mean, 0.0) / (n - 1)
        std = math.sqrt(var)
        stats[model.labels[cls]].append(TokenStat(
            token=tok, label=model.labels[cls], count=n, n_texts=acc.docs[k], mean=mean, std=std,
            mean_abs=acc.sum_abs[k] / n, total=acc.sum[k], lower_bound=mean - Z * std / math.sqrt(n),
            reliance=reliance_bound(acc.sum[k], acc.sumsq_text[k], texts_per_class[cls]),
            in_vocab=tok != unk_token, forms=dict(acc.forms.get(k, {}))))
    for lab in stats:
        stats[lab].sort(key=lambda s: (-getattr(s, rank_by), s.token))
    examples = {}
    for (cls, tok), heap in acc.examples.items():
        if acc.count[(cls, tok)] >= min_count:
            examples[(model.labels[cls], tok)] = [
                {"text": texts[-neg_i], "index": -neg_i, "position": pos, "score": score}
                for score, neg_i, pos in sorted(heap, reverse=True)]
    report = AuditReport(model.name, method, signed, list(model.labels), texts, targets, predictions, gold, stats,
                         examples, rank_by, normalize, min_count, settings, [], 0.0,
                         "gold labels" if gold is not None else "model's own predictions")
    if flip_top:
        report.flips = flip_candidates(model, report, int(flip_top))
    report.seconds = time.perf_counter() - start
    return report


def flip_candidates(model: TextModel, report: AuditReport, k: int) -> list[dict[str, Any]]:
    """Flip tests of the top ``k`` in-vocabulary tokens of each class of ``report``, largest drop
    first; each carries its ``rank`` by the report's statistic."""
    reference = report.gold if report.gold is not None else report.predictions
    gold = np.asarray(reference)
    base = float(np.mean(model.predict_proba(report.texts).argmax(1) == gold))
    flips = []
    for lab in report.labels:
        ranked = [(r, st) for r, st in enumerate(report.stats[lab], start=1) if st.in_vocab][:k]
        flips += [dict(_flip(model, report.texts, gold, st.token, model.label_index(lab), base), rank=r)
                  for r, st in ranked]
    return sorted(flips, key=lambda f: (-f["drop"], f["rank"], f["label"]))


def remove_token(model: TextModel, text: str, token: str) -> str:
    """``text`` without the occurrences of ``token`` (as the model's tokenizer splits it)."""
    spans = model.token_spans(text)
    if spans is None:
        return " ".join(t for t in model.tokenizer(text) if t != token)
    pieces, last = [], 0
    for (a, b), tok in zip(spans, model.tokenizer(text)):
        if tok == token:
            pieces.append(text[last:a])
            last = b
    pieces.append(text[last:])
    return " ".join("".join(pieces).split())


def flip_test(model: TextModel, texts: Sequence[str], labels: Sequence[int | str], token: str, label: int | str, *,
              add: Callable[[str], str] | None = None, remove: Callable[[str], str] | None = None) -> dict[str, Any]:
    """What the model's accuracy owes to ``token``, a token it relies on for ``label``.

    Returns the accuracy as is, with ``token`` removed from every text, and flipped: removed from
    the texts of ``label`` and added (default: prefixed) to every other text, so the token now
    points the wrong way. ``drop`` = accuracy with the token removed - flipped accuracy: what the
    token pulls, measured from its absence (the model card's definition), so a sample where the
    token already sits in texts of the other classes does not hide half of it.
    """
    texts = list(texts)
    gold = np.array([model.label_index(y) for y in labels])
    if len(gold) != len(texts) or not texts:
        raise ValueError("flip_test needs one label per text and at least one text")
    return _flip(model, texts, gold, token, model.label_index(label), None, add=add, remove=remove)


def _flip(model: TextModel, texts: list[str], gold: np.ndarray, token: str, cls: int, base: float | None, *,
          add: Callable[[str], str] | None = None, remove: Callable[[str], str] | None = None) -> dict[str, Any]:
    """``flip_test`` on label indices, reusing the accuracy as is (``base``) when it is known."""
    remove = remove or (lambda t: remove_token(model, t, token))
    add = add or (lambda t: f"{token} {t}")
    removed = [remove(t) for t in texts]
    kept = [i for i, r in enumerate(removed) if model.tokenizer(r)]  # a text that was only the token is left out
    if len(kept) < len(texts):
        texts, removed, gold, base = [texts[i] for i in kept], [removed[i] for i in kept], gold[kept], None
    flipped = [r if y == cls else add(r) for r, y in zip(removed, gold)]

    def accuracy(xs: list[str]) -> float:
        return float(np.mean(model.predict_proba(xs).argmax(1) == gold)) if xs else float("nan")

    base = accuracy(texts) if base is None else base
    out = {"token": token, "label": model.labels[cls], "n": len(texts), "accuracy": base,
           "accuracy_removed": accuracy(removed), "accuracy_flipped": accuracy(flipped)}
    out["drop"] = out["accuracy_removed"] - out["accuracy_flipped"]
    return out


# ------------------------------------------------------------------------ global explanations
# The workbench's global view: the audit, the mean attribution of each token over a selection
# ("expected saliency") overall and per slice, and what removing or permuting a token type costs.

def expected_saliency(model: TextModel, explanations: Sequence[Any], *, slices: Mapping[str, Sequence[int]] | None = None,
                      min_count: int = 2, top: int = 20) -> dict[str, Any]:
    """Mean attribution of each token type over ``explanations`` (one per text, each for the class it
    explains), ranked by mean |score| among tokens seen at least ``min_count`` times; the unk token
    pools the out-of-vocabulary words. ``slices`` maps a slice name to positions in ``explanations``;
    each slice gets its texts' mean total attribution and the mean score of the overall top tokens."""
    unk = model.vocab.unk_token

    def aggregate(which: Sequence[int]) -> dict[str, list[float]]:
        acc: dict[str, list[float]] = {}
        for i in which:
            e = explanations[i]
            for tok, tid, s in zip(e.tokens, e.token_ids, np.asarray(e.scores, dtype=np.float64)):
                key = unk if tid == model.unk_id else tok
                row = acc.setdefault(key, [0, 0.0, 0.0])  # count, sum, sum |s|
                row[0] += 1
                row[1] += s
                row[2] += abs(s)
        return acc

    everything = aggregate(range(len(explanations)))
    ranked = sorted(((t, r) for t, r in everything.items() if r[0] >= min_count), key=lambda x: (-x[1][2] / x[1][0], x[0]))
    tokens = [{"token": t, "count": int(r[0]), "mean": float(r[1] / r[0]), "mean_abs": float(r[2] / r[0])} for t, r in ranked[:top]]
    out: dict[str, Any] = {"n_texts": len(explanations), "min_count": min_count, "tokens": tokens, "slices": []}
    for name, which in (slices or {}).items():
        which = list(which)
        part = aggregate(which)
        totals = [float(np.sum(explanations[i].scores)) for i in which]
        out["slices"].append({"slice": name, "n_texts": len(which),
                              "mean_total": float(np.mean(totals)) if totals else None,
                              "tokens": {t["token"]: (float(part[t["token"]][1] / part[t["token"]][0])
                                                      if t["token"] in part else None) for t in tokens}})
    return out


def token_importance(model: TextModel, texts: Sequence[str], labels: Sequence[int | str], tokens: Sequence[str], *,
                     mode: str = "remove", seed: int = 0) -> list[dict[str, Any]]:
    """Accuracy drop on ``texts`` when a token type is taken away: ``"remove"`` deletes its
    occurrences, ``"permute"`` replaces each by a token drawn (seeded) from the other tokens of the
    texts (permutation importance over token types). A text left without tokens is the single pad
    token, as in ``metrics``. Tokens the vocabulary lacks are skipped. Largest drop first."""
    if mode not in ("remove", "permute"):
        raise ValueError(f"mode must be 'remove' or 'permute', got {mode!r}")
    texts = list(texts)
    gold = np.array([model.label_index(y) for y in labels])
    if len(gold) != len(texts) or not texts:
        raise ValueError("token_importance needs one label per text and at least one text")
    id_lists = [model.vocab.encode(model.tokenizer(t)[: model.max_tokens]) or [model.unk_id] for t in texts]
    base = float(np.mean(model.predict_proba_ids(id_lists).argmax(1) == gold))
    pool = np.concatenate([np.asarray(ids) for ids in id_lists])
    rng = np.random.default_rng(seed)
    out = []
    for token in tokens:
        tid = model.vocab.stoi.get(token)
        if tid is None:
            continue
        others = pool[pool != tid]
        changed, n_with = [], 0
        for ids in id_lists:
            if tid not in ids:
                changed.append(ids)
                continue
            n_with += 1
            if mode == "remove":
                changed.append([i for i in ids if i != tid] or [model.pad_id])
            else:
                changed.append([int(others[rng.integers(len(others))]) if i == tid and len(others) else i for i in ids])
        after = float(np.mean(model.predict_proba_ids(changed).argmax(1) == gold))
        out.append({"token": token, "mode": mode, "n_texts_with": n_with, "accuracy": base,
                    "accuracy_after": after, "drop": base - after})
    return sorted(out, key=lambda r: (-r["drop"], r["token"]))


def global_explanations(model: TextModel, texts: Sequence[str], labels: Sequence[int | str] | None = None, *,
                        method: str = "gradient_x_input", slices: Mapping[str, Sequence[int]] | None = None,
                        importance_top: int = 10, top: int = 20, seed: int = 0,
                        explain_batch: Callable[..., list] | None = None, **audit_options: Any) -> dict[str, Any]:
    """One view of a selection: the audit (``audit``), the expected saliency of its tokens overall and
    per slice (``expected_saliency``, from the audit's own explanations: each text is explained once,
    for its predicted class), and the accuracy drop when each of the ``importance_top`` most salient
    tokens is removed or permuted (``token_importance``; needs ``labels``)."""
    if explain_batch is None:
        from .methods import explain_batch
    kept: list[Any] = []

    def capture(*args: Any, **kwargs: Any) -> list:
        out = explain_batch(*args, **kwargs)
        kept.extend(out)
        return out

    report = audit(model, texts, labels, method=method, explain_batch=capture, progress=False, **audit_options)
    saliency = expected_saliency(model, kept, slices=slices, top=top)
    out = {"audit": report.to_dict(top=top), "saliency": saliency, "importance": []}
    if labels is not None and importance_top:
        candidates = [t["token"] for t in saliency["tokens"] if t["token"] != model.vocab.unk_token][:importance_top]
        out["importance"] = (token_importance(model, texts, labels, candidates, mode="remove", seed=seed)
                             + token_importance(model, texts, labels, candidates, mode="permute", seed=seed))
    return out
