"""Sanity checks for saliency maps (Adebayo et al. 2018): model parameter randomization.

Re-initialize the model's layers -- cumulatively from the logits down ("cascading") or one at a
time ("independent") -- on a deep copy, and measure how similar each method's maps stay to the
maps of the trained model (Spearman rank correlation per image, signed and of |maps|). A method
whose maps barely change does not depend on what the model learned.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn
from tqdm.auto import tqdm

from .base import METHODS, Configurable, ImageMethod, TargetSpec, check_images, pixel_map, predicted_or_given

MODES = ("cascading", "independent")


def randomizable_layers(model: nn.Module) -> list[str]:
    """Names of modules with their own parameters and a ``reset_parameters`` method, input to output."""
    return [name for name, m in model.named_modules()
            if name and hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))]


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row of ``a`` with the same row of ``b``; NaN for a constant row."""
    ra = np.apply_along_axis(rankdata, 1, a)
    rb = np.apply_along_axis(rankdata, 1, b)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(1) / np.where(denom > 0, denom, 1), np.nan)


@dataclass
class SanityResult:
    """Rows of (method, mode, step, layer, spearman, spearman_abs, n_defined)."""

    rows: list[dict] = field(default_factory=list)

    def to_markdown(self, digits: int = 3) -> str:
        head = "| method | mode | randomized up to | Spearman (signed) | Spearman (abs) | images |\n|---|---|---|---|---|---|"
        lines = [f"| {r['method']} | {r['mode']} | {r['layer']} | {r['spearman']:.{digits}f} | "
                 f"{r['spearman_abs']:.{digits}f} | {r['n_defined']}/{r['n']} |" for r in self.rows]
        return "\n".join([head, *lines])

    def figure(self):
        """Plotly line chart: similarity to the trained model's maps per randomized layer."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for method in dict.fromkeys(r["method"] for r in self.rows):
            rows = [r for r in self.rows if r["method"] == method]
            fig.add_trace(go.Scatter(x=[r["layer"] for r in rows], y=[r["spearman_abs"] for r in rows],
                                     mode="lines+markers", name=method))
        mode = self.rows[0]["mode"] if self.rows else ""
        fig.update_layout(title=f"Model randomization ({mode}): Spearman correlation of |maps| with the trained model",
                          xaxis_title="randomized layer", yaxis_title="Spearman rank correlation",
                          yaxis_range=[-0.2, 1.05], template="plotly_white")
        return fig


class ModelRandomization(Configurable):
    """Parameter randomization test over one or more attribution methods.

    ``methods``: registry names (default hyperparameters) or configured ``ImageMethod`` instances
    (their hyperparameters are reused on the copies; give layers by name). ``mode``: "cascading"
    (re-initialize from the logits down, cumulatively) or "independent" (one layer at a time).
    Layers are re-initialized with their own ``reset_parameters`` under ``seed + step``; the
    global RNG state and the user's model are left as they were.
    """

    def __init__(self, model: nn.Module, methods: Sequence[str | ImageMethod] = ("gradient", "gradcam",
                 "guided_backprop"), mode: str = "cascading", seed: int = 42, progress: bool = True):
        super().__init__(model)
        self.methods = methods
        self.mode = mode
        self.seed = seed
        self.progress = progress

    def _method_list(self) -> list[tuple[str, ImageMethod]]:
        out = []
        for m in self.methods:
            if isinstance(m, str):
                if m not in METHODS:
                    raise ValueError(f"unknown image method {m!r}; methods are {', '.join(sorted(METHODS))}")
                out.append((m, METHODS[m](self.model)))
            elif isinstance(m, ImageMethod):
                out.append((m.name, m))
            else:
                raise TypeError(f"methods must be registry names or ImageMethod instances, got {type(m).__name__}")
        return out

    def run(self, x: torch.Tensor, target: TargetSpec = None) -> SanityResult:
        """Randomize, re-explain ``x`` for the same targets, and compare; returns a :class:`SanityResult`."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        x = check_images(x)
        methods = self._method_list()
        targets = predicted_or_given(self.model, x, target)  # the trained model's classes throughout
        original = {name: pixel_map(m.attribute(x, targets)).flatten(1).cpu().numpy() for name, m in methods}
        layers = randomizable_layers(self.model)[::-1]  # from the logits down
        if not layers:
            raise ValueError("the model has no layers with parameters and reset_parameters()")
        result = SanityResult()
        randomized = copy.deepcopy(self.model)
        for step, name in enumerate(tqdm(layers, desc=f"{self.mode} randomization", disable=not self.progress)):
            if self.mode == "independent":
                randomized = copy.deepcopy(self.model)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + step)
                randomized.get_submodule(name).reset_parameters()
            for method_name, method in methods:
                maps = pixel_map(method.clone_for(randomized).attribute(x, targets)).flatten(1).cpu().numpy()
                signed = spearman_rows(original[method_name], maps)
                absolute = spearman_rows(np.abs(original[method_name]), np.abs(maps))
                result.rows.append({
                    "method": method_name, "mode": self.mode, "step": step, "layer": name,
                    "spearman": float(np.nanmean(signed)) if np.isfinite(signed).any() else float("nan"),
                    "spearman_abs": float(np.nanmean(absolute)) if np.isfinite(absolute).any() else float("nan"),
                    "n_defined": int(np.isfinite(absolute).sum()), "n": len(x)})
        return result


class DataRandomization(ModelRandomization):
    """Data randomization test (Adebayo et al. 2018): the maps of ``model`` against those of
    ``randomized``, the same architecture trained on permuted labels (e.g. ``mnist-cnn-randlabels``),
    for the same targets (default: ``model``'s predictions). One row per method, mode ``"data"``.
    """

    def __init__(self, model: nn.Module, randomized: nn.Module, methods: Sequence[str | ImageMethod] = (
                 "gradient", "gradcam", "guided_backprop"), progress: bool = True):
        super().__init__(model, methods, mode="cascading", progress=progress)
        self.randomized = randomized

    def run(self, x: torch.Tensor, target: TargetSpec = None) -> SanityResult:
        """Explain ``x`` with both models and compare per image; returns a :class:`SanityResult`."""
        x = check_images(x)
        methods = self._method_list()
        targets = predicted_or_given(self.model, x, target)
        randomized = copy.deepcopy(self.randomized)
        result = SanityResult()
        for method_name, method in tqdm(methods, desc="data randomization", disable=not self.progress):
            original = pixel_map(method.attribute(x, targets)).flatten(1).cpu().numpy()
            maps = pixel_map(method.clone_for(randomized).attribute(x, targets)).flatten(1).cpu().numpy()
            signed = spearman_rows(original, maps)
            absolute = spearman_rows(np.abs(original), np.abs(maps))
            result.rows.append({
                "method": method_name, "mode": "data", "step": 0, "layer": "randomized labels",
                "spearman": float(np.nanmean(signed)) if np.isfinite(signed).any() else float("nan"),
                "spearman_abs": float(np.nanmean(absolute)) if np.isfinite(absolute).any() else float("nan"),
                "n_defined": int(np.isfinite(absolute).sum()), "n": len(x)})
        return result
