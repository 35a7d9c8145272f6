"""Sanity checks for explanation methods (Adebayo et al. 2018, model-parameter randomization).

An explanation that does not change when the model's weights are destroyed is not explaining
the model. ``randomization_check`` re-initialises the layers of a *deep copy* of the model
(the user's model is never touched), either cascading from the top (logits) layer down to the
embedding or one layer at a time (independent), explains the same texts for the same target
class at every stage, and reports the Spearman rank correlation between the original and the
randomized token scores, signed and of absolute values.

Layers are the modules holding parameters, ordered by when they run in a forward pass (top =
last to run); a multi-layer ``nn.LSTM``/``nn.GRU``/``nn.RNN`` is split into its layers. A layer
is re-initialised with its module's ``reset_parameters`` (the same distribution it was trained
from), RNN sub-layers with PyTorch's ``U(-1/sqrt(H), 1/sqrt(H))``, other parameters with a
normal of their own standard deviation. Randomness is seeded per layer and never touches the
global torch RNG.
"""
from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from scipy import stats
from torch import nn

from .explanation import Explanation
from .model import TextModel

MODES = ("cascading", "independent")
DEFAULT_THRESHOLD = 0.5
ExplainFn = Callable[[TextModel, str, int], Union[Explanation, np.ndarray, Sequence[float]]]


@dataclass(frozen=True)
class Layer:
    """One randomizable layer: parameters ``params`` of the submodule ``module`` (qualified name)."""

    name: str
    module: str
    params: tuple[str, ...]


def _rnn_layer_groups(module: nn.RNNBase) -> list[tuple[str, tuple[str, ...]]]:
    groups: dict[str, list[str]] = {}
    for pname, _ in module.named_parameters(recurse=False):
        match = re.search(r"_l(\d+)", pname)
        groups.setdefault(f"l{match.group(1)}" if match else "", []).append(pname)
    return [(k, tuple(v)) for k, v in sorted(groups.items(), key=lambda kv: kv[0])]


def parameter_layers(model: TextModel, text: str | None = None) -> list[Layer]:
    """The model's layers with parameters, top (closest to the logits) first.

    The order comes from a forward pass on ``text`` (or a few unk tokens); modules that never
    run cannot change the output and are left out.
    """
    if not isinstance(model, TextModel):
        raise TypeError(f"model must be a textexplain.TextModel, got {type(model).__name__}")
    owners = {name: m for name, m in model.module.named_modules()
              if any(True for _ in m.parameters(recurse=False))}
    called: list[str] = []
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: called.append(name))
               for name, m in owners.items()]
    ids = model.encode(text) if text is not None else [model.unk_id] * 4
    try:
        model.logits_ids([ids])
    finally:
        for h in handles:
            h.remove()
    order = list(dict.fromkeys(called))
    layers: list[Layer] = []
    for name in reversed(order):
        module = owners[name]
        if isinstance(module, nn.RNNBase) and module.num_layers > 1:
            for group, params in reversed(_rnn_layer_groups(module)):
                layers.append(Layer(f"{name}.{group}" if group else name, name, params))
        else:
            params = tuple(n for n, _ in module.named_parameters(recurse=False))
            layers.append(Layer(name or type(module).__name__, name, params))
    return layers


@torch.no_grad()
def _randomize(module: nn.Module, layer: Layer, seed: int) -> None:
    sub = module.get_submodule(layer.module)
    own = {n for n, _ in sub.named_parameters(recurse=False)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if set(layer.params) == own and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
            return
        for pname in layer.params:
            p = getattr(sub, pname)
            if isinstance(sub, nn.RNNBase):
                bound = 1 / math.sqrt(sub.hidden_size)
                p.uniform_(-bound, bound)
            else:
                std = float(p.std()) if p.numel() > 1 else 0.0
                p.normal_(0.0, std if std > 0 else 0.02)


def randomized_copy(model: TextModel, layers: Sequence[Layer], seed: int = 0,
                    all_layers: Sequence[Layer] | None = None) -> TextModel:
    """A deep copy of ``model`` with ``layers`` re-initialised (the original stays untouched).

    The seed of a layer depends on ``seed`` and its position in ``all_layers`` (default: the
    model's ``parameter_layers``), so a layer gets the same random weights in every stage.
    """
    all_layers = list(all_layers) if all_layers is not None else parameter_layers(model)
    clone = copy.deepcopy(model)
    for layer in layers:
        if layer not in all_layers:
            raise ValueError(f"layer {layer.name!r} is not a layer of this model: "
                             f"choose from {[l.name for l in all_layers]}")
        _randomize(clone.module, layer, seed * 10_007 + all_layers.index(layer))
    clone.module.eval()
    return clone


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation; NaN when undefined (under 2 tokens or a constant vector)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def _explainers(methods, method_params: dict[str, dict] | None) -> dict[str, ExplainFn]:
    """Normalise method names / callables / a dict of them into ``{name: fn(model, text, target)}``."""
    if isinstance(methods, (str, dict)) or callable(methods):
        methods = methods if isinstance(methods, dict) else [methods]
    if not isinstance(methods, dict):
        methods = {(m if isinstance(m, str) else getattr(m, "__name__", repr(m))): m for m in methods}
    if not methods:
        raise ValueError("methods is empty: give method names (e.g. 'gradient') or explain functions")
    method_params = method_params or {}
    out: dict[str, ExplainFn] = {}
    for name, m in methods.items():
        if isinstance(m, str):
            from .methods import explain

            params = method_params.get(name, {})
            out[name] = lambda model, text, target, m=m, params=params: explain(
                model, text, method=m, target=target, **params)
        elif callable(m):
            out[name] = m
        else:
            raise TypeError(f"method {name!r} must be a method name or a callable (model, text, target) -> scores")
    return out


def _scores(result) -> np.ndarray:
    return np.asarray(result.scores if isinstance(result, Explanation) else result, dtype=np.float64)


@dataclass
class SanityResult:
    """Per-text correlations of every method at every randomization stage."""

    model_name: str
    layers: list[str]
    records: list[dict[str, Any]]
    threshold: float = DEFAULT_THRESHOLD
    check_stage: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in self.records))

    def stages(self, mode: str) -> list[str]:
        return list(dict.fromkeys(r["stage"] for r in self.records if r["mode"] == mode))

    def summary(self) -> list[dict[str, Any]]:
        """Mean and standard deviation of both correlations per mode, stage and method."""
        out = []
        for mode in MODES:
            for stage in self.stages(mode):
                for method in self.methods:
                    rows = [r for r in self.records if (r["mode"], r["stage"], r["method"]) == (mode, stage, method)]
                    entry = {"mode": mode, "stage": stage, "method": method}
                    for key in ("spearman", "spearman_abs"):
                        v = np.array([r[key] for r in rows], dtype=np.float64)
                        v = v[np.isfinite(v)]
                        entry[key] = float(v.mean()) if v.size else float("nan")
                        entry[key + "_std"] = float(v.std()) if v.size else float("nan")
                    entry["n"] = len(rows)
                    out.append(entry)
        return out

    def passed(self) -> dict[str, bool]:
        """Per method: True when, at ``check_stage`` of the cascade (every layer above the embedding
        randomized), both |mean Spearman| and the mean Spearman of absolute scores are below
        ``threshold``: the explanation follows the weights."""
        at = {r["method"]: r for r in self.summary() if r["mode"] == "cascading" and r["stage"] == self.check_stage}
        if not at:
            raise ValueError("passed() needs a cascading randomization: run with mode='cascading' or 'both'")
        return {m: bool(abs(r["spearman"]) < self.threshold and r["spearman_abs"] < self.threshold)
                for m, r in at.items()}

    def to_markdown(self) -> str:
        """One table per mode: rows are methods, columns stages, cells ``ρ / ρ(|·|)``."""
        cells = {(s["mode"], s["stage"], s["method"]): s for s in self.summary()}
        verdict = self.passed() if any(r["mode"] == "cascading" for r in self.records) else {}
        parts = []
        for mode in MODES:
            stages = self.stages(mode)
            if not stages:
                continue
            head = ["method"] + stages + (["passes"] if mode == "cascading" else [])
            how = ("cumulative, top layer first" if mode == "cascading"
                   else "one layer at a time, the rest trained")
            lines = [f"**{mode}** randomization ({how}; Spearman ρ signed / of absolute scores)", "",
                     "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for method in self.methods:
                row = [method] + [f"{cells[mode, st, method]['spearman']:.2f} / "
                                  f"{cells[mode, st, method]['spearman_abs']:.2f}" for st in stages]
                if mode == "cascading":
                    row.append("yes" if verdict.get(method) else "**no**")
                lines.append("| " + " | ".join(row) + " |")
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def figure(self):
        """Adebayo-style plotly figure: correlation per stage, one line per method (± std)."""
        from plotly.subplots import make_subplots
        import plotly.graph_objects as go

        from .metrics import px_colors

        modes = [m for m in MODES if self.stages(m)]
        titles = [f"{mode}: {kind}" for mode in modes
                  for kind in ("Spearman ρ (signed)", "Spearman ρ (absolute scores)")]
        fig = make_subplots(rows=len(modes), cols=2, subplot_titles=titles, vertical_spacing=0.18)
        colors = px_colors()
        summary = self.summary()
        for row, mode in enumerate(modes, start=1):
            for col, key in enumerate(("spearman", "spearman_abs"), start=1):
                for i, method in enumerate(self.methods):
                    pts = [s for s in summary if s["mode"] == mode and s["method"] == method]
                    fig.add_trace(go.Scatter(
                        x=[s["stage"] for s in pts], y=[s[key] for s in pts], mode="lines+markers",
                        error_y=dict(type="data", array=[s[key + "_std"] for s in pts], thickness=1),
                        name=method, legendgroup=method, showlegend=row == 1 and col == 1,
                        line=dict(color=colors[i % len(colors)])), row=row, col=col)
                fig.add_hline(y=self.threshold, line_dash="dot", line_color="grey", row=row, col=col)
                fig.add_hline(y=-self.threshold, line_dash="dot", line_color="grey", row=row, col=col)
                fig.update_yaxes(range=[-1.05, 1.05], row=row, col=col)
                fig.update_xaxes(title_text="layers randomized from the top (cumulative)" if mode == "cascading"
                                 else "layer randomized alone", row=row, col=col)
        fig.update_layout(title=f"Model-parameter randomization: {self.model_name}", template="plotly_white",
                          height=380 * len(modes), width=1100)
        return fig


def randomization_check(model: TextModel, texts: Sequence[str], methods, *, mode: str = "cascading",
                        target: int | str | None = None, seed: int = 0, method_params: dict[str, dict] | None = None,
                        threshold: float = DEFAULT_THRESHOLD, include_original: bool = True,
                        progress: bool = True) -> SanityResult:
    """Model-parameter randomization test of one or more explanation methods.

    ``methods``: a method name for ``textexplain.explain``, a callable
    ``fn(model, text, target) -> Explanation | scores``, or a list / ``{name: method}`` dict of them.
    ``mode``: ``"cascading"`` (top layer first, cumulative), ``"independent"`` (one layer at a
    time) or ``"both"``. Every text is explained for ``target`` (default: the class the original
    model predicts), so only the weights change between stages. ``include_original`` adds a stage
    that re-explains with intact weights (1.0 for deterministic methods; lower shows noise).
    """
    from tqdm.auto import tqdm

    modes = MODES if mode == "both" else (mode,)
    if any(m not in MODES for m in modes):
        raise ValueError(f"unknown mode {mode!r}: use 'cascading', 'independent' or 'both'")
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one text to explain")
    explainers = _explainers(methods, method_params)
    base = copy.deepcopy(model)  # the user's model is never explained, randomized or re-moded here
    base.module.eval()
    layers = parameter_layers(base, texts[0])
    probs = base.predict_proba(texts)
    targets = [base.label_index(target, p) for p in probs]

    stages: list[tuple[str, str, list[Layer]]] = []
    for m in modes:
        if include_original:
            stages.append((m, "original", []))
        for i, layer in enumerate(layers):
            stages.append((m, layer.name, layers[: i + 1] if m == "cascading" else [layer]))

    def explain_all(tm: TextModel) -> dict[str, list[np.ndarray]]:
        out = {}
        for name, fn in explainers.items():
            out[name] = []
            for text, y in zip(texts, targets):
                s = _scores(fn(tm, text, y))
                if s.shape != (len(tm.tokenize(text)),):
                    raise ValueError(f"method {name!r} returned {s.shape[0] if s.ndim else 0} scores for "
                                     f"{len(tm.tokenize(text))} tokens: it must give one score per token")
                out[name].append(s)
        return out

    total = 1 + len(stages)
    bar = tqdm(total=total, desc=f"randomization {base.name}", disable=not progress)
    reference = explain_all(base)
    bar.update()
    records = []
    for m, stage, randomized in stages:
        explained = explain_all(randomized_copy(base, randomized, seed, layers))
        for name in explainers:
            for i, (a, b) in enumerate(zip(reference[name], explained[name])):
                records.append({"mode": m, "stage": stage, "method": name, "text_index": i,
                                "layers": [l.name for l in randomized],
                                "spearman": spearman(a, b), "spearman_abs": spearman(np.abs(a), np.abs(b))})
        bar.update()
    bar.close()
    emb = next((l.name for l in layers if base.module.get_submodule(l.module) is base.embedding), None)
    above = [l.name for l in layers if l.name != emb]
    check_stage = above[-1] if above else (layers[-1].name if layers else None)
    return SanityResult(base.name, [l.name for l in layers], records, threshold, check_stage,
                        {"seed": seed, "targets": targets, "n_texts": len(texts)})


@dataclass
class DataRandomizationResult:
    """Per-text Spearman correlations between explanations of the trained model and of the same
    architecture trained on permuted labels (Adebayo et al. 2018, data randomization test)."""

    model_name: str
    randomized_name: str
    records: list[dict[str, Any]]
    threshold: float = DEFAULT_THRESHOLD

    def summary(self) -> list[dict[str, Any]]:
        """Per method: mean and standard deviation of both correlations over the texts."""
        out = []
        for method in dict.fromkeys(r["method"] for r in self.records):
            rows = [r for r in self.records if r["method"] == method]
            entry: dict[str, Any] = {"method": method, "n": len(rows)}
            for key in ("spearman", "spearman_abs"):
                v = np.array([r[key] for r in rows], dtype=np.float64)
                v = v[np.isfinite(v)]
                entry[key] = float(v.mean()) if v.size else float("nan")
                entry[key + "_std"] = float(v.std()) if v.size else float("nan")
            entry["passes"] = bool(abs(entry["spearman"]) < self.threshold and entry["spearman_abs"] < self.threshold)
            out.append(entry)
        return out

    def to_markdown(self) -> str:
        lines = [f"**data randomization** ({self.model_name} vs {self.randomized_name}; Spearman ρ signed / of "
                 "absolute scores, mean ± std over texts)", "",
                 "| method | ρ | ρ(\\|·\\|) | texts | passes |", "|---|---|---|---|---|"]
        for s in self.summary():
            lines.append(f"| {s['method']} | {s['spearman']:.2f} ± {s['spearman_std']:.2f} | "
                         f"{s['spearman_abs']:.2f} ± {s['spearman_abs_std']:.2f} | {s['n']} | "
                         f"{'yes' if s['passes'] else '**no**'} |")
        return "\n".join(lines)


def data_randomization_check(model: TextModel, randomized: TextModel, texts: Sequence[str], methods, *,
                             target: int | str | None = None, method_params: dict[str, dict] | None = None,
                             threshold: float = DEFAULT_THRESHOLD, progress: bool = True,
                             report: Callable[[int, int, str], None] | None = None) -> DataRandomizationResult:
    """Data randomization test: explain ``texts`` with ``model`` and with ``randomized`` (the same
    architecture trained on permuted labels, e.g. ``sentiment-cnn-randlabels``) for the same target
    (default: the class ``model`` predicts) and correlate the token scores per text.

    A method passes when both |mean ρ| and mean ρ(|·|) fall below ``threshold``: its explanations
    depend on what the labels taught the model. ``methods`` as for ``randomization_check``. Both
    models are explained as deep copies in eval mode; ``report(done, total, note)`` gets progress.
    """
    from tqdm.auto import tqdm

    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one text to explain")
    if list(model.vocab.itos) != list(randomized.vocab.itos) or list(model.labels) != list(randomized.labels):
        raise ValueError("the randomized model must share the model's vocabulary and labels (the same recipe on "
                         "permuted labels), so the same tokens and classes are explained")
    explainers = _explainers(methods, method_params)
    base, rand = copy.deepcopy(model), copy.deepcopy(randomized)
    base.module.eval()
    rand.module.eval()
    targets = [base.label_index(target, p) for p in base.predict_proba(texts)]
    total = len(texts) * len(explainers)
    records, done = [], 0
    bar = tqdm(total=total, desc=f"data randomization {base.name}", disable=not progress)
    for name, fn in explainers.items():
        for i, (text, y) in enumerate(zip(texts, targets)):
            a, b = _scores(fn(base, text, y)), _scores(fn(rand, text, y))
            records.append({"method": name, "text_index": i, "target": y,
                            "spearman": spearman(a, b), "spearman_abs": spearman(np.abs(a), np.abs(b))})
            done += 1
            bar.update()
            if report is not None:
                report(done, total, f"{name}: text {i + 1} of {len(texts)}")
    bar.close()
    return DataRandomizationResult(base.name, rand.name, records, threshold)
