"""Request models for the methods' hyperparameters, generated from their declarations.

Each method class declares its hyperparameters once (``textexplain.hyperparameters.Hyper``);
``method_params_model`` turns a registry (``textexplain.METHODS``, ``textexplain.image.METHODS``)
into one pydantic model with a field per method, each a model with a field per hyperparameter the
server offers: the declared type and choices, the library's bounds tightened by the server's cost
caps (``api_ge``/``api_le``), the help text as description. Every field defaults to None: the
library's default. The library still checks what depends on several parameters or on the model.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model

from textexplain.hyperparameters import Hyper, Method

from .validation import Params


class MethodParamsBase(Params):
    """Hyperparameters per method; anything left out takes the library's default."""

    def of(self, method: str) -> dict[str, Any]:
        """The hyperparameters given for ``method`` (None = the library's default, left out)."""
        return getattr(self, method).model_dump(exclude_none=True)


def _field(hyper: Hyper) -> tuple[Any, Any]:
    choices = hyper.api_choices()
    annotation: Any = Literal[choices] if choices else hyper.api_type()  # type: ignore[valid-type]
    return annotation | None, Field(None, description=hyper.help or None, **hyper.api_bounds())


def params_model(cls: type[Method], prefix: str = "") -> type[Params]:
    """``<prefix><Class>Params``: one optional field per hyperparameter the server offers."""
    fields = {name: _field(hyper) for name, hyper in cls.api_hyperparameters().items()}
    return create_model(f"{prefix}{cls.__name__}Params", __base__=Params, __doc__=f"{cls.title} hyperparameters",
                        **fields)


def method_params_model(registry: dict[str, type[Method]], prefix: str = "") -> type[MethodParamsBase]:
    """``<prefix>MethodParams``: a field per registered method, holding its hyperparameters."""
    fields = {}
    for name, cls in registry.items():
        model = params_model(cls, prefix)
        fields[name] = (model, Field(default_factory=model))
    return create_model(f"{prefix}MethodParams", __base__=MethodParamsBase, **fields)
