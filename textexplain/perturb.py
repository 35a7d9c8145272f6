"""The one model-call layer of the perturbation methods (occlusion, LIME, SHAP).

A perturbation of a text with M tokens is a keep-mask of M booleans. ``MaskedModel`` turns masks
into model inputs for the chosen replacement, evaluates each distinct mask once (a cache spans
all calls on the same object), and runs the model in batches of at most ``max_batch_tokens``
tokens so memory stays bounded whatever the number of samples (but at least ``MIN_BATCH_ROWS``
rows per call, so a long text still runs in batches: a 5,000-token text runs 8 rows per call,
not 3). Sampling methods draw from
``rng(seed)``, a fresh generator per call, so results do not depend on call history.

Replacements (``mask``):
- ``"pad"``: a masked token's embedding becomes the pad token's embedding while the ids still
  mark it as text, so the sequence keeps its length (the same reference as Integrated Gradients'
  default baseline; a pad *id* in mid-text would cut the sequence short in length-aware models);
- ``"unk"`` or any token id / token string: the token id is replaced;
- ``"delete"``: masked tokens are removed (a text with every token removed becomes one pad token).

Evaluation paths (``evaluation``): ``"plain"`` runs every masked text in full. ``"incremental"``
runs masks that hide one run of tokens (occlusion's windows) as span tensors
(``textexplain.incremental``): a recurrent or convolutional module recomputes only what the run
changes, exactly up to ``state_tolerance``; calls without a span rule run densified, so the result
is right for any module. The first call's first row is also run plain and must agree (else
everything runs plain). ``"auto"`` takes the incremental path for "pad", "unk" and token-id masks
on modules holding an LSTM, GRU or Conv1d and texts of at least ``AUTO_MIN_TOKENS`` tokens (64
with convolutions only, 384 with a recurrent layer), and goes plain after the first call where
that call needed a densified one. "delete" and masks with several runs (LIME, SHAP) always run
plain.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .base import (OUTPUT_HELP, OUTPUTS, Attribution, Explainer, Prepared, embed, forward_at_embeddings,
                   resolve_target, softmax)
from .hyperparameters import Hyper
from .incremental import STATE_TOLERANCE, Abandon, SpanRun, single_runs, span_layers, span_logits
from .model import TextModel

DEFAULT_MAX_BATCH_TOKENS = 16384
MIN_BATCH_ROWS = 8  # rows per model call however long the text: 1-3 rows per call are slower per row
EVALUATIONS = ("auto", "plain", "incremental")
# "auto": shorter texts run plain, where their masked copies in a few batched calls are about as fast
# (sentiment-lstm at 300 tokens: plain and incremental alike; at 1,000 incremental 2x faster)
AUTO_MIN_TOKENS = {"convolution": 64, "recurrent": 384}
SPAN_ROWS = 256       # masked texts per incremental call (fewer calls: fewer recurrent steps; 512 no faster)
CHECK_TOLERANCE = 1e-4  # the first incremental row vs plain: |difference| <= this (+ 100 x state_tolerance) x max(1, |logit|)

def rng(seed: int | None) -> np.random.Generator:
    """The random generator of one call: seeded, never shared between calls."""
    return np.random.default_rng(seed)


def resolve_mask(model: TextModel, mask: str | int) -> str | int:
    """Validate ``mask``: ``"pad"``, ``"unk"``, ``"delete"``, a token id or a vocabulary token."""
    if isinstance(mask, str):
        if mask in ("pad", "unk", "delete"):
            return mask
        if mask in model.vocab:
            mask = model.vocab.stoi[mask]
        else:
            raise ValueError(f"mask={mask!r} is not supported: use 'pad', 'unk', 'delete', a token id or a token "
                             "of the model's vocabulary")
    if isinstance(mask, bool) or not isinstance(mask, (int, np.integer)):
        raise ValueError(f"mask must be 'pad', 'unk', 'delete' or a token id, got {mask!r}")
    mask = int(mask)
    if not 0 <= mask < len(model.vocab):
        raise ValueError(f"mask token id {mask} is outside the vocabulary 0..{len(model.vocab) - 1}")
    if mask == model.pad_id:
        return "pad"
    if mask == model.unk_id:
        return "unk"
    return mask


class MaskedModel:
    """Logits of one text under keep-masks, batched to a memory bound, each distinct mask once."""

    def __init__(self, model: TextModel, token_ids: Sequence[int], mask: str | int = "pad",
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, progress: bool | None = None,
                 evaluation: str = "plain", state_tolerance: float = STATE_TOLERANCE):
        if evaluation not in EVALUATIONS:
            raise ValueError(f"evaluation={evaluation!r} is not supported: use one of {EVALUATIONS}")
        self.model = model
        self.token_ids = torch.as_tensor(list(token_ids), dtype=torch.long)
        self.n_tokens = len(self.token_ids)
        self.mask = resolve_mask(model, mask)
        self.max_batch_tokens = int(max_batch_tokens)
        if self.max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be >= 1")
        self.progress = progress
        self._cache: dict[bytes, int] = {}
        self._rows: list[np.ndarray] = []
        self.evaluation = evaluation
        self._spans = SpanRun(state_tolerance) if self._incremental_applies() else None
        self.path_note: str | None = None
        self.path_check: float | None = None
        self._span_rows = 0
        if self.mask == "pad":
            self._x = embed(model, self.token_ids[None])[0]
            self._pad_vector = embed(model, torch.tensor([[model.pad_id]]))[0, 0]

    @property
    def n_evaluations(self) -> int:
        """Distinct perturbations the model has been run on."""
        return len(self._rows)

    def _incremental_applies(self) -> bool:
        if self.evaluation == "plain" or self.mask == "delete":
            return False
        if self.evaluation == "incremental":
            return True
        kinds = span_layers(self.model.module)
        return bool(kinds) and self.n_tokens >= max(AUTO_MIN_TOKENS[k] for k in kinds)

    @property
    def path(self) -> dict:
        """Which evaluation path ran: ``evaluation`` ("incremental" where every masked text it could
        take ran on it, else "plain"), and where it applies the masked texts it took, the calls it
        densified, the check's relative difference and why the rest ran plain."""
        out: dict = {"evaluation": "incremental" if self._span_rows and not self.path_note else "plain"}
        if self._spans is not None:
            out["incremental_rows"] = self._span_rows
            out["densified_calls"] = sorted(set(self._spans.fallbacks))
            if self.path_check is not None:
                out["incremental_check"] = self.path_check
        if self.path_note:
            out["evaluation_note"] = self.path_note
        return out

    def logits(self, keep: np.ndarray) -> np.ndarray:
        """Logits ``(N, C)`` for keep-masks ``(N, M)`` (True = token kept)."""
        keep = np.asarray(keep, dtype=bool)
        if keep.ndim != 2 or keep.shape[1] != self.n_tokens:
            raise ValueError(f"masks must have shape (N, {self.n_tokens}), got {keep.shape}")
        keys = [row.tobytes() for row in np.packbits(keep, axis=1)]
        first: dict[bytes, int] = {}
        for j, key in enumerate(keys):
            first.setdefault(key, j)
        missing = [key for key in first if key not in self._cache]
        if missing:
            for key, row in zip(missing, self._evaluate(keep[[first[k] for k in missing]])):
                self._cache[key] = len(self._rows)
                self._rows.append(row)
        return np.stack([self._rows[self._cache[k]] for k in keys])

    def _evaluate(self, keep: np.ndarray) -> list[np.ndarray]:
        from tqdm.auto import tqdm

        result: list[np.ndarray | None] = [None] * len(keep)
        spans = np.flatnonzero(single_runs(keep)) if self._spans is not None else np.zeros(0, dtype=int)
        plain = np.setdiff1d(np.arange(len(keep)), spans)
        n_calls = -(-len(spans) // SPAN_ROWS) + len(self._batches(keep, plain))
        bar = tqdm(total=len(keep), desc="model calls", unit="input",
                   disable=(None if n_calls > 4 else True) if self.progress is None else not self.progress)
        with torch.inference_mode():
            if len(spans):
                plain = np.union1d(plain, self._evaluate_spans(keep, spans, result, bar))
            for rows in self._batches(keep, plain):
                self._store(rows, self._run(torch.from_numpy(keep[rows])), result, bar)
        bar.close()
        return result  # type: ignore[return-value]

    @staticmethod
    def _store(rows: np.ndarray, logits: torch.Tensor, result: list, bar) -> None:
        for r, lg in zip(rows, logits.double().numpy()):
            result[r] = lg
        bar.update(len(rows))

    def _batches(self, keep: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
        """``rows`` of ``keep`` in batches of at most ``max_batch_tokens`` tokens (at least
        ``MIN_BATCH_ROWS`` rows); "delete" sorts them by length first."""
        if self.mask == "delete":
            lengths = keep[rows].sum(1)
            by_length = np.argsort(lengths, kind="stable")
            order, lengths = rows[by_length], lengths[by_length]
        else:
            order, lengths = rows, np.full(len(rows), self.n_tokens)
        batches, start = [], 0
        budget = max(self.max_batch_tokens, MIN_BATCH_ROWS * self.n_tokens)
        while start < len(order):  # rows sorted by length: a batch's widest row is its last
            stop = start + 1
            while stop < len(order) and (stop - start + 1) * max(1, int(lengths[stop])) <= budget:
                stop += 1
            batches.append(order[start:stop])
            start = stop
        return batches

    def _evaluate_spans(self, keep: np.ndarray, rows: np.ndarray, result: list, bar) -> np.ndarray:
        """Evaluate ``rows`` (one masked run each) on the incremental path, in calls of ``SPAN_ROWS``
        rows ordered by position; returns the rows left for the plain path."""
        masked = ~keep[rows]
        order = rows[np.argsort(masked.argmax(1), kind="stable")]
        pad_vector = self._pad_vector if self.mask == "pad" else None
        for i in range(0, len(order), SPAN_ROWS):
            chunk = order[i:i + SPAN_ROWS]
            densified = len(self._spans.fallbacks)
            try:
                logits = span_logits(self.model, self.token_ids, keep[chunk], self.mask, pad_vector, self._spans)
            except Abandon as err:
                self.path_note = f"the incremental path stopped ({err}): the rest ran plain"
                return order[i:]
            if self.path_check is None:  # its first row, also run plain, must agree
                check = self._run(torch.from_numpy(keep[chunk[:1]])).double()
                scale = max(1.0, float(check.abs().max()))
                gap = float((logits[:1].double() - check).abs().max()) / scale
                if not gap <= CHECK_TOLERANCE + 100 * self._spans.state_tolerance:
                    self.path_note = (f"the incremental path differed from the plain one by {gap:.2g} (relative) on "
                                      "a masked text: everything ran plain")
                    return order[i:]
                self.path_check = gap
            self._store(chunk, logits, result, bar)
            self._span_rows += len(chunk)
            if self.evaluation == "auto" and len(self._spans.fallbacks) > densified:
                calls = ", ".join(sorted(set(self._spans.fallbacks[densified:])))
                self.path_note = f"the module needed calls without a span rule ({calls}): the rest ran plain"
                return order[i + SPAN_ROWS:]
        return order[:0]

    def _run(self, keep: torch.Tensor) -> torch.Tensor:
        ids = self.token_ids.expand(keep.shape[0], -1)
        if self.mask == "pad":
            embeddings = torch.where(keep[..., None], self._x, self._pad_vector)
            return forward_at_embeddings(self.model, ids, embeddings)
        if self.mask == "delete":
            kept = [self.token_ids[k].tolist() or [self.model.pad_id] for k in keep]
            return self.model.logits(self.model.pad_batch(kept))
        replacement = self.model.unk_id if self.mask == "unk" else self.mask
        return self.model.logits(torch.where(keep, ids, torch.as_tensor(replacement)))


def output_values(logits: np.ndarray, target: int, output: str) -> np.ndarray:
    """The explained scalar per row: target logit or target probability."""
    return logits[:, target] if output == "logit" else softmax(logits)[:, target]


class PerturbationExplainer(Explainer):
    """Base of occlusion, LIME and SHAP: every model call goes through one ``MaskedModel``.

    Subclasses implement ``_scores(n_tokens, value, plan)`` where ``value(keep)`` gives the
    explained output for keep-masks; they return ``(scores, delta, info)``. ``_plan`` may list the
    masks up front so that they are evaluated together with the text in one batched pass.
    """

    mask = Hyper((str, int), "pad", choices=("pad", "unk", "delete"), other_values="a token id or a vocabulary token",
                 help="what a removed token becomes: the pad embedding (default), <unk>, or deleted")
    output = Hyper(str, "logit", choices=OUTPUTS, help=OUTPUT_HELP)
    max_batch_tokens = Hyper(int, DEFAULT_MAX_BATCH_TOKENS, ge=1, api=False,
                             help="tokens per model call (bounds memory; at least 8 rows per call)")

    def _validate(self) -> None:
        resolve_mask(self.model, self.mask)

    def _masked_model_options(self) -> dict:
        """Extra ``MaskedModel`` arguments of a method (occlusion: its evaluation path)."""
        return {}

    def _attribute(self, prepared: Prepared, target) -> Attribution:
        masked = MaskedModel(self.model, prepared.token_ids, self.mask, self.max_batch_tokens,
                             **self._masked_model_options())
        n_tokens = masked.n_tokens
        plan = self._plan(n_tokens)
        first = np.ones((1, n_tokens), dtype=bool)
        if plan is not None:  # every planned input runs in the same pass as the text itself
            first = np.concatenate([first, plan["masks"]])
        full = masked.logits(first)[0]
        target = resolve_target(self.model, target, full)

        def value(keep: np.ndarray) -> np.ndarray:
            return output_values(masked.logits(keep), target, self.output)

        scores, delta, info = self._scores(n_tokens, value, plan)
        info = {**info, "n_model_evaluations": masked.n_evaluations, **masked.path}
        return Attribution(np.asarray(scores, dtype=np.float64), full, target, delta=delta, info=info)

    def _plan(self, n_tokens: int) -> dict | None:
        """Inputs the method will need, known before the target is (``{"masks": keep-masks, ...}``),
        so they run in one pass with the unperturbed text; None when they depend on the outputs."""
        return None

    def _scores(self, n_tokens: int, value, plan: dict | None) -> tuple[np.ndarray, float | None, dict]:
        raise NotImplementedError
