"""Explanation: one token-level explanation of one classifier decision."""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .convergence import Convergence

AGGREGATIONS = ("sum", "mean", "max", "absmax")


@dataclass
class Explanation:
    """Scores per token for one text, one target class and one method.

    ``signed`` says whether scores carry direction (positive = evidence for the target) or are
    magnitudes. ``delta`` is the completeness gap ``sum(scores) - (F(x) - F(x'))`` for methods that
    promise completeness (Integrated Gradients, SHAP), else None. ``metrics`` holds faithfulness
    numbers once computed. ``info`` holds what the method observed (model name, logits, number of
    model evaluations, F(x) and F(baseline), surrogate fit), as opposed to ``params`` (its settings).
    ``convergence``: Integrated Gradients' record of how complete the result is (``Convergence``; its
    fields are keys of ``info`` in the JSON form), else None.
    """

    text: str
    tokens: list[str]
    token_ids: list[int]
    scores: np.ndarray
    method: str
    target: int
    labels: list[str]
    probs: np.ndarray
    signed: bool = True
    spans: list[tuple[int, int]] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    delta: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    convergence: Convergence | None = None

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.probs = np.asarray(self.probs, dtype=np.float64)
        if self.scores.shape != (len(self.tokens),):
            raise ValueError(f"scores have shape {self.scores.shape}, expected ({len(self.tokens)},): "
                             "one score per token")
        if len(self.token_ids) != len(self.tokens):
            raise ValueError("token_ids and tokens differ in length")
        if self.spans is not None and len(self.spans) != len(self.tokens):
            raise ValueError("spans and tokens differ in length")

    @property
    def target_label(self) -> str:
        return self.labels[self.target]

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probs))

    @property
    def predicted_label(self) -> str:
        return self.labels[self.predicted]

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field, plus ``target_label``, ``predicted`` and its label;
        ``convergence`` goes into ``info`` (``Convergence.to_info``)."""
        out = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.name != "convergence"}
        if self.convergence is not None:
            out["info"].update(_jsonable(self.convergence.to_info()))
        out.update(target_label=self.target_label, predicted=self.predicted, predicted_label=self.predicted_label)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Explanation":
        """Inverse of ``to_dict`` (derived keys are ignored)."""
        names = {f.name for f in fields(cls)}
        missing = {"text", "tokens", "token_ids", "scores", "method", "target", "labels", "probs"} - set(data)
        if missing:
            raise ValueError(f"not an Explanation dict: missing {', '.join(sorted(missing))}")
        kwargs = {k: v for k, v in data.items() if k in names and k != "convergence"}
        if "info" in kwargs:
            kwargs["convergence"], kwargs["info"] = Convergence.from_info(kwargs["info"])
        if kwargs.get("spans") is not None:
            kwargs["spans"] = [tuple(s) for s in kwargs["spans"]]
        return cls(**kwargs)

    def to_json(self, path: str | os.PathLike | None = None, indent: int | None = None) -> str:
        """JSON text of ``to_dict()``; with ``path`` also written there atomically."""
        text = json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)
        if path is not None:
            path = Path(path)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        return text

    @classmethod
    def from_json(cls, text: str) -> "Explanation":
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------ words
    def to_words(self, how: str = "sum") -> "Explanation":
        """The explanation over whitespace-separated words: sub-tokens and characters merged.

        ``how`` combines the scores of a word's tokens: ``sum`` (default; keeps the completeness
        delta valid), ``mean``, ``max`` or ``absmax`` (the score of largest magnitude, sign kept).
        Tokens on whitespace (character models) join the word before them. Merged words get
        token id -1; ``info["token_groups"]`` lists the token indices of each word. Without character
        spans (a tokenizer whose tokens could not be placed in the text) the tokens stay as they are,
        with a warning.
        """
        if how not in AGGREGATIONS:
            raise ValueError(f"how={how!r} is not supported: use one of {', '.join(AGGREGATIONS)}")
        if self.spans is None:
            warnings.warn("this explanation has no character spans, so its tokens cannot be placed in words: they "
                          "are kept as tokens (give the tokenizer a spans(text) method)", stacklevel=2)
            return replace(self, info={**self.info, "token_groups": [[i] for i in range(len(self.tokens))]})
        words = [m.span() for m in re.finditer(r"\S+", self.text)]
        if not words:
            return replace(self)
        starts = np.array([a for a, _ in words])
        groups: list[list[int]] = [[] for _ in words]
        for i, (a, _) in enumerate(self.spans):
            groups[max(0, int(np.searchsorted(starts, a, side="right")) - 1)].append(i)
        kept = [(span, g) for span, g in zip(words, groups) if g]
        scores = np.array([_combine(self.scores[g], how) for _, g in kept])
        return replace(
            self, tokens=[self.text[a:b] for (a, b), _ in kept],
            token_ids=[self.token_ids[g[0]] if len(g) == 1 else -1 for _, g in kept],
            scores=scores, spans=[span for span, _ in kept],
            params={**self.params, "aggregate": {"to": "words", "how": how}},
            delta=self.delta if how == "sum" else None,
            metrics={}, info={**self.info, "token_groups": [g for _, g in kept]})

    # ------------------------------------------------------------ rendering
    def to_html(self, normalize: str | float = "max_abs", gamma: float = 1.0, words: bool | str = False) -> str:
        """HTML fragment with the tokens highlighted (escaped, no scripts); see ``textexplain.render``."""
        from .render import explanation_html

        return explanation_html(self, normalize=normalize, gamma=gamma, words=words)

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_terminal(self, normalize: str | float = "max_abs", color: str = "auto", words: bool | str = False) -> str:
        """The explanation as ANSI-coloured terminal text (plain ``token[score]`` without colour)."""
        from .render import terminal

        return terminal(self, normalize=normalize, color=color, words=words)


def _combine(values: np.ndarray, how: str) -> float:
    if how == "sum":
        return float(values.sum())
    if how == "mean":
        return float(values.mean())
    if how == "max":
        return float(values.max())
    return float(values[np.argmax(np.abs(values))])


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
