"""Long texts: batched occlusion and IG give the scores of a straightforward one-input-at-a-time reference."""
import numpy as np
import pytest
import torch

import textexplain as te
from textexplain.base import embed, forward_at_embeddings, row_chunks


class _TinyLSTM(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, 6, padding_idx=0)
        self.rnn = torch.nn.LSTM(6, 5, batch_first=True, bidirectional=True)
        self.out = torch.nn.Linear(10, 2)

    def forward(self, ids):
        h, _ = self.rnn(self.emb(ids))
        return self.out(h.mean(1))


WORDS = ["<pad>", "<unk>"] + [f"w{i}" for i in range(20)]


def _model():
    module = _TinyLSTM(len(WORDS)).double().eval()
    model = te.TextModel(module, WORDS, ["neg", "pos"], embedding=module.emb)
    model.max_tokens = 10_000
    return model


def _text(n):
    return " ".join(f"w{i}" for i in np.random.default_rng(n).integers(0, 20, size=n))


def _occlusion_reference(model, text, window, stride):
    """Occlusion the plain way: one masked text per model call, windows as ``occlusion.windows``."""
    from textexplain.occlusion import windows

    ids = torch.tensor([model.encode(text)])
    x, pad = embed(model, ids), embed(model, torch.tensor([[model.pad_id]]))[0, 0]
    with torch.no_grad():
        full = forward_at_embeddings(model, ids, x)[0]
        target = int(full.argmax())
        total, count = np.zeros(ids.shape[1]), np.zeros(ids.shape[1])
        for a, b in windows(ids.shape[1], window, stride):
            masked = x.clone()
            masked[0, a:b] = pad
            total[a:b] += float(full[target] - forward_at_embeddings(model, ids, masked)[0, target])
            count[a:b] += 1
    return total / count


@pytest.mark.parametrize("n,window,stride,budget", [(12, 1, 1, 16384), (300, 1, 1, 64), (301, 3, 2, 900)])
def test_batched_occlusion_equals_one_text_at_a_time(n, window, stride, budget):
    model = _model()
    text = _text(n)
    got = te.Occlusion(model, window=window, stride=stride, max_batch_tokens=budget, evaluation="plain").explain(text)
    np.testing.assert_allclose(got.scores, _occlusion_reference(model, text, window, stride), rtol=1e-9, atol=1e-12)


def test_long_text_batches_hold_several_rows():
    assert [s.stop - s.start for s in row_chunks(50, 5000)] == [4] * 12 + [2]
    assert [s.stop - s.start for s in row_chunks(50, 64)] == [25, 25]  # short texts as before


@pytest.mark.parametrize("n", [10, 700])
def test_ig_on_long_texts_matches_one_row_per_pass(n):
    model = _model()
    text = _text(n)
    batched = te.IntegratedGradients(model, n_steps=20, method="gausslegendre").explain(text)
    single = te.IntegratedGradients(model, n_steps=20, method="gausslegendre", internal_batch_size=1).explain(text)
    np.testing.assert_allclose(batched.scores, single.scores, rtol=1e-9, atol=1e-12)
