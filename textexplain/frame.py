"""Frame tokens: the ids a model always sees around a text's own tokens (``[CLS] ... [SEP]``,
``<s> ... </s>``), and the attention mask of a padded batch.

A ``TextModel`` with a ``Frame`` keeps every id list it handles -- tokens, baselines, masks,
perturbations -- to the text's own tokens; only the call of the module adds the frame
(``Frame.layout``). So no method can score, mask or perturb a special token, and every forward pass
(gradient, path, occlusion, LIME, SHAP, deletion metrics) sees it. Where a method substitutes the
embedding layer's output, ``Framed.spread`` places the text's substitute rows between the frame
tokens' own embeddings, which are the same in the input and in every baseline.

Padding: ids come right-padded with the pad id; a row's text ends after its last non-pad id. The
suffix follows the text, the padding follows the suffix, and the attention mask is 0 on the padding
only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Framed:
    """One module call: ``ids (B, L)`` with the frame, its ``attention_mask`` (``None``: the module
    takes ids only) and ``text_index (B, L)``, the position of each id in the caller's ids (-1 on a
    frame token; ``None`` when there is no frame)."""

    ids: torch.Tensor
    attention_mask: torch.Tensor | None = None
    text_index: torch.Tensor | None = None

    def spread(self, embeddings: torch.Tensor, layer: nn.Embedding) -> torch.Tensor:
        """The embedding layer's output for this call when the text's tokens have ``embeddings (B, T,
        E)``: frame tokens keep their own (detached) embeddings, gradients reach ``embeddings``."""
        if self.text_index is None:
            return embeddings
        with torch.no_grad():
            own = layer(self.ids).to(embeddings.dtype)
        index = self.text_index.clamp(min=0)[..., None].expand(-1, -1, embeddings.shape[-1])
        index = index.to(embeddings.device)
        return torch.where((self.text_index >= 0)[..., None].to(embeddings.device),
                           embeddings.expand(index.shape[0], -1, -1).gather(1, index), own)


@dataclass(frozen=True)
class Frame:
    """``prefix`` and ``suffix`` ids put around every text, and whether the module is called
    Hugging Face style, ``module(input_ids=ids, attention_mask=mask)`` (``attention_mask=True``), or
    as ``module(ids)``."""

    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()
    attention_mask: bool = True

    def __post_init__(self):
        object.__setattr__(self, "prefix", tuple(int(i) for i in self.prefix))
        object.__setattr__(self, "suffix", tuple(int(i) for i in self.suffix))

    @property
    def size(self) -> int:
        """Frame tokens per text."""
        return len(self.prefix) + len(self.suffix)

    def layout(self, ids: torch.Tensor, pad_id: int) -> Framed:
        """The module's input for right-padded text ids ``(B, T)``."""
        batch, width = ids.shape
        n_pre, n_suf = len(self.prefix), len(self.suffix)
        positions = torch.arange(width, device=ids.device)
        lengths = torch.where(ids != pad_id, positions + 1, 0).amax(1, keepdim=True) if width else \
            torch.zeros((batch, 1), dtype=torch.long, device=ids.device)
        full = torch.full((batch, n_pre + width + n_suf), pad_id, dtype=ids.dtype, device=ids.device)
        full[:, n_pre:n_pre + width] = ids
        is_frame = torch.zeros(full.shape, dtype=torch.bool, device=ids.device)
        if n_pre:
            full[:, :n_pre] = torch.as_tensor(self.prefix, dtype=ids.dtype, device=ids.device)
            is_frame[:, :n_pre] = True
        if n_suf:
            at = n_pre + lengths + torch.arange(n_suf, device=ids.device)  # (B, S): right after each text
            full.scatter_(1, at, torch.as_tensor(self.suffix, dtype=ids.dtype, device=ids.device).expand(batch, -1))
            is_frame.scatter_(1, at, True)
        text_index = torch.where(is_frame, -1, (~is_frame).long().cumsum(1) - 1)
        mask = None
        if self.attention_mask:
            all_positions = torch.arange(full.shape[1], device=ids.device)
            mask = (all_positions < n_pre + lengths + n_suf).long()
        return Framed(full, mask, text_index if self.size else None)
