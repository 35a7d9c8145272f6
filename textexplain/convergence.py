"""How complete an Integrated Gradients result is: the 1% tolerance, the refinement budget's default,
and ``Convergence``, the typed record every IG result carries (``Explanation.convergence``)."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

COMPLETENESS_TOLERANCE = 0.01  # |delta| above this share of |F(x) - F(x')| is flagged as not converged

# max_steps=None: the adaptive rule refines up to this many times n_steps gradient evaluations while the
# gap is above the tolerance. Spent only where n_steps leave the gap above 1% (results that converge
# within n_steps are the same as without). Measured: charlm-python cells, 40 random cells x steps, 98%
# converge (20% without refinement; benchmarks/results/match.md); the shipped classifiers' first 40 test
# sentences, 100% on every model (82-100% without; benchmarks/results/explain.md).
MAX_STEPS_FACTOR = 4


class IncompleteIntegralWarning(UserWarning):
    """An Integrated Gradients result misses completeness by more than ``COMPLETENESS_TOLERANCE``."""


def default_max_steps(n_steps: int, max_steps: int | None) -> int:
    """The adaptive rule's budget of gradient evaluations: ``max_steps``, or by default
    ``MAX_STEPS_FACTOR * n_steps``."""
    return MAX_STEPS_FACTOR * n_steps if max_steps is None else max_steps


def relative_gap(delta: float, change: float) -> float:
    """|delta| as a share of |F(x) - F(x')| (0 or infinity when F does not change along the path)."""
    if change != 0:
        return abs(delta) / abs(change)
    return 0.0 if delta == 0 else float("inf")


@dataclass(frozen=True)
class Convergence:
    """How far one path integral is from completeness, at what precision, and what it cost.

    ``f_input``/``f_baseline``: F(x) and F(x') (forward only); ``relative_delta``: |delta| /
    |F(x) - F(x')| (delta itself is ``Explanation.delta``); ``converged``: within
    ``COMPLETENESS_TOLERANCE``. ``n_gradient_rows``/``n_probe_rows``: model rows evaluated with and
    without gradients. ``precision``: the dtype the path ran in (``"float32"``, ``"float64"``).
    ``unresolved_alpha``: the interval of alpha where F jumps faster than that precision resolves (more
    steps cannot close that gap, more precision may), else None; ``unresolved_relative_delta``: then the part of
    the gap in all such intervals (F's jumps there, relative like ``relative_delta``; on long RNN texts most
    of the gap, and float64 resolves those jumps no better). ``model_precision_relative_delta``: with
    ``precision="auto"`` after a float64 rerun, the gap of the first pass at the model's precision.
    In JSON (``to_info``) these are keys of an explanation's ``info``, as they always were.
    """

    f_input: float
    f_baseline: float
    relative_delta: float
    converged: bool
    n_gradient_rows: int
    n_probe_rows: int
    precision: str
    unresolved_alpha: tuple[float, float] | None = None
    unresolved_relative_delta: float | None = None
    model_precision_relative_delta: float | None = None

    @classmethod
    def measure(cls, delta: float, f_input: float, f_baseline: float, **rest: Any) -> Convergence:
        """The record of a result with completeness gap ``delta`` (``rest``: the other fields)."""
        relative = relative_gap(delta, f_input - f_baseline)
        return cls(f_input, f_baseline, relative, relative <= COMPLETENESS_TOLERANCE, **rest)

    @property
    def n_forward_rows(self) -> int:
        """Every model row evaluated, with or without gradients."""
        return self.n_gradient_rows + self.n_probe_rows

    def to_info(self) -> dict[str, Any]:
        """The ``info`` keys of the JSON form (the optional ones only when set)."""
        out = {"f_input": self.f_input, "f_baseline": self.f_baseline, "relative_delta": self.relative_delta,
               "converged": self.converged, "n_forward_rows": self.n_forward_rows,
               "n_gradient_rows": self.n_gradient_rows, "n_probe_rows": self.n_probe_rows,
               "precision": self.precision}
        if self.unresolved_alpha is not None:
            out["unresolved_alpha"] = list(self.unresolved_alpha)
        if self.unresolved_relative_delta is not None:
            out["unresolved_relative_delta"] = self.unresolved_relative_delta
        if self.model_precision_relative_delta is not None:
            out["model_precision_relative_delta"] = self.model_precision_relative_delta
        return out

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> tuple[Convergence | None, dict[str, Any]]:
        """Inverse of ``to_info``: the record read from ``info`` and the rest of ``info`` (None and
        ``info`` unchanged when it holds no complete record, e.g. JSON of other methods)."""
        names = [f.name for f in fields(cls)]
        if not all(f.name in info for f in fields(cls) if f.default is MISSING):
            return None, info
        values = {k: info[k] for k in names if k in info}
        if values.get("unresolved_alpha") is not None:
            values["unresolved_alpha"] = tuple(values["unresolved_alpha"])
        rest = {k: v for k, v in info.items() if k not in values and k != "n_forward_rows"}
        return cls(**values), rest
