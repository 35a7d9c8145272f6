"""The demo package as a model provider (see ``textexplain.providers``): shipped models by name,
checkpoints of this project by path, and the shipped corpora by ``NAME:SPLIT``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from textexplain.model import TextModel

from . import loaders
from .registry import MODELS, CheckpointError, build_from_checkpoint, list_models, load_checkpoint
from .registry import load_model as load_shipped

__all__ = ["CORPORA", "LABELLED_CORPORA", "list_models", "load_corpus", "load_labelled_corpus", "load_model"]

CORPORA = ("python_source", "rotten_tomatoes", "parens")
LABELLED_CORPORA = ("rotten_tomatoes", "rotten_tomatoes_shortcut")  # sentences with their sentiment labels


def load_model(spec: str):
    """A shipped model by name, or a checkpoint file of this project (loaded with weights_only).

    Any other file (``torch.save(model)``, a bare state_dict) gets one sentence saying what loads and
    how a model of one's own class is used instead.
    """
    if spec in MODELS:
        return load_shipped(spec)
    path = Path(spec)
    if path.suffix == ".pt" or path.is_file():
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError:
            if not path.is_file():
                raise
            raise CheckpointError(
                f"{path} cannot be loaded: only checkpoints of this project load from a file (a dict with "
                "'arch', 'config' and 'state_dict', as python -m data.train writes them), not a pickled module "
                "(torch.save(model)), a bare state_dict or a damaged file; to use a model of your own class, "
                "wrap it in Python: lstmvis.LanguageModel / textexplain.TextModel") from None
        return build_from_checkpoint(ckpt, name=path.stem)
    raise LookupError(spec)


def load_corpus(spec: str, model) -> tuple[list, dict, str]:
    """``(texts, meta, name)`` for a corpus spec: ``NAME:SPLIT`` or a path to a .txt file.

    ``python_source:SPLIT``: one sequence per file. ``rotten_tomatoes:SPLIT``: one per sentence,
    meta track ``label``. ``parens:SPLIT``: one per sequence, meta track ``depth``. A ``.txt``
    file is one sequence for a language model and one sequence per non-empty line for a classifier.
    """
    name, _, split = spec.partition(":")
    if name in CORPORA:
        split = split or "test"
        if name == "python_source":
            return [src for _, src in loaders.python_source(split)], {}, spec
        if name == "rotten_tomatoes":
            texts, labels = loaders.rotten_tomatoes(split)
            label_names = np.array(loaders.SENTIMENT_LABELS, dtype=object)
            return texts, {"label": [label_names[np.full(len(model.encode(t)), y)]
                                     for t, y in zip(texts, labels)]}, spec
        seqs = loaders.parens(split)
        return ["".join(tokens) for tokens, _ in seqs], {"depth": [depth for _, depth in seqs]}, spec
    path = Path(spec)
    if path.suffix != ".txt" or not path.is_file():
        raise LookupError(f"unknown corpus {spec!r}: use {', '.join(c + ':SPLIT' for c in CORPORA)} "
                          "(SPLIT = train, dev or test) or the path of an existing .txt file")
    text = path.read_text(encoding="utf-8")
    if isinstance(model, TextModel):
        return [line for line in text.splitlines() if line.strip()], {}, path.name
    return [text], {}, path.name


def load_labelled_corpus(spec: str) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` for ``NAME:SPLIT`` (NAME in ``LABELLED_CORPORA``, SPLIT train, dev or test,
    default test): the sentences and their label names (``loaders.SENTIMENT_LABELS``)."""
    name, _, split = spec.partition(":")
    if name not in LABELLED_CORPORA:
        raise LookupError(f"unknown labelled corpus {spec!r}: use {', '.join(c + ':SPLIT' for c in LABELLED_CORPORA)} "
                          "(SPLIT = train, dev or test)")
    texts, labels = getattr(loaders, name)(split or "test")
    return list(texts), [loaders.SENTIMENT_LABELS[int(y)] for y in labels]
