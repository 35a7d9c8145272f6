"""The embedding projector's numbers: a classifier's penultimate layer over a corpus, in 2-D.

``penultimate(model, texts)`` reads the input of the model's output layer (the last ``nn.Linear``
with one output per label) through a forward pre-hook that lives only during the call (marked
transient and removed in ``finally``), so the user's module is never changed. ``pca`` is exact
(an SVD, signs fixed so the largest loading of each component is positive); ``umap`` and ``tsne``
(``project(x, "umap" | "tsne")``) are seeded and slower, the server runs them as jobs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .hooks import transient
from .model import TextModel

PROJECTIONS = ("pca", "umap", "tsne")


def output_layer(model: TextModel) -> nn.Linear:
    """The last ``nn.Linear`` of the module with one output per label (whose input is the penultimate layer)."""
    heads = [m for m in model.module.modules() if isinstance(m, nn.Linear) and m.out_features == len(model.labels)]
    if not heads:
        raise ValueError(f"{model.name} has no nn.Linear with {len(model.labels)} outputs: the projector reads the "
                         "input of the output layer")
    return heads[-1]


def penultimate(model: TextModel, texts: Sequence[str], batch_size: int | None = None,
                report: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``(N, D)`` inputs of the output layer, one row per text (batched, in the texts' order)."""
    layer = output_layer(model)
    seen: list[torch.Tensor] = []

    def grab(module, inputs):
        seen.append(inputs[0].detach().float().cpu())

    id_lists = [model.vocab.encode(model.tokenizer(t)[: model.max_tokens]) or [model.unk_id] for t in texts]
    batch_size = batch_size or model.batch_size
    order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i]))
    out: np.ndarray | None = None
    handle = layer.register_forward_pre_hook(transient(grab))
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                seen.clear()
                model.logits(model.pad_batch([id_lists[i] for i in chunk]))
                if len(seen) != 1 or seen[0].shape[0] != len(chunk):
                    raise ValueError("the output layer was not called once per batch on (B, D) inputs: the projector "
                                     "needs a classifier whose head sees one vector per text")
                feats = seen[0].reshape(len(chunk), -1).numpy()
                if out is None:
                    out = np.empty((len(texts), feats.shape[1]), dtype=np.float32)
                out[chunk] = feats
                if report is not None:
                    report(min(start + batch_size, len(order)), len(order))
    finally:
        handle.remove()
    return out if out is not None else np.zeros((0, layer.in_features), dtype=np.float32)


def pca(x: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``(coords (N, k), explained variance ratio (k,))`` of ``x`` centred; each component's sign makes
    its largest absolute loading positive (scikit-learn's ``svd_flip`` rule), so results are reproducible;
    components beyond the data's dimensions are 0."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("PCA needs a 2-D array with at least two rows")
    centred = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    want, k = k, min(k, vt.shape[0])
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt[:k]), axis=1)])
    signs[signs == 0] = 1
    coords = u[:, :k] * s[:k] * signs
    var = s ** 2
    ratio = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    pad = want - k  # fewer dimensions than components asked: the missing ones are 0
    return np.pad(coords, ((0, 0), (0, pad))), np.pad(ratio, (0, pad))


def project(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """``(N, 2)`` coordinates of ``x`` by PCA, UMAP (umap-learn) or t-SNE (scikit-learn), seeded."""
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}: use one of {', '.join(PROJECTIONS)}")
    if method == "pca":
        return pca(x)[0]
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] < 5:
        raise ValueError(f"{method} needs at least 5 rows")
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, x.shape[0] - 1)).fit_transform(x)
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, random_state=seed, init="pca" if x.shape[1] >= 2 else "random",
                perplexity=min(30.0, (x.shape[0] - 1) / 3)).fit_transform(x)
