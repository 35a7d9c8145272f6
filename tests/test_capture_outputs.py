"""Recorder(modules=[...]) on any submodule with per-token outputs (issue 18, point 5): a tiny Hugging Face
BERT built from a config (random weights, ids only, nothing downloads) and the shipped sentiment-transformer,
through extraction, select/match and cell ranking."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

import lstmvis
from lstmvis import Recorder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

PAD = 0
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *[f"w{i}" for i in range(36)]]
SELECTED = ["encoder.layer.*.output", "encoder.layer.*.intermediate", "encoder.layer.*"]


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, pad_token_id=PAD)
    return transformers.BertModel(config).eval()


class IdsToHidden(nn.Module):
    """What a user writes around an HF encoder: ids in, the attention mask from the pad id."""

    pad_id = PAD

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, ids):
        return self.bert(ids, attention_mask=(ids != self.pad_id).long()).last_hidden_state


def _batch(rows):
    width = max(map(len, rows))
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])


ROWS = [[2, 5, 6, 7, 3], [2, 8, 9, 10, 11, 12, 13, 3], [2, 14, 3]]


def _own_outputs(model, names, *args, **kwargs):
    """The modules' outputs, taken with plain forward hooks (the reference)."""
    seen, handles = {}, []
    modules = dict(model.named_modules())

    def keep(name):
        def hook(m, args, out):
            seen[name] = (out[0] if isinstance(out, tuple) else out).detach()
        return hook
    for name in names:
        handles.append(modules[name].register_forward_hook(keep(name)))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_bert_outputs_are_the_modules_own_with_padding_cut(bert):
    ids = _batch(ROWS)
    mask = (ids != PAD).long()
    rec = Recorder(bert, modules=SELECTED)
    with rec, torch.no_grad():
        bert(ids, attention_mask=mask)
    names = [f"encoder.layer.{i}{part}" for i in (0, 1) for part in (".intermediate", ".output", "")]
    assert sorted(rec.states) == sorted(names)  # '*' is one name part: attention.output is not chosen
    assert rec.sources_expected == ["encoder.layer.0.output", "encoder.layer.1.output", "encoder.layer.0.intermediate",
                                    "encoder.layer.1.intermediate", "encoder.layer.0", "encoder.layer.1"]
    own = _own_outputs(bert, names, ids, attention_mask=mask)
    lengths = torch.tensor([len(r) for r in ROWS])
    for name in names:
        got = rec.states[name]
        assert got.shape[:2] == ids.shape and torch.equal(rec.lengths[name], lengths)
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(got[b, :n], own[name][b, :n], rtol=0, atol=0)
            assert not got[b, n:].any()  # padding steps are zero, as for recurrent sources
    deep = Recorder(bert, modules=["encoder.**.output"])
    with deep, torch.no_grad():
        bert(ids, attention_mask=mask)
    assert "encoder.layer.0.attention.output" in deep.states and "encoder.layer.0.output" in deep.states


def test_bert_alone_equals_in_a_batch(bert):
    wrapped = IdsToHidden(bert)
    rec = Recorder(wrapped, modules=["bert." + s for s in SELECTED])
    with rec, torch.no_grad():
        wrapped(_batch(ROWS))
    batch = rec.states
    assert rec.lengths["bert.encoder.layer.1"].tolist() == [len(r) for r in ROWS]  # from the wrapper's pad_id
    for b, row in enumerate(ROWS):
        rec.clear()
        with rec, torch.no_grad():
            wrapped(torch.tensor([row]))
        for name, values in rec.states.items():
            torch.testing.assert_close(values[0], batch[name][b, :len(row)], rtol=1e-5, atol=1e-5)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("training", [False, True])
def test_the_users_model_is_left_as_it_was(bert, training):
    bert.train(training)
    try:
        before = {k: v.clone() for k, v in bert.state_dict().items()}
        ids = _batch(ROWS)
        rec = Recorder(bert, modules=SELECTED)
        with rec:
            bert(ids, attention_mask=(ids != PAD).long())
        assert _hooks(bert) == 0 and bert.training is training
        assert all(p.grad is None for p in bert.parameters())
        with pytest.raises(IndexError), rec:  # an error inside the forward pass: hooks still removed
            bert(torch.tensor([[len(VOCAB) + 5]]))
        assert _hooks(bert) == 0 and not rec.recording
        assert all(torch.equal(v, before[k]) for k, v in bert.state_dict().items())
        grad_rec = Recorder(bert, modules=["encoder.layer.1.intermediate"], detach=False)
        with grad_rec:
            bert(ids, attention_mask=(ids != PAD).long())
        grad_rec.states["encoder.layer.1.intermediate"][0, 1, 3].backward()  # an activation's gradient works
        assert bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
        bert.zero_grad(set_to_none=True)
    finally:
        bert.eval()


class TimeFirst(nn.Module):
    """Returns ``(T, B, D)`` with no batch_first attribute: the input's shape tells the layout."""

    def forward(self, x):
        return x.transpose(0, 1) * 2


class Layouts(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.attn = nn.MultiheadAttention(4, 2)  # batch_first=False: (T, B, D) in and out
        self.time_first = TimeFirst()
        self.pool = nn.Identity()
        self.proj = nn.Linear(4, 3)

    def forward(self, ids):
        x = self.emb(ids)
        t = x.transpose(0, 1)
        a, _ = self.attn(t, t, t)  # a tuple: the first element is recorded
        y = self.time_first(a.transpose(0, 1))
        return self.proj(self.pool(y.mean(0)))


def test_layout_rule_tuple_time_first_and_pooled_outputs():
    torch.manual_seed(0)
    model = Layouts().eval()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])  # B=2, T=3
    rec = Recorder(model, modules=["attn", "time_first", "pool", nn.Linear])
    with rec, torch.no_grad():
        model(ids)
    own = _own_outputs(model, ["attn", "time_first"], ids)
    torch.testing.assert_close(rec.states["attn"], own["attn"].transpose(0, 1))
    torch.testing.assert_close(rec.states["time_first"], own["time_first"].transpose(0, 1))
    assert set(rec.skipped) == {"pool", "proj"} and "(2, 4)" in rec.skipped["pool"]
    assert "attn.out_proj" not in rec.states  # nn.MultiheadAttention never calls its out_proj module
    with pytest.raises(ValueError, match="matches no recordable module of Layouts: its modules are emb, attn"):
        Recorder(model, modules=["encoder.*"])


def test_rnn_sources_and_module_outputs_together():
    from data.architectures import RNNClassifier

    torch.manual_seed(0)
    model = RNNClassifier(20, 2, emb_dim=6, hidden=5).eval()
    ids = torch.tensor([[3, 4, 5, 0], [6, 7, 8, 9]])
    rec = Recorder(model, kinds="h", modules=["rnn", model.emb])
    with rec, torch.no_grad():
        model(ids)
    assert sorted(rec.states) == ["emb", "rnn.l0.h", "rnn.l0.reverse.h"]
    assert rec.lengths["emb"].tolist() == [3, 4] == rec.lengths["rnn.l0.h"].tolist()  # model.pad_id = 0
    assert not rec.states["emb"][0, 3].any()


def test_extract_select_match_and_rank_on_bert_neurons(bert, tmp_path):
    rng = np.random.default_rng(0)
    rows = [[2, *rng.integers(4, len(VOCAB), size=int(rng.integers(3, 12))).tolist(), 3] for _ in range(40)]
    wrapped = IdsToHidden(bert)
    source = "bert.encoder.layer.1.intermediate"
    store = lstmvis.extract(wrapped, rows, tmp_path / "bert.h5", modules=["bert." + s for s in SELECTED], vocab=VOCAB,
                            pad_id=PAD, name="tiny-bert", progress=False)
    assert wrapped.training and not bert.training  # each module's own mode is restored, not train(True) for all
    with store:
        assert source in store.sources and store.n_tokens == sum(map(len, rows))
        assert store.card["model"] == "tiny-bert" and store.info()["model"] == "tiny-bert"
        assert store.sequence_text(0).startswith("[CLS] w")  # decoded, word tokens between spaces
        rec = Recorder(wrapped, modules=[source])
        with rec, torch.no_grad():
            wrapped(torch.tensor([rows[7]]))
        a, b = store.sequence_bounds(7)
        np.testing.assert_allclose(store.states(source, a, b), rec.states[source][0].numpy(), rtol=1e-5, atol=1e-5)
        sep = lstmvis.hypotheses.token_in(["[SEP]"])
        ranking = lstmvis.rank_cells(store, source, sep)
        best = int(ranking.order[0])
        assert ranking.scores.shape == (32,) and ranking.strength[best] > 0.5
        on = np.flatnonzero(store.states(source, a, b)[:, best] * ranking.direction[best] > 0)
        cells = lstmvis.select(store, source, a + 1, a + 3, threshold=-10.0, pad_left=0)
        assert len(cells) == 32  # every GELU output is above -10
        result = lstmvis.match(store, source, [best], threshold=0.0, sign="positive" if ranking.direction[best] > 0
                               else "negative", min_length=1, index_dir=tmp_path / "index")
        assert len(on) == 0 or result.hits


def test_sentiment_transformer_neurons(tmp_path):
    import data

    model = data.load_model("sentiment-transformer")
    texts, labels = data.rotten_tomatoes("test")
    texts, labels = texts[:120], labels[:120]
    meta = {"label": [np.full(len(model.encode(t)), data.SENTIMENT_LABELS[y]) for t, y in zip(texts, labels)]}
    store = lstmvis.extract(model, texts, tmp_path / "st.h5", modules=["encoder.*.activation", "encoder.*"],
                            meta=meta, progress=False)
    with store:
        assert sorted(store.sources) == ["encoder.0", "encoder.0.activation", "encoder.1", "encoder.1.activation"]
        assert store.n_cells("encoder.1.activation") == 192 and store.card["model"] == "sentiment-transformer"
        rec = Recorder(model.module, modules=["encoder.1.activation"])
        with rec, torch.no_grad():
            model.module(torch.tensor([model.encode(texts[3])]))
        a, b = store.sequence_bounds(3)
        np.testing.assert_allclose(store.states("encoder.1.activation", a, b), rec.states["encoder.1.activation"][0],
                                   rtol=1e-5, atol=1e-5)
        fresh = lstmvis.rank_cells(store, "encoder.1.activation", lstmvis.hypotheses.meta("label", "fresh"))
        assert fresh.strength.max() > 0.2
        best = int(fresh.order[0])
        start = a + int(np.argmax(store.states("encoder.1.activation", a, b)[:, best]))
        cells = lstmvis.select(store, "encoder.1.activation", start, start + 1, threshold=0.0, pad_left=0)
        assert best in cells
        result = lstmvis.match(store, "encoder.1.activation", cells[:5], threshold=0.0, min_length=1,
                               index_dir=tmp_path / "index")
        assert result.hits
