"""Demo model architectures. Each is built from a plain config dict saved in its checkpoint."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNNClassifier(nn.Module):
    """Embedding -> (bi)LSTM/GRU -> masked max+mean pooling -> linear.

    Padding (the pad id, right-aligned) is packed away, so a text gives the same logits alone or
    in a padded batch.
    """

    def __init__(self, vocab_size: int, n_classes: int, pad_id: int = 0, emb_dim: int = 64,
                 hidden: int = 64, layers: int = 1, bidirectional: bool = True, rnn: str = "lstm",
                 dropout: float = 0.3):
        super().__init__()
        self.pad_id = pad_id
        self.emb = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        self.rnn = RNN_TYPES[rnn](emb_dim, hidden, num_layers=layers, batch_first=True,
                                  bidirectional=bidirectional)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden * (2 if bidirectional else 1), n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != self.pad_id).sum(1).clamp(min=1)
        x = self.drop(self.emb(ids))
        if bool((lengths == ids.shape[1]).all()):  # nothing to pack away (one text, or its IG path rows): ~10% faster
            h, _ = self.rnn(x)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            h, _ = self.rnn(packed)
            h, _ = pad_packed_sequence(h, batch_first=True, total_length=ids.shape[1])
        mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        h_max = h.masked_fill(~mask, float("-inf")).amax(1)
        h_mean = (h * mask).sum(1) / lengths[:, None].to(h.dtype)
        return self.out(self.drop(torch.cat([h_max, h_mean], dim=-1)))


class TextCNN(nn.Module):
    """Embedding -> [Conv1D + ReLU + MaxPool] blocks -> Conv1D + ReLU -> global max pool -> dense.

    The course-slide text CNN, scaled down. Inputs shorter than the receptive field are padded
    with the pad id inside ``forward``; padded positions are masked out of the global max pool.
    """

    def __init__(self, vocab_size: int, n_classes: int, pad_id: int = 0, emb_dim: int = 64,
                 channels: int = 128, kernel: int = 3, pool: int = 2, blocks: int = 1, hidden: int = 64,
                 dropout: float = 0.5):
        super().__init__()
        self.pad_id = pad_id
        self.kernel, self.pool, self.blocks = kernel, pool, blocks
        self.emb = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        convs, c_in = [], emb_dim
        for _ in range(blocks + 1):
            convs.append(nn.Conv1d(c_in, channels, kernel, padding=kernel // 2))
            c_in = channels
        self.convs = nn.ModuleList(convs)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, hidden)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != self.pad_id).sum(1).clamp(min=1)
        x = self.emb(ids).transpose(1, 2)  # (B, E, T)
        for conv in self.convs[:-1]:
            # Padding must never reach a valid position: the pool sees -inf there (as past the end of a
            # text alone) and the next conv zeros (its own zero padding), so a text's logits are the
            # same alone and in any batch.
            x = F.relu(conv(x)).masked_fill(~_valid(lengths, x.shape[-1])[:, None, :], float("-inf"))
            x = F.max_pool1d(x, self.pool, ceil_mode=True)
            lengths = torch.div(lengths + self.pool - 1, self.pool, rounding_mode="floor")
            x = x.masked_fill(~_valid(lengths, x.shape[-1])[:, None, :], 0.0)
        x = F.relu(self.convs[-1](x))
        x = x.masked_fill(~_valid(lengths, x.shape[-1])[:, None, :], float("-inf")).amax(-1)
        return self.out(self.drop(F.relu(self.fc(self.drop(x)))))


def _valid(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``(B, width)``: True at the positions that lie inside each row's text."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


class TransformerClassifier(nn.Module):
    """Embedding + learned positions -> ``nn.TransformerEncoderLayer`` blocks -> masked mean pool -> linear.

    Post-norm encoder layers (batch_first, ReLU MLP) with the padding mask, so a text gives the
    same logits alone or in a padded batch. The MLP's ReLU is a module (``encoder.N.activation``)
    so its per-token neurons can be recorded (``lstmvis.Recorder(modules=[...])``). Positions past
    ``max_len - 1`` share the last learned position.
    """

    def __init__(self, vocab_size: int, n_classes: int, pad_id: int = 0, emb_dim: int = 64, heads: int = 4,
                 layers: int = 2, ff: int = 128, max_len: int = 512, dropout: float = 0.1):
        super().__init__()
        self.pad_id, self.max_len = pad_id, max_len
        self.emb = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        self.pos = nn.Embedding(max_len, emb_dim)
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(emb_dim, heads, ff, dropout, activation=nn.ReLU(), batch_first=True)
            for _ in range(layers))
        self.out = nn.Linear(emb_dim, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == self.pad_id
        positions = torch.arange(ids.shape[1], device=ids.device).clamp(max=self.max_len - 1)
        x = self.drop(self.emb(ids) + self.pos(positions)[None])
        for layer in self.encoder:
            x = layer(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.out(self.drop(pooled))


class CharLM(nn.Module):
    """Embedding -> multi-layer LSTM/GRU -> linear over the vocabulary (next-token logits)."""

    def __init__(self, vocab_size: int, emb_dim: int = 64, hidden: int = 256, layers: int = 2,
                 rnn: str = "lstm", dropout: float = 0.1):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, emb_dim)
        self.rnn = RNN_TYPES[rnn](emb_dim, hidden, num_layers=layers, batch_first=True,
                                  dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, ids: torch.Tensor, state=None):
        """``ids (B, T)`` -> ``(logits (B, T, V), state)``."""
        h, state = self.rnn(self.emb(ids), state)
        return self.out(h), state


class MnistCNN(nn.Module):
    """Conv + ReLU blocks -> global average pool -> linear, so CAM applies to ``features``.

    ``pool_after`` lists the conv indices followed by a 2x2 max pool (default: every conv but the
    last); extra convs at the coarsest scale widen the receptive field before the average pool.
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 64), n_classes: int = 10,
                 pool_after: tuple[int, ...] | None = None):
        super().__init__()
        if pool_after is None:
            pool_after = tuple(range(len(channels) - 1))
        layers, c_in = [], 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU()]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, 1, 28, 28)`` in [0, 1] -> logits ``(B, 10)``."""
        return self.fc(self.pool(self.features(x)).flatten(1))


ARCHITECTURES = {c.__name__: c for c in (RNNClassifier, TextCNN, TransformerClassifier, CharLM, MnistCNN)}


def build(arch: str, config: dict) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: known are {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**config)
