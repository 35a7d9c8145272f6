"""The image method contract (textexplain.testing.check_image_method) over every registered method, plus
what it does not cover: failures at each forward pass, several methods at once, training-mode warnings.

Shape and dtype; a batch equals single calls; targets None/int/sequence; deterministic; the
model (weights, requires_grad, .grad, training flag) and the input are left untouched; no
hooks or function modes remain, also after an exception; concurrent calls on one model agree
with serial ones; bad input gets a clear error.
"""
import json
import threading

import pytest
import torch
from torch import nn

from test_image_models import GapNet, gap_input
from textexplain import image
from textexplain.hyperparameters import Hyper
from textexplain.testing import check_image_method, hooks_left

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one torch thread per module

FAST = {"integrated_gradients": {"n_steps": 8}, "smoothgrad": {"n_samples": 4},
        "occlusion": {"window": 2, "stride": 2}}
NAMES = sorted(image.METHODS)


def make(name, model):
    return image.METHODS[name](model, **FAST.get(name, {}))


def test_registry_lists_every_method_with_json_ready_descriptions():
    assert {"saliency", "gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "guided_backprop",
            "deconvnet", "occlusion", "cam", "gradcam", "gradcam_plus_plus", "hirescam", "guided_gradcam"} <= set(NAMES)
    desc = image.describe_methods()
    json.dumps(desc)
    assert all(d["output"] in ("map", "pixels") and d["summary"] for d in desc)


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_method_meets_the_contract(name):
    """textexplain.testing.check_image_method: shape, batch = singles, targets, determinism, model and input
    untouched, no hooks left (also after the model fails), concurrent calls agree, declarations enforced."""
    check_image_method(image.METHODS[name], GapNet(), FAST.get(name), gap_input(3))


def test_the_contract_holds_on_the_default_module():
    check_image_method(image.Gradient)


class _Leaky(image.ImageMethod, name="leaky", register=False):
    """The gradient, with a flaw: ``flaw="hook"`` leaves a forward hook behind, ``"input"`` changes the input."""

    flaw = Hyper(str, "none", choices=("none", "hook", "input"), help="which promise to break")

    def _attribute(self, x, targets):
        if self.flaw == "hook":
            self.model.register_forward_hook(lambda *a: None)
        if self.flaw == "input":
            x.mul_(0.5)  # check_images detaches, but the storage is the caller's
        return image.Gradient(self.model)._attribute(x.detach(), targets)


def test_the_checker_catches_broken_methods():
    check_image_method(_Leaky)
    assert "leaky" not in image.METHODS
    for flaw in ("hook", "input"):
        with pytest.raises(AssertionError):
            check_image_method(_Leaky, params={"flaw": flaw})


@pytest.mark.parametrize("name", NAMES)
def test_frozen_model_works(name):
    m, x = GapNet(), gap_input(2)
    for p in m.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # also inside a caller's no_grad block
        out = make(name, m).attribute(x, 1)
    torch.testing.assert_close(out, make(name, GapNet()).attribute(x, 1))


class Exploding(nn.Module):
    """GapNet that raises on its n-th forward call, after the layers have run (hooks are active)."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.net = GapNet()
        self.calls = 0
        self.fail_at = fail_at

    def forward(self, x):
        out = self.net(x)
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return out


@pytest.mark.parametrize("which", ["first", "last"])
@pytest.mark.parametrize("name", NAMES)
def test_no_hooks_left_after_an_exception(name, which):
    def configured(model):
        method = image.METHODS[name](model, **FAST.get(name, {}))
        if name in ("cam", "gradcam", "gradcam_plus_plus", "hirescam", "guided_gradcam"):
            method.set_params(layer="net.features")
        return method

    dry = Exploding(fail_at=0)
    configured(dry).attribute(gap_input(2), 0)  # count the forward passes
    m = Exploding(fail_at=1 if which == "first" else dry.calls)
    with pytest.raises(RuntimeError, match="boom"):
        configured(m).attribute(gap_input(2), 0)
    assert m.calls == m.fail_at
    assert hooks_left(m) == 0
    # and the model still computes the plain function
    assert torch.equal(m.net(gap_input(1)), GapNet()(gap_input(1)))


def test_concurrent_calls_on_one_model_agree_with_serial_calls():
    m, x = GapNet(), gap_input(2)
    names = ["guided_backprop", "gradient", "deconvnet", "gradcam", "cam", "saliency"]
    reference = {n: make(n, m).attribute(x, 0) for n in names}
    errors, mismatches = [], []
    barrier = threading.Barrier(len(names))

    def work(n):
        try:
            barrier.wait()
            for _ in range(15):
                if not torch.equal(make(n, m).attribute(x, 0), reference[n]):
                    mismatches.append(n)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not mismatches
    assert hooks_left(m) == 0


def test_plain_forward_in_another_thread_is_unaffected_by_guided_backprop():
    m = GapNet()
    x = gap_input(2).requires_grad_(True)
    (plain,) = torch.autograd.grad(m(x)[:, 0].sum(), x)
    stop, bad = threading.Event(), []

    def guided_loop():
        while not stop.is_set():
            image.GuidedBackprop(m).attribute(x.detach(), 0)

    t = threading.Thread(target=guided_loop)
    t.start()
    try:
        for _ in range(30):
            (g,) = torch.autograd.grad(m(x)[:, 0].sum(), x)
            bad.append(not torch.equal(g, plain))
    finally:
        stop.set()
        t.join()
    assert not any(bad)


def test_training_mode_with_dropout_warns_and_is_kept():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(8, 2))
    with pytest.warns(UserWarning, match="training mode"):
        image.Gradient(m).attribute(torch.rand(1, 1, 4, 4))
    assert m.training and m[2].training


def test_bad_input_gets_clear_errors():
    m = GapNet()
    method = image.Gradient(m)
    with pytest.raises(ValueError, match=r"x\[None\]"):
        method.attribute(torch.rand(2, 8, 8))
    with pytest.raises(TypeError, match="floating point"):
        method.attribute(torch.ones(1, 2, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor or numpy"):
        method.attribute([[1.0]])
    with pytest.raises(ValueError, match="empty"):
        method.attribute(torch.rand(0, 2, 8, 8))
    with pytest.raises(ValueError, match="2 targets for 3 images"):
        method.attribute(gap_input(3), [0, 1])
    for name in NAMES:  # every method checks the range, also those that never select a logit
        with pytest.raises(ValueError, match="out of range: the model has 3 classes"):
            make(name, m).attribute(gap_input(1), 3)
    with pytest.raises(ValueError, match=">= 0"):
        method.attribute(gap_input(1), -1)
    with pytest.raises(TypeError, match="bool"):
        method.attribute(gap_input(1), True)
    with pytest.raises(TypeError, match="nn.Module"):
        image.Gradient("not a model")
    with pytest.raises(ValueError, match="no layer 'features.9'; layers are"):
        image.GradCAM(m, "features.9").attribute(gap_input(1))
    with pytest.raises(ValueError, match="unknown image method"):
        image.attribute(m, gap_input(1), "no_such_method")
    with pytest.raises(ValueError, match="has no parameter"):
        image.Gradient(m).set_params(n_steps=3)
    with pytest.raises(ValueError, match="class scores"):
        image.Gradient(nn.Conv2d(2, 2, 1)).attribute(gap_input(1))
    with pytest.raises(ValueError, match="kind must be"):
        image.SmoothGrad(m, kind="sq").attribute(gap_input(1))


def test_numpy_input_params_and_clone():
    m = GapNet()
    x = gap_input(2)
    torch.testing.assert_close(image.Saliency(m).attribute(x.numpy()), image.Saliency(m).attribute(x))
    cam = image.GradCAM(m, layer=m.features, upsample="nearest")
    assert cam.get_params()["layer"] == "features"
    other = GapNet(seed=5)
    clone = cam.clone_for(other)
    assert clone.layer == "features" and clone.model is other and clone.upsample == "nearest"
    assert "GradCAM(layer='features'" in repr(cam)
    torch.testing.assert_close(image.attribute(m, x, "gradcam", layer="features", upsample="nearest"),
                               cam.attribute(x))
