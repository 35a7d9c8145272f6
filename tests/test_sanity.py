"""Model-parameter randomization sanity checks: known outcomes on analytic and shipped models."""
import numpy as np
import pytest
import torch
from torch import nn

import data
from data.architectures import RNNClassifier, TextCNN
from textexplain import TextModel, metrics, sanity

pytestmark = pytest.mark.usefixtures("single_thread")

WORDS = [f"w{i}" for i in range(40)]


class MeanEmbedding(nn.Module):
    """Embedding -> mean over real tokens -> hidden linear + tanh -> linear logits."""

    def __init__(self, vocab_size, dim=16):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 2)

    def forward(self, ids):
        mask = (ids != 0).float().unsqueeze(-1)
        x = (self.emb(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.out(torch.tanh(self.hidden(x)))


@pytest.fixture
def model():
    torch.manual_seed(3)
    module = MeanEmbedding(len(WORDS) + 2)
    return TextModel(module.eval(), ["<pad>", "<unk>", *WORDS], ["neg", "pos"], embedding=module.emb, name="mean-emb")


@pytest.fixture
def texts():
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=10, replace=False)) for _ in range(12)]


def loo(model, text, target):
    """Leave-one-out: depends on every weight of the model."""
    return metrics.leave_one_out(model, model.encode(text), target)


def word_index(model, text, target):
    """Ignores the model entirely: the kind of explanation a sanity check must catch."""
    return np.array([int(t[1:]) for t in model.tokenize(text)], dtype=float)


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_layers_top_down(model, sentiment_lstm):
    assert [l.name for l in sanity.parameter_layers(model)] == ["out", "hidden", "emb"]
    assert [l.name for l in sanity.parameter_layers(sentiment_lstm)] == ["out", "rnn", "emb"]
    module = TextCNN(50, 2, blocks=1)
    cnn = TextModel(module.eval(), ["<pad>", "<unk>", *[f"t{i}" for i in range(48)]], ["a", "b"], embedding=module.emb)
    assert [l.name for l in sanity.parameter_layers(cnn)] == ["out", "fc", "convs.1", "convs.0", "emb"]
    module = RNNClassifier(50, 2, layers=2)
    deep = TextModel(module.eval(), ["<pad>", "<unk>", *[f"t{i}" for i in range(48)]], ["a", "b"], embedding=module.emb)
    layers = sanity.parameter_layers(deep)
    assert [l.name for l in layers] == ["out", "rnn.l1", "rnn.l0", "emb"]
    assert set(layers[1].params) == {f"{w}_l1{r}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                                     for r in ("", "_reverse")}


def test_randomized_copy_changes_only_chosen_layers(model):
    before = state(model.module)
    layers = sanity.parameter_layers(model)
    clone = sanity.randomized_copy(model, layers[:2], seed=0)
    after = state(clone.module)
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == (k.split(".")[0] in ("out", "hidden")), k
    for k, v in state(model.module).items():
        assert torch.equal(v, before[k])
    again = state(sanity.randomized_copy(model, layers[:1], seed=0).module)
    assert torch.equal(again["out.weight"], after["out.weight"])  # same layer, same seed, same weights
    other = state(sanity.randomized_copy(model, layers[:1], seed=1).module)
    assert not torch.equal(other["out.weight"], after["out.weight"])


def test_multilayer_rnn_sublayer_randomization():
    torch.manual_seed(0)
    module = RNNClassifier(20, 2, layers=2, hidden=8, emb_dim=8)
    tm = TextModel(module.eval(), ["<pad>", "<unk>", *[f"t{i}" for i in range(18)]], ["a", "b"], embedding=module.emb)
    layers = sanity.parameter_layers(tm)
    clone = sanity.randomized_copy(tm, [layers[1]])  # rnn.l1 only
    for k, v in module.state_dict().items():
        assert torch.equal(v, clone.module.state_dict()[k]) == ("_l1" not in k), k
    bound = 1 / np.sqrt(8)
    assert clone.module.rnn.weight_hh_l1.abs().max() <= bound


def test_model_independent_explanation_fails_and_model_dependent_passes(model, texts):
    result = sanity.randomization_check(model, texts, {"loo": loo, "word_index": word_index},
                                        mode="both", progress=False)
    summary = {(s["mode"], s["stage"], s["method"]): s for s in result.summary()}
    for mode in sanity.MODES:
        for stage in ("original", "out", "hidden", "emb"):
            assert summary[mode, stage, "word_index"]["spearman"] == pytest.approx(1.0)
            assert summary[mode, stage, "word_index"]["spearman_abs"] == pytest.approx(1.0)
    assert summary["cascading", "original", "loo"]["spearman"] == pytest.approx(1.0)
    assert result.check_stage == "hidden"
    assert abs(summary["cascading", "hidden", "loo"]["spearman"]) < 0.3
    assert summary["cascading", "emb", "loo"]["spearman_abs"] < 0.3
    assert result.passed() == {"loo": True, "word_index": False}
    table = result.to_markdown()
    assert "cascading" in table and "independent" in table and "**no**" in table
    fig = result.figure()
    assert len(fig.data) == 2 * 2 * 2  # 2 modes x 2 panels x 2 methods


def test_user_model_untouched(model, texts):
    module = model.module
    module.train()
    module.hidden.weight.requires_grad_(False)
    before = state(module)
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    rng_before = torch.get_rng_state()

    def grad_x_input(tm, text, target):  # a gradient method that flips requires_grad on its copy
        tm.module.eval()
        ids = torch.tensor([tm.encode(text)])
        emb = tm.embedding(ids).detach().requires_grad_(True)
        handle = tm.embedding.register_forward_hook(lambda m, i, o: emb)
        try:
            tm.module(ids)[0, target].backward()
        finally:
            handle.remove()
        return (emb.grad * emb).sum(-1)[0].detach().numpy()

    sanity.randomization_check(model, texts[:3], [grad_x_input, loo], mode="both", progress=False)
    assert module.training
    assert {n: p.requires_grad for n, p in module.named_parameters()} == flags
    assert all(p.grad is None for p in module.parameters())
    for k, v in state(module).items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_bad_input(model, texts):
    with pytest.raises(ValueError, match="unknown mode"):
        sanity.randomization_check(model, texts, loo, mode="sideways", progress=False)
    with pytest.raises(ValueError, match="empty"):
        sanity.randomization_check(model, [], loo, progress=False)
    with pytest.raises(ValueError, match="one score per token"):
        sanity.randomization_check(model, texts[:1], lambda m, t, y: np.zeros(3), progress=False)
    with pytest.raises(TypeError, match="method name or a callable"):
        sanity.randomization_check(model, texts[:1], {"x": 3}, progress=False)
    result = sanity.randomization_check(model, texts[:2], loo, mode="independent", progress=False)
    with pytest.raises(ValueError, match="cascading"):
        result.passed()


def test_shipped_lstm_leave_one_out_decorrelates(sentiment_lstm):
    texts, _ = data.rotten_tomatoes("test")
    texts = [t for t in texts[:40] if 6 <= len(sentiment_lstm.tokenize(t)) <= 20][:4]
    result = sanity.randomization_check(sentiment_lstm, texts, {"loo": loo}, progress=False)
    summary = {s["stage"]: s for s in result.summary()}
    assert summary["original"]["spearman"] == pytest.approx(1.0)
    assert summary["rnn"]["spearman"] < 0.6
    assert result.layers == ["out", "rnn", "emb"]


def test_method_names_go_through_explain(model, texts):
    result = sanity.randomization_check(model, texts[:6], ["gradient_x_input", "occlusion"],
                                        method_params={"occlusion": {"mask": "unk"}}, progress=False)
    summary = {(s["stage"], s["method"]): s for s in result.summary()}
    assert summary["original", "gradient_x_input"]["spearman"] == pytest.approx(1.0)
    assert summary["original", "occlusion"]["spearman"] == pytest.approx(1.0)
    assert result.passed() == {"gradient_x_input": True, "occlusion": True}
    assert result.meta["targets"] == list(model.predict_proba(texts[:6]).argmax(1))
