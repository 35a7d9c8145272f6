"""Faithfulness of token explanations: does the model really depend on the tokens ranked first?

Every metric removes or keeps tokens in the order an explanation ranks them (highest score
first) and watches the probability of the explained class ``p = p(target | ids)``:

* **comprehensiveness** (ERASER, higher is better): AOPC of ``p(x) - p(x without the top k)``
  over the bins ``k = ceil(f * n)`` for ``f`` in ``bins`` (default 10%..50%).
* **sufficiency** (ERASER, lower is better): AOPC of ``p(x) - p(only the top k)``.
* **deletion curve / AUC** (lower is better): ``p`` after removing the top 0..n tokens one by one,
  area under the curve over the removed fraction in [0, 1].
* **insertion curve / AUC** (higher is better): ``p`` after keeping only the top 0..n tokens.
* **Kendall tau with leave-one-out** (higher is better): rank agreement between the scores and
  ``p(x) - p(x without token i)``.

Tokens are removed through the perturbation methods' ``MaskedModel`` (``mask="delete"`` by
default, as ERASER does; ``"pad"``, ``"unk"`` or a token id replace them instead); an input with
every token deleted is the single pad token. All perturbed inputs of one explanation go to the
model in one batched, de-duplicated pass.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from .base import softmax
from .explanation import Explanation
from .model import TextModel
from .perturb import DEFAULT_MAX_BATCH_TOKENS, MaskedModel, resolve_mask

AOPC_BINS = (0.1, 0.2, 0.3, 0.4, 0.5)
# metric -> True when higher is better (for tables and figures)
METRICS = {
    "comprehensiveness": True,
    "sufficiency": False,
    "deletion_auc": False,
    "insertion_auc": True,
    "loo_kendall_tau": True,
}


def rank_tokens(scores: Sequence[float]) -> np.ndarray:
    """Token positions from most to least important (highest score first, ties by position)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.argsort(-scores, kind="stable")


def _check_inputs(model: TextModel, token_ids: Sequence[int], scores: Sequence[float], target: int,
                  bins: Sequence[float], mask: str | int) -> tuple[list[int], np.ndarray]:
    if not isinstance(model, TextModel):
        raise TypeError(f"model must be a textexplain.TextModel, got {type(model).__name__}")
    ids = [int(i) for i in token_ids]
    scores = np.asarray(scores, dtype=np.float64)
    if not ids:
        raise ValueError("the explanation has no tokens: faithfulness needs at least one token")
    if scores.shape != (len(ids),):
        raise ValueError(f"scores have shape {scores.shape}, expected ({len(ids)},): one score per token")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity: fix the explanation before measuring it")
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < len(model.labels):
        raise ValueError(f"target {target!r} is out of range: use a class index 0..{len(model.labels) - 1}")
    resolve_mask(model, mask)
    if not bins or any(not 0 < f <= 1 for f in bins):
        raise ValueError(f"bins must be fractions in (0, 1], got {tuple(bins)}")
    return ids, scores


def _bin_sizes(n: int, bins: Sequence[float]) -> list[int]:
    """Number of top tokens in each bin: ceil(f * n), so every bin holds at least one token."""
    return [min(n, max(1, math.ceil(f * n - 1e-9))) for f in bins]


def _curve_steps(n: int, curve_points: int | None) -> list[int]:
    """How many top tokens are removed (or kept) at each point of the curves."""
    if curve_points is None or curve_points >= n + 1:
        return list(range(n + 1))
    if curve_points < 2:
        raise ValueError("curve_points must be at least 2 (the start and the end of the curve)")
    return sorted(set(np.round(np.linspace(0, n, curve_points)).astype(int).tolist()))


def _area(fractions: np.ndarray, values: np.ndarray) -> float:
    """Trapezoid area under a curve sampled at ``fractions`` (0..1)."""
    if len(values) < 2:
        return float(values[0]) if len(values) else float("nan")
    return float(np.sum((values[1:] + values[:-1]) * np.diff(fractions)) / 2)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall tau-b of two score vectors; NaN when it is undefined (under 2 tokens or a constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.kendalltau(a, b).statistic)


def faithfulness_scores(model: TextModel, token_ids: Sequence[int], scores: Sequence[float], target: int, *,
                        bins: Sequence[float] = AOPC_BINS, mask: str | int = "delete",
                        curve_points: int | None = None,
                        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS) -> dict[str, Any]:
    """All faithfulness metrics of one ranking of ``token_ids`` (given by ``scores``) for ``target``.

    Needs nothing but the model, so any attribution (or a hand-made ranking) can be measured.
    Every perturbed input (AOPC bins, both curves, leave-one-out) is one keep-mask; they all go
    through the perturbation methods' ``MaskedModel`` in one batched, de-duplicated pass.
    ``mask``: ``"delete"`` (ERASER), ``"pad"``, ``"unk"`` or a token id, as in the perturbation
    methods. ``curve_points`` subsamples the curves of long texts (default: every token).
    """
    ids, scores = _check_inputs(model, token_ids, scores, target, bins, mask)
    target = int(target)
    n = len(ids)
    order = rank_tokens(scores)
    ks, steps = _bin_sizes(n, bins), _curve_steps(n, curve_points)
    top = np.zeros((n + 1, n), dtype=bool)  # top[k] marks the k highest-ranked tokens
    for k in range(1, n + 1):
        top[k] = top[k - 1]
        top[k, order[k - 1]] = True
    keep = np.concatenate([
        np.ones((1, n), dtype=bool),   # the full text
        ~top[ks], top[ks],             # comprehensiveness (top k removed), sufficiency (top k kept)
        ~top[steps], top[steps],       # deletion and insertion curves
        ~np.eye(n, dtype=bool),        # leave-one-out
    ])
    masked = MaskedModel(model, ids, mask, max_batch_tokens, progress=False)
    p = softmax(masked.logits(keep))[:, target]
    p_full = float(p[0])
    comp, suff, deletion, insertion, loo = np.split(
        p[1:], np.cumsum([len(ks), len(ks), len(steps), len(steps)]))
    comp, suff, loo = p_full - comp, p_full - suff, p_full - loo
    fractions = np.asarray(steps, dtype=np.float64) / n
    return {
        "comprehensiveness": float(comp.mean()),
        "sufficiency": float(suff.mean()),
        "deletion_auc": _area(fractions, deletion),
        "insertion_auc": _area(fractions, insertion),
        "loo_kendall_tau": kendall_tau(scores, loo),
        "target": target,
        "prob": p_full,
        "bins": [float(f) for f in bins],
        "bin_sizes": ks,
        "comprehensiveness_bins": comp.tolist(),
        "sufficiency_bins": suff.tolist(),
        "curve_fractions": fractions.tolist(),
        "deletion_curve": deletion.tolist(),
        "insertion_curve": insertion.tolist(),
        "leave_one_out": loo.tolist(),
        "mask": mask,
        "n_model_evaluations": masked.n_evaluations,
    }


def faithfulness(model: TextModel, explanation: Explanation, *, store: bool = True, **options) -> dict[str, Any]:
    """Faithfulness metrics of one ``Explanation`` for its own target class.

    With ``store=True`` the metrics are also saved in ``explanation.metrics`` (under the same keys).
    ``options`` as in ``faithfulness_scores``.
    """
    if not isinstance(explanation, Explanation):
        raise TypeError(f"explanation must be a textexplain.Explanation, got {type(explanation).__name__}")
    result = faithfulness_scores(model, explanation.token_ids, explanation.scores, explanation.target, **options)
    if store:
        explanation.metrics.update(result)
    return result


def evaluate(model: TextModel, explanations: Sequence[Explanation], *, store: bool = True,
             progress: bool | None = None, **options) -> list[dict[str, Any]]:
    """Faithfulness metrics of many explanations (one batched pass each), with a progress bar."""
    from tqdm.auto import tqdm

    explanations = list(explanations)
    for e in explanations:
        if not isinstance(e, Explanation):
            raise TypeError(f"explanations must be textexplain.Explanation objects, got {type(e).__name__}")
    disable = (None if len(explanations) > 8 else True) if progress is None else not progress
    return [faithfulness(model, e, store=store, **options)
            for e in tqdm(explanations, desc="faithfulness", disable=disable)]


def comprehensiveness(model: TextModel, token_ids: Sequence[int], scores: Sequence[float], target: int,
                      **options) -> float:
    """ERASER comprehensiveness AOPC (higher = the top tokens matter more)."""
    return faithfulness_scores(model, token_ids, scores, target, **options)["comprehensiveness"]


def sufficiency(model: TextModel, token_ids: Sequence[int], scores: Sequence[float], target: int,
                **options) -> float:
    """ERASER sufficiency AOPC (lower = the top tokens alone suffice)."""
    return faithfulness_scores(model, token_ids, scores, target, **options)["sufficiency"]


def leave_one_out(model: TextModel, token_ids: Sequence[int], target: int, mask: str | int = "delete") -> np.ndarray:
    """``p(target | x) - p(target | x without token i)`` for every position i."""
    ids, _ = _check_inputs(model, token_ids, np.zeros(len(token_ids)), target, AOPC_BINS, mask)
    keep = np.concatenate([np.ones((1, len(ids)), dtype=bool), ~np.eye(len(ids), dtype=bool)])
    p = softmax(MaskedModel(model, ids, mask, progress=False).logits(keep))[:, int(target)]
    return p[0] - p[1:]


# ---------------------------------------------------------------------------------------------
# Report over a dataset sample

ExplainBatch = Callable[..., list[Explanation]]


@dataclass
class FaithfulnessReport:
    """Per-text faithfulness metrics of several methods on one model, with summary, table, figure."""

    model_name: str
    rows: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in self.rows))

    def summary(self) -> list[dict[str, Any]]:
        """Per method and metric: mean, standard deviation, median and count (NaNs left out)."""
        out = []
        for method in self.methods:
            for metric in METRICS:
                v = np.array([r[metric] for r in self.rows if r["method"] == method], dtype=np.float64)
                v = v[np.isfinite(v)]
                out.append({"method": method, "metric": metric, "n": int(v.size),
                            "mean": float(v.mean()) if v.size else float("nan"),
                            "std": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
                            "median": float(np.median(v)) if v.size else float("nan")})
        return out

    def to_markdown(self) -> str:
        """Table: one row per method, ``mean ± std`` per metric (arrows say which way is better)."""
        cells = {(s["method"], s["metric"]): s for s in self.summary()}
        head = ["method"] + [f"{m} {'↑' if up else '↓'}" for m, up in METRICS.items()] + ["n", "s/expl."]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in self.methods:
            n = sum(r["method"] == method for r in self.rows)
            secs = self.seconds.get(method)
            row = [method] + [f"{cells[method, m]['mean']:.3f} ± {cells[method, m]['std']:.3f}" for m in METRICS]
            row += [str(n), f"{secs / n:.3f}" if secs is not None and n else "-"]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)

    def figure(self):
        """Plotly box plots: one panel per metric, one box per method."""
        from plotly.subplots import make_subplots
        import plotly.graph_objects as go

        titles = [f"{m} ({'higher' if up else 'lower'} is better)" for m, up in METRICS.items()]
        fig = make_subplots(rows=1, cols=len(METRICS), subplot_titles=titles)
        palette = px_colors()
        for col, metric in enumerate(METRICS, start=1):
            for i, method in enumerate(self.methods):
                vals = [r[metric] for r in self.rows if r["method"] == method]
                color = "#7f7f7f" if method == "random" else palette[i % len(palette)]
                fig.add_trace(go.Box(y=vals, name=method, legendgroup=method, showlegend=col == 1,
                                     boxmean=True, marker_color=color), row=1, col=col)
        fig.update_layout(title=f"Faithfulness of token explanations: {self.model_name}",
                          height=420, width=320 * len(METRICS), template="plotly_white")
        fig.update_xaxes(showticklabels=False)
        return fig


def px_colors() -> list[str]:
    """The qualitative palette for one-colour-per-method figures (same method, same colour)."""
    import plotly.colors

    return list(plotly.colors.qualitative.D3)


def random_scores(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random ranking: the baseline every method should beat."""
    return rng.standard_normal(n)


RANDOM_FLOOR_METRICS = ("comprehensiveness", "sufficiency", "deletion_auc", "insertion_auc", "loo_kendall_tau")


def random_floor(model: TextModel, token_ids: Sequence[int], target: int, *, draws: int = 20, seed: int = 0,
                 **options) -> dict[str, Any]:
    """The faithfulness of random rankings, the floor every method should beat: the mean of each metric
    over ``draws`` seeded random rankings, its standard deviation (``<metric>_std``) and the mean
    curves. One draw alone is noise (its Kendall tau can beat a real method's by chance).
    ``options`` as in ``faithfulness_scores``."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    rng = np.random.default_rng(seed)
    runs = [faithfulness_scores(model, token_ids, random_scores(len(token_ids), rng), target, **options)
            for _ in range(draws)]
    out: dict[str, Any] = {"draws": draws, "seed": seed, "target": int(target), "prob": runs[0]["prob"],
                           "curve_fractions": runs[0]["curve_fractions"],
                           "n_model_evaluations": sum(r["n_model_evaluations"] for r in runs)}
    for key in RANDOM_FLOOR_METRICS:
        values = np.array([r[key] for r in runs], dtype=np.float64)
        values = values[np.isfinite(values)]
        out[key] = float(values.mean()) if values.size else float("nan")
        out[f"{key}_std"] = float(values.std()) if values.size else float("nan")
    for key in ("deletion_curve", "insertion_curve"):
        out[key] = np.mean([r[key] for r in runs], axis=0).tolist()
    return out


def faithfulness_report(model: TextModel, texts: Sequence[str], methods: Sequence[str], *,
                        method_params: dict[str, dict] | None = None, include_random: bool = True,
                        seed: int = 0, explain_batch: ExplainBatch | None = None, progress: bool = True,
                        **options) -> FaithfulnessReport:
    """Explain ``texts`` with each method (predicted class) and measure every explanation.

    ``methods`` are names for ``textexplain.explain_batch``; ``method_params`` maps a method to its
    keyword arguments. ``include_random`` adds a seeded random ranking as a baseline row.
    ``options`` go to ``faithfulness_scores`` (``bins``, ``mask``, ``curve_points``).
    """
    import time

    from tqdm.auto import tqdm

    if explain_batch is None:
        from .methods import explain_batch
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one text to evaluate")
    method_params = method_params or {}
    unknown = set(method_params) - set(methods)
    if unknown:
        raise ValueError(f"method_params names methods not in methods: {sorted(unknown)}")
    rows, seconds = [], {}
    reference: list[Explanation] | None = None
    for method in tqdm(list(methods), desc=f"faithfulness {model.name}", disable=not progress):
        start = time.perf_counter()
        expls = explain_batch(model, texts, method=method, progress=None if progress else False,
                              **method_params.get(method, {}))
        seconds[method] = time.perf_counter() - start
        reference = reference or expls
        rows += [{"method": method, "text_index": i,
                  **faithfulness_scores(model, e.token_ids, e.scores, e.target, **options)}
                 for i, e in enumerate(expls)]
    if include_random and reference is not None:
        rng = np.random.default_rng(seed)
        rows += [{"method": "random", "text_index": i,
                  **faithfulness_scores(model, e.token_ids, random_scores(len(e.token_ids), rng), e.target, **options)}
                 for i, e in enumerate(reference)]
    return FaithfulnessReport(model.name, rows, seconds)


# ------------------------------------------------------------------ classification and calibration
# Metrics of a classifier's predictions (not of its explanations): the workbench recomputes them on
# any selection of a corpus, so notebooks and the page get the same numbers.

CALIBRATION_BINS = 10


def confusion_matrix(gold: Sequence[int], predicted: Sequence[int], n_classes: int) -> np.ndarray:
    """``(C, C)`` counts: row = gold class, column = predicted class (scikit-learn's layout)."""
    gold, predicted = np.asarray(gold, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if gold.shape != predicted.shape:
        raise ValueError(f"got {gold.size} gold labels and {predicted.size} predictions: give one of each per row")
    if gold.size and (min(gold.min(), predicted.min()) < 0 or max(gold.max(), predicted.max()) >= n_classes):
        raise ValueError(f"class indices must lie in 0..{n_classes - 1}")
    return np.bincount(gold * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_scores(gold: Sequence[int], predicted: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, the confusion matrix and per-class precision, recall, F1 and support; macro averages.

    A class never predicted has precision 0, one never present recall 0 (scikit-learn's
    ``zero_division=0``), so the macro averages match ``sklearn.metrics.precision_recall_fscore_support``.
    """
    n = len(labels)
    cm = confusion_matrix(gold, predicted, n)
    tp = np.diag(cm).astype(np.float64)
    predicted_n, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted_n, out=np.zeros(n), where=predicted_n > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    total = int(cm.sum())
    return {"n": total, "accuracy": float(tp.sum() / total) if total else None, "labels": list(labels),
            "confusion": cm.tolist(),
            "per_class": [{"label": lab, "precision": float(precision[i]), "recall": float(recall[i]),
                           "f1": float(f1[i]), "support": int(support[i])} for i, lab in enumerate(labels)],
            "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())}}


def calibration(confidence: Sequence[float], correct: Sequence[bool], bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Reliability diagram and expected calibration error of top-class confidences.

    ``bins`` equal-width bins over [0, 1] (a confidence of exactly 1 falls in the last); per bin the
    count, mean confidence and accuracy; ``ece = sum_b |B_b| / n * |accuracy_b - confidence_b|``.
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    conf = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if conf.shape != correct.shape:
        raise ValueError("give one correctness flag per confidence")
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    hits = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, accuracy = conf_sum / count, hits / count
    n = int(conf.size)
    ece = float(np.sum(np.abs(hits - conf_sum)) / n) if n else None
    edges = np.linspace(0, 1, bins + 1)
    return {"ece": ece, "bins": [{"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(count[b]),
                                  "confidence": float(mean_conf[b]) if count[b] else None,
                                  "accuracy": float(accuracy[b]) if count[b] else None} for b in range(bins)]}
