"""Character spans of tokens: the ``spans(text)`` tokenizer protocol, and a search fallback.

A tokenizer is a callable ``text -> list[str]``. One that also has ``spans(text) -> [(start, end),
...]`` (one half-open character range per token, in order) tells exactly where each token sits in
the text; explanations, ``Explanation.to_words()`` and the stores' text views use those spans. For
a tokenizer without it, the spans are found by locating its tokens one after the other in the text
(exact, then case-insensitively); where a token cannot be found (a tokenizer that rewrites its
tokens, e.g. ``##`` sub-word prefixes) there are no spans, with a warning, rather than wrong ones.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

Span = tuple[int, int]


def spans_by_search(texts: Sequence[str], tokens: Sequence[str], offsets: np.ndarray) -> np.ndarray:
    """Character spans found by locating each token in its text after the previous one.

    Tries the exact token, then a case-insensitive match (lower-casing tokenizers).
    """
    spans = np.zeros((len(tokens), 2), dtype=np.int64)
    for seq, text in enumerate(texts):
        folded, cursor = text.lower(), 0
        for pos in range(offsets[seq], offsets[seq + 1]):
            tok = tokens[pos]
            at = text.find(tok, cursor)
            if at < 0:
                at = folded.find(tok.lower(), cursor)
            if at < 0:
                raise ValueError(f"token {tok!r} (position {pos}) is not in the text of sequence {seq} after "
                                 f"character {cursor}: pass spans=(N, 2) character spans explicitly")
            spans[pos] = at, at + len(tok)
            cursor = at + len(tok)
    return spans


def token_spans(tokenizer: Callable[[str], list[str]], text: str) -> list[Span] | None:
    """The character span of each token of ``text``: ``tokenizer.spans(text)`` when it has that method,
    otherwise its tokens located in order in the text; ``None`` (with a warning) where they cannot be."""
    spans = getattr(tokenizer, "spans", None)
    if spans is not None:
        return spans(text)
    tokens = [str(t) for t in tokenizer(text)]
    try:
        found = spans_by_search([text], tokens, np.array([0, len(tokens)]))
    except ValueError:
        name = getattr(tokenizer, "__name__", type(tokenizer).__name__)
        warnings.warn(f"tokenizer {name} has no spans(text) method and its tokens could not be located in order "
                      f"in the text {text[:40]!r}: no character spans for it (tokens are shown as tokens, not "
                      "words); give the tokenizer a spans(text) method", stacklevel=3)
        return None
    return [(int(a), int(b)) for a, b in found]
