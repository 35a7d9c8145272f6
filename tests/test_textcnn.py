"""Text-CNN filter n-grams: receptive fields against the Jacobian, planted filters, the shipped model."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.architectures import TextCNN
from lstmvis.textcnn import ReceptiveField, receptive_fields, top_ngrams
from textexplain import TextModel


def _conv_outputs(module: TextCNN, x: torch.Tensor) -> list[torch.Tensor]:
    """Pre-activation output of every conv of TextCNN.forward, from embeddings ``x (B, T, E)``."""
    outs, h = [], x.transpose(1, 2)
    for conv in module.convs[:-1]:
        out = conv(h)
        outs.append(out)
        h = F.max_pool1d(F.relu(out), module.pool, ceil_mode=True)
    outs.append(module.convs[-1](h))
    return outs


@pytest.mark.parametrize("kernel,pool,blocks", [(3, 2, 1), (5, 3, 2), (3, 2, 2)])
def test_receptive_fields_equal_the_union_of_gradient_supports(kernel, pool, blocks):
    torch.manual_seed(0)
    module = TextCNN(vocab_size=10, n_classes=2, emb_dim=4, channels=6, kernel=kernel, pool=pool,
                     blocks=blocks).double().eval()
    fields = receptive_fields(module)
    n_tok = 23
    support = {}
    for _ in range(8):  # max pools and ReLUs pick different inputs for different data: take the union
        # one copy of the input per output position: copy p's gradient is position p's alone
        x = torch.randn(1, n_tok, 4, dtype=torch.float64).repeat(n_tok, 1, 1).requires_grad_(True)
        outs = _conv_outputs(module, x)
        for layer, out in enumerate(outs):
            n_out = out.shape[-1]
            own = out[torch.arange(n_out), :, torch.arange(n_out)].sum()
            (g,) = torch.autograd.grad(own, x, retain_graph=layer < len(outs) - 1)
            for p in range(n_out):
                rows = set(np.flatnonzero(g[p].abs().sum(-1).numpy() > 0).tolist())
                support.setdefault((layer, p), set()).update(rows)
    for (layer, p), rows in support.items():
        a, b = fields[f"convs.{layer}"].tokens(p, n_tok)
        assert rows == set(range(a, b)), (layer, p)


def test_receptive_field_of_the_shipped_architecture():
    fields = receptive_fields(TextCNN(vocab_size=5, n_classes=2, kernel=3, pool=2, blocks=1))
    assert fields == {"convs.0": ReceptiveField(1, -1, 3), "convs.1": ReceptiveField(2, -3, 8)}
    assert fields["convs.1"].tokens(0, 10) == (0, 5) and fields["convs.1"].tokens(4, 10) == (5, 10)


def _planted_model():
    """One-hot embeddings; layer-0 filter 0 = [tok[p-1] == 'not'] + [tok[p] == 'good'],
    filter 1 = 2 * [tok[p] == 'bad']; layer 1 filter 0 = pooled layer-0 filter 1 at the centre."""
    tokens = ["<pad>", "<unk>", "not", "good", "bad", "film", "a", "very"]
    v = len(tokens)
    module = TextCNN(vocab_size=v, n_classes=2, emb_dim=v, channels=2, kernel=3, pool=2, blocks=1).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        module.emb.weight.copy_(torch.eye(v))
        module.convs[0].weight[0, tokens.index("not"), 0] = 1.0
        module.convs[0].weight[0, tokens.index("good"), 1] = 1.0
        module.convs[0].weight[1, tokens.index("bad"), 1] = 2.0
        module.convs[1].weight[0, 1, 1] = 1.0
    return TextModel(module.eval(), tokens, ["neg", "pos"], embedding=module.emb, name="planted"), module


def test_planted_filters_find_their_ngrams():
    model, _ = _planted_model()
    texts = ["a very good film", "not good", "a film not good at all", "bad", "a very bad film", "film"]
    report = top_ngrams(model, texts, k=3)
    f0 = report.of("convs.0", 0).ngrams
    assert f0[0].activation == 2.0 and f0[0].tokens[:2] == ["not", "good"]
    assert {h.text for h in f0 if h.activation == 2.0} == {"not good", "not good at"}
    f1 = report.of("convs.0", 1).ngrams
    assert [h.activation for h in f1[:2]] == [2.0, 2.0]
    assert all(h.tokens[h.position - h.start] == "bad" for h in f1[:2])  # "bad" under the kernel's centre
    assert [h.text for h in f1[:2]] == ["bad", "very bad film"]  # the field is clipped to the text
    deep = report.of("convs.1", 0).ngrams
    assert deep[0].activation == 2.0 and "bad" in deep[0].tokens and len(deep[0].tokens) <= 8
    assert len(report.filters) == 4 and "<table>" in report._repr_html_()
    with pytest.raises(ValueError, match="unknown conv layers"):
        top_ngrams(model, texts, layers=["convs.7"])


def test_shipped_sentiment_cnn_activations_are_the_models_own():
    import data

    model = data.load_model("sentiment-cnn")
    texts, _ = data.rotten_tomatoes("test")
    texts = texts[:300]
    report = top_ngrams(model, texts, k=4, batch_size=64)
    assert len(report.filters) == 2 * 128
    rng = np.random.default_rng(0)
    for f in rng.choice(len(report.filters), size=12, replace=False):
        filt = report.filters[f]
        assert 1 <= len(filt.ngrams) <= 4
        assert [h.activation for h in filt.ngrams] == sorted((h.activation for h in filt.ngrams), reverse=True)
        assert len({tuple(h.tokens) for h in filt.ngrams}) == len(filt.ngrams)  # distinct n-grams
        hit = filt.ngrams[0]
        toks = model.tokenize(texts[hit.text_index])
        assert hit.tokens == toks[hit.start:hit.stop]
        ids = torch.tensor([model.vocab.encode(toks)])
        with torch.no_grad():
            outs = _conv_outputs(model.module, model.module.emb(ids))
        layer = int(filt.layer.split(".")[1])
        assert hit.activation == pytest.approx(float(outs[layer][0, filt.filter, hit.position]), abs=1e-5)


class _OwnCNN(torch.nn.Module):
    """A user's text CNN: embedding -> transpose -> ``features`` (any conv/pool stack) -> global max -> dense."""

    def __init__(self, features: torch.nn.Module, vocab: int = 12, emb: int = 4, channels: int = 5):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, emb, padding_idx=0)
        self.features = features
        self.out = torch.nn.Linear(channels, 2)

    def forward(self, ids):
        return self.out(self.features(self.emb(ids).transpose(1, 2)).amax(-1))


def _strided_stack():
    return torch.nn.Sequential(torch.nn.Conv1d(4, 5, 3, stride=2, dilation=2, padding=1), torch.nn.ReLU(),
                               torch.nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True), torch.nn.Conv1d(5, 5, 2))


def _avg_stack():
    return torch.nn.Sequential(torch.nn.Conv1d(4, 5, 3), torch.nn.Tanh(), torch.nn.AvgPool1d(2), torch.nn.Dropout(0.1),
                               torch.nn.Conv1d(5, 5, 3, padding=2))


def test_receptive_fields_of_a_hand_computed_sequential_stack():
    fields = receptive_fields(_OwnCNN(_strided_stack()))
    # conv (k3 s2 d2 p1): size 1 + 2*2 = 5, offset -1, jump 2; pool (k3 s2 p1): size 5 + 2*2 = 9,
    # offset -1 - 2 = -3, jump 4; conv (k2): size 9 + 1*4 = 13, offset -3, jump 4
    assert fields == {"features.0": ReceptiveField(2, -1, 5), "features.3": ReceptiveField(4, -3, 13)}
    assert receptive_fields(_OwnCNN(_avg_stack())) == {"features.0": ReceptiveField(1, 0, 3),
                                                      "features.4": ReceptiveField(2, -4, 8)}


def _own_model(features):
    torch.manual_seed(3)
    tokens = ["<pad>", "<unk>"] + [f"w{i}" for i in range(10)]
    module = _OwnCNN(features).double().eval()
    return TextModel(module, tokens, ["neg", "pos"], embedding=module.emb, name="own"), module


def _own_conv_outputs(module, ids):
    outs, h = {}, module.emb(ids).transpose(1, 2)
    for name, layer in module.features.named_children():
        h = layer(h)
        if isinstance(layer, torch.nn.Conv1d):
            outs[f"features.{name}"] = h
    return outs


@pytest.mark.parametrize("stack", [_strided_stack, _avg_stack])
def test_own_cnn_ngrams_hold_every_token_that_moves_the_activation(stack):
    model, module = _own_model(stack())
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{i}" for i in rng.integers(0, 10, size=n)) for n in (9, 14, 14, 21, 30)]
    report = top_ngrams(model, texts, k=2)
    assert {f.layer for f in report.filters} == set(receptive_fields(module))
    for filt in report.filters:
        hit = filt.ngrams[0]
        toks = model.tokenize(texts[hit.text_index])
        ids = torch.tensor([model.vocab.encode(toks)])
        with torch.no_grad():
            base = _own_conv_outputs(module, ids)[filt.layer][0, filt.filter, hit.position]
            assert hit.activation == pytest.approx(float(base), abs=1e-9)
            for t in range(len(toks)):
                changed = ids.clone()
                changed[0, t] = 2 + (int(ids[0, t]) - 1) % 10  # another word
                moved = _own_conv_outputs(module, changed)[filt.layer][0, filt.filter, hit.position] != base
                if not hit.start <= t < hit.stop:
                    assert not moved, (filt.layer, filt.filter, t, hit.start, hit.stop)


def test_an_unmappable_layout_is_named():
    from lstmvis.textcnn import UnsupportedLayout

    features = torch.nn.Sequential(torch.nn.Conv1d(4, 5, 3), torch.nn.AdaptiveMaxPool1d(8), torch.nn.Conv1d(5, 5, 3))
    model, _ = _own_model(features)
    with pytest.raises(UnsupportedLayout, match=r"features\.2 gets 8 time steps.*features\.1 \(AdaptiveMaxPool1d.*Supported"):
        top_ngrams(model, ["w1 w2 w3"])
    with pytest.raises(UnsupportedLayout, match="runs no Conv1d"):
        receptive_fields(torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 2)))
