"""Where command lines find models and corpora by name: model providers.

A provider is any object (a module will do) with ``list_models() -> list[dict]`` (each with
``name``, ``kind`` -- ``classifier``, ``language-model`` or ``image-classifier`` --,
``description`` and ``card``) and ``load_model(spec)``, which returns a model for a name or a
checkpoint path it knows and raises ``LookupError`` for one it does not. It may also offer
``load_corpus(spec, model) -> (texts, meta, name)`` (sequences to record) and
``load_labelled_corpus(spec) -> (texts, labels)`` (texts with their gold label names, to audit a
classifier on), both raising ``LookupError`` for a spec they do not know. Providers register under the entry-point
group ``textexplain.model_providers`` of their distribution, so a library never imports the
package that ships the models (this project's demo models register from ``data``)::

    [project.entry-points."textexplain.model_providers"]
    mine = "my_package.models"

Entry points load through ``load_entry_points``: an installed package is found even where the
working folder holds a module of the same name (a user's own ``data.py`` or ``server.py``, which
``python -m`` and ``python -c`` put first on ``sys.path``).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Any

GROUP = "textexplain.model_providers"


def model_providers() -> list[Any]:
    """Every registered provider, loaded, in name order."""
    return load_entry_points(GROUP)


def load_entry_points(group: str) -> list[Any]:
    """The objects of the entry points of ``group``, in name order, each loaded by ``load_entry_point``."""
    return [load_entry_point(ep) for ep in sorted(entry_points(group=group), key=lambda ep: ep.name)]


def load_entry_point(ep: EntryPoint) -> Any:
    """``ep.load()``, looking for its top-level package first with the working folder off ``sys.path``,
    so a user's module of the same name there cannot shadow the installed package (found nowhere else,
    as in a source checkout, the working folder's copy is used). A package already shadowed by an
    imported module of the same name gets an error naming that module and the fix."""
    top = ep.module.partition(".")[0]
    if top not in sys.modules:
        with _working_folder_off_path():
            try:
                return ep.load()
            except ModuleNotFoundError:
                pass
    try:
        return ep.load()
    except (ImportError, AttributeError) as exc:
        origin = getattr(sys.modules.get(top), "__file__", None)
        raise ImportError(f"entry point {ep.name} = {ep.value} (group {ep.group}) cannot be loaded: {exc}"
                          + (f"; {top!r} is already imported from {origin}: if that is your own module of the "
                             "same name, rename it" if origin else "")) from exc


@contextmanager
def _working_folder_off_path() -> Iterator[None]:
    saved = list(sys.path)
    here = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != here]
    try:
        yield
    finally:
        sys.path[:] = saved


def list_models(kind: str | None = None) -> list[dict]:
    """Every model the providers offer (optionally only one ``kind``)."""
    return [m for p in model_providers() for m in p.list_models() if kind is None or m["kind"] == kind]


def load_model(spec: str) -> Any:
    """The model named (or the checkpoint path given) by ``spec``, from the first provider that knows it."""
    providers = model_providers()
    for provider in providers:
        try:
            return provider.load_model(spec)
        except LookupError:
            continue
    names = ", ".join(m["name"] for p in providers for m in p.list_models()) or "none registered"
    raise LookupError(f"unknown model {spec!r}: known models are {names}, or give the path of a .pt checkpoint")


def load_corpus(spec: str, model: Any) -> tuple[list, dict, str]:
    """``(texts, meta, name)`` for a corpus spec, from the first provider that knows it."""
    return _first_that_knows("load_corpus", spec, model)


def load_labelled_corpus(spec: str) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` -- texts and their gold label names -- for a corpus spec, from the first
    provider that knows it."""
    return _first_that_knows("load_labelled_corpus", spec)


def _first_that_knows(function: str, spec: str, *args: Any) -> Any:
    """``provider.<function>(spec, *args)`` of the first provider that knows ``spec``; every refusal otherwise."""
    refusals = []
    for provider in model_providers():
        if not hasattr(provider, function):
            continue
        try:
            return getattr(provider, function)(spec, *args)
        except LookupError as exc:
            refusals.append(str(exc).strip("'\""))
    raise LookupError("; ".join(refusals) or f"unknown corpus {spec!r}: no model provider offers corpora")
