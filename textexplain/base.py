"""Shared machinery of every explanation method.

``Explainer`` is the template: ``explain(text, target)`` tokenizes, asks the subclass for scores
(``_attribute``) and wraps them in an ``Explanation``. The helpers here are the only place that
touches the model: running it with the embedding-layer output substituted
(``forward_at_embeddings``), resolving targets, and reducing per-dimension attributions to one
score per token.

Thread safety: methods keep no per-call state on ``self`` or on the model. Substituting the
embedding output uses a forward hook that is registered and removed inside the call and only acts
in the thread that registered it, so concurrent calls (the server) on one model do not see each
other's embeddings and plain predictions running meanwhile are untouched.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .convergence import Convergence
from .explanation import Explanation
from .hooks import transient
from .hyperparameters import Method, check_choice, check_positive_int  # noqa: F401 (check_*: shared by lstmvis)
from .model import TextModel

OUTPUTS = ("logit", "proba")
OUTPUT_HELP = "explain the target's logit (default) or its probability"
SEED_HELP = "seed of the method's random draws (the same seed, the same result)"
INTERNAL_BATCH_HELP = "path rows per gradient pass (default: chunks of about 2048 row-tokens)"


@dataclass(frozen=True)
class Prepared:
    """One tokenized text, ready for a method."""

    text: str
    tokens: list[str]
    token_ids: list[int]
    spans: list[tuple[int, int]] | None

    @property
    def ids(self) -> torch.Tensor:
        """Token ids as a ``(1, T)`` LongTensor."""
        return torch.tensor([self.token_ids], dtype=torch.long)


@dataclass
class Attribution:
    """What a method computes for one text: scores, the logits of the unperturbed input, extras
    (``convergence``: Integrated Gradients' record of how complete the scores are)."""

    scores: np.ndarray
    logits: np.ndarray
    target: int
    delta: float | None = None
    info: dict[str, Any] | None = None
    convergence: Convergence | None = None


def check_model(model: TextModel) -> None:
    """Refuse models an explanation cannot be trusted on, with the fix in the message."""
    if not isinstance(model, TextModel):
        raise TypeError(f"model must be a textexplain.TextModel, got {type(model).__name__}: wrap your "
                        "classifier with textexplain.TextModel(module, vocab, labels, embedding=...)")
    if model.module.training:
        raise ValueError("the model is in training mode (dropout makes every explanation different): "
                         "call model.module.eval() first")


def resolve_target(model: TextModel, target: int | str | None, logits: np.ndarray) -> int:
    """Class index for ``target`` (index, label name, or None = the predicted class)."""
    return model.label_index(target, np.asarray(logits))


def select_output(logits: torch.Tensor, target: int, output: str) -> torch.Tensor:
    """The scalar each row explains: the target logit or the target probability."""
    if output == "logit":
        return logits[:, target]
    return torch.softmax(logits, dim=-1)[:, target]


def embed(model: TextModel, ids: torch.Tensor) -> torch.Tensor:
    """The embedding layer's output for ``ids``, detached (no autograd history)."""
    with torch.no_grad():
        return model.embedding(ids).detach()


@contextmanager
def substituted_embeddings(model: TextModel, embeddings: torch.Tensor):
    """Within the block, the model's embedding layer returns ``embeddings`` -- in this thread only.

    The hook is removed on exit, also on error. Calls from other threads pass through unchanged.
    """
    owner = threading.get_ident()

    def hook(module, inputs, output):
        if threading.get_ident() != owner:
            return None
        if output.shape != embeddings.shape:
            raise ValueError(f"the embedding layer produced shape {tuple(output.shape)} but the substitute has "
                             f"{tuple(embeddings.shape)}: the module must call its embedding once on the ids")
        return embeddings

    handle = model.embedding.register_forward_hook(transient(hook))
    try:
        yield
    finally:
        handle.remove()


def forward_at_embeddings(model: TextModel, ids: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, C)`` of the module run on ``ids`` with its embedding output replaced.

    The ids still decide everything the module derives from them (lengths, padding masks), so a
    pad-embedding baseline keeps the sequence length. A model's frame tokens (``textexplain.frame``)
    keep their own embeddings around ``embeddings``, the same in every row.
    """
    inputs = model.inputs(ids)
    with substituted_embeddings(model, inputs.spread(embeddings, model.embedding)):
        return model.run(inputs)


def baseline_embeddings(model: TextModel, ids: torch.Tensor, baseline: str | Sequence[int] | int) -> torch.Tensor:
    """Reference embeddings for ``ids (1, T)``: ``"pad"``, ``"zero"``, ``"unk"``, a token id or T ids."""
    if isinstance(baseline, str):
        if baseline == "zero":
            return torch.zeros_like(embed(model, ids))
        if baseline == "pad":
            return embed(model, torch.full_like(ids, model.pad_id))
        if baseline == "unk":
            return embed(model, torch.full_like(ids, model.unk_id))
        raise ValueError(f"baseline={baseline!r} is not supported: use 'pad', 'zero', 'unk', a token id or "
                         "a list of token ids as long as the text")
    if isinstance(baseline, (int, np.integer)):
        base_ids = torch.full_like(ids, int(baseline))
    else:
        base_ids = torch.as_tensor(list(baseline), dtype=torch.long).reshape(1, -1)
        if base_ids.shape != ids.shape:
            raise ValueError(f"the baseline has {base_ids.shape[1]} token ids but the text has {ids.shape[1]} "
                             "tokens: give one id per token")
    if base_ids.min() < 0 or base_ids.max() >= model.embedding.num_embeddings:
        raise ValueError(f"baseline token ids must lie in 0..{model.embedding.num_embeddings - 1}")
    return embed(model, base_ids)


def reduce_dims(attributions: torch.Tensor, reduce: str) -> np.ndarray:
    """Per-token score from ``(T, E)`` attributions: signed ``"sum"`` or unsigned ``"l2"`` norm."""
    if reduce == "sum":
        out = attributions.sum(-1)
    elif reduce == "l2":
        out = attributions.norm(dim=-1)
    else:
        raise ValueError(f"reduce={reduce!r} is not supported: use 'sum' (signed) or 'l2' (unsigned)")
    return out.detach().double().numpy()


def gradient_sum(model: TextModel, ids: torch.Tensor, rows: torch.Tensor, weights: Sequence[float],
                 target: int | str | None, output: str, internal_batch_size: int | None = None
                 ) -> tuple[torch.Tensor, np.ndarray, int]:
    """``sum_k weights[k] * dF/d(embeddings)`` at each row of ``rows (K, T, E)`` for ``ids (1, T)``.

    Row 0 must be the unperturbed text: its logits resolve ``target`` (None = predicted) after the
    first forward pass, so one pass serves the prediction and the gradients. Rows with weight 0
    are evaluated only (e.g. the baseline for a completeness check). Rows run in chunks of
    ``internal_batch_size``. Only the embeddings get gradients (``torch.autograd.grad``): the
    model's parameters and their ``.grad`` are never touched. Returns the gradient sum ``(T, E)``,
    the logits of every row ``(K, C)`` and the target index.
    """
    n_rows = rows.shape[0]
    chunk = n_rows if internal_batch_size is None else max(1, int(internal_batch_size))
    weights_t = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=rows.dtype)
    total = torch.zeros(rows.shape[1:], dtype=rows.dtype)
    all_logits = []
    for start in range(0, n_rows, chunk):
        part = rows[start:start + chunk].detach().requires_grad_(True)  # a view: no copy
        with torch.enable_grad():
            logits = forward_at_embeddings(model, ids.expand(part.shape[0], -1), part)
            if start == 0:
                target = resolve_target(model, target, logits[0].detach().double().numpy())
            w = weights_t[start:start + part.shape[0]]
            if bool((w != 0).any()):
                objective = (select_output(logits, target, output) * w).sum()
                (grad,) = torch.autograd.grad(objective, part)
                total += grad.sum(0)
        all_logits.append(logits.detach().double().numpy())
    return total, np.concatenate(all_logits), target


ROW_TOKEN_BUDGET = 2048  # default chunk: path rows x tokens per pass (cache-friendly; bounds memory)


MIN_CHUNK_ROWS = 4  # rows per pass however long the text (sentiment-lstm's LSTM at 1,000 tokens: ~25% faster per row than 1; alike at 5,000)


STEPWISE_PASS_BYTES = 2**30  # memory a gradient pass may take on a long text through a GRU (rows_per_pass)
GRU_BYTES_PER_UNIT_STEP = 48  # autograd's saved tensors per GRU unit, direction, row and step (measured: 43 MB a row
# for sentiment-gru's 2 x 96 units over 5,000 tokens)


def rows_per_pass(model: TextModel, n_tokens: int) -> int | None:
    """Rows per gradient pass on a long text through an ``nn.GRU``, None (``row_chunks``' default) otherwise.

    Autograd records torch's CPU GRU step by step, so a pass costs about the same for 4 rows as for 50:
    sentiment-gru, 5,000 tokens, 50 Gauss-Legendre steps: 25.0 s at 4 rows per pass, 12.8 s at 12, 7.3 s
    at 25, 5.9 s at 50 (``benchmarks/bench_long.py``). The LSTM runs fused (oneDNN) and is fastest at the
    default 4 rows (3.5 s; 5.8 s at 50), so only GRUs get more: as many rows as ``STEPWISE_PASS_BYTES``
    of saved tensors allow (23 rows for sentiment-gru at 5,000 tokens)."""
    if n_tokens * MIN_CHUNK_ROWS <= ROW_TOKEN_BUDGET:
        return None
    units = sum(m.hidden_size * (2 if m.bidirectional else 1) * m.num_layers
                for m in model.module.modules() if isinstance(m, torch.nn.GRU))
    if not units:
        return None
    return max(MIN_CHUNK_ROWS, STEPWISE_PASS_BYTES // (GRU_BYTES_PER_UNIT_STEP * units * n_tokens))


def row_chunks(n_rows: int, n_tokens: int, internal_batch_size: int | None = None) -> list[slice]:
    """Slices of ``n_rows`` rows per pass: ``internal_batch_size`` rows, or by default equal chunks of
    at most ``ROW_TOKEN_BUDGET`` row-tokens (on sentiment-lstm with 64 tokens, two passes of 25 rows ran
    ~7% faster than one of 50) but at least ``MIN_CHUNK_ROWS`` rows (long texts)."""
    if internal_batch_size is None:
        budget = max(ROW_TOKEN_BUDGET, MIN_CHUNK_ROWS * max(1, n_tokens))
        n_chunks = max(1, -(-n_rows * max(1, n_tokens) // budget))
        size = -(-n_rows // n_chunks)
    else:
        size = max(1, int(internal_batch_size))
    return [slice(start, min(start + size, n_rows)) for start in range(0, n_rows, max(1, size))]


def logits_of(model: TextModel, token_ids: Sequence[int]) -> np.ndarray:
    """Logits ``(C,)`` of one unperturbed text."""
    return model.logits_ids([list(token_ids)])[0].astype(np.float64)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


METHODS: dict[str, type["Explainer"]] = {}  # every text method by name (``textexplain.METHODS``)


class Explainer(Method):
    """Base of every text method: constructor = model + hyperparameters, ``explain`` does the work.

    Subclasses are declared as ``class Mine(Explainer, name="mine", title="Mine")`` with their
    hyperparameters as ``Hyper`` class attributes (``textexplain.hyperparameters``), set ``signed``
    and implement ``_attribute(prepared, target)``; the name registers them in ``METHODS``.
    """

    registry = METHODS
    signed: bool = True

    def _accept_model(self, model: TextModel) -> None:
        check_model(model)
        self.model = model

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({self.model.name!r}, {args})"

    def prepare(self, text: str) -> Prepared:
        tokens = self.model.tokenize(text)
        return Prepared(text, tokens, self.model.vocab.encode(tokens), self.model.token_spans(text))

    def explain(self, text: str, target: int | str | None = None) -> Explanation:
        """Explain the model's output for ``target`` (index, label or None = predicted) on ``text``."""
        check_model(self.model)
        prepared = self.prepare(text)
        result = self._attribute(prepared, target)
        logits = np.asarray(result.logits, dtype=np.float64)
        info = {"model": self.model.name, "logits": logits.tolist(), **(result.info or {})}
        return Explanation(text=prepared.text, tokens=prepared.tokens, token_ids=prepared.token_ids,
                           scores=result.scores, method=self.name, target=result.target,
                           labels=list(self.model.labels), probs=softmax(logits), signed=self.signed,
                           spans=prepared.spans, params=self.get_params(), delta=result.delta, info=info,
                           convergence=result.convergence)

    def explain_batch(self, texts: Sequence[str], target: int | str | None | Sequence[int | str | None] = None,
                      progress: bool | None = None) -> list[Explanation]:
        """Explain many texts; ``target`` is one target for all or one per text."""
        if isinstance(texts, str):
            raise TypeError("explain_batch takes a list of texts; use explain() for one text")
        texts = list(texts)
        targets = _targets_per_text(target, len(texts))
        from tqdm.auto import tqdm

        return [self.explain(t, tg) for t, tg in
                tqdm(list(zip(texts, targets)), desc=self.name, disable=_no_progress(progress, len(texts)))]

    def _attribute(self, prepared: Prepared, target: int | str | None) -> Attribution:
        raise NotImplementedError


def _targets_per_text(target, n: int) -> list:
    if target is None or isinstance(target, (str, int, np.integer)):
        return [target] * n
    target = list(target)
    if len(target) != n:
        raise ValueError(f"got {len(target)} targets for {n} texts: give one target per text or a single one")
    return target


def _no_progress(progress: bool | None, n: int) -> bool | None:
    """tqdm's ``disable``: forced on/off, or automatic (only on a terminal, only for long work)."""
    if progress is None:
        return None if n > 8 else True
    return not progress

