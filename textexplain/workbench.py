"""The workbench's table: a labelled corpus and one classifier's predictions on every row.

``Workbench(model, texts, labels, meta)`` runs the model once over the corpus (batched) and keeps,
per row, the prediction, the confidence (top-class probability), the loss (cross-entropy of the
gold label) and the length in tokens, as numpy columns. Every view of the workbench asks it for a
**selection** (row ids, ``select(RowFilter(...))``), then for a page of rows (``page``), the
metrics of the selection (``metrics``) or of slices of it (``slices``). Filters and sorts are
numpy operations on the columns; a regex is run once per pattern and its matches kept, so paging
and filtering a 100k-row corpus stays well under 100 ms per request (``benchmarks/bench_workbench.py``).

Gold labels are label names of the model or class indices; a corpus without labels has no
correctness, loss or accuracy (those are None).
"""
from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import regex as regex_engine  # like re, with a time limit: user patterns cannot backtrack forever

from . import metrics
from .model import TextModel

SORT_COLUMNS = ("id", "text", "label", "predicted", "confidence", "loss", "length", "correct")
SLICE_KINDS = ("label", "predicted", "length", "token", "meta", "correct")
REGEX_CACHE = 32  # compiled patterns whose matches are kept
REGEX_CONTEXTUAL = ("^", "$", "\\A", "\\Z", "\\z", "\\G", "(?=", "(?!", "(?<", "(?r")  # anchors, lookarounds
REGEX_SECONDS = 5.0  # seconds one pattern may spend on the whole corpus (catastrophic backtracking)
MAX_PAGE = 1000
LENGTH_BINS = 4


@dataclass(frozen=True)
class RowFilter:
    """Which rows to keep; every field that is set must hold (an AND of all of them).

    ``regex`` is searched in the text (case-insensitive unless it has upper-case letters; a literal,
    the usual case, in one scan of all texts joined);
    ``label``/``predicted`` are label names; ``correct`` keeps correct (True) or wrong (False)
    predictions; ``confidence`` and ``length`` are inclusive ``(lo, hi)`` ranges (either end None);
    ``meta`` maps a meta column to the value it must have (compared as strings); ``ids`` keeps only
    these rows (a selection made elsewhere, e.g. a lasso on the projector); ``token`` keeps rows
    whose tokens include it (as the model tokenizes).
    """

    regex: str | None = None
    label: str | None = None
    predicted: str | None = None
    correct: bool | None = None
    confidence: tuple[float | None, float | None] = (None, None)
    length: tuple[int | None, int | None] = (None, None)
    meta: Mapping[str, str] = field(default_factory=dict)
    ids: tuple[int, ...] | None = None
    token: str | None = None


class Workbench:
    """A labelled corpus and one classifier's predictions on all of it (computed once, batched)."""

    def __init__(self, model: TextModel, texts: Sequence[str], labels: Sequence[int | str] | None = None,
                 meta: Mapping[str, Sequence[Any]] | None = None, *, name: str = "corpus",
                 batch_size: int | None = None, threshold: float | None = None):
        if not isinstance(model, TextModel):
            raise TypeError(f"model must be a textexplain.TextModel, got {type(model).__name__}")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of texts, not one string")
        self.model, self.name = model, name
        self.texts = list(texts)
        if not self.texts:
            raise ValueError("the corpus is empty: give at least one text")
        n = len(self.texts)
        self.labels = list(model.labels)
        self.gold = None if labels is None else np.array([model.label_index(y) for y in labels], dtype=np.int64)
        if self.gold is not None and len(self.gold) != n:
            raise ValueError(f"got {len(self.gold)} labels for {n} texts: give one label per text")
        self.meta = {k: np.asarray(v) for k, v in (meta or {}).items()}
        for k, v in self.meta.items():
            if len(v) != n:
                raise ValueError(f"meta column {k!r} has {len(v)} values for {n} texts")
        self.token_ids = [model.vocab.encode(model.tokenizer(t)[: model.max_tokens]) or [model.unk_id]
                          for t in self.texts]
        self.length = np.array([len(model.tokenizer(t)) for t in self.texts], dtype=np.int64)
        self.probs = model.predict_proba_ids(self.token_ids, batch_size).astype(np.float64)
        self.threshold = None
        self.set_threshold(threshold)
        self._regex: OrderedDict[str, np.ndarray] = OrderedDict()
        self._token_rows: dict[int, np.ndarray] | None = None
        self._text_order: np.ndarray | None = None
        self._joined: tuple[str, np.ndarray] | None = None  # all texts joined, and where each starts

    # ------------------------------------------------------------------ columns
    def __len__(self) -> int:
        return len(self.texts)

    def set_threshold(self, threshold: float | None) -> None:
        """Decision rule: argmax (None), or for a binary model ``p(class 1) >= threshold`` means class 1."""
        if threshold is not None:
            if len(self.labels) != 2:
                raise ValueError(f"a threshold needs a binary model; {self.model.name} has {len(self.labels)} classes")
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        self.threshold = threshold
        self.predicted = (self.probs.argmax(axis=1) if threshold is None
                          else (self.probs[:, 1] >= threshold).astype(np.int64))
        self.confidence = self.probs.max(axis=1)
        self.correct = None if self.gold is None else self.predicted == self.gold
        self.loss = (None if self.gold is None else
                     -np.log(np.clip(self.probs[np.arange(len(self)), self.gold], 1e-12, 1.0)))

    def _label_index(self, name: str) -> int:
        if name not in self.labels:
            raise ValueError(f"unknown label {name!r}: the labels are {self.labels}")
        return self.labels.index(name)

    def regex_matches(self, pattern: str) -> np.ndarray:
        """Boolean column: rows whose text matches ``pattern`` (kept for the next requests)."""
        if pattern in self._regex:
            self._regex.move_to_end(pattern)
            return self._regex[pattern]
        flags = 0 if any(c.isupper() for c in pattern) else re.IGNORECASE
        try:
            rx = regex_engine.compile(pattern, flags)
        except (regex_engine.error, re.error) as exc:
            raise ValueError(f"regex {pattern!r} is not valid: {exc}") from None
        deadline = time.monotonic() + REGEX_SECONDS
        try:
            if any(c in pattern for c in REGEX_CONTEXTUAL) or rx.search("") is not None:
                hit = self._searched(rx, deadline)
            else:
                hit = self._joined_matches(rx, deadline)
        except TimeoutError:
            raise ValueError(f"regex {pattern!r} ran longer than {REGEX_SECONDS:g} s over the corpus: simplify it "
                             "(nested repetition such as (a+)+ can take exponential time)") from None
        self._regex[pattern] = hit
        while len(self._regex) > REGEX_CACHE:
            self._regex.popitem(last=False)
        return hit

    def _searched(self, rx, deadline: float, rows=None) -> np.ndarray:
        """Rows where ``rx`` matches (of ``rows``, default all), searched one by one within the budget."""
        rows = range(len(self)) if rows is None else rows
        hit = np.zeros(len(self), dtype=bool)
        for i in rows:
            hit[i] = rx.search(self.texts[i], timeout=max(deadline - time.monotonic(), 1e-6)) is not None
        return hit

    def _joined_matches(self, rx, deadline: float) -> np.ndarray:
        """Rows where ``rx`` matches, from one scan of all texts joined by newlines. Exact for patterns
        without anchors or lookarounds (``REGEX_CONTEXTUAL``) that cannot match the empty text: a match
        inside one row is a match of that row alone (``\\b`` sees a newline as it sees a text's end),
        a row's own match is found unless an earlier match ran into it, and the rows a match runs
        across (newline included) are searched again one by one."""
        if self._joined is None:
            lengths = np.fromiter((len(t) + 1 for t in self.texts), dtype=np.int64, count=len(self))
            self._joined = ("\n".join(self.texts), np.cumsum(lengths) - lengths)
        joined, starts = self._joined
        ends = starts + np.fromiter((len(t) for t in self.texts), dtype=np.int64, count=len(self))  # the newlines
        spans = np.array([m.span() for m in rx.finditer(joined, timeout=max(deadline - time.monotonic(), 1e-6))],
                         dtype=np.int64).reshape(-1, 2)
        first = np.searchsorted(starts, spans[:, 0], side="right") - 1
        inside = (spans[:, 0] < ends[first]) & (spans[:, 1] <= ends[first])
        hit = np.zeros(len(self), dtype=bool)
        hit[first[inside]] = True
        last = np.searchsorted(starts, spans[~inside, 1] - 1, side="right") - 1
        again = sorted({r for a, b in zip(first[~inside], last) for r in range(a, b + 1)})
        return hit | self._searched(rx, deadline, again) if again else hit

    def rows_with_token(self, token: str) -> np.ndarray:
        """Row ids whose token ids include ``token``'s id (an inverted index built on first use)."""
        if self._token_rows is None:
            flat = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in self.token_ids])
            rows = np.repeat(np.arange(len(self)), [len(ids) for ids in self.token_ids])
            keys = np.unique(flat * len(self) + rows)  # sorted by token id, then row
            tids, rows = np.divmod(keys, len(self))
            cut = np.flatnonzero(np.diff(tids)) + 1
            self._token_rows = {int(t[0]): r for t, r in zip(np.split(tids, cut), np.split(rows, cut))}
        tid = self.model.vocab.stoi.get(token)
        if tid is None:
            return np.zeros(0, dtype=np.int64)
        return self._token_rows.get(tid, np.zeros(0, dtype=np.int64))

    # ------------------------------------------------------------------ selection
    def select(self, f: RowFilter | None = None) -> np.ndarray:
        """Row ids (ascending) that pass every condition of ``f``."""
        f = f or RowFilter()
        keep = np.ones(len(self), dtype=bool)
        if f.ids is not None:
            ids = np.asarray(f.ids, dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
                raise ValueError(f"row ids must lie in 0..{len(self) - 1}")
            only = np.zeros(len(self), dtype=bool)
            only[ids] = True
            keep &= only
        if f.regex:
            keep &= self.regex_matches(f.regex)
        if f.label is not None:
            if self.gold is None:
                raise ValueError("this corpus has no gold labels: filter by predicted label instead")
            keep &= self.gold == self._label_index(f.label)
        if f.predicted is not None:
            keep &= self.predicted == self._label_index(f.predicted)
        if f.correct is not None:
            if self.correct is None:
                raise ValueError("this corpus has no gold labels, so no prediction is correct or wrong")
            keep &= self.correct == bool(f.correct)
        for column, (lo, hi) in (("confidence", f.confidence), ("length", f.length)):
            values = getattr(self, column)
            if lo is not None:
                keep &= values >= lo
            if hi is not None:
                keep &= values <= hi
        for name, value in f.meta.items():
            if name not in self.meta:
                raise ValueError(f"unknown meta column {name!r}: the corpus has {sorted(self.meta) or 'none'}")
            keep &= self.meta[name].astype(str) == str(value)
        if f.token:
            has = np.zeros(len(self), dtype=bool)
            has[self.rows_with_token(f.token)] = True
            keep &= has
        return np.flatnonzero(keep)

    def _sort_key(self, column: str) -> np.ndarray:
        if column == "id":
            return np.arange(len(self))
        if column == "text":
            if self._text_order is None:
                order = np.array(sorted(range(len(self)), key=lambda i: self.texts[i].lower()), dtype=np.int64)
                self._text_order = np.empty(len(self), dtype=np.int64)
                self._text_order[order] = np.arange(len(self))
            return self._text_order
        if column == "label":
            if self.gold is None:
                raise ValueError("this corpus has no gold labels to sort by")
            return self.gold
        if column in ("loss", "correct") and self.gold is None:
            raise ValueError(f"this corpus has no gold labels, so no {column} to sort by")
        if column in ("predicted", "confidence", "loss", "length", "correct"):
            return getattr(self, column)
        if column in self.meta:
            return np.unique(self.meta[column].astype(str), return_inverse=True)[1]
        raise ValueError(f"cannot sort by {column!r}: use one of {', '.join(SORT_COLUMNS)} or a meta column "
                         f"({', '.join(self.meta) or 'none'})")

    def sort(self, ids: np.ndarray, by: str = "id", descending: bool = False) -> np.ndarray:
        """``ids`` ordered by a column (ties by row id, ascending, in both directions)."""
        ids = np.asarray(ids, dtype=np.int64)
        key = self._sort_key(by)[ids]
        order = np.lexsort((ids, -key.astype(np.float64) if descending else key))
        return ids[order]

    def rows(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The table's rows for ``ids``: text, gold label, prediction, probabilities, confidence, loss, length, meta."""
        out = []
        for i in np.asarray(ids, dtype=np.int64):
            i = int(i)
            out.append({"id": i, "text": self.texts[i],
                        "label": None if self.gold is None else self.labels[self.gold[i]],
                        "predicted": self.labels[self.predicted[i]], "probs": self.probs[i].tolist(),
                        "confidence": float(self.confidence[i]),
                        "loss": None if self.loss is None else float(self.loss[i]),
                        "correct": None if self.correct is None else bool(self.correct[i]),
                        "length": int(self.length[i]),
                        "meta": {k: v[i].item() if hasattr(v[i], "item") else v[i] for k, v in self.meta.items()}})
        return out

    def page(self, f: RowFilter | None = None, *, sort: str = "id", descending: bool = False, offset: int = 0,
             limit: int = 50) -> dict[str, Any]:
        """One page of the selection ``f`` in the order asked: ``{"total", "offset", "rows"}``."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must lie in 1..{MAX_PAGE}")
        if offset < 0:
            raise ValueError("offset must be 0 or more")
        ids = self.select(f)
        if sort == "id" and not descending:
            chosen = ids[offset:offset + limit]
        else:
            chosen = self.sort(ids, sort, descending)[offset:offset + limit]
        return {"total": int(ids.size), "offset": offset, "rows": self.rows(chosen)}

    # ------------------------------------------------------------------ metrics
    def metrics(self, ids: Sequence[int] | None = None, bins: int = metrics.CALIBRATION_BINS) -> dict[str, Any]:
        """Accuracy, per-class precision/recall/F1, confusion matrix and calibration of rows ``ids``
        (default: all), under the current decision rule (``threshold``)."""
        ids = np.arange(len(self)) if ids is None else np.asarray(ids, dtype=np.int64)
        out: dict[str, Any] = {"n": int(ids.size), "threshold": self.threshold, "labels": self.labels,
                               "predicted_counts": np.bincount(self.predicted[ids], minlength=len(self.labels)).tolist()}
        if self.gold is None:
            return out
        out.update(metrics.classification_scores(self.gold[ids], self.predicted[ids], self.labels))
        out["calibration"] = metrics.calibration(self.confidence[ids], self.correct[ids], bins)
        out["mean_loss"] = float(self.loss[ids].mean()) if ids.size else None
        return out

    def slice_ids(self, ids: Sequence[int], kind: str, *, name: str | None = None, tokens: Sequence[str] = (),
                  bins: int = LENGTH_BINS) -> list[tuple[str, np.ndarray]]:
        """The slices of ``ids``: by gold ``label``, ``predicted`` label, ``correct``ness, ``length``
        (``bins`` quantile bins of the selection), ``token`` (rows with / without each of ``tokens``)
        or a ``meta`` column ``name`` (one slice per value)."""
        ids = np.asarray(ids, dtype=np.int64)
        if kind in ("label", "predicted"):
            if kind == "label" and self.gold is None:
                raise ValueError("this corpus has no gold labels to slice by")
            col = self.gold if kind == "label" else self.predicted
            return [(lab, ids[col[ids] == c]) for c, lab in enumerate(self.labels)]
        if kind == "correct":
            if self.correct is None:
                raise ValueError("this corpus has no gold labels, so no correctness to slice by")
            return [("correct", ids[self.correct[ids]]), ("wrong", ids[~self.correct[ids]])]
        if kind == "length":
            lengths = self.length[ids]
            edges = np.unique(np.quantile(lengths, np.linspace(0, 1, bins + 1)).round().astype(np.int64)) if ids.size else []
            out = []
            for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
                last = k == len(edges) - 2
                mask = (lengths >= lo) & ((lengths <= hi) if last else (lengths < hi))
                out.append((f"{lo}-{hi if last else hi - 1} tokens", ids[mask]))
            return out or [("all", ids)]
        if kind == "token":
            if not tokens:
                raise ValueError("a token slice needs tokens=[...]")
            out = []
            for tok in tokens:
                has = np.isin(ids, self.rows_with_token(tok))
                out += [(f"with {tok!r}", ids[has]), (f"without {tok!r}", ids[~has])]
            return out
        if kind == "meta":
            if name not in self.meta:
                raise ValueError(f"unknown meta column {name!r}: the corpus has {sorted(self.meta) or 'none'}")
            values = self.meta[name][ids].astype(str)
            return [(v, ids[values == v]) for v in np.unique(values)]
        raise ValueError(f"unknown slice kind {kind!r}: use one of {', '.join(SLICE_KINDS)}")

    def slices(self, ids: Sequence[int] | None, kind: str, **options: Any) -> list[dict[str, Any]]:
        """``metrics`` of every slice of ``ids`` (``slice_ids`` says which), with the slice's name."""
        ids = np.arange(len(self)) if ids is None else ids
        return [{"slice": name, **self.metrics(part)} for name, part in self.slice_ids(ids, kind, **options)]
