"""LanguageModel: a language model with its vocabulary and tokenizer, so any text can run through it.

On the ground floor (next to ``TextModel``) so the demo package can build its language models with
it; the public name is ``lstmvis.LanguageModel``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .model import as_vocab, logits_of, tokenization_of
from .spans import Span, token_spans


class LanguageModel:
    """A language model ``module`` with its ``vocab`` (a ``Vocab``, token list or ``{token: id}``) and
    ``tokenizer`` (a callable ``text -> tokens``; see ``textexplain.spans`` for the ``spans`` protocol).

    ``module`` may be

    * recurrent: ``forward(ids, state) -> (logits, state)`` (``state=None`` starts afresh); the state
      is carried from chunk to chunk, so long texts run in pieces exactly as in one pass;
    * stateless: ``forward(ids)`` returning logits ``(B, T, V)``, a tuple whose first element is the
      logits, or an object with ``.logits`` (Hugging Face style). Nothing is carried between calls:
      ``lstmvis.extract`` and ``bits_per_token`` run each sequence whole, in one call.

    Which one is found once, here: a ``forward`` with a second positional parameter is called as
    ``module(ids, None)``, and a pair ``(logits tensor, state)`` back means recurrent. The probe runs
    two tokens under ``no_grad`` in eval mode (the module's training flags are put back). ``step`` is
    the one call everything else uses.

    ``max_tokens``: the longest input the module takes in one call (a transformer's context; ``None``:
    no limit). ``step`` refuses longer inputs with a clear error, and ``bits_per_token`` runs a
    stateless model on windows of at most that many tokens.
    """

    def __init__(self, module: nn.Module, vocab, tokenizer: Callable[[str], list[str]], name: str = "",
                 card: dict | None = None, max_tokens: int | None = None):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        self.module = module
        self.vocab = vocab if hasattr(vocab, "encode") and hasattr(vocab, "itos") else as_vocab(vocab)
        self.tokenizer = tokenizer
        self.name = name
        self.card = card or {}
        self.max_tokens = max_tokens
        self.stateful, self._passes_state = self._probe()

    @classmethod
    def from_huggingface(cls, model: nn.Module, tokenizer, name: str = "", max_length: int | None = None,
                         card: dict | None = None) -> LanguageModel:
        """A Hugging Face causal language model (``AutoModelForCausalLM`` style, GPT-2 and the like)
        with its tokenizer (a ``transformers`` fast tokenizer or a ``tokenizers.Tokenizer``).

        Stateless and exact: every call runs the model on the whole sequence (a causal model's logits
        at a token depend on the tokens before it only, so right-padding changes nothing); no
        ``past_key_values`` are carried, so a text is at most ``max_length`` tokens (default: the
        tokenizer's ``model_max_length`` or the model's position embeddings) in one call. Tokens are
        the tokenizer's sub-word tokens with spans from its offsets, without special tokens; the
        pad id (for padded batches) is the config's pad, else its end-of-text token. The module is
        used as it is (never changed); put it in eval mode first.
        """
        from .huggingface import language_model_parts

        parts = language_model_parts(model, tokenizer, name, max_length)
        return cls(model, as_vocab(parts.vocab, parts.pad_token, parts.unk_token), parts.tokenizer, name=parts.name,
                   card={**parts.card, **(card or {})}, max_tokens=parts.max_tokens)

    def _probe(self) -> tuple[bool, bool]:
        """``(stateful, forward takes a second argument)`` from one call on two tokens."""
        passes_state = _takes_second_argument(self.module)
        try:
            device = next(self.module.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        ids = torch.full((1, 2), getattr(self.vocab, "unk_id", 0), dtype=torch.long, device=device)
        flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        try:
            with torch.no_grad():
                out = self.module(ids, None) if passes_state else self.module(ids)
        finally:
            for m, training in flags:
                m.training = training
        stateful = (passes_state and isinstance(out, (tuple, list)) and len(out) == 2
                    and isinstance(out[0], torch.Tensor) and _is_state(out[1]))
        called = "module(ids, None)" if passes_state else "module(ids)"
        logits = out[0] if stateful else logits_of(out, called)
        if logits.dim() != 3 or tuple(logits.shape[:2]) != (1, 2):
            raise TypeError(f"{called} gave logits of shape {tuple(logits.shape)} for ids of shape (1, 2): a "
                            "language model maps ids (B, T) to logits (B, T, V), one row per token")
        if logits.shape[-1] != len(self.vocab):
            raise ValueError(f"the module gives {logits.shape[-1]} logits per token but the vocabulary has "
                             f"{len(self.vocab)} tokens: they must match")
        return stateful, passes_state

    def step(self, ids: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """``(logits (B, T, V), state)`` for ids ``(B, T)`` continuing from ``state`` (``None``: a fresh
        start); a stateless model returns ``None`` as its state and refuses one."""
        if self.max_tokens is not None and ids.shape[-1] > self.max_tokens:
            raise ValueError(f"{ids.shape[-1]} tokens in one call, more than this model's max_tokens="
                             f"{self.max_tokens} (its context): run shorter texts or windows of them")
        if self.stateful:
            logits, state = self.module(ids, state)
            return logits, state
        if state is not None:
            raise ValueError("this language model is stateless (its forward keeps no state): it cannot continue "
                             "from a state; run the whole sequence in one call")
        out = self.module(ids, None) if self._passes_state else self.module(ids)
        return logits_of(out), None

    def __repr__(self) -> str:
        tokenizer = getattr(self.tokenizer, "name", type(self.tokenizer).__name__)
        return (f"LanguageModel({self.name!r}, vocab={len(self.vocab)} tokens, tokenizer={tokenizer}, "
                f"module={type(self.module).__name__}, {'stateful' if self.stateful else 'stateless'})")

    @property
    def tokenization(self) -> str | None:
        """How the model cuts a text (``textexplain.model.tokenization_of`` its tokenizer)."""
        return tokenization_of(self.tokenizer)

    def tokenize(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        return self.tokenizer(text)

    def token_spans(self, text: str) -> list[Span] | None:
        """Character span of each token (``textexplain.spans.token_spans``), ``None`` where unknown."""
        return token_spans(self.tokenizer, text)

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(self.tokenize(text))

    @property
    def pad_id(self) -> int:
        return self.vocab.pad_id

    @torch.no_grad()
    def bits_per_token(self, id_lists: Sequence[Sequence[int]], streams: int = 16, chunk: int = 256) -> float:
        """Mean next-token cross-entropy in bits: each sequence cut into ``streams`` rows, run in chunks
        carrying the state (a stateless model runs each row whole, or in windows of ``max_tokens``
        each from a fresh start)."""
        total, count = 0.0, 0
        for ids in id_lists:
            ids = torch.as_tensor(ids, dtype=torch.long)
            n = (len(ids) - 1) // streams * streams
            if n <= 0:
                continue
            x = ids[:n].view(streams, -1)
            y = ids[1:n + 1].view(streams, -1)
            width = chunk if self.stateful else min(x.shape[1], self.max_tokens or x.shape[1])
            state = None
            for s in range(0, x.shape[1], width):
                logits, state = self.step(x[:, s:s + width], state if self.stateful else None)
                total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     y[:, s:s + width].reshape(-1), reduction="sum").item()
                count += y[:, s:s + width].numel()
        return float(total / max(count, 1) / np.log(2))


def as_language_model(model) -> LanguageModel:
    """``model`` itself when it is a ``LanguageModel``; an object with ``.module``, ``.vocab`` and
    ``.tokenizer`` wrapped as one (so its module is called through ``step``)."""
    if isinstance(model, LanguageModel):
        return model
    return LanguageModel(model.module, model.vocab, model.tokenizer, name=getattr(model, "name", ""),
                         card=getattr(model, "card", None))


def _takes_second_argument(module: nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a C extension): assume the recurrent form
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _is_state(value) -> bool:
    """A recurrent state: None, a tensor, or tuples/lists of them (nn.LSTM's ``(h, c)``)."""
    if value is None or isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and all(_is_state(v) for v in value)
