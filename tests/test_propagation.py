"""Known answers for DeepLIFT and LRP (textexplain/propagation.py and the four method modules)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import data
import textexplain as te
from textexplain import image
from textexplain.base import baseline_embeddings, embed, forward_at_embeddings
from textexplain.propagation import LrpRules, deeplift_multipliers, lrp_relevance
from textexplain.testing import hooks_left

TEXT = "a good film , but the plot is dull and the acting is not great"
CLASSIFIERS = ["sentiment-lstm", "sentiment-gru", "sentiment-cnn", "sentiment-shortcut"]


def relu_net(bias: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 8, bias=bias), nn.ReLU(),
                         nn.Linear(8, 1, bias=bias)).double().eval()


@pytest.fixture(scope="module")
def models():
    return {name: data.load_model(name) for name in CLASSIFIERS}


# ------------------------------------------------------------------------------------------ DeepLIFT

def test_deeplift_summation_to_delta_on_linear_relu_networks():
    net = relu_net()
    x, ref = torch.randn(16, 6, dtype=torch.float64), torch.randn(16, 6, dtype=torch.float64)
    m, f_x, f_ref, rules = deeplift_multipliers(lambda rows: net(rows)[:, 0], x, ref)
    assert rules.rewritten == 5  # 3 linear layers (their own multipliers), 2 ReLUs
    np.testing.assert_allclose(((x - ref) * m).sum(1), f_x - f_ref, atol=1e-6, rtol=0)
    grad_x_delta = (x - ref) * torch.func.vmap(torch.func.grad(lambda r: net(r[None])[0, 0]))(x)
    assert not torch.allclose(grad_x_delta.sum(1), f_x - f_ref, atol=1e-3)  # the gradient alone does not sum up


def test_deeplift_of_a_linear_model_is_gradient_times_input():
    module = te.testing.TinyClassifier()
    lin = nn.Sequential(module.emb, nn.Flatten(), nn.Linear(6 * 3, 3)).eval()
    x = torch.randn(4, 18)
    m, _, _, _ = deeplift_multipliers(lambda rows: lin[2](rows)[:, 1], x, torch.zeros_like(x))
    torch.testing.assert_close(x * m, x * lin[2].weight[1].expand_as(x))


def test_text_deeplift_summation_to_delta_on_every_shipped_classifier(models):
    for name, model in models.items():
        e = te.explain(model, TEXT, "deeplift")
        ids = torch.tensor([model.encode(TEXT)])
        with torch.no_grad():
            f_x = forward_at_embeddings(model, ids, embed(model, ids))[0, e.target]
            f_ref = forward_at_embeddings(model, ids, baseline_embeddings(model, ids, "pad"))[0, e.target]
        assert abs(e.scores.sum() - float(f_x - f_ref)) < 1e-5, name
        assert abs(e.delta) < 1e-5 and e.convergence.converged, name


def test_deeplift_and_lrp_leave_no_hooks_and_do_not_change_the_model(models):
    model = models["sentiment-lstm"]
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    flags = [p.requires_grad for p in model.module.parameters()]
    for method in ("deeplift", "lrp"):
        te.explain(model, TEXT, method)
        assert hooks_left(model.module) == 0, method
        assert torch._C._len_torch_function_stack() == 0
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())
    assert [p.requires_grad for p in model.module.parameters()] == flags
    assert all(p.grad is None for p in model.module.parameters()) and not model.module.training
    with torch.no_grad():  # the ordinary model afterwards: the fused LSTM, not our unroll
        np.testing.assert_allclose(model.predict_proba([TEXT]), model.predict_proba([TEXT]), atol=0)


@pytest.fixture(scope="module")
def mnist():
    model = data.load_model("mnist-cnn")
    x, y = data.mnist("test")
    return model, torch.from_numpy(x[:12, None]), torch.from_numpy(y[:12])


def test_image_deeplift_agrees_with_captum_on_mnist_cnn(mnist):
    """Same rules where captum's are exact: with mnist-cnn's max pools as average pools the two agree to
    1e-5 of the largest value (measured ~1e-7). Through its max pools captum 0.9.0's rule loses the
    reference winner's share (its reference half gets no gradient), so its summation-to-delta gap is
    up to ~0.04 on these digits (8% relative L2 difference to ours); ours closes it."""
    captum = pytest.importorskip("captum")
    from captum.attr import DeepLift as CaptumDeepLift

    model, x, y = mnist
    avg = copy.deepcopy(model)
    for i, layer in enumerate(avg.features):
        if isinstance(layer, nn.MaxPool2d):
            avg.features[i] = nn.AvgPool2d(2)
    ours = image.DeepLift(avg, eps=1e-10).attribute(x, y)
    theirs = CaptumDeepLift(avg, eps=1e-10).attribute(x, target=y).detach()
    assert (ours - theirs).abs().max() / theirs.abs().max() < 1e-5, f"captum {captum.__version__}"
    ours, delta = image.DeepLift(model, eps=1e-10).attribute(x, y, return_delta=True)
    _, their_delta = CaptumDeepLift(model, eps=1e-10).attribute(x, target=y, return_convergence_delta=True)
    assert delta.abs().max() < 1e-4 < their_delta.abs().max()


class _AtEmbeddings(nn.Module):
    """A shipped text model as a function of its embeddings (what captum's DeepLift needs)."""

    def __init__(self, model, ids):
        super().__init__()
        self.inner, self.model, self.ids = model.module, model, ids

    def forward(self, rows):
        return forward_at_embeddings(self.model, self.ids.expand(rows.shape[0], -1), rows)


@pytest.mark.parametrize("name", ["sentiment-lstm", "sentiment-gru", "sentiment-cnn"])
def test_captum_deeplift_misses_lstm_gru_and_functional_relu_where_ours_sums_to_delta(models, name):
    """captum 0.9.0's DeepLift rewrites nn.ReLU/nn.Sigmoid/nn.Tanh/nn.MaxPool modules only: nn.LSTM/nn.GRU
    (and the text CNN's F.relu, F.max_pool1d, amax) get the plain gradient, so its summation-to-delta gap is
    large; ours closes it."""
    captum = pytest.importorskip("captum")
    from captum.attr import DeepLift as CaptumDeepLift

    model = models[name]
    ids = torch.tensor([model.encode(TEXT)])
    x, ref = embed(model, ids), baseline_embeddings(model, ids, "pad")
    ours = te.explain(model, TEXT, "deeplift", eps=1e-10)
    _, their_delta = CaptumDeepLift(_AtEmbeddings(model, ids), eps=1e-10).attribute(
        x, baselines=ref, target=ours.target, return_convergence_delta=True)
    change = abs(ours.convergence.f_input - ours.convergence.f_baseline)
    assert abs(float(their_delta)) > 0.05 * change, f"captum {captum.__version__} on {name}"
    assert abs(ours.delta) < 1e-5


# ------------------------------------------------------------------------------------------ LRP

def hand_net() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([0.5, -1.0]))
        net[2].weight.copy_(torch.tensor([[1.0, 2.0]]))
        net[2].bias.copy_(torch.tensor([0.5]))
    return net


@pytest.mark.parametrize("epsilon, expected, bias", [
    (0.0, [4.0, 4.0], 0.5 - 2.0),                    # z-rule: hidden z = (-0.5, 3), output 6.5
    (0.5, [156 / 49, 156 / 49], 13 / 28 - 78 / 49),  # 2/3.5 * (6 / 7 * 6.5) each; biases 0.5/7*6.5, -1/3.5*39/7
])
def test_lrp_epsilon_on_a_hand_computed_linear_relu_net(epsilon, expected, bias):
    net = hand_net()
    r, out, b = lrp_relevance(lambda rows: net(rows)[:, 0], torch.tensor([[1.0, 2.0]]), LrpRules(epsilon=epsilon))
    assert float(out) == 6.5
    np.testing.assert_allclose(r[0].numpy(), expected, rtol=1e-6)
    assert math.isclose(float(b[0]), bias, rel_tol=1e-6)


@pytest.mark.parametrize("rule, params, expected", [
    ("alpha_beta", {"alpha": 2.0}, [2.0, -1.0]),  # z+ = 3, z- = -2, z = 1: 2 * 3/3 and -1 * -2/-2
    ("alpha_beta", {"alpha": 1.0}, [1.0, 0.0]),
    ("gamma", {"gamma": 1.0}, [1.5, -0.5]),      # z' = 1 + 3: (3 + 3)/4 and -2/4
])
def test_lrp_conv_rules_on_a_hand_set_conv(rule, params, expected):
    conv = nn.Conv1d(2, 1, 1, bias=False).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[3.0], [-1.0]]]))
    r, out, _ = lrp_relevance(lambda rows: conv(rows)[:, 0, 0], torch.tensor([[[1.0], [2.0]]]),
                              LrpRules(rule, **params))
    assert float(out) == 1.0
    np.testing.assert_allclose(r[0, :, 0].numpy(), expected, rtol=1e-6)


def test_lrp_epsilon_to_zero_is_gradient_times_input_without_biases():
    net = relu_net(bias=False)
    x = torch.randn(10, 6, dtype=torch.float64)
    r, out, bias = lrp_relevance(lambda rows: net(rows)[:, 0], x, LrpRules(epsilon=0.0))
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xx)[:, 0].sum(), xx)
    torch.testing.assert_close(r, x * g)
    assert float(bias.abs().max()) == 0.0  # no biases, nothing absorbed
    torch.testing.assert_close(r.sum(1), out)  # and conserved
    r_eps, _, _ = lrp_relevance(lambda rows: net(rows)[:, 0], x, LrpRules(epsilon=1.0))
    assert not torch.allclose(r_eps, x * g)


def lstm_lrp_by_hand(lstm: nn.LSTM, xs: list[float]) -> list[float]:
    """Arras et al.'s LSTM-LRP for a 1-unit LSTM without biases (epsilon 0), written out: relevance
    of h to c (gate o takes none), of c to f c_prev and i g in proportion, of g to its pre-activation,
    split between w x and u h in proportion."""
    (wi, wf, wg, wo), (ui, uf, ug, uo) = lstm.weight_ih_l0[:, 0].tolist(), lstm.weight_hh_l0[:, 0].tolist()
    sig = lambda v: 1 / (1 + math.exp(-v))
    h, c, steps = 0.0, 0.0, []
    for x in xs:
        i, f, o = sig(wi * x + ui * h), sig(wf * x + uf * h), sig(wo * x + uo * h)
        zg = wg * x + ug * h
        c_new = f * c + i * math.tanh(zg)
        steps.append({"x": x, "h_prev": h, "c_prev": c, "f": f, "i": i, "g": math.tanh(zg), "zg": zg, "c": c_new})
        c, h = c_new, o * math.tanh(c_new)
    relevance, r_c = [0.0] * len(xs), h  # the output explained is h_T itself
    for t in reversed(range(len(xs))):
        s = steps[t]
        r_g = s["i"] * s["g"] / s["c"] * r_c
        relevance[t] = wg * s["x"] / s["zg"] * r_g
        r_c = s["f"] * s["c_prev"] / s["c"] * r_c + ug * s["h_prev"] / s["zg"] * r_g  # to c_{t-1} via c and via h
    return relevance


def test_lstm_lrp_on_a_hand_set_one_unit_lstm():
    lstm = nn.LSTM(1, 1, bias=False, batch_first=True).eval()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.tensor([[0.5], [-0.3], [1.2], [0.8]]))
        lstm.weight_hh_l0.copy_(torch.tensor([[0.4], [0.9], [-0.7], [0.2]]))
    xs = [1.0, -0.5, 2.0]
    r, out, b = lrp_relevance(lambda rows: lstm(rows)[0][:, -1, 0], torch.tensor([[[v] for v in xs]]),
                              LrpRules(epsilon=0.0))
    np.testing.assert_allclose(r[0, :, 0].numpy(), lstm_lrp_by_hand(lstm, xs), rtol=1e-5)
    assert abs(float(r.sum() - out)) < 1e-6 and float(b[0]) == 0.0  # no biases: conserved exactly
    with torch.no_grad():
        assert float(out) == pytest.approx(float(lstm(torch.tensor([[[v] for v in xs]]))[0][0, -1, 0]), abs=1e-6)


def test_lrp_conservation_on_every_shipped_text_classifier(models):
    """input relevance + what the biases absorbed = the logit, up to the epsilon stabilisers."""
    for name, model in models.items():
        for rule in ("epsilon", "gamma", "alpha_beta"):
            e = te.explain(model, TEXT, "lrp", epsilon=1e-9, rule=rule)
            logit = e.info["f_input"]
            assert abs(e.scores.sum() + e.info["bias_relevance"] - logit) < 1e-4 * max(1.0, abs(logit)), (name, rule)
            assert e.delta == pytest.approx(e.scores.sum() - logit)
        default = te.explain(model, TEXT, "lrp")
        assert default.info["epsilon_residual"] == pytest.approx(
            default.info["f_input"] - default.scores.sum() - default.info["bias_relevance"])


@pytest.mark.parametrize("rule", ["epsilon", "gamma", "alpha_beta"])
def test_lrp_conservation_on_mnist_cnn(mnist, rule):
    model, x, y = mnist
    rules = LrpRules(rule, epsilon=1e-9)
    r, out, bias = lrp_relevance(lambda rows: image.base.select(model(rows), y), x, rules)
    np.testing.assert_allclose((r.flatten(1).sum(1).double() + bias).numpy(), out.double().numpy(), rtol=1e-4,
                               atol=1e-4)
    attr, delta = image.LRP(model, rule=rule, epsilon=1e-9).attribute(x, y, return_delta=True)
    torch.testing.assert_close(attr, r)
    torch.testing.assert_close(delta.double(), r.flatten(1).sum(1).double() - out.double())


def test_lrp_and_deeplift_explain_the_rnns_through_their_own_unroll(models):
    """The fused nn.LSTM/nn.GRU call is unrolled by the rules: same logits as the model."""
    for name in ("sentiment-lstm", "sentiment-gru"):
        model = models[name]
        e = te.explain(model, TEXT, "lrp")
        assert e.info["rules_applied"] >= 2  # the recurrent call and the output layer
        np.testing.assert_allclose(e.info["f_input"], model.logits_ids([model.encode(TEXT)])[0, e.target], atol=1e-5)


def test_packed_sequences_are_refused_with_the_fix():
    module = data.load_model("sentiment-lstm").module
    ids = torch.tensor([[5, 6, 7], [5, 6, 0]])
    with pytest.raises(ValueError, match="packed"), LrpRules():
        module(ids)
    assert torch._C._len_torch_function_stack() == 0


def test_cli_explains_with_deeplift_and_lrp(capsys):
    from textexplain.cli import main

    for method in ("deeplift", "lrp"):
        assert main(["explain", "--model", "sentiment-cnn", "--method", method, "--color", "none", TEXT]) == 0
        assert "good" in capsys.readouterr().out


def test_pages_offer_and_run_deeplift_and_lrp():
    """The server generates the methods' inputs from their declarations and runs them on a page request."""
    from server.app import create_app

    client = create_app(None, {"TESTING": True}).test_client()
    for page in ("/explain", "/images"):
        html = client.get(page).get_data(as_text=True)
        described = html.split('id="page-data">')[1].split("</script>")[0]
        for name in ("deeplift", "lrp"):
            assert f'"{name}"' in described, (page, name)
        assert '"alpha_beta"' in described and '"epsilon"' in described, page  # the generated inputs' choices
    resp = client.post("/api/explain", json={"model": "sentiment-gru", "text": TEXT, "methods": ["deeplift", "lrp"],
                                             "params": {"lrp": {"rule": "gamma", "epsilon": 0.01}}})
    assert resp.status_code == 200, resp.get_json()
    rows = resp.get_json()["explanations"]
    assert [r["method"] for r in rows] == ["deeplift", "lrp"] and rows[1]["params"]["rule"] == "gamma"
    bad = client.post("/api/explain", json={"model": "sentiment-gru", "text": TEXT, "methods": ["lrp"],
                                            "params": {"lrp": {"rule": "zB"}}})
    assert bad.status_code == 400
    resp = client.post("/api/images/explain", json={"index": 3, "methods": ["deeplift", "lrp"]})
    assert resp.status_code == 200, resp.get_json()
    assert [o["method"] for o in resp.get_json()["overlays"]] == ["deeplift", "lrp"]


def test_lrp_bias_relevance_of_a_linear_layer_over_time_steps():
    """A linear layer on (B, T, E) inputs: its bias lines up with the last dimension, and is measured."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 4).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    r, out, bias = lrp_relevance(lambda rows: layer(rows).sum((1, 2)), x, LrpRules(epsilon=0.0))
    torch.testing.assert_close(out, layer(x).sum((1, 2)).detach())
    torch.testing.assert_close(bias, torch.full((2,), 5 * float(layer.bias.sum()), dtype=torch.float64))
    torch.testing.assert_close(r.sum((1, 2)) + bias, out)
