"""TextModel: the adapter every explanation method talks to.

A TextModel bundles a classifier ``module`` (token ids ``(B, T)`` -> logits ``(B, C)``) with its
vocabulary, tokenizer, class labels and embedding layer, and offers batched ``predict_proba``.
Tokenizers also give character spans so explanations can be mapped back onto the text (the
``spans(text)`` protocol, ``textexplain.spans``). ``logits_of`` is the one place a module's output
is read: a logits tensor, a tuple whose first element is the logits, or an object with ``.logits``.
A ``Frame`` (``textexplain.frame``) adds the special tokens a model always sees and its attention
mask at the one call of the module (``TextModel.run``); ``TextModel.from_huggingface`` builds all
of it for a Hugging Face classifier.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .frame import Frame, Framed
from .hooks import TRANSIENT
from .spans import Span, token_spans

PROBE_TOKENS = 8  # length of the dummy input a model is called on once when wrapped


class WordTokenizer:
    """Lower-cased words (with inner apostrophes) and single punctuation marks."""

    name = "word"
    _pattern = re.compile(r"[^\W_]+(?:'[^\W_]+)*|\S", re.UNICODE)

    def spans(self, text: str) -> list[Span]:
        return [m.span() for m in self._pattern.finditer(text)]

    def __call__(self, text: str) -> list[str]:
        return [text[a:b].lower() for a, b in self.spans(text)]


class CharTokenizer:
    """One token per character (for character-level language models)."""

    name = "char"

    def spans(self, text: str) -> list[Span]:
        return [(i, i + 1) for i in range(len(text))]

    def __call__(self, text: str) -> list[str]:
        return list(text)


class WhitespaceTokenizer:
    """Tokens separated by whitespace, case kept (``str.split`` with spans)."""

    name = "whitespace"
    _pattern = re.compile(r"\S+")

    def spans(self, text: str) -> list[Span]:
        return [m.span() for m in self._pattern.finditer(text)]

    def __call__(self, text: str) -> list[str]:
        return [text[a:b] for a, b in self.spans(text)]


TOKENIZERS = {t.name: t for t in (WordTokenizer, CharTokenizer, WhitespaceTokenizer)}


def tokenization_of(tokenizer) -> str | None:
    """How ``tokenizer`` cuts a text, as one name: its ``tokenization`` (a Hugging Face tokenizer:
    ``hf:<name>``), else its ``name`` (``word``, ``char``, ``whitespace``), ``whitespace`` for
    ``str.split``; ``None`` for a callable that says nothing. Stores record it (``lstmvis.extract``)
    so the pages offer a model only the corpora it reads the way it was trained."""
    for attr in ("tokenization", "name"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, str) and value:
            return value
    return "whitespace" if tokenizer is str.split else None


def make_tokenizer(name: str):
    try:
        return TOKENIZERS[name]()
    except KeyError:
        raise ValueError(f"unknown tokenizer {name!r}: use one of {sorted(TOKENIZERS)}") from None


def logits_of(output, called: str = "module(ids)") -> torch.Tensor:
    """The logits in a module's output: the output itself when it is a tensor, the first element of
    a tuple or list, or the ``.logits`` attribute (Hugging Face ``ModelOutput`` style)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    what = f"a {type(output).__name__}" + (f" of {len(output)} items" if isinstance(output, (tuple, list)) else "")
    raise TypeError(f"{called} returned {what}: the logits must come as a tensor, as the first element of a "
                    "tuple, or as the .logits attribute of the output (Hugging Face style)")


def as_vocab(vocab, pad_token: str = "<pad>", unk_token: str = "<unk>") -> "Vocab":
    """A ``Vocab`` from a ``Vocab``, a token list or a ``{token: id}`` dict."""
    if isinstance(vocab, Vocab):
        return vocab
    if isinstance(vocab, dict):
        itos = [None] * len(vocab)
        for tok, i in vocab.items():
            itos[i] = tok
        return Vocab(itos, pad_token, unk_token)
    return Vocab(list(vocab), pad_token, unk_token)


class Vocab:
    """Token <-> id mapping with explicit pad and unk tokens."""

    def __init__(self, tokens: Sequence[str], pad_token: str = "<pad>", unk_token: str = "<unk>"):
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary has duplicate tokens")
        for name, tok in (("pad_token", pad_token), ("unk_token", unk_token)):
            if tok not in self.stoi:
                raise ValueError(f"{name} {tok!r} is not in the vocabulary: add it to the token list")
        self.pad_token, self.unk_token = pad_token, unk_token
        self.pad_id, self.unk_id = self.stoi[pad_token], self.stoi[unk_token]

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None,
              pad_token: str = "<pad>", unk_token: str = "<unk>") -> "Vocab":
        """Vocabulary of tokens seen at least ``min_freq`` times, most frequent first (ties by token)."""
        counts: dict[str, int] = {}
        for toks in token_lists:
            for t in toks:
                counts[t] = counts.get(t, 0) + 1
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in (pad_token, unk_token)),
                      key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[: max_size - 2]
        return cls([pad_token, unk_token, *kept], pad_token, unk_token)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_HOOK_FLAGS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def _copy_without_transients(module: nn.Module, attempts: int = 3) -> tuple[nn.Module, dict]:
    """``copy.deepcopy(module)`` without the hooks and forward overrides marked transient (held by
    calls running in other threads), and the deepcopy memo (original id -> copy)."""

    for attempt in range(attempts):
        memo: dict = {}
        for m in module.modules():  # transient objects copy to None (list() of a dict is atomic under the GIL)
            forward = m.__dict__.get("forward")
            if getattr(forward, TRANSIENT, False):
                memo[id(forward)] = None
            for name in _HOOK_DICTS:
                for hook in list(m.__dict__.get(name, {}).values()):
                    if getattr(hook, TRANSIENT, False):
                        memo[id(hook)] = None
        try:
            copied = copy.deepcopy(module, memo)
            break
        except RuntimeError:  # a hook dict changed size while being copied: another thread came or went
            if attempt == attempts - 1:
                raise
        except Exception as err:  # e.g. a module holding a lock or an open file
            raise TypeError(f"a float64 copy needs copy.deepcopy of the module, which failed ({err}); use "
                            "precision='model', or make the module deep-copyable") from err
    for m in copied.modules():
        if "forward" in m.__dict__ and m.__dict__["forward"] is None:
            del m.__dict__["forward"]
        for name in _HOOK_DICTS:
            hooks = m.__dict__.get(name, {})
            for key in [k for k, hook in hooks.items() if hook is None]:
                del hooks[key]
                for flags in _HOOK_FLAGS:
                    m.__dict__.get(flags, {}).pop(key, None)
    return copied, memo


class TextModel:
    """A text classifier with everything an explanation needs.

    ``module`` maps token ids ``(B, T)`` (right-padded with the pad id) to logits ``(B, C)``: a
    tensor, a tuple whose first element is the logits, or an object with ``.logits`` (Hugging Face
    style), read in one place (``logits``). ``embedding`` is the ``nn.Embedding`` inside it whose
    output gradient methods attribute to. ``vocab`` is a ``Vocab``, a token list or a
    ``{token: id}`` dict.

    ``tokenizer`` is a callable ``text -> tokens``. One with a ``spans(text)`` method (a
    ``(start, end)`` character range per token, in order) places tokens exactly in the text; without
    it the tokens are located in order in the text (case-insensitively), and where that fails the
    explanation has no spans (a warning; ``to_words()`` then keeps the tokens).

    ``frame``: the special tokens the module always sees around a text and its attention mask
    (``textexplain.frame.Frame``; ``None``: the module gets the text's ids as they are). Tokens,
    ids, baselines and masks are then the text's own; the frame is added at each call of the module,
    so special tokens are in every forward pass but never scored or perturbed.

    The module is never changed: one in training mode is refused (call ``module.eval()`` first; dropout
    would make every explanation random). On wrapping, the module runs once on ``PROBE_TOKENS`` unknown
    tokens, to check that it returns one logit per label.
    """

    def __init__(self, module: nn.Module, vocab, labels: Sequence[str], embedding: nn.Embedding,
                 tokenizer: Callable[[str], list[str]] = str.split, pad_token: str = "<pad>",
                 unk_token: str = "<unk>", max_tokens: int = 512, batch_size: int = 256,
                 card: dict | None = None, name: str | None = None, frame: Frame | None = None):
        if not isinstance(embedding, nn.Embedding):
            raise TypeError("embedding must be the model's nn.Embedding layer (e.g. module.emb)")
        if not any(m is embedding for m in module.modules()):
            raise ValueError("embedding is not a submodule of module: pass the layer the model uses")
        vocab = as_vocab(vocab, pad_token, unk_token)
        if len(vocab) != embedding.num_embeddings:
            raise ValueError(f"vocabulary has {len(vocab)} tokens but the embedding has "
                             f"{embedding.num_embeddings} rows")
        if module.training:
            raise ValueError(f"the module {type(module).__name__} is in training mode (dropout would make every "
                             "explanation random): call module.eval() before wrapping it; TextModel never "
                             "changes your module")
        self.module = module
        self.vocab = vocab
        self.labels = list(labels)
        self.embedding = embedding
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.card = card or {}
        self.name = name or self.card.get("name", type(module).__name__)
        self.frame = frame
        self._check_labels()

    @classmethod
    def from_huggingface(cls, model: nn.Module, tokenizer, labels: Sequence[str] | None = None, name: str = "",
                         max_length: int | None = None, batch_size: int = 64, card: dict | None = None) -> TextModel:
        """A Hugging Face sequence classifier (``AutoModelForSequenceClassification`` style, in eval mode)
        with its tokenizer (a ``transformers`` fast tokenizer or a ``tokenizers.Tokenizer``).

        Tokens are the text's own sub-word tokens, placed in the text by the tokenizer's offsets
        (``Explanation.to_words()`` merges them into words); the tokenizer's special tokens
        (``[CLS]``/``[SEP]``, ``<s>``/``</s>``) become the ``frame``: in every forward pass, never
        scored or perturbed. The embedding is ``model.get_input_embeddings()``; padded batches get
        the attention mask. ``labels`` default to ``model.config.id2label``; ``max_length`` (the
        tokens the model sees, frame included) to the tokenizer's or the position embeddings' limit.
        Needs ``transformers`` or ``tokenizers`` (the ``[hf]`` extra) only for the objects passed in.
        """
        from .huggingface import classifier_parts

        parts = classifier_parts(model, tokenizer, labels, name, max_length)
        return cls(model, parts.vocab, parts.labels, parts.embedding, tokenizer=parts.tokenizer,
                   pad_token=parts.pad_token, unk_token=parts.unk_token, max_tokens=parts.max_tokens,
                   batch_size=batch_size, card={**parts.card, **(card or {})}, name=parts.name, frame=parts.frame)

    def _check_labels(self) -> None:
        """Run the module once on a short dummy input: it must give one logit per label."""
        ids = torch.full((1, PROBE_TOKENS), self.unk_id, dtype=torch.long, device=self.embedding.weight.device)
        with torch.no_grad():
            n_logits = self.logits(ids).shape[1]
        if n_logits != len(self.labels):
            raise ValueError(f"the module returns {n_logits} logits but {len(self.labels)} labels were given "
                             f"({self.labels}): give one label per logit, in the module's order")

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` of the module on the texts' right-padded ids ``(B, T)`` (frame added)."""
        return self.run(self.inputs(ids))

    def inputs(self, ids: torch.Tensor) -> Framed:
        """The module's input for the texts' ids ``(B, T)``: the ids with the frame and its attention mask
        when the model has a frame (``textexplain.frame``), the ids themselves otherwise."""
        return Framed(ids) if self.frame is None else self.frame.layout(ids, self.pad_id)

    def run(self, inputs: Framed) -> torch.Tensor:
        """Logits ``(B, C)`` of the module on ``inputs``: the one place the module is called and its
        output (tensor, tuple or ``.logits``) read."""
        if inputs.attention_mask is None:
            output = self.module(inputs.ids)
        else:
            output = self.module(input_ids=inputs.ids, attention_mask=inputs.attention_mask)
        logits = logits_of(output)
        if logits.dim() != 2 or logits.shape[0] != inputs.ids.shape[0]:
            raise ValueError(f"the module returned logits of shape {tuple(logits.shape)}: a classifier must map "
                             "ids (B, T) to logits (B, C)")
        return logits

    def __repr__(self) -> str:
        return (f"TextModel({self.name!r}, labels={self.labels}, vocab={len(self.vocab)} tokens, "
                f"module={type(self.module).__name__})")

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the embedding (the precision explanations run at)."""
        return self.embedding.weight.dtype

    def float64(self) -> TextModel:
        """This model in double precision: a fresh float64 copy of ``module``, everything else shared.

        For Integrated Gradients on recurrent models, whose outputs can flip along the path over a
        stretch narrower than float32 resolves (``IntegratedGradients(precision=...)``). Made anew on
        every call (a few ms for the shipped classifiers), so it always has the current parameters;
        hooks that other calls hold on the module only for their duration are left out of the copy.
        ``module`` itself is never touched. A model that already is float64 returns itself.
        """
        if self.dtype == torch.float64:
            return self
        module, memo = _copy_without_transients(self.module)
        twin = copy.copy(self)
        twin.module, twin.embedding = module.double().eval(), memo[id(self.embedding)]
        return twin

    @property
    def pad_id(self) -> int:
        return self.vocab.pad_id

    @property
    def unk_id(self) -> int:
        return self.vocab.unk_id

    @property
    def tokenization(self) -> str | None:
        """How the model cuts a text (``tokenization_of`` its tokenizer): ``word``, ``char``, ``hf:<name>``..."""
        return tokenization_of(self.tokenizer)

    def tokenize(self, text: str) -> list[str]:
        """Tokens of ``text``; empty or over-long input gets a clear error."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        tokens = self.tokenizer(text)
        if not tokens:
            raise ValueError("the text has no tokens (it is empty or only whitespace): give some words")
        if len(tokens) > self.max_tokens:
            raise ValueError(f"the text has {len(tokens)} tokens, more than max_tokens={self.max_tokens}: "
                             "shorten it or raise TextModel.max_tokens")
        return tokens

    def token_spans(self, text: str) -> list[Span] | None:
        """Character span of each token (``textexplain.spans.token_spans``), ``None`` where unknown."""
        return token_spans(self.tokenizer, text)

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(self.tokenize(text))

    def pad_batch(self, id_lists: Sequence[Sequence[int]]) -> torch.Tensor:
        """Right-pad id lists into one ``(B, T)`` LongTensor."""
        width = max(len(ids) for ids in id_lists)
        out = torch.full((len(id_lists), width), self.pad_id, dtype=torch.long)
        for i, ids in enumerate(id_lists):
            out[i, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
        return out

    @torch.no_grad()
    def logits_ids(self, id_lists: Sequence[Sequence[int]], batch_size: int | None = None) -> np.ndarray:
        """Logits ``(N, C)`` for token-id lists, in batches of similar length."""
        if len(id_lists) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        batch_size = batch_size or self.batch_size
        order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i]))
        out = np.empty((len(id_lists), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            logits = self.logits(self.pad_batch([id_lists[i] for i in chunk]))
            out[chunk] = logits.float().cpu().numpy()
        return out

    def predict_proba_ids(self, id_lists: Sequence[Sequence[int]], batch_size: int | None = None) -> np.ndarray:
        logits = torch.from_numpy(self.logits_ids(id_lists, batch_size))
        return torch.softmax(logits, dim=-1).numpy()

    def predict_proba(self, texts: str | Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Class probabilities ``(N, C)`` for a list of texts (one text gives ``(1, C)``)."""
        if isinstance(texts, str):
            texts = [texts]
        return self.predict_proba_ids([self.encode(t) for t in texts], batch_size)

    def predict(self, texts: str | Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def label_index(self, target: int | str | None, probs: np.ndarray | None = None) -> int:
        """Resolve a target given as index, label name or None (= the predicted class)."""
        if target is None:
            if probs is None:
                raise ValueError("target=None needs the class probabilities to pick the predicted class")
            return int(np.argmax(probs))
        if isinstance(target, str):
            if target not in self.labels:
                raise ValueError(f"unknown target {target!r}: the labels are {self.labels}")
            return self.labels.index(target)
        target = int(target)
        if not 0 <= target < len(self.labels):
            raise ValueError(f"target {target} is out of range: use 0..{len(self.labels) - 1} or a label "
                             f"name from {self.labels}")
        return target
