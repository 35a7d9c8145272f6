"""Explanation: one token-level explanation of one classifier decision."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Explanation:
    """Scores per token for one text, one target class and one method.

    ``signed`` says whether scores carry direction (positive = evidence for the target) or are
    magnitudes. ``delta`` is the completeness gap ``sum(scores) - (F(x) - F(x'))`` for methods that
    promise completeness (Integrated Gradients, SHAP), else None. ``metrics`` holds faithfulness
    numbers once computed. ``info`` holds what the method observed (model name, logits, number of
    model evaluations, F(x) and F(baseline), surrogate fit), as opposed to ``params`` (its settings).
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
