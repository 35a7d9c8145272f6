"""Hypotheses: per-token series computed from a store's text, to rank cells against.

A hypothesis is called on a store and returns one value per token (``(N,)``): ``binary`` ones
(0/1, ranked by AUROC) or ``scalar`` ones (ranked by correlation)::

    lstmvis.hypotheses.inside_quotes(store)       # 1 inside a string literal
    lstmvis.rank_cells(store, "rnn.l1.c", lstmvis.hypotheses.bracket_depth)

Text hypotheses are defined per character of each sequence's original text and describe the
state *after reading* that character, which is what a recurrent state at that step can know: an
opening quote is inside the string, the closing quote is outside; ``#`` starts a comment and the
newline ends it; a bracket changes the depth at the bracket itself. A token takes the value of its
last character. Stores without stored texts fall back to tokens joined by spaces (with a warning).
"""
from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterable

import numpy as np
import regex as regex_engine  # like re, with a time limit: user patterns cannot backtrack forever

REGEX_SECONDS = 5.0  # seconds one regex hypothesis may spend on one whole store (all its texts together)

KINDS = ("binary", "scalar")


class Hypothesis:
    """A named per-token series over a store: ``hypothesis(store) -> (N,) array``."""

    def __init__(self, name: str, kind: str, description: str = ""):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: use 'binary' or 'scalar'")
        self.name, self.kind, self.description = name, kind, description

    def __call__(self, store) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<hypothesis {self.name} ({self.kind})>"


class Cancelled(ValueError):
    """The caller's ``cancelled()`` said to stop (e.g. the client that asked went away)."""


class TextHypothesis(Hypothesis):
    """A hypothesis from a function ``text -> one value per character``."""

    def __init__(self, name: str, kind: str, per_char: Callable[[str], np.ndarray], description: str = ""):
        super().__init__(name, kind, description)
        self.per_char = per_char

    def of_text(self, text: str) -> np.ndarray:
        """One value per character of ``text``."""
        values = np.asarray(self.per_char(text))
        if values.shape != (len(text),):
            raise ValueError(f"hypothesis {self.name} gave shape {values.shape} for a text of {len(text)} chars")
        return values

    def __call__(self, store, cancelled: Callable[[], bool] | None = None) -> np.ndarray:
        """Per-token values over ``store``; ``cancelled`` is asked before each text and a True
        stops the work with :class:`Cancelled`."""
        return self.over_texts(store, self.of_text, cancelled)

    def over_texts(self, store, of_text: Callable[[str], np.ndarray],
                   cancelled: Callable[[], bool] | None = None) -> np.ndarray:
        """Per-token values from ``of_text`` (one value per character) applied to each text of ``store``."""
        if not store.has_texts:
            warnings.warn(f"the store has no original texts: hypothesis {self.name} runs on the tokens joined "
                          "by spaces (for char-level models, extract with lstmvis.extract to keep the text)",
                          stacklevel=2)
        out = np.zeros(store.n_tokens, dtype=np.float64)
        for seq in range(store.n_sequences):
            a, b = store.sequence_bounds(seq)
            if a == b:
                continue
            if cancelled is not None and cancelled():
                raise Cancelled(f"hypothesis {self.name} was cancelled")
            chars = of_text(store.sequence_text(seq)).astype(np.float64)
            out[a:b] = token_values(chars, store.token_spans(a, b))
        return out


def token_values(per_char: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Per-token values from per-character values: the value at each token's last character (a token
    with an empty span takes the value before it, or 0 at the start)."""
    spans = np.asarray(spans, dtype=np.int64)
    last = np.where(spans[:, 1] > spans[:, 0], spans[:, 1] - 1, spans[:, 0] - 1)
    padded = np.concatenate([[0.0], per_char])
    return padded[np.clip(last, -1, len(per_char) - 1) + 1]


class TokenHypothesis(Hypothesis):
    """1 where the token is one of ``tokens`` (exact vocabulary entries)."""

    def __init__(self, tokens: Iterable[str], name: str | None = None):
        self.tokens = sorted(set(tokens))
        if not self.tokens:
            raise ValueError("token_in needs at least one token")
        super().__init__(name or f"token_in({', '.join(map(repr, self.tokens[:5]))}"
                                 f"{', ...' if len(self.tokens) > 5 else ''})", "binary")

    def __call__(self, store) -> np.ndarray:
        ids = [i for i, t in enumerate(store.vocab) if t in set(self.tokens)]
        if not ids:
            raise ValueError(f"none of {self.tokens[:5]} is in the store's vocabulary")
        return np.isin(store.token_ids(), ids).astype(np.float64)


class MetaHypothesis(Hypothesis):
    """A meta track of the store: numbers (scalar, or binary when 0/1), or ``track == value``."""

    def __init__(self, track: str, value=None, kind: str | None = None):
        self.track, self.value = track, value
        super().__init__(f"meta({track}{'' if value is None else f' == {value!r}'})", kind or "scalar")
        self._kind_given = kind is not None

    def __call__(self, store) -> np.ndarray:
        if self.track not in store.meta_names:  # a user-typed name: a ValueError (a 400), not a KeyError
            raise ValueError(f"unknown meta track {self.track!r}: the store has {store.meta_names or 'none'}")
        values = store.meta(self.track)
        if self.value is not None:
            self.kind = "binary"
            return (values == self.value).astype(np.float64)
        if values.dtype.kind not in "biuf":
            raise ValueError(f"meta track {self.track!r} holds categories: give value=... to test one of them, "
                             f"e.g. meta({self.track!r}, value={values[0]!r})")
        values = values.astype(np.float64)
        if not self._kind_given:
            self.kind = "binary" if np.isin(values, (0.0, 1.0)).all() else "scalar"
        return values


# ---------------------------------------------------------------------------- per-character definitions
def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def python_lexer_masks(text: str, comment: str = "#") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(in_string, in_triple, in_comment)`` per character, state after reading it.

    Strings: ``'...'``, ``"..."`` and triple-quoted (``in_triple`` marks those, docstrings
    included), backslash escapes (also in raw strings, as Python's tokenizer does); an unterminated
    one-line string ends at the newline. Comments run from ``comment`` outside strings to the end
    of the line. Works on any text, not only valid Python.
    """
    n = len(text)
    in_string, in_triple, in_comment = (np.zeros(n, dtype=bool) for _ in range(3))
    special = re.compile("['\"" + re.escape(comment[0]) + "]")
    i = 0
    while True:
        m = special.search(text, i)
        if m is None:
            break
        i = m.start()
        if text.startswith(comment, i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            in_comment[i:end] = True
            i = end
            continue
        if text[i] not in "'\"":
            i += 1
            continue
        quote = text[i] * 3 if text.startswith(text[i] * 3, i) else text[i]
        closing = re.compile(r"\\.|" + re.escape(quote) + ("" if len(quote) == 3 else "|\n"), re.S)
        j = i + len(quote)
        while True:
            m = closing.search(text, j)
            if m is None:  # runs to the end of the text
                in_string[i:] = True
                in_triple[i:] = len(quote) == 3
                return in_string, in_triple, in_comment
            if m.group().startswith("\\"):
                j = m.end()
                continue
            break
        if m.group() == "\n":  # unterminated one-line string: the newline is outside
            in_string[i:m.start()] = True
            i = m.start()
        else:
            in_string[i:m.end() - 1] = True  # the last closing quote character is outside
            in_triple[i:m.end() - 1] = len(quote) == 3
            i = m.end()
    return in_string, in_triple, in_comment


def _inside_quotes(text: str) -> np.ndarray:
    return python_lexer_masks(text)[0]


def _inside_short_string(text: str) -> np.ndarray:
    in_string, in_triple, _ = python_lexer_masks(text)
    return in_string & ~in_triple


def _inside_triple_quotes(text: str) -> np.ndarray:
    return python_lexer_masks(text)[1]


def _inside_comment(text: str) -> np.ndarray:
    return python_lexer_masks(text)[2]


def depth_per_char(text: str, opening: str = "([{", closing: str = ")]}") -> np.ndarray:
    """Bracket nesting depth after reading each character (not clipped: stray closers go negative)."""
    codes = _codes(text)
    step = np.isin(codes, _codes(opening)).astype(np.int64) - np.isin(codes, _codes(closing)).astype(np.int64)
    return np.cumsum(step)


def _position_in_line(text: str) -> np.ndarray:
    """Characters since the last newline, after reading each character (a newline gives 0)."""
    codes = _codes(text)
    idx = np.arange(len(codes))
    last_newline = np.maximum.accumulate(np.where(codes == ord("\n"), idx, -1)) if len(codes) else idx
    return idx - last_newline


def _indentation(text: str, tab: int = 8) -> np.ndarray:
    """Leading-whitespace width (tabs to the next multiple of ``tab``) of each character's line; a
    newline belongs to the line it ends."""
    out = np.zeros(len(text), dtype=np.int64)
    pos = 0
    for line in text.split("\n"):
        stripped = line.lstrip(" \t")
        width = len(line[:len(line) - len(stripped)].expandtabs(tab))
        out[pos:pos + len(line) + 1] = width
        pos += len(line) + 1
    return out


class RegexHypothesis(TextHypothesis):
    """1 on characters a compiled ``regex`` pattern matches, with one time limit for a whole store:
    ``timeout`` seconds over all its texts together (None: no limit; :meth:`of_text` gets it per text)."""

    def __init__(self, pattern, timeout: float | None):
        self.pattern, self.timeout = pattern, timeout
        super().__init__(f"regex({pattern.pattern!r})", "binary", lambda text: self.mask(text, self._deadline()))

    def _deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def __call__(self, store, cancelled: Callable[[], bool] | None = None) -> np.ndarray:
        deadline = self._deadline()
        return self.over_texts(store, lambda text: self.mask(text, deadline), cancelled)

    def mask(self, text: str, deadline: float | None) -> np.ndarray:
        """Where the pattern matches ``text``; a ValueError once ``time.monotonic()`` passes ``deadline``."""
        mask = np.zeros(len(text), dtype=bool)
        try:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError
            for m in self.pattern.finditer(text, timeout=left, concurrent=True):
                mask[m.start():m.end()] = True
        except TimeoutError:
            raise ValueError(f"the regular expression {self.pattern.pattern!r} ran longer than {self.timeout} s "
                             "over the store's texts: simplify it (nested repetition such as (a+)+ can take "
                             "exponential time)") from None
        return mask


# ---------------------------------------------------------------------------- the hypotheses
inside_quotes = TextHypothesis("inside_quotes", "binary", _inside_quotes,
                               "inside a '...' or \"...\" string literal (triple quotes, escapes)")
inside_short_string = TextHypothesis("inside_short_string", "binary", _inside_short_string,
                                     "inside a one-line '...' or \"...\" string (not triple-quoted)")
inside_triple_quotes = TextHypothesis("inside_triple_quotes", "binary", _inside_triple_quotes,
                                      "inside a triple-quoted string (docstrings)")
inside_comment = TextHypothesis("inside_comment", "binary", _inside_comment, "inside a # comment")
bracket_depth = TextHypothesis("bracket_depth", "scalar", depth_per_char, "nesting depth of ( [ {")
indentation_level = TextHypothesis("indentation_level", "scalar", _indentation,
                                   "leading-whitespace width of the current line")
position_in_line = TextHypothesis("position_in_line", "scalar", _position_in_line,
                                  "characters since the last newline")


def brackets(opening: str = "(", closing: str = ")") -> TextHypothesis:
    """Depth of one kind of bracket, e.g. ``brackets("(", ")")`` for the parentheses language."""
    if not opening or len(opening) != len(closing):
        raise ValueError("give matching strings of opening and closing brackets, e.g. '([' and ')]'")
    return TextHypothesis(f"depth({opening}{closing})", "scalar", lambda t: depth_per_char(t, opening, closing))


def regex(pattern: str, flags: int = 0, timeout: float | None = REGEX_SECONDS) -> RegexHypothesis:
    """1 on characters covered by a match of ``pattern`` (``re`` syntax). A pattern that runs longer
    than ``timeout`` seconds over a store's texts together (catastrophic backtracking) is a
    ValueError, not a hang."""
    try:
        compiled = regex_engine.compile(pattern, flags)
    except (regex_engine.error, re.error) as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return RegexHypothesis(compiled, timeout)


def token_in(tokens: Iterable[str]) -> TokenHypothesis:
    """1 where the token is one of ``tokens``."""
    if isinstance(tokens, str):
        tokens = [tokens]
    return TokenHypothesis(tokens)


def meta(track: str, value=None) -> MetaHypothesis:
    """A meta track of the store (``value``: test ``track == value``, binary)."""
    return MetaHypothesis(track, value)


NAMED = {
    "quotes": inside_quotes, "inside_quotes": inside_quotes, "string": inside_quotes,
    "short-string": inside_short_string, "inside_short_string": inside_short_string,
    "docstring": inside_triple_quotes, "triple": inside_triple_quotes, "inside_triple_quotes": inside_triple_quotes,
    "comment": inside_comment, "inside_comment": inside_comment,
    "depth": bracket_depth, "bracket_depth": bracket_depth, "brackets": bracket_depth,
    "indent": indentation_level, "indentation": indentation_level, "indentation_level": indentation_level,
    "line": position_in_line, "position_in_line": position_in_line, "column": position_in_line,
}


def resolve(spec: str | Hypothesis) -> Hypothesis:
    """A hypothesis from a name: ``quotes``, ``comment``, ``depth``, ``indent``, ``line``,
    ``parens`` (``(`` ``)`` only), ``regex:PATTERN``, ``tokens:a,b,c``, ``meta:TRACK`` or
    ``meta:TRACK=VALUE``."""
    if isinstance(spec, Hypothesis):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a hypothesis is a name or a Hypothesis, got {type(spec).__name__}")
    if spec in NAMED:
        return NAMED[spec]
    if spec == "parens":
        return brackets("(", ")")
    kind, _, arg = spec.partition(":")
    if kind == "regex" and arg:
        return regex(arg, timeout=REGEX_SECONDS)
    if kind == "tokens" and arg:
        return token_in([t for t in arg.split(",") if t])
    if kind == "meta" and arg:
        track, eq, value = arg.partition("=")
        return meta(track, value if eq else None)
    raise ValueError(f"unknown hypothesis {spec!r}: use one of {', '.join(sorted(set(NAMED)))}, parens, "
                     "regex:PATTERN, tokens:a,b,c, meta:TRACK or meta:TRACK=VALUE")
