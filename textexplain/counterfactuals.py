"""Counterfactual texts: small edits of a text and what the model predicts for them.

* ``replace_words``: every occurrence of a word replaced by each of its given substitutes;
* ``neighbour_replacements``: one token at a time replaced by its nearest neighbours in the
  model's own embedding table (cosine similarity, ``embedding_neighbours``);
* ``delete_top_tokens``: the 1..k tokens an explanation ranks highest removed;
* ``hotflip``: a gradient-guided search (HotFlip, Ebrahimi et al. 2018) for the fewest token
  substitutions that change the predicted class. What it guarantees is in its docstring.

Edits are made on the text through the tokenizer's character spans, so the rest of the text keeps
its spelling. ``with_predictions`` adds the model's probabilities to generated texts in one batch.
The user's module is never changed: gradients are taken with respect to a substituted embedding
output (``textexplain.base``), never accumulated in the module's parameters.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .base import embed, forward_at_embeddings
from .metrics import rank_tokens
from .model import TextModel


def _spans_and_tokens(model: TextModel, text: str) -> tuple[list[tuple[int, int]] | None, list[str]]:
    tokens = model.tokenize(text)
    return model.token_spans(text), tokens


def edit_text(model: TextModel, text: str, changes: Mapping[int, str]) -> str:
    """``text`` with token ``i`` replaced by ``changes[i]`` (``""`` deletes it), spacing kept elsewhere."""
    spans, tokens = _spans_and_tokens(model, text)
    if spans is None:
        return " ".join(t for t in (changes.get(i, tok) for i, tok in enumerate(tokens)) if t)
    pieces, last = [], 0
    for i in sorted(changes):
        a, b = spans[i]
        pieces += [text[last:a], changes[i]]
        last = b
    pieces.append(text[last:])
    return " ".join("".join(pieces).split())


def with_predictions(model: TextModel, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``items`` (dicts with ``text``) with the model's ``probs`` and ``predicted`` label added (one batch)."""
    items = [it for it in items if model.tokenizer(it["text"])]
    if not items:
        return []
    probs = model.predict_proba([it["text"] for it in items])
    return [dict(it, probs=p.tolist(), predicted=model.labels[int(np.argmax(p))]) for it, p in zip(items, probs)]


def replace_words(model: TextModel, text: str, replacements: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """For each ``word -> [substitutes]``: the text with every occurrence of the word (as the model
    tokenizes it) replaced by one substitute; one text per (word, substitute) present."""
    tokens = model.tokenize(text)
    out = []
    for word, substitutes in replacements.items():
        key = model.tokenizer(word)
        if len(key) != 1:
            raise ValueError(f"{word!r} is not one token for this model's tokenizer: replace single words")
        where = [i for i, t in enumerate(tokens) if t == key[0]]
        for sub in substitutes:
            if where and sub != key[0]:
                out.append({"text": edit_text(model, text, {i: sub for i in where}), "kind": "replace",
                            "note": f"{key[0]} -> {sub}"})
    return out


def embedding_neighbours(model: TextModel, token: str, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` vocabulary tokens nearest to ``token`` in the model's embedding table (cosine),
    without the pad and unk tokens; ``[]`` for a token the vocabulary lacks."""
    tid = model.vocab.stoi.get(token)
    if tid is None or tid in (model.pad_id, model.unk_id):
        return []
    with torch.no_grad():
        w = model.embedding.weight.detach().to(torch.float64)
        sims = torch.nn.functional.cosine_similarity(w, w[tid][None, :], dim=1)
        sims[[tid, model.pad_id, model.unk_id]] = -np.inf
        best = torch.topk(sims, min(k, len(model.vocab) - 3))
    return [(model.vocab.itos[int(i)], float(s)) for s, i in zip(best.values, best.indices)]


def neighbour_replacements(model: TextModel, text: str, k: int = 3, max_texts: int = 50) -> list[dict[str, Any]]:
    """Texts with one token replaced by one of its ``k`` embedding neighbours (at most ``max_texts``,
    first positions first)."""
    tokens = model.tokenize(text)
    out = []
    for i, tok in enumerate(tokens):
        for sub, sim in embedding_neighbours(model, tok, k):
            out.append({"text": edit_text(model, text, {i: sub}), "kind": "neighbour",
                        "note": f"{tok} -> {sub} (cosine {sim:.2f})"})
            if len(out) >= max_texts:
                return out
    return out


def delete_top_tokens(model: TextModel, text: str, scores: Sequence[float], k: int = 3) -> list[dict[str, Any]]:
    """The text without its 1, 2, .. ``k`` highest-scored tokens (``scores``: one per token, e.g. an
    explanation's); a text left without tokens is skipped."""
    tokens = model.tokenize(text)
    if len(scores) != len(tokens):
        raise ValueError(f"got {len(scores)} scores for {len(tokens)} tokens: give one score per token")
    order = rank_tokens(scores)
    out = []
    for j in range(1, min(k, len(tokens) - 1) + 1):
        top = sorted(int(i) for i in order[:j])
        out.append({"text": edit_text(model, text, {i: "" for i in top}), "kind": "delete",
                    "note": "deleted " + ", ".join(tokens[i] for i in top)})
    return out


@dataclass
class HotFlipResult:
    """What ``hotflip`` found: the edited text, whether it flips, and its substitutions."""

    text: str
    flipped: bool
    original: str  # label the model predicted for the input
    predicted: str  # label it predicts for ``text``
    probs: list[float]
    changes: list[dict[str, Any]] = field(default_factory=list)  # position, old, new
    evaluated: int = 0  # texts the search ran the model on
    exhaustive: bool = False  # every single substitution of every depth it reached was evaluated

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "flipped": self.flipped, "original": self.original, "predicted": self.predicted,
                "probs": self.probs, "changes": self.changes, "n_changes": len(self.changes),
                "evaluated": self.evaluated, "exhaustive": self.exhaustive}


def _margins(logits: np.ndarray, cls: int) -> np.ndarray:
    """``logit[cls] - max other logit`` per row: below 0 means the prediction left ``cls``."""
    others = np.delete(logits, cls, axis=1)
    return logits[:, cls] - others.max(axis=1)


def _estimates(model: TextModel, ids: list[int], cls: int, candidates: torch.Tensor) -> torch.Tensor:
    """First-order change of the margin for each (candidate token, position): ``(e_w - e_i) . grad_i``."""
    x = torch.tensor([ids], dtype=torch.long)
    emb = embed(model, x).clone().requires_grad_(True)
    logits = forward_at_embeddings(model, x, emb)[0]
    runner_up = int(torch.topk(torch.cat([logits[:cls], logits[cls + 1:]]), 1).indices) if len(logits) > 1 else 0
    runner_up += runner_up >= cls
    grad, = torch.autograd.grad(logits[cls] - logits[runner_up], emb)
    g, e = grad[0].detach(), emb[0].detach()
    weights = model.embedding.weight.detach()[candidates].to(g.dtype)
    return weights @ g.T - (e * g).sum(dim=1)[None, :]  # (candidates, T)


def hotflip(model: TextModel, text: str, *, max_changes: int = 3, beam: int = 4, per_step: int = 16,
            vocabulary: Sequence[str] | None = None) -> HotFlipResult:
    """Search for the fewest token substitutions that change the model's predicted class.

    From the input, each step ranks every (position, vocabulary token) substitution by its
    first-order effect on the margin ``logit[predicted] - logit[runner-up]`` (the gradient with
    respect to the embedding output), builds the ``per_step`` best of each of the ``beam`` states
    kept, runs the model on all of them, and keeps the ``beam`` lowest real margins; a position
    changes at most once. It stops at the first depth where some evaluated text flips and returns
    the one with the lowest margin there.

    Guarantees: a returned flip is real (the model was run on it), and its number of changes is the
    fewest among the texts the search evaluated. In general that is an upper bound on the true
    minimum: the gradient only estimates, and states are pruned. ``exhaustive`` is True when no
    substitution of a kept state was left out at any depth (``per_step`` covered them all), so then
    no single substitution flips unless one is returned. When the margin is linear in the
    embeddings (a bag-of-embeddings model with a linear head and two classes) the estimate is exact
    and the result has the minimal number of changes for any ``beam`` and ``per_step`` >= 1.
    ``vocabulary`` limits the substitutes (default: the
    whole vocabulary but pad and unk). No flip within ``max_changes``: ``flipped`` is False and the
    text is the lowest-margin one found.
    """
    if max_changes < 1 or beam < 1 or per_step < 1:
        raise ValueError("max_changes, beam and per_step must be at least 1")
    tokens = model.tokenize(text)
    ids0 = model.vocab.encode(tokens)
    if vocabulary is None:
        cand = [i for i in range(len(model.vocab)) if i not in (model.pad_id, model.unk_id)]
    else:
        unknown = [w for w in vocabulary if w not in model.vocab.stoi]
        if unknown:
            raise ValueError(f"not in the model's vocabulary: {unknown[:10]}")
        cand = sorted({model.vocab.stoi[w] for w in vocabulary} - {model.pad_id, model.unk_id})
    if not cand:
        raise ValueError("no substitutes: the vocabulary given has no usable token")
    candidates = torch.tensor(cand, dtype=torch.long)
    logits0 = model.logits_ids([ids0])
    cls = int(np.argmax(logits0[0]))
    states: list[tuple[list[int], frozenset[int], float]] = [(ids0, frozenset(), float(_margins(logits0, cls)[0]))]
    evaluated, exhaustive = 1, True
    best = states[0]
    for _depth in range(max_changes):
        children: dict[tuple[int, ...], frozenset[int]] = {}
        for ids, changed, _m in states:
            est = _estimates(model, ids, cls, candidates)
            est[torch.as_tensor(cand)[:, None] == torch.tensor(ids)[None, :]] = np.inf  # same token: no change
            if changed:
                est[:, sorted(changed)] = np.inf
            finite = int(torch.isfinite(est).sum())
            take = min(per_step, finite)
            exhaustive = exhaustive and take == finite
            for flat in torch.topk(-est.flatten(), take).indices.tolist():
                w, pos = divmod(flat, est.shape[1])
                child = list(ids)
                child[pos] = cand[w]
                children.setdefault(tuple(child), changed | {pos})
        if not children:
            break
        keys = list(children)
        margins = _margins(model.logits_ids([list(k) for k in keys]), cls)
        evaluated += len(keys)
        order = np.argsort(margins, kind="stable")
        states = [(list(keys[i]), children[keys[i]], float(margins[i])) for i in order[:beam]]
        best = states[0] if states[0][2] < best[2] else best
        if best[2] < 0:
            break
    ids, changed, margin = best
    changes = [{"position": p, "old": tokens[p], "new": model.vocab.itos[ids[p]]} for p in sorted(changed)]
    new_text = edit_text(model, text, {c["position"]: c["new"] for c in changes})
    probs = model.predict_proba_ids([ids])[0]
    return HotFlipResult(new_text, margin < 0, model.labels[cls], model.labels[int(np.argmax(probs))], probs.tolist(),
                         changes, evaluated, exhaustive)
