"""The method registry and the one-call entry points: ``explain(model, text, method=...)``, ``explain_batch``,
``make_explainer``. (A module of its own name, so the function ``textexplain.explain`` shadows no module.)"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# importing a method's module registers it; this order is METHODS' order
from . import gradient, integrated_gradients, smoothgrad, occlusion, lime_text, kernel_shap, deeplift, lrp  # noqa: F401, I001
from .base import METHODS, Explainer
from .explanation import Explanation
from .model import TextModel


def method_class(method: str) -> type[Explainer]:
    """The explainer class registered under ``method``."""
    try:
        return METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}") from None


def make_explainer(model: TextModel, method: str, /, **params: Any) -> Explainer:
    """``METHODS[method](model, **params)`` with a clear error for a misspelt hyperparameter."""
    cls = method_class(method)
    accepted = list(cls.hyperparameters)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(f"{method} does not take {', '.join(map(repr, unknown))}: its parameters are "
                        f"{', '.join(accepted) or 'none'}")
    return cls(model, **params)


def hyperparameters(options: Mapping[str, Any] | None, params: Mapping[str, Any]) -> dict[str, Any]:
    """A method's hyperparameters from ``options`` (a dict, for names such as IG's quadrature
    ``method`` that clash with the caller's own arguments) and keyword ``params``."""
    if options is None:
        return dict(params)
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict of the method's hyperparameters, got {type(options).__name__}")
    both = sorted(set(options) & set(params))
    if both:
        raise TypeError(f"{', '.join(map(repr, both))} given both in options and as keyword arguments: give each once")
    return {**options, **params}


def explain(model: TextModel, text: str, method: str = "integrated_gradients",
            target: int | str | None = None, options: Mapping[str, Any] | None = None, **params: Any) -> Explanation:
    """Explain ``model``'s output for ``target`` (None = predicted class) on ``text``.

    ``params`` are the method's hyperparameters, e.g. ``explain(m, text, "shap", seed=1)``; a name
    that clashes with this function's arguments goes in ``options``, e.g. Integrated Gradients'
    quadrature: ``explain(m, text, "integrated_gradients", options={"method": "gausslegendre"})``.
    """
    return make_explainer(model, method, **hyperparameters(options, params)).explain(text, target)


def explain_batch(model: TextModel, texts: Sequence[str], method: str = "integrated_gradients",
                  target: int | str | None | Sequence[int | str | None] = None, progress: bool | None = None,
                  options: Mapping[str, Any] | None = None, **params: Any) -> list[Explanation]:
    """Explain many texts with one method; ``target`` is one for all or one per text. ``options``
    and ``params`` as in ``explain``."""
    return make_explainer(model, method, **hyperparameters(options, params)).explain_batch(texts, target,
                                                                                           progress=progress)
