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
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .base import (OUTPUT_HELP, OUTPUTS, Attribution, Explainer, Prepared, embed, forward_at_embeddings,
                   resolve_target, softmax)
from .hyperparameters import Hyper
from .model import TextModel

DEFAULT_MAX_BATCH_TOKENS = 16384
MIN_BATCH_ROWS = 8  # rows per model call however long the text: 1-3 rows per call are slower per row

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
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, progress: bool | None = None):
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
        if self.mask == "pad":
            self._x = embed(model, self.token_ids[None])[0]
            self._pad_vector = embed(model, torch.tensor([[model.pad_id]]))[0, 0]

    @property
    def n_evaluations(self) -> int:
        """Distinct perturbations the model has been run on."""
        return len(self._rows)

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

        if self.mask == "delete":
            lengths = keep.sum(1)
            order = np.argsort(lengths, kind="stable")
        else:
            lengths = np.full(len(keep), self.n_tokens)
            order = np.arange(len(keep))
        batches, start = [], 0
        budget = max(self.max_batch_tokens, MIN_BATCH_ROWS * self.n_tokens)
        while start < len(order):  # rows sorted by length: a batch's widest row is its last
            stop = start + 1
            while stop < len(order) and (stop - start + 1) * max(1, int(lengths[order[stop]])) <= budget:
                stop += 1
            batches.append(order[start:stop])
            start = stop
        result: list[np.ndarray | None] = [None] * len(keep)
        bar = tqdm(total=len(keep), desc="model calls", unit="input",
                   disable=(None if len(batches) > 4 else True) if self.progress is None else not self.progress)
        with torch.inference_mode():
            for rows in batches:
                logits = self._run(torch.from_numpy(keep[rows])).double().numpy()
                for r, lg in zip(rows, logits):
                    result[r] = lg
                bar.update(len(rows))
        bar.close()
        return result  # type: ignore[return-value]

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

    def _attribute(self, prepared: Prepared, target) -> Attribution:
        masked = MaskedModel(self.model, prepared.token_ids, self.mask, self.max_batch_tokens)
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
        info = {**info, "n_model_evaluations": masked.n_evaluations}
        return Attribution(np.asarray(scores, dtype=np.float64), full, target, delta=delta, info=info)

    def _plan(self, n_tokens: int) -> dict | None:
        """Inputs the method will need, known before the target is (``{"masks": keep-masks, ...}``),
        so they run in one pass with the unperturbed text; None when they depend on the outputs."""
        return None

    def _scores(self, n_tokens: int, value, plan: dict | None) -> tuple[np.ndarray, float | None, dict]:
        raise NotImplementedError
