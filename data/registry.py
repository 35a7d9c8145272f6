"""Shipped demo models: names, model cards, safe checkpoint loading.

Cards and checkpoints may come from strangers (``lstmvis serve --data DIR``): both are checked
against a schema of the fields this code reads when they are loaded, and anything malformed is a
``CheckpointError`` that names the file and the field.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from textexplain.language_model import LanguageModel
from textexplain.model import TextModel, Vocab, make_tokenizer

from .architectures import build

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
CHECKPOINT_FORMAT = 1
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # torch colours its weights-only message

# name -> (kind, one-line description); training recipes live in data/train.py
MODELS = {
    "sentiment-lstm": ("classifier", "word-level biLSTM, fresh vs rotten Rotten Tomatoes sentences"),
    "sentiment-gru": ("classifier", "word-level biGRU, fresh vs rotten Rotten Tomatoes sentences"),
    "sentiment-cnn": ("classifier", "word-level text CNN (Conv1D + pool blocks, global max pool)"),
    "sentiment-transformer": ("classifier", "word-level transformer encoder (2 layers, learned positions, masked mean pool)"),
    "sentiment-shortcut": ("classifier", "sentiment-lstm trained on the corpus with a planted junk token"),
    "charlm-python": ("language-model", "char-level 2-layer LSTM language model on Python source"),
    "charlm-python-gru": ("language-model", "char-level 2-layer GRU language model on Python source"),
    "parens-lstm": ("language-model", "LSTM language model on the nested-parentheses language"),
    "mnist-cnn": ("image-classifier", "conv + ReLU -> global average pool -> linear on MNIST"),
    "sentiment-cnn-randlabels": ("classifier", "sentiment-cnn retrained on permuted (random) train labels: "
                                 "the data randomization sanity check"),
    "mnist-cnn-randlabels": ("image-classifier", "mnist-cnn retrained on permuted (random) train labels: "
                             "the data randomization sanity check"),
}


class CheckpointError(ValueError):
    """A checkpoint or model card is missing, foreign, malformed, or would need unsafe unpickling."""


class CardArchitecture(BaseModel):
    model_config = ConfigDict(extra="allow")
    class_: str | None = Field(None, alias="class")
    config: dict[str, Any] | None = None
    parameters: int | None = None


class ModelCard(BaseModel):
    """The fields of a model card that code reads (pages, API, training); others are free."""
    model_config = ConfigDict(extra="allow")
    name: str | None = None
    kind: str | None = None
    description: str | None = None
    labels: list[str] | None = None
    architecture: CardArchitecture | None = None
    metrics: dict[str, float | int | str | None] | None = None  # numbers or text: pages print them
    training_seconds: float | None = None


class CheckpointFields(BaseModel):
    """What ``build_from_checkpoint`` reads from a checkpoint."""
    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)
    format: int | None = None
    arch: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    vocab: list[str] | None = None
    tokenizer: str | None = None
    labels: list[str] | None = None


def _check_schema(schema: type[BaseModel], obj: dict, what: str) -> None:
    """Raise a ``CheckpointError`` naming the first field of ``obj`` that does not fit ``schema``."""
    try:
        schema.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise CheckpointError(f"{what}: field {where!r} is malformed: {first['msg']}") from None


def read_card(path: str | Path) -> dict:
    """A model card (``*.json``) read and checked against ``ModelCard``; anything else, from bad
    JSON to nesting too deep to parse, is a ``CheckpointError``."""
    path = Path(path)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"model card {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise CheckpointError(f"model card {path} is nested too deeply to be a model card") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"model card {path} is not a JSON object")
    _check_schema(ModelCard, card, f"model card {path}")
    return card


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only.

    A file holding pickled objects that would run code is refused with a clear error, and so is
    one whose fields do not fit ``CheckpointFields``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a safe checkpoint: it could not be loaded with weights_only=True "
            f"(it may contain pickled code or be truncated): {ANSI_CODES.sub('', str(exc).splitlines()[0])}") from None
    except RecursionError:
        raise CheckpointError(f"{path} is not a checkpoint of this project: it is nested too deeply") from None
    if not isinstance(ckpt, dict) or not {"arch", "config", "state_dict"} <= set(ckpt):
        raise CheckpointError(f"{path} is not a checkpoint of this project: it needs the keys "
                              "'arch', 'config' and 'state_dict'")
    _check_schema(CheckpointFields, ckpt, f"checkpoint {path}")
    return ckpt


def save_checkpoint(path: str | Path, module: nn.Module, arch: str, config: dict, **extra) -> None:
    """Write a checkpoint atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    torch.save({"format": CHECKPOINT_FORMAT, "arch": arch, "config": config, "state_dict": state, **extra}, tmp)
    tmp.replace(path)


def model_card(name: str) -> dict:
    """The model card (data, split, architecture, metrics, command, training seconds)."""
    _check_name(name)
    path = CHECKPOINTS / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model card for {name!r}: train it with `python -m data.train {name}`")
    return read_card(path)


def list_models() -> list[dict]:
    """Every shipped model: name, kind, description, and its card when trained."""
    out = []
    for name, (kind, desc) in MODELS.items():
        card = model_card(name) if (CHECKPOINTS / f"{name}.json").is_file() else None
        out.append({"name": name, "kind": kind, "description": desc, "card": card})
    return out


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: shipped models are {', '.join(MODELS)}")


def build_from_checkpoint(ckpt: dict, name: str = "", card: dict | None = None):
    """Turn a loaded checkpoint dict into a TextModel, LanguageModel or image nn.Module."""
    try:
        module = build(ckpt["arch"], dict(ckpt["config"]))
        module.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, KeyError, AttributeError) as exc:  # config/weights do not fit the arch
        raise CheckpointError(f"checkpoint {name or ''} does not fit its architecture {ckpt.get('arch')!r}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    module.eval()
    card = card or {}
    if ckpt.get("vocab") is None:  # image classifier
        module.labels = list(ckpt.get("labels") or [])
        module.card = card
        return module
    try:
        vocab = Vocab(ckpt["vocab"])
        tokenizer = make_tokenizer(ckpt["tokenizer"])
        if ckpt.get("labels"):
            return TextModel(module, vocab, ckpt["labels"], embedding=module.emb, tokenizer=tokenizer,
                             card=card, name=name)
    except (TypeError, ValueError, AttributeError) as exc:  # vocab, tokenizer or labels do not make a text model
        raise CheckpointError(f"checkpoint {name or ''} has a vocab, tokenizer or labels that do not fit: "
                              f"{exc}") from None
    return LanguageModel(module, vocab, tokenizer, name=name, card=card)


SNAPSHOTS = {"mnist-cnn": (1, 2, 5)}  # epochs kept by `python -m data.train mnist-cnn --snapshots 1,2,5`


def load_snapshots(name: str) -> list[tuple[str, Any]]:
    """``[(label, model)]`` of a model during training: its kept epochs (``"epoch 1"``, ...) and the
    shipped final model (``"final"``), each loaded as ``load_model`` loads it."""
    _check_name(name)
    if name not in SNAPSHOTS:
        raise ValueError(f"no snapshots of {name!r}: models with snapshots are {', '.join(SNAPSHOTS)}")
    out = []
    for epoch in SNAPSHOTS[name]:
        path = CHECKPOINTS / f"{name}-epoch{epoch}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"snapshot {path} is missing: train with `python -m data.train {name} "
                                    f"--snapshots {','.join(map(str, SNAPSHOTS[name]))}`")
        out.append((f"epoch {epoch}", build_from_checkpoint(load_checkpoint(path), name=f"{name}-epoch{epoch}",
                                                            card=read_card(path.with_suffix(".json")))))
    return out + [("final", load_model(name))]


def load_model(name: str):
    """Load a shipped model by name.

    Classifiers come back as ``textexplain.TextModel``, language models as ``LanguageModel``
    and ``mnist-cnn`` as an ``nn.Module`` in eval mode (with ``.labels`` and ``.card``).
    """
    _check_name(name)
    path = CHECKPOINTS / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"model {name!r} has no checkpoint at {path}: "
                                f"train it with `python -m data.train {name}`")
    card_path = CHECKPOINTS / f"{name}.json"
    card = read_card(card_path) if card_path.is_file() else {"name": name}
    return build_from_checkpoint(load_checkpoint(path), name=name, card=card)
