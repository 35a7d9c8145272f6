"""Penultimate features: t-SNE maps (scikit-learn) and nearest neighbours in feature space."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors
from torch import nn

from .base import Configurable, LayerSpec, capture_input, check_images, last_linear, logits_of, resolve_layer, \
    warn_if_training


def penultimate_features(model: nn.Module, images: torch.Tensor | np.ndarray, classifier: LayerSpec = None,
                         batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), logits (N, n_classes)): the input of ``classifier`` (default: last nn.Linear)."""
    images = check_images(images)
    fc = resolve_layer(model, classifier) if classifier is not None else last_linear(model)
    feats, logits = [], []
    for s in range(0, len(images), batch_size):
        with capture_input(fc) as seen, torch.no_grad():
            logits.append(logits_of(model, images[s:s + batch_size]))
        if len(seen) != 1:
            raise ValueError(f"the classifier ran {len(seen)} times in one forward pass; pass classifier= "
                             "naming the layer whose input is the penultimate representation")
        feats.append(seen[0].flatten(1))
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


class FeatureEmbedding(Configurable):
    """t-SNE of the penultimate features of a dataset, plus nearest neighbours in feature space.

    After :meth:`fit`: ``features_`` (N, D), ``embedding_`` (N, 2), ``predictions_`` (N,),
    ``labels_`` (given labels or None). :meth:`neighbors` searches ``features_`` (not the 2-D map,
    which distorts distances).
    """

    def __init__(self, model: nn.Module, classifier: LayerSpec = None, perplexity: float = 30.0,
                 metric: str = "euclidean", seed: int = 0, batch_size: int = 256):
        super().__init__(model)
        self.classifier = classifier
        self.perplexity = perplexity
        self.metric = metric
        self.seed = seed
        self.batch_size = batch_size

    def fit(self, images: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray | None = None) -> "FeatureEmbedding":
        images = check_images(images)
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"got {len(labels)} labels for {len(images)} images")
        if len(images) <= self.perplexity:
            raise ValueError(f"t-SNE needs more images ({len(images)}) than the perplexity ({self.perplexity})")
        warn_if_training(self.model)
        self.features_, logits = penultimate_features(self.model, images, self.classifier, self.batch_size)
        self.predictions_ = logits.argmax(1)
        self.labels_ = None if labels is None else np.asarray(labels)
        tsne = TSNE(n_components=2, perplexity=self.perplexity, metric=self.metric, init="pca",
                    random_state=self.seed)
        self.embedding_ = tsne.fit_transform(self.features_)
        self._index = NearestNeighbors(metric=self.metric).fit(self.features_)
        return self

    def neighbors(self, query: int | Sequence[int] | torch.Tensor, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices) of the ``k`` nearest fitted images to each query.

        ``query``: indices into the fitted data (the image itself is excluded) or new images (B, C, H, W).
        """
        if not hasattr(self, "features_"):
            raise ValueError("call fit(images) first")
        if isinstance(query, (torch.Tensor, np.ndarray)) and np.ndim(query) == 4:
            feats, _ = penultimate_features(self.model, query, self.classifier, self.batch_size)
            return self._index.kneighbors(feats, n_neighbors=k)
        idx = np.atleast_1d(np.asarray(query, dtype=np.int64))
        if idx.min() < 0 or idx.max() >= len(self.features_):
            raise ValueError(f"query indices must be in [0, {len(self.features_)})")
        dist, nbr = self._index.kneighbors(self.features_[idx], n_neighbors=k + 1)
        keep = nbr != idx[:, None]
        # drop the query itself (or, under exact ties, the last neighbour)
        keep[keep.all(1), -1] = False
        return dist[keep].reshape(len(idx), k), nbr[keep].reshape(len(idx), k)
