"""Where command lines find models and corpora by name: model providers.

A provider is any object (a module will do) with ``list_models() -> list[dict]`` (each with
``name``, ``kind`` -- ``classifier``, ``language-model`` or ``image-classifier`` --,
``description`` and ``card``) and ``load_model(spec)``, which returns a model for a name or a
checkpoint path it knows and raises ``LookupError`` for one it does not. It may also offer
``load_corpus(spec, model) -> (texts, meta, name)``. Providers register under the entry-point
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
    offering = [p for p in model_providers() if hasattr(p, "load_corpus")]
    refusals = []
    for provider in offering:
        try:
            return provider.load_corpus(spec, model)
        except LookupError as exc:
            refusals.append(str(exc).strip("'\""))
    raise LookupError("; ".join(refusals) or f"unknown corpus {spec!r}: no model provider offers corpora")
