"""The method contract (textexplain.testing.check_explainer) over every registered method, the checker's own
power to catch a broken method, and the shared model-call layer."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import textexplain as te
from data.architectures import RNNClassifier
from test_explain_analytic import LABELS, WORDS, make_bag_model
from textexplain.base import Attribution, embed, gradient_sum, reduce_dims, substituted_embeddings
from textexplain.hyperparameters import Hyper
from textexplain.perturb import MIN_BATCH_ROWS, MaskedModel
from textexplain.testing import check_explainer, hooks_left

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one torch thread per module


FAST = {
    "gradient": {},
    "gradient_x_input": {},
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"n_samples": 8, "seed": 1},
    "occlusion": {"window": 2},
    "lime": {"num_samples": 300, "seed": 1},
    "shap": {"budget": 24, "seed": 1, "exact_max_tokens": 4},
}
SEEDED = ("smoothgrad", "lime", "shap")
TEXTS = ["a good plot but not great acting", "the film", "dull dull film , not good", "great"]


@pytest.fixture(scope="module")
def lstm():
    """A small random biLSTM classifier with dropout and packing, in eval mode."""
    torch.manual_seed(0)
    module = RNNClassifier(len(WORDS), len(LABELS), emb_dim=8, hidden=6, dropout=0.5)
    return te.TextModel(module.eval(), WORDS, LABELS, embedding=module.emb, tokenizer=te.WordTokenizer(), name="tiny")


def test_registry_lists_the_shipped_methods_in_order():
    assert list(te.METHODS)[:7] == ["gradient", "gradient_x_input", "integrated_gradients", "smoothgrad",
                                    "occlusion", "lime", "shap"]
    assert [m for m in te.METHODS if te.METHODS[m].seeded] == list(SEEDED)


@pytest.mark.parametrize("method", list(te.METHODS))
def test_every_registered_method_meets_the_contract(lstm, method):
    """textexplain.testing.check_explainer on a biLSTM with dropout and packing (in eval mode)."""
    check_explainer(te.METHODS[method], lstm, FAST.get(method))


@pytest.mark.parametrize("method", list(FAST))
def test_only_integrated_gradients_carries_a_typed_convergence_record(lstm, method):
    e = te.explain(lstm, TEXTS[0], method=method, **FAST[method])
    assert (e.convergence is not None) == (method == "integrated_gradients")
    if e.convergence is not None:  # the JSON keeps its info keys
        assert e.to_dict()["info"]["converged"] == e.convergence.converged


@pytest.mark.parametrize("method", ["gradient", "shap"])
def test_the_contract_holds_on_the_default_model(method):
    check_explainer(te.METHODS[method], params=FAST.get(method))


class _Broken(te.Explainer, name="broken", register=False):
    """A method that breaks one promise at a time (``flaw``), to see the checker catch each."""

    flaw = Hyper(str, "none", choices=("none", "state", "hook", "seed", "grad"), help="which promise to break")
    seed = Hyper(int, 0, help="seed of a small noise on the scores (ignored by flaw='seed')")

    def _attribute(self, prepared, target):
        ids = prepared.ids
        x = embed(self.model, ids)
        grad, logits, target = gradient_sum(self.model, ids, x, [1.0], target, "logit")
        scores = reduce_dims(grad * x[0], "sum")
        if self.flaw != "seed":  # the seed matters
            scores = scores + 1e-3 * np.random.default_rng(self.seed).random(len(scores))
        if self.flaw == "state":  # a result that depends on what ran before
            self.calls = getattr(self, "calls", 0) + 1
            scores = scores + self.calls
        if self.flaw == "hook":
            self.model.embedding.register_forward_hook(lambda *a: None)
        if self.flaw == "grad":
            weight = next(self.model.module.parameters())
            weight.grad = torch.ones_like(weight)
        return Attribution(scores, logits[0], target)


def test_the_checker_catches_broken_methods():
    check_explainer(_Broken)
    assert "broken" not in te.METHODS  # register=False keeps it out of the registry
    for flaw in ("state", "hook", "seed", "grad"):
        with pytest.raises(AssertionError):
            check_explainer(_Broken, params={"flaw": flaw})


def test_hook_removed_when_the_forward_fails():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(len(WORDS), 3)

        def forward(self, ids):
            out = self.emb(ids)
            if self.armed:
                raise RuntimeError("boom")
            return out.new_zeros(len(ids), len(LABELS))

    module = Broken()
    module.armed = False  # the probe call of TextModel() succeeds
    model = te.TextModel(module.eval(), WORDS, LABELS, embedding=module.emb)
    module.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        te.explain(model, "good film", method="integrated_gradients")
    assert hooks_left(module) == 0


def test_substitution_only_affects_its_own_thread(lstm):
    ids = torch.tensor([lstm.encode("good film")])
    plain = lstm.module(ids).detach()
    seen = {}
    entered, release = threading.Event(), threading.Event()

    def other_thread():
        entered.wait(5)
        with torch.no_grad():
            seen["logits"] = lstm.module(ids)
        release.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with substituted_embeddings(lstm, torch.zeros(1, 2, 8)):
        entered.set()
        release.wait(5)
        with torch.no_grad():
            substituted = lstm.module(ids)
    worker.join()
    torch.testing.assert_close(seen["logits"], plain)
    assert not torch.allclose(substituted, plain)
    assert hooks_left(lstm.module) == 0


def test_clear_errors(lstm):
    with pytest.raises(ValueError, match="unknown method"):
        te.explain(lstm, "good", method="saliency")
    with pytest.raises(TypeError, match="n_steps"):
        te.explain(lstm, "good", method="integrated_gradients", n_step=10)
    with pytest.raises(ValueError, match="target"):
        te.explain(lstm, "good", method="gradient", target=7)
    with pytest.raises(ValueError, match="unknown target"):
        te.explain(lstm, "good", method="gradient", target="positive")
    with pytest.raises(ValueError, match="no tokens"):
        te.explain(lstm, "   ", method="occlusion")
    with pytest.raises(ValueError, match="n_steps"):
        te.IntegratedGradients(lstm, n_steps=0)
    with pytest.raises(ValueError, match="method"):
        te.IntegratedGradients(lstm, method="simpson")
    with pytest.raises(ValueError, match="baseline"):
        te.IntegratedGradients(lstm, baseline=[1, 2]).explain("good film , great")
    with pytest.raises(ValueError, match="mask"):
        te.Occlusion(lstm, mask="[MASK]")
    with pytest.raises(TypeError, match="TextModel"):
        te.Gradient(lstm.module)
    with pytest.raises(ValueError, match="one target per text"):
        te.explain_batch(lstm, TEXTS, method="gradient", target=[0, 1])
    with pytest.raises(TypeError, match="list of texts"):
        te.explain_batch(lstm, "good film", method="gradient")


class Recording(torch.nn.Module):
    """Wraps the bag model and records the shape of every batch it is run on."""

    def __init__(self):
        super().__init__()
        self.inner = make_bag_model().module
        self.emb = self.inner.emb
        self.shapes = []

    def forward(self, ids):
        self.shapes.append(tuple(ids.shape))
        return self.inner(ids)


def test_masked_model_deduplicates_and_bounds_batches():
    module = Recording()
    model = te.TextModel(module.eval(), WORDS, LABELS, embedding=module.emb)
    module.shapes.clear()  # the probe call of TextModel()
    ids = model.encode("good plot not great acting film")
    masked = MaskedModel(model, ids, mask="pad", max_batch_tokens=12)
    rng = np.random.default_rng(0)
    keep = rng.random((40, 6)) < 0.5
    keep = np.concatenate([keep, keep[:10]])
    out = masked.logits(keep)
    distinct = len({row.tobytes() for row in keep})
    assert masked.n_evaluations == distinct == sum(s[0] for s in module.shapes)
    assert all(b * t <= 12 or b <= MIN_BATCH_ROWS for b, t in module.shapes)  # the bound, or the row floor
    np.testing.assert_array_equal(out[40:], out[:10])
    calls = len(module.shapes)
    masked.logits(keep[:5])  # cached: no new model call
    assert len(module.shapes) == calls
    # pad mode keeps the length: a masked token contributes nothing, the rest unchanged
    single = np.ones((1, 6), bool)
    single[0, 1] = False
    expected = model.logits_ids([ids])[0] - _head_contribution(model, ids[1])
    np.testing.assert_allclose(masked.logits(single)[0], expected, atol=1e-5)


def _head_contribution(model, token_id):
    with torch.no_grad():
        return model.module.inner.head.weight.numpy() @ model.embedding.weight[token_id].numpy()


@pytest.mark.parametrize("method, params", [("occlusion", {"window": 2}), ("shap", {"algorithm": "exact"}),
                                            ("shap", {"algorithm": "kernel", "budget": 40})])
def test_planned_perturbations_run_in_one_pass_with_the_text(method, params):
    module = Recording()
    model = te.TextModel(module.eval(), WORDS, LABELS, embedding=module.emb)
    module.shapes.clear()  # the probe call of TextModel()
    e = te.explain(model, "good plot not great acting film , the dull", method=method, **params)
    assert len(module.shapes) == 1 and module.shapes[0][0] == e.info["n_model_evaluations"]


@pytest.mark.parametrize("mask", ["unk", "delete", "the"])
def test_masked_model_replacements(mask):
    model = make_bag_model()
    ids = model.encode("good plot not great")
    masked = MaskedModel(model, ids, mask=mask)
    keep = np.array([[True, False, True, False], [False] * 4])
    replacement = {"unk": WORDS.index("<unk>"), "the": WORDS.index("the")}.get(mask)
    if mask == "delete":
        inputs = [[ids[0], ids[2]], [model.pad_id]]
    else:
        inputs = [[ids[0], replacement, ids[2], replacement], [replacement] * 4]
    np.testing.assert_allclose(masked.logits(keep), model.logits_ids(inputs), atol=1e-6)


def test_to_words_merges_sub_tokens_and_characters():
    chars = ["<pad>", "<unk>", *"abcdefghijklmnopqrstuvwxyz ,"]

    class CharBag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(len(chars), 4, padding_idx=0)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, ids):
            return self.head(self.emb(ids).sum(1))

    module = CharBag()
    model = te.TextModel(module.eval(), chars, ["a", "b"], embedding=module.emb, tokenizer=te.CharTokenizer())
    text = "good  film, ok"
    e = te.GradientXInput(model).explain(text, target=1)
    w = e.to_words()
    assert w.tokens == ["good", "film,", "ok"]
    assert w.spans == [(0, 4), (6, 11), (12, 14)]
    assert w.scores.sum() == pytest.approx(e.scores.sum())
    np.testing.assert_allclose(w.scores[0], e.scores[0:6].sum())  # "good" + the two spaces after it
    assert w.info["token_groups"][1] == [6, 7, 8, 9, 10, 11]
    assert w.token_ids == [-1, -1, -1]
    assert e.to_words("absmax").scores[2] == pytest.approx(
        e.scores[12:14][np.argmax(np.abs(e.scores[12:14]))])
    with pytest.raises(ValueError, match="how"):
        e.to_words("median")


@pytest.mark.parametrize("precision", ["float64", "auto"])
def test_integrated_gradients_in_float64_meets_the_same_contract(lstm, precision):
    """IG on float64 copies of the model: the whole contract (each call copies the model while others hold
    hooks on it), and the result says which precision it ran at."""
    params = {**FAST["integrated_gradients"], "precision": precision, "max_steps": 40}
    check_explainer(te.IntegratedGradients, lstm, params)
    e = te.explain(lstm, TEXTS[0], method="integrated_gradients", **params)
    assert e.params["precision"] == precision
    if precision == "float64":
        assert e.convergence.precision == "float64"
