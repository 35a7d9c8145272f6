"""Integrated Gradients at the embedding layer, with the completeness delta on every result."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import warnings

import numpy as np
import torch

from .base import (INTERNAL_BATCH_HELP, OUTPUT_HELP, OUTPUTS, Attribution, Explainer, Prepared, baseline_embeddings,
                   check_choice, check_positive_int, embed, forward_at_embeddings, reduce_dims, resolve_target,
                   row_chunks, rows_per_pass, select_output)
from .convergence import COMPLETENESS_TOLERANCE, Convergence, IncompleteIntegralWarning, default_max_steps, relative_gap
from .hyperparameters import Hyper
from .model import TextModel

FIXED_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
RULES = FIXED_RULES + ("adaptive",)
PRECISIONS = ("model", "float64", "auto")

# The adaptive rule (see ``adaptive_nodes``). Chosen on the first 40 test sentences of the shipped
# classifiers (benchmarks/bench_explain.py, section completeness).
PROBES = 9             # uniform forward-only probes of F(alpha), the ends included
ZOOM_ROUNDS = 4        # rounds that split the probe interval with the largest |dF| ...
ZOOM_PARTS = 4         # ... into this many parts
ZOOM_SHARE = 0.05      # ... while that interval holds more than this share of the total variation
ZOOM_DENSITY = 2.0     # ... and more than twice its share of [0, 1] (F changes faster there than on average)
UNIFORM_MASS = 0.3     # node density ~ |dF| + UNIFORM_MASS * (mean |dF| per unit alpha)
DENSITY_CUT = 8.0      # segments end where that density jumps by more than this factor
NODES_PER_SEGMENT = 5  # Gauss-Legendre nodes per segment of the composite rule
SECOND_PASS = 0.2      # share of the gradient evaluations kept for the worst segment
SECOND_PASS_PROBES = 6
EARLY_EXIT = 3e-3      # no second pass when the first already closes the gap to this share of |F(x) - F(x')|
REFINE_MIN = 10        # gradient evaluations per refinement pass beyond n_steps (max_steps), at least
SPLIT_ULPS = 64        # segments narrower than this many steps of the path's precision are not split
JUMP_SHARE = 0.5       # refinement first zooms, by probes alone, into a probe interval holding more than this share
                       # of its segment's |dF|, down to the path's precision if F jumps there (``locate_jump``)
STALLED_ROUNDS = 2     # refinement stops after this many rounds in a row that neither halve their segment's gap
                       # nor close 1% of |F(x) - F(x')| once jumps the precision cannot resolve miss the tolerance
                       # (long RNN texts)


@lru_cache(maxsize=64)
def quadrature(n_steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alpha`` in [0, 1] and weights (summing to 1) for integrating over the path (cached:
    Gauss-Legendre nodes cost an eigenvalue problem). Treat the arrays as read-only. Fixed rules only:
    ``"adaptive"`` places its nodes per input (``IntegratedGradients(method="adaptive")``)."""
    if rule == "adaptive":
        raise ValueError("method='adaptive' places its nodes per input from probes of the model: it has no "
                         f"fixed quadrature; use one of {', '.join(map(repr, FIXED_RULES))}")
    check_choice("method", rule, FIXED_RULES)
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        nodes, weights = (nodes + 1) / 2, weights / 2
    elif rule == "riemann_trapezoid":
        if n_steps < 2:
            raise ValueError("the trapezoid rule needs n_steps >= 2")
        nodes, weights = np.linspace(0.0, 1.0, n_steps), np.full(n_steps, 1.0 / (n_steps - 1))
        weights[[0, -1]] /= 2
    else:
        offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
        nodes, weights = (np.arange(n_steps) + offset) / n_steps, np.full(n_steps, 1.0 / n_steps)
    nodes.setflags(write=False)
    weights.setflags(write=False)
    return nodes, weights


class IntegratedGradients(Explainer, name="integrated_gradients", title="Integrated Gradients"):
    """IG (Sundararajan et al. 2017) along the straight line from baseline to input embeddings.

    ``baseline``: ``"pad"`` (default: the pad token's embedding at every position, so the sequence
    keeps its length because the ids still say where the text is), ``"zero"``, ``"unk"``, one token
    id, or one id per token. Score per token = signed sum over embedding dims of
    ``(x - x') * avg_grad``. Every result carries ``delta = sum(scores) - (F(x) - F(x'))`` and
    ``convergence`` (``Convergence``: ``relative_delta`` = |delta| / |F(x) - F(x')|, ``converged``
    (False above 1%), rows evaluated, precision). The engine is ``integrate``, which explains any
    scalar output of the embedding layer's output; here F is a class logit (``ClassOutput``).

    ``method`` is the quadrature over the path; ``n_steps`` gradient evaluations (at most, for
    ``"adaptive"``):

    - ``"adaptive"`` (default): composite Gauss-Legendre whose nodes follow where F changes. A few
      forward-only probes of F(alpha) (no gradients; about a quarter of a gradient evaluation each)
      locate fast changes -- RNN states flip along the path within 1e-3 of alpha or less, which a
      fixed rule's nodes straddle -- and nodes go where F changes (``adaptive_nodes``); the segment
      whose completeness gap is largest (known exactly: F is probed at every segment end) is
      integrated again with the last 20% of the evaluations, unless the first 80% already close the
      completeness gap to ``EARLY_EXIT`` (0.3%) of |F(x) - F(x')|. Still IG, only a better
      quadrature; ``convergence.n_probe_rows`` counts the probes (9 to 27), ``n_gradient_rows``
      the gradient evaluations.
    - ``"gausslegendre"`` or a Riemann rule: fixed nodes, no probes (``quadrature``).

    ``precision``: ``"model"`` (default) runs the path at the model's own precision; ``"float64"`` on a
    float64 copy of the model (``TextModel.float64``, about 5x slower on CPU); ``"auto"`` at the model's
    precision first and again in float64 only when refinement found a gap it cannot resolve at that
    precision (``convergence.unresolved_alpha``, adaptive rule) and float64 probes find F continuous
    there (``jump_persists``; on long texts F jumps in float64 too, and the float32 result stays). Why: on longer texts an
    RNN's state can flip over a stretch of alpha narrower than float32 resolves -- F then jumps between
    neighbouring float32 inputs and no number of steps closes the gap (sentiment-lstm, 50-token texts:
    15% of them at ``max_steps=1000`` in float32, none in float64; benchmarks/results/explain.md).
    ``convergence.precision`` names the precision of the result.

    ``max_steps`` (adaptive only; default None = ``4 * n_steps``, ``convergence.default_max_steps``;
    ``n_steps`` turns it off): a larger budget that is spent only while the completeness gap is above
    ``COMPLETENESS_TOLERANCE`` (1%), on the segment with the largest known gap (``adaptive_nodes`` step
    4). On the shipped LSTM's hard sentences 50 evaluations are not enough (steep, narrow state flips);
    ``n_steps=50, max_steps=200`` converges them and changes nothing on the others
    (benchmarks/results/explain.md). Refinement stops early where the gap keeps turning out to be jumps
    no precision resolves (long RNN texts: F is a staircase of state flips; benchmarks/bench_ig_long.py):
    ``convergence.unresolved_relative_delta`` is their share of the gap. A result that misses the
    tolerance warns (``IncompleteIntegralWarning``).

    F(x) and F(x') come from a forward-only pass (the probes for ``"adaptive"``); gradient passes
    run in chunks (``internal_batch_size`` rows, default ``base.row_chunks``).
    """

    n_steps = Hyper(int, 50, ge=1, api_le=300, help="points on the path (default 50)")
    method = Hyper(str, "adaptive", choices=RULES,
                   help="quadrature rule (default adaptive: probes follow RNN state flips; gausslegendre: fixed)")
    baseline = Hyper((str, int, list, tuple, np.ndarray, torch.Tensor), "pad", choices=("pad", "zero", "unk"),
                     other_values="a token id or one token id per token", help="reference input (default pad embeddings)")
    internal_batch_size = Hyper(int, None, ge=1, api=False, help=INTERNAL_BATCH_HELP)
    output = Hyper(str, "logit", choices=OUTPUTS, help=OUTPUT_HELP)
    max_steps = Hyper(int, None, ge=1, api_le=1000,
                      help="adaptive rule only: keep refining while the completeness gap is above 1%, up to this many "
                           "gradient evaluations (default 4 x n_steps; n_steps turns refinement off)")
    precision = Hyper(str, "model", choices=PRECISIONS,
                      help="model (default): the model's own float32; float64: a float64 copy (about 5x slower; RNN "
                           "state flips can be narrower than float32 resolves); auto: float64 only when the adaptive "
                           "rule finds a completeness gap float32 cannot resolve and float64 probes can")

    def _validate(self) -> None:
        if self.method in FIXED_RULES:
            quadrature(self.n_steps, self.method)  # the rule's own limits (the trapezoid needs n_steps >= 2)
        check_max_steps(self.max_steps, self.n_steps, self.method)
        if isinstance(self.baseline, str):
            check_choice("baseline", self.baseline, ("pad", "zero", "unk"))

    def _attribute(self, prepared: Prepared, target) -> Attribution:
        result = self._at_precision(prepared, target)
        if not result.convergence.converged:
            warn_incomplete(result.convergence, self.method, self.precision)
        return result

    def _at_precision(self, prepared: Prepared, target) -> Attribution:
        """IG at the requested ``precision`` (for ``"auto"``: float64 where float32 found a gap it cannot resolve)."""
        if self.precision == "float64":
            return self._integrate(self.model.float64(), prepared.ids, target)
        result = self._integrate(self.model, prepared.ids, target)
        first = result.convergence
        if self.precision == "auto" and first.unresolved_alpha is not None:  # more precision may help, more steps not
            double = self.model.float64()
            persists, n_checked = jump_persists(ClassOutput(double, prepared.ids, result.target),
                                                embed(double, prepared.ids)[0],
                                                baseline_embeddings(double, prepared.ids, self.baseline)[0],
                                                first.unresolved_alpha)
            if persists:  # a jump in float64 too (long texts): the float32 result is as good, at a fifth of the cost
                result.convergence = replace(first, n_probe_rows=first.n_probe_rows + n_checked)
                return result
            result = self._integrate(double, prepared.ids, result.target)
            result.convergence = replace(  # the work of both passes and the check
                result.convergence, model_precision_relative_delta=first.relative_delta,
                n_gradient_rows=result.convergence.n_gradient_rows + first.n_gradient_rows,
                n_probe_rows=result.convergence.n_probe_rows + first.n_probe_rows + n_checked)
        return result

    def _integrate(self, model: TextModel, ids: torch.Tensor, target) -> Attribution:
        """IG on ``model`` (the explained model or its float64 copy)."""
        output = ClassOutput(model, ids, target, self.output)
        batch = self.internal_batch_size or rows_per_pass(model, ids.shape[1])
        path = integrate(output, embed(model, ids)[0], baseline_embeddings(model, ids, self.baseline)[0],
                         self.n_steps, self.method, self.max_steps, batch)
        return Attribution(path.scores(), output.input_logits, output.target, delta=path.delta,
                           convergence=path.convergence)


def warn_incomplete(convergence: Convergence, rule: str, precision: str = "model") -> None:
    """Say that a result misses completeness: one fixed sentence per cause, so that a batch says it once (the
    figures are in ``convergence``)."""
    if convergence.unresolved_alpha is not None:
        why = (f"F jumps along the path between neighbouring {convergence.precision} inputs (state flips of an RNN "
               "on a long text), which no number of steps resolves; convergence.unresolved_relative_delta is their "
               "share" + (" (precision='auto' asks whether float64 resolves them)" if precision == "model" else ""))
    elif rule == "adaptive":
        why = "the gradient budget ran out first: raise max_steps"
    else:
        why = "raise n_steps, or use method='adaptive'"
    warnings.warn(f"Integrated Gradients misses completeness by more than {COMPLETENESS_TOLERANCE:.0%} of "
                  f"|F(x) - F(x')| (convergence.relative_delta): {why}", IncompleteIntegralWarning, stacklevel=2)


def check_max_steps(max_steps: int | None, n_steps: int, rule: str, name: str = "method") -> None:
    """``max_steps`` refines the adaptive rule only, and is at least ``n_steps`` (``name``: what the caller
    calls the rule argument)."""
    if max_steps is None:
        return
    check_positive_int("max_steps", max_steps)
    if rule != "adaptive":
        raise ValueError(f"max_steps refines the adaptive rule's segments; {name}={rule!r} has fixed nodes: raise "
                         f"n_steps instead, or use {name}='adaptive'")
    if max_steps < n_steps:
        raise ValueError(f"max_steps ({max_steps}) must be at least n_steps ({n_steps})")


def path_rows(x: torch.Tensor, x_ref: torch.Tensor, alphas) -> torch.Tensor:
    """``x' + alpha (x - x')`` for each alpha, ``(K, T, E)``; alpha 0 and 1 give the ends exactly."""
    alphas = torch.tensor(np.asarray(alphas, dtype=np.float64), dtype=x.dtype)
    out = torch.addcmul(x_ref, alphas[:, None, None], x - x_ref)
    out[alphas == 0], out[alphas == 1] = x_ref, x  # the ends exactly, not up to rounding
    return out


def path_origin(x: torch.Tensor, x_ref: torch.Tensor) -> float:
    """``|x'| / |x - x'|``: where the path's inputs ``x' + alpha (x - x')`` sit, in units of alpha, at
    alpha 0 (0 for a zero baseline, whose inputs are as precise near alpha 0 as alpha itself)."""
    step = float(torch.linalg.vector_norm(x - x_ref))
    return float(torch.linalg.vector_norm(x_ref)) / step if step > 0 else 0.0


def path_derivative(grads: torch.Tensor, x: torch.Tensor, x_ref: torch.Tensor) -> np.ndarray:
    """dF/dalpha at each gradient row ``(K, T, E)`` (chain rule along the straight path)."""
    return torch.einsum("kte,te->k", grads, x - x_ref).double().numpy()


ScalarOutput = Callable[[torch.Tensor], torch.Tensor]  # substitute embeddings (K, T, E) -> F (K,)


class ClassOutput:
    """F of a classifier: the ``target`` class's logit or probability (``output``) of ``model`` on ``ids
    (1, T)`` with the embedding output substituted by each row -- the scalar ``IntegratedGradients``
    explains. ``target`` (index, label, None = predicted) is resolved from the first row evaluated,
    which ``integrate`` makes the input itself; ``input_logits`` keeps that row's logits. One per call
    (it holds the resolved target)."""

    def __init__(self, model: TextModel, ids: torch.Tensor, target: int | str | None, output: str = "logit"):
        self.model, self.ids, self.requested, self.output = model, ids, target, output
        self.target: int | None = None
        self.input_logits: np.ndarray | None = None

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        logits = forward_at_embeddings(self.model, self.ids.expand(rows.shape[0], -1), rows)
        if self.input_logits is None:
            self.input_logits = logits[0].detach().double().numpy()
            self.target = resolve_target(self.model, self.requested, self.input_logits)
        return select_output(logits, self.target, self.output)


def values_at(output: ScalarOutput, rows: torch.Tensor, internal_batch_size: int | None = None) -> np.ndarray:
    """F at each row of ``rows (K, T, E)``, float64 ``(K,)``; forward only (``torch.inference_mode``: no
    autograd graph), in chunks (``row_chunks``)."""
    with torch.inference_mode():
        parts = [output(rows[part]) for part in row_chunks(rows.shape[0], rows.shape[1], internal_batch_size)]
        return torch.cat(parts).double().numpy()


def gradients_at(output: ScalarOutput, rows: torch.Tensor, internal_batch_size: int | None = None
                 ) -> tuple[torch.Tensor, np.ndarray]:
    """dF/d(embeddings) at each row of ``rows (K, T, E)``, and F ``(K,)``, in chunks (``row_chunks``).
    Only the rows get gradients (``torch.autograd.grad``): a model's parameters and their ``.grad`` are
    never touched."""
    from tqdm.auto import tqdm

    grads, values = torch.empty_like(rows), np.empty(rows.shape[0])
    chunks = row_chunks(rows.shape[0], rows.shape[1], internal_batch_size)
    for part in tqdm(chunks, desc="gradient passes", unit="pass", leave=False,
                     disable=None if len(chunks) > 8 and rows.shape[1] > 512 else True):
        block = rows[part].detach().requires_grad_(True)
        with torch.enable_grad():
            f = output(block)
            (grads[part],) = torch.autograd.grad(f.sum(), block)
        values[part] = f.detach().double().numpy()
    return grads, values


@dataclass(frozen=True)
class PathIntegral:
    """Integrated Gradients of one scalar output along one straight path (``integrate``)."""

    attributions: torch.Tensor  # (T, E): (x - x') * the average gradient along the path
    delta: float  # sum of the signed scores - (F(x) - F(x'))
    convergence: Convergence

    def scores(self, reduce: str = "sum") -> np.ndarray:
        """One score per token: the signed ``"sum"`` over embedding dims (``delta`` is its gap) or ``"l2"``."""
        return reduce_dims(self.attributions, reduce)


def integrate(output: ScalarOutput, x: torch.Tensor, x_ref: torch.Tensor, n_steps: int = 50,
              rule: str = "adaptive", max_steps: int | None = None,
              internal_batch_size: int | None = None) -> PathIntegral:
    """Integrated Gradients of any scalar output F of the embedding layer's output, along the straight
    path ``x' + alpha (x - x')`` from ``x_ref`` to ``x`` (both ``(T, E)``; their dtype is the path's
    precision).

    ``output(rows (K, T, E)) -> (K,)``: F at each row of substitute embeddings, differentiable -- a
    class logit (``ClassOutput``), one cell at one step (``lstmvis.cells.CellActivation``), or any
    function of the embedding-substituted forward pass. ``rule``, ``n_steps`` and ``max_steps`` (None:
    ``default_max_steps``, 4 x ``n_steps``) are ``IntegratedGradients``' ``method``, ``n_steps`` and
    ``max_steps``, as it validates them. F(x) and F(x') come from a forward-only pass, whose first row
    is the input itself (an output may resolve what depends on the input there: ``ClassOutput``'s
    predicted class); rows run in chunks of ``internal_batch_size`` (default ``row_chunks``).
    """
    path = _Path(output, x, x_ref, internal_batch_size)
    if rule == "adaptive":
        alphas, weights, grads = path.adaptive(n_steps, default_max_steps(n_steps, max_steps))
    else:
        path.ends()
        alphas, weights = quadrature(n_steps, rule)
        grads = path.gradients(alphas)
    avg_grad = torch.einsum("k,kte->te", torch.tensor(np.asarray(weights), dtype=x.dtype), grads)
    attributions = (x - x_ref) * avg_grad
    delta = float(reduce_dims(attributions, "sum").sum() - (path.f_input - path.f_baseline))
    unresolved = tuple(map(float, path.unresolved)) if path.unresolved else None
    convergence = Convergence.measure(delta, path.f_input, path.f_baseline, n_gradient_rows=path.n_gradient_rows,
                                      n_probe_rows=path.n_probe_rows, precision=str(x.dtype).removeprefix("torch."),
                                      unresolved_alpha=unresolved,
                                      unresolved_relative_delta=(relative_gap(path.jumps, path.f_input - path.f_baseline)
                                                                 if unresolved else None))
    return PathIntegral(attributions, delta, convergence)


class _Path:
    """The straight path ``x' + alpha (x - x')`` of one explanation: F at alphas (forward only) and
    gradients at alphas, with row counts."""

    def __init__(self, output: ScalarOutput, x: torch.Tensor, x_ref: torch.Tensor, internal_batch_size: int | None):
        self.output, self.x, self.x_ref, self.batch = output, x, x_ref, internal_batch_size
        self.n_probe_rows = self.n_gradient_rows = 0
        self.f_input = self.f_baseline = float("nan")
        self.unresolved: tuple[float, float] | None = None  # set by ``adaptive``
        self.jumps = 0.0  # the gap in segments too narrow to split, set by ``adaptive``

    def values(self, alphas) -> np.ndarray:
        """F at ``alphas``, forward only."""
        self.n_probe_rows += len(alphas)
        return values_at(self.output, path_rows(self.x, self.x_ref, alphas), self.batch)

    def ends(self) -> None:
        """F(x) and F(x') from one forward-only pass, the input first."""
        self.f_input, self.f_baseline = map(float, self.values([1.0, 0.0]))

    def gradients(self, alphas) -> torch.Tensor:
        """dF/d(embeddings) at each alpha, ``(K, T, E)``."""
        self.n_gradient_rows += len(alphas)
        return gradients_at(self.output, path_rows(self.x, self.x_ref, alphas), self.batch)[0]

    def adaptive(self, n_steps: int, max_steps: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """``adaptive_nodes`` on this path, from ``PROBES`` uniform probes (the input first): alphas,
        weights, gradients."""
        alphas = np.linspace(0.0, 1.0, PROBES)
        input_first = np.roll(np.arange(PROBES), 1)
        f = np.empty(PROBES)
        f[input_first] = self.values(alphas[input_first])
        self.f_input, self.f_baseline = float(f[-1]), float(f[0])
        alphas, weights, grads, self.unresolved, self.jumps = adaptive_path_nodes(
            n_steps, alphas, f, self.values, self.gradients, self.x, self.x_ref, max_steps)
        return alphas, weights, grads


def adaptive_path_nodes(n_steps: int, alphas: np.ndarray, f: np.ndarray, probe, gradients, x: torch.Tensor,
                        x_ref: torch.Tensor, max_steps: int | None = None):
    """``adaptive_nodes`` on the straight path from ``x_ref`` to ``x``: dF/dalpha by the chain rule
    (``path_derivative``), and the precision of the path's inputs (their dtype's eps, ``path_origin``)."""
    return adaptive_nodes(n_steps, alphas, f, probe, gradients, lambda g: path_derivative(g, x, x_ref), max_steps,
                          resolution=torch.finfo(x.dtype).eps, origin=path_origin(x, x_ref))


def jump_persists(output: ScalarOutput, x: torch.Tensor, x_ref: torch.Tensor, interval: tuple[float, float]
                  ) -> tuple[bool, int]:
    """Whether F still jumps inside ``interval`` of alpha at the precision of ``x`` (``locate_jump`` from its
    ends, forward only, down to ``SPLIT_ULPS`` spacings of the path's inputs), and the rows that took.
    ``precision="auto"`` asks this in float64 before integrating again there."""
    path = _Path(output, x, x_ref, None)
    splittable = _splittable(torch.finfo(x.dtype).eps, path_origin(x, x_ref))
    lo, hi = map(float, interval)
    alphas, f = locate_jump(np.array([lo, hi]), path.values([lo, hi]), lo, hi, path.values, splittable)
    steps = np.abs(np.diff(f))
    i = int(np.argmax(steps))
    return bool(steps[i] > JUMP_SHARE * steps.sum() and not splittable(alphas[i], alphas[i + 1])), path.n_probe_rows


def _splittable(resolution: float, origin: float):
    """Whether a segment [lo, hi] of alpha is wider than ``SPLIT_ULPS`` spacings of the path's inputs there."""
    def splittable(lo: float, hi: float) -> bool:
        return hi - lo > SPLIT_ULPS * resolution * (hi + origin)
    return splittable


def adaptive_nodes(n_steps: int, alphas: np.ndarray, f: np.ndarray, probe, gradients, derivative,
                   max_steps: int | None = None, resolution: float = 0.0, origin: float = 0.0):
    """Composite Gauss-Legendre nodes for the integral of dF/dalpha over [0, 1], placed from probes.

    ``alphas``/``f``: probes of F so far (sorted, 0 and 1 included); ``probe(alphas) -> F``,
    ``gradients(alphas) -> (K, T, E)`` and ``derivative(grads) -> dF/dalpha (K,)`` evaluate the model.

    1. Zoom: up to ``ZOOM_ROUNDS`` times, the probe interval with the largest |dF| is split in 4 while it
       holds more than ``ZOOM_SHARE`` of the total variation and F changes there more than
       ``ZOOM_DENSITY`` times faster than on average (brackets a fast change to 1/8 / 4^rounds).
    2. Segments: cuts at probes into pieces of about equal mass |dF| + ``UNIFORM_MASS`` x (average), one
       piece per ``NODES_PER_SEGMENT`` nodes, plus a cut wherever the rate of change jumps by more than
       ``DENSITY_CUT`` between neighbouring probe intervals (a segment must not join a flat stretch to
       the flank of a step). Nodes per segment in proportion to its mass (>= 1), Gauss-Legendre within.
       This pass spends 80% of ``n_steps``.
    3. Every segment ends at a probe, so its exact integral F(b) - F(a) is known: the segment with the
       largest gap gets ``SECOND_PASS_PROBES`` more probes and is integrated again, by the same
       placement, with the remaining 20% of the evaluations (its earlier nodes are dropped). This
       step is skipped when the total gap is already within ``EARLY_EXIT`` of |F(1) - F(0)|
       (adaptive quadrature's stopping rule: on the shipped classifiers' test sentences this spends
       fewer evaluations on 20-80% of them with the same completeness and agreement with a
       1000-step reference).
    4. ``max_steps`` (> ``n_steps``): step 3 repeats on whichever segment then has the largest gap, with
       20% of ``n_steps`` (at least ``REFINE_MIN``) evaluations each time, until the total gap is within
       ``COMPLETENESS_TOLERANCE`` or ``max_steps`` gradient evaluations are spent: IG to a tolerance,
       paying more only for the inputs that need it. Segments too narrow for the path's precision are
       final: the inputs at alpha, ``x' + alpha (x - x')``, are spaced about ``resolution x (alpha +
       origin)`` apart in alpha (``resolution``: the dtype's eps; ``origin``: ``|x'| / |x - x'|``), and a
       segment narrower than ``SPLIT_ULPS`` such spacings is not split -- F can jump there between
       neighbouring representable inputs. Before a segment gets gradient evaluations, its probes zoom
       (forward only, ``locate_jump``) into a probe interval holding most of its change: down to such a
       final segment if F jumps there. Refinement goes on elsewhere while the other segments miss by
       more than the tolerance -- unless the final segments already do and ``STALLED_ROUNDS`` rounds in
       a row neither halved their segment's gap nor closed 1% of |F(1) - F(0)| (on long RNN texts each
       round finds one more jump: F is a staircase of state flips). If the final segments miss by more
       than the tolerance, the one that misses most is returned: more evaluations cannot close that
       gap; more precision may (``jump_persists``).

    Returns ``alphas (m,)`` and ``weights (m,)`` (sum 1), the gradients at the alphas, that unresolved
    interval (else None), and the part of the completeness gap in segments too narrow to split (F's
    jumps there, which the gradients never see; 0.0 without such segments). ``n_steps`` gradient rows
    are evaluated (at most ``max_steps`` with step 4), or the first pass's 80% when it already closes
    the gap.
    """
    alphas, f = np.asarray(alphas, dtype=np.float64), np.asarray(f, dtype=np.float64)
    for _ in range(ZOOM_ROUNDS):
        jumps = np.abs(np.diff(f))
        i = int(np.argmax(jumps))
        share = jumps[i] / jumps.sum() if jumps.sum() > 0 else 0.0
        if not (share > ZOOM_SHARE and share > ZOOM_DENSITY * (alphas[i + 1] - alphas[i])):
            break
        alphas, f = _add_probes(alphas, f, np.linspace(alphas[i], alphas[i + 1], ZOOM_PARTS + 1)[1:-1], probe)
    n_refine = int(n_steps * SECOND_PASS) if n_steps >= 10 else 0
    budget = n_steps if max_steps is None else max(n_steps, max_steps)
    n_first = n_steps - n_refine
    bounds, mass = _segments(alphas, f, 0, len(alphas) - 1, n_first)
    nodes, weights, segment = _composite_gauss_legendre(alphas[bounds], n_first, mass)
    spans = {s: (alphas[bounds[s]], alphas[bounds[s + 1]]) for s in range(len(bounds) - 1)}
    grads = gradients(nodes)
    rates = weights * derivative(grads)
    used, total, next_label = n_first, f[-1] - f[0], len(spans)

    def exact(lo, hi):  # segment ends are probes: F(hi) - F(lo) is known
        return f[np.searchsorted(alphas, hi)] - f[np.searchsorted(alphas, lo)]

    splittable = _splittable(resolution, origin)

    def segment_gaps():
        return {s: rates[segment == s].sum() - exact(*span) for s, span in spans.items()}

    missing, stalled = COMPLETENESS_TOLERANCE * abs(total), 0
    while used < budget:
        tolerance = (EARLY_EXIT if used < n_steps else COMPLETENESS_TOLERANCE) * abs(total)
        gaps = segment_gaps()
        candidates = [s for s in gaps if splittable(*spans[s])]
        refinable = sum(gaps[s] for s in candidates)
        if abs(sum(gaps.values())) <= tolerance or not candidates or (
                abs(sum(gaps.values()) - refinable) > missing and (abs(refinable) <= tolerance
                                                                   or stalled >= STALLED_ROUNDS)):
            break  # complete, or what is left sits in segments too narrow to split (and keeps turning up there)
        worst = max(candidates, key=lambda s: abs(gaps[s]))
        first_new = next_label
        lo, hi = spans.pop(worst)
        n_more = min(n_refine if used < n_steps else max(n_refine, REFINE_MIN), budget - used)
        alphas, f = _add_probes(alphas, f, np.linspace(lo, hi, SECOND_PASS_PROBES + 2)[1:-1], probe)
        alphas, f = locate_jump(alphas, f, lo, hi, probe, splittable)
        inner, inner_mass = _segments(alphas, f, *np.searchsorted(alphas, [lo, hi]).tolist(), n_more)
        inner_mass = np.where([splittable(a, b) for a, b in zip(alphas[inner[:-1]], alphas[inner[1:]])], inner_mass, 0.0)
        more, more_weights, more_segment = _composite_gauss_legendre(alphas[inner], n_more, inner_mass)
        spans.update({next_label + k: (alphas[inner[k]], alphas[inner[k + 1]]) for k in range(len(inner) - 1)})
        more_grads = gradients(more)
        keep = segment != worst
        nodes = np.concatenate([nodes[keep], more])
        weights = np.concatenate([weights[keep], more_weights])
        segment = np.concatenate([segment[keep], next_label + more_segment])
        next_label += len(inner) - 1
        rates = np.concatenate([rates[keep], more_weights * derivative(more_grads)])
        grads = torch.cat([grads[torch.from_numpy(keep)], more_grads])
        used += n_more
        after = segment_gaps()
        left = sum(abs(after[s]) for s in range(first_new, next_label))
        stalled = 0 if left <= abs(gaps[worst]) / 2 and abs(gaps[worst]) - left >= missing else stalled + 1
    gaps, unresolved = segment_gaps(), None
    final = [s for s in gaps if not splittable(*spans[s])]
    jumps = float(sum(gaps[s] for s in final))
    if final and abs(sum(gaps.values())) > missing and abs(jumps) > missing:
        unresolved = spans[max(final, key=lambda s: abs(gaps[s]))]
    return nodes, weights, grads, unresolved, jumps


def locate_jump(alphas: np.ndarray, f: np.ndarray, lo: float, hi: float, probe, splittable
                ) -> tuple[np.ndarray, np.ndarray]:
    """Probes (forward only) into the probe interval of [lo, hi] that holds more than ``JUMP_SHARE`` of
    the segment's |dF|, 7 parts at a time, while one part keeps that share and is ``splittable``: a
    steep but smooth change spreads over several parts and the zoom stops there; a jump stays in
    one part down to the path's precision, where no gradient evaluation can resolve it."""
    while True:
        a, b = np.searchsorted(alphas, [lo, hi]).tolist()
        jumps = np.abs(np.diff(f[a:b + 1]))
        i = a + int(np.argmax(jumps))
        if not (jumps.max() > JUMP_SHARE * jumps.sum() and splittable(alphas[i], alphas[i + 1])):
            return alphas, f
        n_before = len(alphas)
        alphas, f = _add_probes(alphas, f, np.linspace(alphas[i], alphas[i + 1], SECOND_PASS_PROBES + 2)[1:-1], probe)
        if len(alphas) == n_before:  # no alpha left between them
            return alphas, f


def _add_probes(alphas: np.ndarray, f: np.ndarray, new: np.ndarray, probe) -> tuple[np.ndarray, np.ndarray]:
    new = np.unique(new[~np.isin(new, alphas)])  # a very narrow interval's linspace can repeat values
    if not len(new):
        return alphas, f
    alphas, f = np.concatenate([alphas, new]), np.concatenate([f, probe(new)])
    order = np.argsort(alphas, kind="stable")
    return alphas[order], f[order]


def _segments(alphas: np.ndarray, f: np.ndarray, lo: int, hi: int, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Probe indices (``lo`` .. ``hi``) that cut [alphas[lo], alphas[hi]] into segments for ``n_nodes``
    nodes (step 2 of ``adaptive_nodes``; at most ``n_nodes`` segments), and each segment's mass."""
    a, jumps = alphas[lo:hi + 1], np.abs(np.diff(f[lo:hi + 1]))
    widths = np.diff(a)
    total = jumps.sum()
    mass = jumps + UNIFORM_MASS * widths * total / (a[-1] - a[0]) if total > 0 else widths.copy()
    cumulative = np.concatenate([[0.0], np.cumsum(mass)])
    n_equal = max(1, round(n_nodes / NODES_PER_SEGMENT))
    cuts = np.interp(np.linspace(0.0, cumulative[-1], n_equal + 1)[1:-1], cumulative, a)
    chosen = set(np.abs(a[None, :] - cuts[:, None]).argmin(1).tolist()) | {0, len(a) - 1}
    if len(widths) > 1:  # density cuts, strongest first, while every segment can still get a node
        rate = mass / widths
        contrast = np.maximum(rate[1:] / rate[:-1], rate[:-1] / rate[1:])
        for j in np.argsort(-contrast, kind="stable"):
            if contrast[j] <= DENSITY_CUT or len(chosen) > n_nodes:
                break
            chosen.add(int(j) + 1)
    idx = np.array(sorted(chosen))
    while len(idx) - 1 > n_nodes:  # only when n_nodes < the equal-mass pieces' snapped count (tiny n)
        idx = np.delete(idx, 1 + int(np.argmin(np.diff(cumulative[idx])[:-1] + np.diff(cumulative[idx])[1:])))
    return lo + idx, np.diff(cumulative[idx])


def _composite_gauss_legendre(bounds: np.ndarray, n_nodes: int, mass: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_nodes`` Gauss-Legendre nodes over the segments between ``bounds``, at least one per segment and
    the rest in proportion to ``mass``: nodes, weights (summing to bounds[-1] - bounds[0]), segment of
    each node."""
    n_segments = len(bounds) - 1
    if n_segments > n_nodes:
        raise ValueError(f"{n_segments} segments for {n_nodes} nodes")
    spare = n_nodes - n_segments
    share = mass / mass.sum() * spare if mass.sum() > 0 else np.full(n_segments, spare / n_segments)
    counts = 1 + np.floor(share).astype(int)
    counts[np.argsort(-(share - np.floor(share)), kind="stable")[: n_nodes - counts.sum()]] += 1
    nodes, weights, segment = [], [], []
    for s, count in enumerate(counts):
        unit_nodes, unit_weights = quadrature(int(count), "gausslegendre")
        width = bounds[s + 1] - bounds[s]
        nodes.append(bounds[s] + unit_nodes * width)
        weights.append(unit_weights * width)
        segment.append(np.full(count, s))
    return np.concatenate(nodes), np.concatenate(weights), np.concatenate(segment)
