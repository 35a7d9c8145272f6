"""What the docs say about captum's guided backprop, shown on this repository's own check: captum
(the installed version, from the bench extra) is wrong through functional ``F.relu`` (it hooks
``nn.ReLU`` modules only and returns the plain gradient) and right through in-place ``nn.ReLU``, also
in a residual block that reuses one in-place ReLU; ours is right in every case."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from textexplain import image

captum_attr = pytest.importorskip("captum.attr")


class _GuidedReLU(torch.autograd.Function):
    """The reference rule, written out: ReLU forward; backward passes positive gradients where the input was positive."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


class _Net(nn.Module):
    """conv -> ReLU -> residual block (conv -> ReLU -> conv, + identity -> ReLU) -> pool -> linear, seeded;
    ``relu`` picks how each rectifier is written (the weights and the function are the same)."""

    def __init__(self, relu: str):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.relu = relu
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), \
            nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.act = nn.ReLU(inplace=True)  # one module, called three times when relu == "inplace"
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.eval()

    def rectify(self, x):
        if self.relu == "inplace":
            return self.act(x)
        if self.relu == "functional":
            return F.relu(x)
        return _GuidedReLU.apply(x)

    def forward(self, x):
        x = self.rectify(self.conv1(x))
        out = self.conv3(self.rectify(self.conv2(x)))
        out += x
        return self.fc(self.rectify(out).mean((2, 3)))


def _maps():
    x = torch.rand((4, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    targets = [0, 1, 2, 1]
    xr = x.clone().requires_grad_()
    out = _Net("reference")(xr)
    reference, = torch.autograd.grad(out[range(4), targets].sum(), xr)
    xp = x.clone().requires_grad_()
    plain, = torch.autograd.grad(_Net("functional")(xp)[range(4), targets].sum(), xp)
    return x, targets, reference, plain


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_captum_guided_backprop_is_the_plain_gradient_through_functional_relu_and_right_in_place():
    import captum

    x, targets, reference, plain = _maps()
    assert _rel(plain, reference) > 0.1, "the test network must tell guided backprop from the gradient"
    functional = captum_attr.GuidedBackprop(_Net("functional")).attribute(x.clone(), targets)
    assert _rel(functional, plain) < 1e-6 and _rel(functional, reference) > 0.1, captum.__version__
    in_place = captum_attr.GuidedBackprop(_Net("inplace")).attribute(x.clone(), targets)
    assert _rel(in_place, reference) < 1e-5, (captum.__version__, _rel(in_place, reference))


@pytest.mark.parametrize("relu", ["functional", "inplace"])
def test_our_guided_backprop_is_right_through_functional_and_in_place_relu(relu):
    x, targets, reference, _ = _maps()
    ours = image.GuidedBackprop(_Net(relu)).attribute(x.clone(), targets)
    assert _rel(ours, reference) < 1e-5
