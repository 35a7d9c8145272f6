"""Shipped demo models: names, model cards, safe checkpoint loading."""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
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
    "sentiment-shortcut": ("classifier", "sentiment-lstm trained on the corpus with a planted junk token"),
    "charlm-python": ("language-model", "char-level 2-layer LSTM language model on Python source"),
    "charlm-python-gru": ("language-model", "char-level 2-layer GRU language model on Python source"),
    "parens-lstm": ("language-model", "LSTM language model on the nested-parentheses language"),
    "mnist-cnn": ("image-classifier", "conv + ReLU -> global average pool -> linear on MNIST"),
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, foreign, or would need unsafe unpickling."""


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only.

    A file holding pickled objects that would run code is refused with a clear error.
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
    if not isinstance(ckpt, dict) or not {"arch", "config", "state_dict"} <= set(ckpt):
        raise CheckpointError(f"{path} is not a checkpoint of this project: it needs the keys "
                              "'arch', 'config' and 'state_dict'")
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
    return json.loads(path.read_text())


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
    vocab = Vocab(ckpt["vocab"])
    tokenizer = make_tokenizer(ckpt["tokenizer"])
    if ckpt.get("labels"):
        return TextModel(module, vocab, ckpt["labels"], embedding=module.emb, tokenizer=tokenizer,
                         card=card, name=name)
    return LanguageModel(module, vocab, tokenizer, name=name, card=card)


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
    card = json.loads(card_path.read_text()) if card_path.is_file() else {"name": name}
    return build_from_checkpoint(load_checkpoint(path), name=name, card=card)
