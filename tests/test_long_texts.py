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


class _TinyGRU(_TinyLSTM):
    def __init__(self, vocab: int):
        super().__init__(vocab)
        torch.manual_seed(0)
        self.rnn = torch.nn.GRU(6, 5, batch_first=True, bidirectional=True)


def _gru_model():
    module = _TinyGRU(len(WORDS)).double().eval()
    model = te.TextModel(module, WORDS, ["neg", "pos"], embedding=module.emb)
    model.max_tokens = 10**6
    return model


def _gradient_pass_rows(model, text, **hypers):
    """IG's scores and the rows of each gradient pass through the model's recurrent layer."""
    rows = []
    hook = model.module.rnn.register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0])
                                                      if args[0].requires_grad else None)
    try:
        scores = te.IntegratedGradients(model, n_steps=50, method="gausslegendre", **hypers).explain(text).scores
    finally:
        hook.remove()
    return scores, rows


def test_ig_on_a_long_text_through_a_gru_takes_many_rows_per_pass(monkeypatch):
    """Autograd records a GRU step by step: a long text's passes hold as many rows as the memory budget
    allows (``rows_per_pass``), with the scores of the default 4 rows per pass; LSTMs and short texts keep
    the default."""
    from textexplain import base
    from textexplain.base import GRU_BYTES_PER_UNIT_STEP, MIN_CHUNK_ROWS, rows_per_pass

    monkeypatch.setattr(base, "STEPWISE_PASS_BYTES", 2**24)  # a budget of fewer rows than the path's 50
    gru, n = _gru_model(), 2_000
    want = 2**24 // (GRU_BYTES_PER_UNIT_STEP * 10 * n)
    assert rows_per_pass(gru, n) == want > 2 * MIN_CHUNK_ROWS
    assert rows_per_pass(gru, 64) is None and rows_per_pass(_model(), n) is None
    text = _text(n)
    many, rows = _gradient_pass_rows(gru, text)
    assert max(rows) == want and sum(rows) == 50 and want < 50
    few, rows = _gradient_pass_rows(gru, text, internal_batch_size=MIN_CHUNK_ROWS)
    assert max(rows) == MIN_CHUNK_ROWS
    np.testing.assert_allclose(many, few, rtol=1e-9, atol=1e-12)
