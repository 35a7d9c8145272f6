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
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

GROUP = "textexplain.model_providers"


def model_providers() -> list[Any]:
    """Every registered provider, loaded, in name order."""
    return [ep.load() for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name)]


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
