"""Text back from tokens: how ``extract`` gives a store of token-id lists its texts and spans.

A store keeps each sequence's text and every token's character span in it, so text hypotheses
(``rank_cells``) and the explorer read the right characters. When the corpus comes as token ids,
the text is rebuilt from the vocabulary's tokens by the tokenizer's convention:

* ``char`` (a ``CharTokenizer``, or a vocabulary whose ordinary tokens are all single characters):
  tokens are concatenated, so ``A p a c h e`` is ``Apache`` again;
* ``wordpiece`` (a vocabulary with ``##`` continuation tokens, BERT): a ``##`` token joins the
  token before it without its ``##``, others are separated by a space;
* ``bpe`` (``Ġ`` marks a leading space, GPT-2/RoBERTa) and ``sentencepiece`` (``▁``): the marker
  becomes a space, tokens are otherwise concatenated;
* ``space`` (word tokenizers and anything else): tokens separated by single spaces.

Special tokens (``<pad>``, ``<unk>``, ``[CLS]``, ...) are kept as they are written, so each token has
a span and none is lost.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STYLES = ("char", "wordpiece", "bpe", "sentencepiece", "space")
_MARKERS = {"bpe": "\u0120", "sentencepiece": "\u2581"}


def _is_special(token: str) -> bool:
    return len(token) > 2 and ((token[0], token[-1]) in (("<", ">"), ("[", "]")))


def join_style(vocab: Sequence[str], tokenizer=None) -> str:
    """The convention tokens of ``vocab`` (and ``tokenizer``, where known) are joined by: one of ``STYLES``."""
    if getattr(tokenizer, "name", None) == "char":
        return "char"
    ordinary = [t for t in vocab if not _is_special(t)]
    if any(t.startswith("##") and len(t) > 2 for t in ordinary):
        return "wordpiece"
    for style, marker in _MARKERS.items():
        if any(t.startswith(marker) for t in ordinary):
            return style
    if getattr(tokenizer, "name", None) is None and ordinary and all(len(t) == 1 for t in ordinary):
        return "char"
    return "space"


def detokenize(tokens: Sequence[str], style: str) -> tuple[str, np.ndarray]:
    """``(text, spans (T, 2))``: the text the tokens make by ``style`` and each token's span in it."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    pieces, spans, pos = [], np.zeros((len(tokens), 2), dtype=np.int64), 0
    for i, token in enumerate(tokens):
        sep, body = "", token
        if style == "space" or (style == "wordpiece" and not token.startswith("##")):
            sep = " " if i else ""
        elif style == "wordpiece":
            body = token[2:]
        elif style in _MARKERS and token.startswith(_MARKERS[style]):
            sep, body = (" " if i else ""), token[1:]
        pos += len(sep)
        spans[i] = (pos, pos + len(body))
        pieces.append(sep + body)
        pos += len(body)
    return "".join(pieces), spans
