"""Embedding-dimension saliency, the data randomization test (text and images) and the text-CNN
deconvnet, against known answers."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import data
import textexplain as te
from lstmvis.textcnn import filter_reconstruction
from textexplain import image as img
from textexplain.sanity import data_randomization_check
from textexplain.testing import LABELS, WORDS, TinyCNN, tiny_images, tiny_text_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_embedding_saliency_rows_sum_to_gradient_x_input():
    model = data.load_model("sentiment-cnn")
    text = "a gorgeous , witty film that never loses its nerve"
    sal = te.embedding_saliency(model, text)
    gxi = te.explain(model, text, method="gradient_x_input", target=sal.target)
    assert sal.matrix.shape == (len(gxi.tokens), model.embedding.embedding_dim)
    np.testing.assert_allclose(sal.matrix.sum(1), gxi.scores, rtol=1e-5, atol=1e-6)
    assert sal.tokens == gxi.tokens and np.ptp(sal.matrix) > 0


class SumBag(nn.Module):
    """Logits = W @ sum of the token embeddings: linear in the embeddings."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.emb = nn.Embedding(len(WORDS), 4, padding_idx=0)
        self.out = nn.Linear(4, len(LABELS), bias=False)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(len(WORDS), 4, generator=g))
            self.out.weight.copy_(torch.randn(len(LABELS), 4, generator=g))
        self.eval()

    def forward(self, ids):
        return self.out(self.emb(ids).sum(1))


def test_embedding_saliency_of_a_linear_model_is_weight_times_embedding():
    module = SumBag()
    model = te.TextModel(module, te.Vocab(WORDS), LABELS, embedding=module.emb, tokenizer=te.WhitespaceTokenizer())
    text = "good plot , dull acting"
    sal = te.embedding_saliency(model, text, target=2)
    emb = module.emb(torch.tensor(model.vocab.encode(model.tokenize(text)))).detach().double()
    np.testing.assert_allclose(sal.matrix, (emb * module.out.weight[2].detach().double()).numpy(), rtol=1e-6)
    with pytest.raises(ValueError):
        te.embedding_saliency(model, text, output="nope")


def test_data_randomization_of_a_model_against_itself_is_one_and_against_the_randomized_model_lower():
    model = data.load_model("sentiment-cnn")
    texts, _ = data.rotten_tomatoes("test")
    same = data_randomization_check(model, model, texts[:6], ["gradient_x_input"], progress=False)
    assert all(r["spearman"] == pytest.approx(1.0) for r in same.records)
    rand = data.load_model("sentiment-cnn-randlabels")
    result = data_randomization_check(model, rand, texts[:6], ["gradient_x_input", "occlusion"], progress=False)
    summary = {s["method"]: s for s in result.summary()}
    assert set(summary) == {"gradient_x_input", "occlusion"} and all(s["n"] == 6 for s in summary.values())
    assert all(s["spearman_abs"] < 0.9 for s in summary.values())
    assert "data randomization" in result.to_markdown()
    with pytest.raises(ValueError, match="vocabulary"):
        data_randomization_check(model, tiny_text_model(), texts[:2], ["gradient"], progress=False)


def test_image_data_randomization_against_itself_is_one():
    model, x = TinyCNN(), tiny_images(4)
    rows = img.DataRandomization(model, model, ["gradient", "gradcam"], progress=False).run(x).rows
    assert [r["method"] for r in rows] == ["gradient", "gradcam"]
    assert all(r["spearman_abs"] == pytest.approx(1.0) and r["mode"] == "data" for r in rows)
    other = img.DataRandomization(model, TinyCNN(seed=5), ["gradient"], progress=False).run(x).rows
    assert other[0]["spearman_abs"] < 0.99


class OneConvText(nn.Module):
    """Embedding -> one Conv1d (2 filters, kernel 3, padding 1) -> ReLU -> global max -> linear."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.emb = nn.Embedding(len(WORDS), 5, padding_idx=0)
        self.conv = nn.Conv1d(5, 2, 3, padding=1)
        self.out = nn.Linear(2, len(LABELS))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.eval()

    def forward(self, ids):
        return self.out(F.relu(self.conv(self.emb(ids).transpose(1, 2))).amax(-1))


def test_text_filter_reconstruction_is_the_transposed_filter_at_its_window():
    module = OneConvText()
    model = te.TextModel(module, te.Vocab(WORDS), LABELS, embedding=module.emb, tokenizer=te.WhitespaceTokenizer())
    text = "good plot , dull acting not great"
    ids = torch.tensor([model.vocab.encode(model.tokenize(text))])
    emb = module.emb(ids).detach()
    act = module.conv(emb.transpose(1, 2)).detach()[0]
    f, p = 1, int(act[1].argmax())
    rec = filter_reconstruction(model, text, "conv", f, p)
    a = float(act[f, p])
    assert a > 0 and rec.activation == pytest.approx(a)
    want = np.zeros((len(ids[0]) + 2, 5))
    want[p:p + 3] = a * module.conv.weight[f].detach().double().numpy().T  # (kernel, E) around position p
    np.testing.assert_allclose(rec.embedding, want[1:-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.per_token, want[1:-1].sum(1), rtol=1e-5, atol=1e-6)
    assert rec.share.sum() == pytest.approx(a * (a - float(module.conv.bias[f])), rel=1e-5)
    outside = [t for t in range(len(ids[0])) if not p - 1 <= t <= p + 1]
    assert np.all(rec.per_token[outside] == 0)
    with pytest.raises(ValueError):
        filter_reconstruction(model, text, "conv", 2, p)
    with pytest.raises(ValueError):
        filter_reconstruction(model, text, "nope", 0, p)


def test_text_filter_reconstruction_on_the_shipped_cnn_leaves_the_model_unchanged():
    model = data.load_model("sentiment-cnn")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    rec = filter_reconstruction(model, "a gorgeous , witty film that never loses its nerve", "convs.1", 3, 1)
    assert rec.per_token.shape == (10,) and not model.module.training
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())
    assert all(p.grad is None for p in model.module.parameters())
