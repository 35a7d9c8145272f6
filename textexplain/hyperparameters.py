"""The method contract: hyperparameters declared once on the class, validated by the constructor.

A method class declares each hyperparameter as a class attribute::

    class MyMethod(Explainer, name="my_method", title="My method"):
        n_samples = Hyper(int, 50, ge=1, api_le=200, help="noisy copies")
        kind = Hyper(str, "mean", choices=("mean", "max"), help="how the samples are reduced")

        def _validate(self):  # optional: checks across parameters or against the model
            ...

``Method`` (the base of ``textexplain.Explainer`` and ``textexplain.image.ImageMethod``) turns
the declarations into the constructor ``MyMethod(model, n_samples=50, kind="mean")`` (the same
arguments positionally or by name), validates every value from its declaration, stores it as an
attribute, and registers a class that has a ``name`` in its family's ``METHODS``. ``get_params``,
the server's request models and page inputs (``server.explain_api``, ``server.image_api``) and
the command line's ``--set`` options all come from ``hyperparameters``.

Order of the constructor's arguments: a class's own declarations in class-body order, then the
inherited ones it does not redeclare (a subclass that wants an inherited one first redeclares it).
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

_NUMBER_TYPE = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Refuse ``value`` unless it is one of ``choices``, naming them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported: {name} must be one of "
                         f"{', '.join(map(repr, choices))}")


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: its type, default, allowed values and help text.

    ``type``: a type or a tuple of types (``int`` refuses bools and takes numpy integers, ``float``
    takes ints). ``choices``: the allowed values; with ``other_values`` (a description such as "a
    token id") the library also takes other values, which the method's ``_validate`` checks, while
    the server offers only ``choices``. ``ge``/``gt``/``le``: the library's bounds. ``api_ge``/
    ``api_le``: tighter bounds at the server, which cap the cost of one request. A default of None
    means "off" and is always accepted. ``api=False`` keeps a parameter off the server and its pages.
    """

    type: type | tuple[type, ...]
    default: Any
    help: str = ""
    choices: tuple | None = None
    other_values: str | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    api_ge: float | None = None
    api_le: float | None = None
    api: bool = True
    name: str = ""

    def __set_name__(self, owner: type, name: str) -> None:
        object.__setattr__(self, "name", name)

    @property
    def types(self) -> tuple[type, ...]:
        return self.type if isinstance(self.type, tuple) else (self.type,)

    def validate(self, value: Any) -> Any:
        """``value`` checked against the declaration (numbers converted to int/float), or a ValueError."""
        if value is None and self.default is None:
            return None
        value = self._typed(value)
        if self.choices is not None and self.other_values is None:
            check_choice(self.name, value, self.choices)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for bound, ok, word in ((self.ge, lambda b: value >= b, ">="), (self.gt, lambda b: value > b, ">"),
                                    (self.le, lambda b: value <= b, "<=")):
                if bound is not None and not ok(bound):
                    raise ValueError(f"{self.name} must be {self._kind()} {word} {bound}, got {value!r}")
        return value

    def _typed(self, value: Any) -> Any:
        for t in self.types:
            if t is int and isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
                return int(value)
            if t is float and isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                    value, (bool, np.bool_)):
                if not np.isfinite(value):
                    raise ValueError(f"{self.name} must be a finite number, got {value!r}")
                return float(value)
            if t not in (int, float) and isinstance(value, t):
                return value
        raise ValueError(f"{self.name} must be {self._kind()}, got {value!r}")

    def _kind(self) -> str:
        return " or ".join(_NUMBER_TYPE.get(t, t.__name__) for t in self.types)

    def api_bounds(self) -> dict[str, float]:
        """The bounds the server enforces: the library's, tightened by ``api_ge``/``api_le``."""
        out = {k: v for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le)) if v is not None}
        if self.api_ge is not None:
            out["ge"] = max(self.api_ge, out.get("ge", self.api_ge))
        if self.api_le is not None:
            out["le"] = min(self.api_le, out.get("le", self.api_le))
        return out

    def api_choices(self) -> tuple | None:
        """The values the server offers (None, "leave the default" in a request, is not among them)."""
        return tuple(c for c in self.choices if c is not None) if self.choices is not None else None

    def api_type(self) -> type:
        """The one JSON type the server takes for this parameter (the first declared type)."""
        return self.types[0]

    def describe(self) -> dict[str, Any]:
        """JSON-ready declaration as the server offers it (for pages and ``--help``)."""
        return {"name": self.name, "type": self.api_type().__name__, "default": _plain(self.default),
                "choices": list(self.api_choices()) if self.choices is not None else None, "help": self.help,
                **self.api_bounds()}


class Method:
    """Base of every method: hyperparameters from the ``Hyper`` declarations, registration by ``name``.

    A family base (``Explainer``, ``ImageMethod``) sets ``registry`` (its ``METHODS``) and
    ``_accept_model``; a class declared with ``name=...`` (and optionally ``title=...``,
    ``register=False`` to stay out of the registry) is listed under that name. ``seeded`` is True
    when the method declares a ``seed``.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    seeded: ClassVar[bool] = False
    hyperparameters: ClassVar[dict[str, Hyper]] = {}
    registry: ClassVar[dict[str, type] | None] = None

    def __init_subclass__(cls, name: str | None = None, title: str | None = None, register: bool = True,
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = {k: v for k, v in vars(cls).items() if isinstance(v, Hyper)}
        inherited = {k: v for k, v in cls.hyperparameters.items() if k not in own}
        cls.hyperparameters = {**own, **inherited}
        cls.seeded = "seed" in cls.hyperparameters
        if "__init__" not in vars(cls):
            cls.__init__ = _declared_init(cls)
        if name:
            cls.name, cls.title = name, title or vars(cls).get("title") or name
            if register:
                register_method(cls, name)

    def __init__(self, model: Any, **params: Any):
        declared = type(self).hyperparameters
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise TypeError(f"{type(self).__name__} does not take {', '.join(map(repr, unknown))}: its parameters "
                            f"are {', '.join(declared) or 'none'}")
        self._accept_model(model)
        for key, hyper in declared.items():
            setattr(self, key, hyper.validate(params.get(key, hyper.default)))
        self._validate()

    def _accept_model(self, model: Any) -> None:
        self.model = model

    def _validate(self) -> None:
        """Checks across hyperparameters or against the model (the declarations check each one alone)."""

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters as given to the constructor (scikit-learn style)."""
        return {k: _plain(getattr(self, k)) for k in type(self).hyperparameters}

    @classmethod
    def api_hyperparameters(cls) -> dict[str, Hyper]:
        """The hyperparameters the server offers (``api=True``)."""
        return {k: h for k, h in cls.hyperparameters.items() if h.api}

    @classmethod
    def describe_hyperparameters(cls) -> list[dict[str, Any]]:
        """JSON-ready declarations of the server's hyperparameters (pages build their inputs from it)."""
        return [h.describe() for h in cls.api_hyperparameters().values()]


def register_method(cls: type[Method], name: str) -> type[Method]:
    """List ``cls`` in its family's registry under ``name`` (the one registration mechanism)."""
    registry = cls.registry
    if registry is None:
        raise TypeError(f"{cls.__name__} belongs to no method family with a registry")
    if name in registry and registry[name] is not cls:
        raise ValueError(f"method {name!r} is registered twice ({registry[name].__name__} and {cls.__name__})")
    cls.name = name
    registry[name] = cls
    return cls


def _declared_init(cls: type[Method]):
    """An ``__init__(self, model, <declared hyperparameters with their defaults>)`` for ``cls``."""
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                  inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=h.default)
                   for k, h in cls.hyperparameters.items()]
    signature = inspect.Signature(parameters)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        Method.__init__(self, bound.arguments["model"],
                        **{k: v for k, v in bound.arguments.items() if k not in ("self", "model")})

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


def _plain(value: Any) -> Any:
    """JSON-friendly copy of a hyperparameter value."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return value


__all__ = ["Hyper", "Method", "check_choice", "check_positive_int", "register_method"]
