"""Zeiler-Fergus reconstructions (textexplain.image.deconvnet) against hand-worked answers."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from textexplain.image import reconstruct, top_reconstructions

pytestmark = pytest.mark.usefixtures("single_thread")


class ConvReLU(nn.Module):
    """One 3x3 conv with 2 hand-set filters and a ReLU, then a linear head (so it is a classifier)."""

    def __init__(self, pool: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        side = 3 if pool else 6
        self.fc = nn.Linear(2 * side * side, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [1.0, 0.0, 1.0]]],
                                                 [[[-1.0, 0.0, 1.0], [2.0, 1.0, 0.0], [0.0, -2.0, 1.0]]]]))
            self.conv.bias.copy_(torch.tensor([-0.5, 0.25]))
            self.fc.weight.normal_(generator=torch.Generator().manual_seed(0))
            self.fc.bias.zero_()
        self.eval()

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def _image():
    return torch.linspace(-1, 2, 36, dtype=torch.float32).reshape(1, 1, 6, 6).sin()[None, 0]


def test_one_layer_reconstruction_is_the_transposed_filter_applied_to_the_activation():
    model, x = ConvReLU(), _image()
    act = F.relu(model.conv(x)).detach()
    for unit in (0, 1):
        got = reconstruct(model, x, "relu", unit)
        kept = torch.zeros_like(act)
        kept[:, unit] = act[:, unit]
        want = F.conv_transpose2d(kept, model.conv.weight, padding=1)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert got.abs().sum() > 0


def test_one_position_reconstruction_is_the_filter_scaled_by_that_activation():
    model, x = ConvReLU(), _image()
    act = F.relu(model.conv(x)).detach()
    y, xx = divmod(int(act[0, 0].argmax()), 6)
    got = reconstruct(model, x, "relu", 0, position=(y, xx))[0, 0]
    want = torch.zeros(8, 8)  # the filter, flipped by nothing (transposed conv), placed around (y, x)
    want[y:y + 3, xx:xx + 3] = act[0, 0, y, xx] * model.conv.weight[0, 0]
    torch.testing.assert_close(got, want[1:7, 1:7], rtol=0, atol=1e-6)


def test_unpooling_puts_each_value_at_its_switch():
    model, x = ConvReLU(pool=True), _image()
    act = F.relu(model.conv(x)).detach()
    pooled, switches = F.max_pool2d(act, 2, return_indices=True)
    got = reconstruct(model, x, "pool", 1)
    kept = torch.zeros_like(pooled)
    kept[:, 1] = pooled[:, 1]
    unpooled = F.max_unpool2d(kept, switches, 2, output_size=act.shape[2:])
    assert int((unpooled[0, 1] != 0).sum()) == int((pooled[0, 1] != 0).sum())  # one place per pooled value
    want = F.conv_transpose2d(unpooled, model.conv.weight, padding=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_rectification_on_the_way_back_ignores_the_forward_mask():
    """Deconvnet, not gradient: a negative signal below a ReLU is cut, a positive one passes even
    where the forward ReLU was off."""

    class TwoConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 1, 1, bias=False), nn.Conv2d(1, 1, 1, bias=False)
            self.fc = nn.Linear(4, 2)
            with torch.no_grad():
                self.c1.weight.fill_(1.0)
                self.c2.weight.fill_(-2.0)
            self.eval()

        def forward(self, x):
            return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).flatten(1))

    x = torch.tensor([[[[1.0, -1.0], [-2.0, -3.0]]]])
    got = reconstruct(TwoConv(), x, "c2", 0)
    # c2 out = -2 * relu(x) = [-2, 0, 0, 0] -> rectified signal 0 everywhere: nothing comes back
    assert torch.count_nonzero(got) == 0
    x = -x  # c2 out = [0, -2, -4, -6]: all <= 0 again; flip c2's sign instead
    model = TwoConv()
    with torch.no_grad():
        model.c2.weight.fill_(2.0)
    got = reconstruct(model, torch.tensor([[[[1.0, -1.0], [2.0, 3.0]]]]), "c2", 0)
    # signal [2, 0, 4, 6] -> c2^T: [4, 0, 8, 12] -> ReLU rule max(., 0): same -> c1^T (1): same
    torch.testing.assert_close(got[0, 0], torch.tensor([[4.0, 0.0], [8.0, 12.0]]))


def test_the_users_model_is_unchanged():
    model, x = ConvReLU(pool=True), _image()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    reconstruct(model, x, "pool", 0)
    top_reconstructions(model, torch.cat([x, -x, x * 2]), "relu", 1, k=2)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks


def test_top_reconstructions_crop_patch_and_reconstruction_alike():
    model = ConvReLU(pool=True)
    images = torch.randn(12, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    top = top_reconstructions(model, images, "pool", 0, k=4)
    assert top.patches.shape == top.reconstructions.shape == (4, 1, 4, 4)
    assert list(top.values) == sorted(top.values, reverse=True)
    for i, (index, (py, px)) in enumerate(zip(top.image_index, top.positions)):
        full = reconstruct(model, images[int(index)][None], "pool", 0, position=(int(py), int(px)))
        assert full.abs().sum() > 0
        assert torch.isclose(full.abs().sum(), top.reconstructions[i].abs().sum(), atol=1e-5)  # all inside the box


@pytest.mark.parametrize("bad", [dict(unit=2), dict(unit=-1), dict(unit=True), dict(unit=0, position=(9, 0))])
def test_bad_unit_or_position_is_refused(bad):
    with pytest.raises(ValueError):
        reconstruct(ConvReLU(), _image(), "relu", **bad)
