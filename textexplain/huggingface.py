"""Hugging Face models and tokenizers as ``TextModel`` and ``LanguageModel`` parts.

``TextModel.from_huggingface`` and ``lstmvis.LanguageModel.from_huggingface`` call in here. Nothing
imports ``transformers`` or ``tokenizers``: the objects passed in are read by their documented
methods (``get_input_embeddings``, ``config``, a tokenizer's ``backend_tokenizer``, ``encode``
with offsets), so the package imports and works without the ``[hf]`` extra.

The tokenizer is used through ``HuggingFaceTokenizer``: the text's own sub-word tokens (no special
tokens), with character spans from the tokenizer's offsets (whitespace a byte-level token carries
is trimmed off its span, so ``Ġgood`` covers ``good``); the special tokens its post-processor puts
around a text become a ``Frame`` (``textexplain.frame``).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .frame import Frame
from .spans import Span

PROBE_TEXT = "a probe text"  # encoded once with and once without special tokens to find the frame
NO_LIMIT = 10 ** 6  # a transformers tokenizer's model_max_length at or above this means "not set"


class HuggingFaceTokenizer:
    """A ``transformers`` fast tokenizer or a ``tokenizers.Tokenizer`` as a textexplain tokenizer:
    ``tokenizer(text)`` gives the text's sub-word tokens, ``spans(text)`` their character spans.

    Works on a private copy of the underlying ``tokenizers.Tokenizer`` with padding and truncation
    off, so the user's tokenizer is never changed and a text is never cut silently.
    """

    name = "huggingface"

    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if not (hasattr(backend, "encode") and hasattr(backend, "to_str") and hasattr(backend, "get_vocab")):
            raise TypeError(f"{type(tokenizer).__name__} is not a Hugging Face fast tokenizer: pass a transformers "
                            "PreTrainedTokenizerFast (AutoTokenizer.from_pretrained(..., use_fast=True)) or a "
                            "tokenizers.Tokenizer, whose offsets place the tokens in the text")
        self.source = tokenizer
        name = getattr(tokenizer, "name_or_path", None)
        # how it cuts a text (textexplain.model.tokenization_of): the pretrained name, else the tokenizer model's kind
        kind = type(getattr(backend, "model", backend)).__name__.lower()
        self.tokenization = f"hf:{name}" if isinstance(name, str) and name else f"hf:{kind}"
        self.backend = type(backend).from_str(backend.to_str())
        self.backend.no_padding()
        self.backend.no_truncation()

    def __repr__(self) -> str:
        return f"HuggingFaceTokenizer({type(self.source).__name__}, {self.backend.get_vocab_size()} tokens)"

    def __call__(self, text: str) -> list[str]:
        return list(self.backend.encode(text, add_special_tokens=False).tokens)

    def ids(self, text: str) -> list[int]:
        """The tokenizer's own ids of the text's tokens (no special tokens)."""
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def spans(self, text: str) -> list[Span]:
        """Character span of each token from the tokenizer's offsets, with whitespace at either end
        trimmed off (a token of whitespace only keeps its span)."""
        out = []
        for a, b in self.backend.encode(text, add_special_tokens=False).offsets:
            piece = text[a:b]
            if piece.strip():
                a, b = a + len(piece) - len(piece.lstrip()), b - (len(piece) - len(piece.rstrip()))
            out.append((a, b))
        return out

    def frame_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(prefix, suffix)``: the ids the tokenizer puts before and after a text's own tokens."""
        framed = self.backend.encode(PROBE_TEXT, add_special_tokens=True)
        plain = self.backend.encode(PROBE_TEXT, add_special_tokens=False).ids
        ids, special = list(framed.ids), list(framed.special_tokens_mask)
        for start in range(len(ids) - len(plain) + 1):
            stop = start + len(plain)
            if ids[start:stop] == plain and all(special[:start]) and all(special[stop:]):
                return tuple(ids[:start]), tuple(ids[stop:])
        raise ValueError("the tokenizer's special tokens are not only before and after the text's own tokens "
                         f"({framed.tokens} for {PROBE_TEXT!r}): only a prefix and a suffix are supported")

    def vocab_tokens(self, rows: int) -> list[str]:
        """The token of each id, ``rows`` of them (ids the tokenizer does not use get placeholder names)."""
        vocab = self.backend.get_vocab(with_added_tokens=True)
        if max(vocab.values()) >= rows:
            raise ValueError(f"the tokenizer has ids up to {max(vocab.values())} but the model's embedding has {rows} "
                             "rows: pass the tokenizer the model was trained with")
        itos = [f"<unused {i}>" for i in range(rows)]
        for token, i in vocab.items():
            itos[i] = token
        return itos

    def special_token(self, kind: str, token_id: int | None = None) -> str | None:
        """The ``kind`` (``"pad"``, ``"unk"``, ``"eos"``) token: given by id, named by the transformers
        tokenizer, or the tokenizer model's own unk token."""
        if token_id is not None:
            return self.backend.id_to_token(int(token_id))
        named = getattr(self.source, f"{kind}_token", None)
        if isinstance(named, str):
            return named
        if kind == "unk":
            return getattr(self.backend.model, "unk_token", None)
        return None


@dataclass(frozen=True)
class ClassifierParts:
    """Everything ``TextModel`` needs for one Hugging Face classifier."""

    vocab: list[str]
    labels: list[str]
    embedding: nn.Embedding
    tokenizer: HuggingFaceTokenizer
    pad_token: str
    unk_token: str
    max_tokens: int
    name: str
    card: dict
    frame: Frame


@dataclass(frozen=True)
class LanguageModelParts:
    """Everything ``LanguageModel`` needs for one Hugging Face causal language model."""

    vocab: list[str]
    tokenizer: HuggingFaceTokenizer
    pad_token: str
    unk_token: str
    max_tokens: int
    name: str
    card: dict


def classifier_parts(model: nn.Module, tokenizer, labels, name: str, max_length: int | None) -> ClassifierParts:
    """Vocabulary, labels, embedding, tokenizer, frame and limits of a sequence classifier."""
    embedding, config = _embedding_and_config(model)
    tok = HuggingFaceTokenizer(tokenizer)
    vocab = tok.vocab_tokens(embedding.num_embeddings)
    pad = tok.special_token("pad", getattr(config, "pad_token_id", None)) or tok.special_token("unk")
    unk = tok.special_token("unk") or pad
    if pad is None:
        raise ValueError("the tokenizer names no pad or unk token and the model's config has no pad_token_id: "
                         "set model.config.pad_token_id to the id padded positions get")
    if labels is None:
        id2label = getattr(config, "id2label", None) or {}
        labels = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(len(id2label))]
    prefix, suffix = tok.frame_ids()
    frame = Frame(prefix, suffix, attention_mask=True)
    limit = max_length or _context_length(model, config, tokenizer)
    if limit <= frame.size:
        raise ValueError(f"max_length={limit} leaves no room for a text beside the {frame.size} special tokens")
    name = name or getattr(config, "name_or_path", "") or type(model).__name__
    card = {"name": name, "source": "huggingface", "architecture": type(model).__name__,
            "model_type": getattr(config, "model_type", None), "special_tokens": {"prefix": list(prefix),
                                                                                 "suffix": list(suffix)}}
    return ClassifierParts(vocab, list(labels), embedding, tok, pad, unk, limit - frame.size, name, card, frame)


def language_model_parts(model: nn.Module, tokenizer, name: str, max_length: int | None) -> LanguageModelParts:
    """Vocabulary, tokenizer and context length of a causal language model (GPT-2 style)."""
    embedding, config = _embedding_and_config(model)
    tok = HuggingFaceTokenizer(tokenizer)
    vocab = tok.vocab_tokens(embedding.num_embeddings)
    pad = (tok.special_token("pad", getattr(config, "pad_token_id", None))
           or tok.special_token("eos", getattr(config, "eos_token_id", None)) or tok.special_token("unk"))
    if pad is None:
        raise ValueError("the tokenizer names no pad, end-of-text or unk token and the model's config has no "
                         "pad_token_id or eos_token_id: set model.config.pad_token_id")
    unk = tok.special_token("unk") or pad
    name = name or getattr(config, "name_or_path", "") or type(model).__name__
    card = {"name": name, "source": "huggingface", "architecture": type(model).__name__,
            "model_type": getattr(config, "model_type", None)}
    return LanguageModelParts(vocab, tok, pad, unk, max_length or _context_length(model, config, tokenizer),
                              name, card)


def _embedding_and_config(model: nn.Module):
    if not isinstance(model, nn.Module) or not hasattr(model, "get_input_embeddings") or not hasattr(model, "config"):
        raise TypeError(f"{type(model).__name__} is not a Hugging Face model: pass a transformers PreTrainedModel "
                        "(e.g. AutoModelForSequenceClassification.from_pretrained(...).eval())")
    if model.training:
        raise ValueError(f"the model {type(model).__name__} is in training mode (dropout would make every result "
                         "random): call model.eval() first; it is never changed here")
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"model.get_input_embeddings() is a {type(embedding).__name__}, not an nn.Embedding: "
                        "explanations attribute to an nn.Embedding's output")
    return embedding, model.config


def _context_length(model: nn.Module, config, tokenizer) -> int:
    """Tokens the model can see at once: the tokenizer's ``model_max_length`` when set, else the rows
    of the position embeddings (less the offset of models that number positions after the pad id,
    RoBERTa style), else 512."""
    named = getattr(tokenizer, "model_max_length", None)
    if isinstance(named, int) and 0 < named < NO_LIMIT:
        return named
    rows = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if rows is None:
        return 512
    for module_name, module in model.named_modules():
        if module_name.endswith("position_embeddings") and isinstance(module, nn.Embedding) \
                and module.padding_idx is not None:
            return int(rows) - module.padding_idx - 1
    return int(rows)
