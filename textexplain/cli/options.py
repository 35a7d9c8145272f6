"""What the subcommands share: models by name, ``--set`` hyperparameters, the methods' help, atomic writes."""
from __future__ import annotations

import json
import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from .. import providers
from ..methods import METHODS, method_class
from ..hyperparameters import Hyper
from ..model import TextModel


def load_text_model(spec: str) -> TextModel:
    """A text classifier by name or checkpoint path, from the registered model providers."""
    classifiers = ", ".join(m["name"] for m in providers.list_models("classifier"))
    try:
        model = providers.load_model(spec)
    except LookupError:
        raise ValueError(f"unknown model {spec!r}: give a text classifier ({classifiers}) "
                         "or the path of a .pt checkpoint") from None
    if not isinstance(model, TextModel):
        raise ValueError(f"{spec} is not a text classifier: explanations need one of {classifiers}")
    return model


def parse_settings(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--set method.param=value`` or ``--set param=value`` (every chosen method that takes it) -> the
    hyperparameters per method, each value checked against the method's declaration."""
    declared = {m: method_class(m).hyperparameters for m in methods}
    params: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: write NAME=VALUE or METHOD.NAME=VALUE, e.g. n_steps=100")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        method, _, name = key.rpartition(".")
        if method and method not in methods:
            raise ValueError(f"--set {item!r}: {method!r} is not among the chosen methods {', '.join(methods)}")
        targets = [method] if method else [m for m in methods if name in declared[m]]
        if not targets or any(name not in declared[m] for m in targets):
            where = method or "any chosen method"
            raise ValueError(f"--set {item!r}: {where} has no parameter {name!r}; parameters: "
                             + "; ".join(f"{m}: {', '.join(declared[m])}" for m in (targets or methods)))
        for m in targets:
            try:
                params[m][name] = declared[m][name].validate(value)
            except ValueError as exc:
                raise ValueError(f"--set {item!r}: {exc}") from None
    return params


def seeded_methods(methods: list[str]) -> list[str]:
    """The chosen methods that draw random numbers (they declare a ``seed``)."""
    return [m for m in methods if method_class(m).seeded]


def methods_help() -> str:
    """Every method with its hyperparameters (default, choices, bounds), for an epilog."""
    lines = ["methods and their parameters (--set NAME=VALUE or METHOD.NAME=VALUE):"]
    for name, cls in METHODS.items():
        params = ", ".join(_param_help(h) for h in cls.hyperparameters.values())
        lines += textwrap.wrap(f"{name}{' (seeded)' if cls.seeded else ''}: {params}", width=100,
                               initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)


def _param_help(hyper: Hyper) -> str:
    """``n_steps=50 (>=1)``, ``reduce='l2' {l2|sum}``."""
    out = f"{hyper.name}={hyper.default!r}"
    if hyper.choices is not None:
        out += " {" + "|".join(map(str, hyper.choices)) + (f"|{hyper.other_values}" if hyper.other_values else "") + "}"
    bounds = [f"{word}{value}" for word, value in ((">=", hyper.ge), (">", hyper.gt), ("<=", hyper.le))
              if value is not None]
    return out + (f" ({', '.join(bounds)})" if bounds else "")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
