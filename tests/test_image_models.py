"""Hand-set tiny image models shared by the test_image_* files, and checks of their forward values.

``OneConvNet``: one 3x3 all-ones conv with biases -50 and -75 on a 4x4 input arange(16), a
ReLU (module, inplace module, functional, ``torch.relu_``, ``clamp(min=0)``), and a linear head
with fixed weights. The forward values below are worked out by hand; the expected attribution
maps in test_image_attribution.py follow from them.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn



pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one torch thread per module


RELU_KINDS = ("module", "inplace", "functional", "functional_inplace", "tensor_relu_", "clamp")

# head weights per target class, laid out as (channel, row, col) of the 2x2x2 ReLU output
HEAD = torch.tensor([
    [1.0, 2.0, 3.0, 4.0, 1.0, 1.0, -1.0, 2.0],  # class 0
    [0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -3.0],  # class 1
])


class OneConvNet(nn.Module):
    def __init__(self, relu: str = "module"):
        super().__init__()
        assert relu in RELU_KINDS
        self.kind = relu
        self.conv = nn.Conv2d(1, 2, 3)
        self.relu = nn.ReLU(inplace=relu == "inplace")
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.copy_(torch.tensor([-50.0, -75.0]))
            self.fc.weight.copy_(HEAD)
            self.fc.bias.zero_()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.kind in ("module", "inplace"):
            h = self.relu(h)
        elif self.kind == "functional":
            h = F.relu(h)
        elif self.kind == "functional_inplace":
            h = F.relu(h, inplace=True)
        elif self.kind == "tensor_relu_":
            h.relu_()
        else:
            h = h.clamp(min=0)
        return self.fc(h.flatten(1))


def one_conv_input() -> torch.Tensor:
    return torch.arange(16.0).view(1, 1, 4, 4)


class GapNet(nn.Module):
    """conv -> ReLU -> maxpool -> conv -> ReLU -> GAP -> linear, seeded random weights."""

    def __init__(self, seed: int = 0, positive: bool = False, activation: type = nn.ReLU):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), activation(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 5, 3, padding=1), activation())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
                if positive:
                    p.abs_()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def gap_input(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand((n, 2, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_one_conv_forward_values_are_the_hand_derived_ones():
    # window sums of arange(16): 45, 54, 81, 90; minus 50 -> -5, 4, 31, 40; minus 75 -> -30, -21, 6, 15
    for kind in RELU_KINDS:
        m = OneConvNet(kind)
        x = one_conv_input()
        h = m.relu(m.conv(x)) if kind in ("module", "inplace") else F.relu(m.conv(x))
        assert torch.equal(h[0, 0], torch.tensor([[0.0, 4.0], [31.0, 40.0]]))
        assert torch.equal(h[0, 1], torch.tensor([[0.0, 0.0], [6.0, 15.0]]))
        # class 0: 2*4 + 3*31 + 4*40 - 1*6 + 2*15 = 285; class 1: -1*4 + 1*6 - 3*15 = -43
        assert torch.allclose(m(x), torch.tensor([[285.0, -43.0]]))
