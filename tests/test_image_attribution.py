"""Attribution methods against hand-derived answers on tiny models (see test_image_models.py).

OneConvNet, class 0: the gradient reaching the ReLU output is the head row w, so each of the
four 3x3 conv windows (0,0), (0,1), (1,0), (1,1) passes back a coefficient (summed over the two
channels at that window, active units only) to every input pixel it covers:
  plain:     0, 2, 3-1=2, 4+2=6            guided (drop w<0):   0, 2, 3, 6
  deconvnet (relu(w), ignoring which units were active): 1+1=2, 2+1=3, 3+0=3, 4+2=6
A pixel's value is the sum of the coefficients of the windows covering it.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from test_image_models import RELU_KINDS, GapNet, OneConvNet, gap_input, one_conv_input
from textexplain import image
from textexplain.image.base import select
from textexplain.integrated_gradients import quadrature
from textexplain.image.occlusion import window_starts

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one torch thread per module


def window_map(coefficients: dict[tuple[int, int], float]) -> torch.Tensor:
    out = torch.zeros(4, 4)
    for (i, j), c in coefficients.items():
        out[i:i + 3, j:j + 3] += c
    return out


PLAIN_0 = window_map({(0, 0): 0, (0, 1): 2, (1, 0): 2, (1, 1): 6})
GUIDED_0 = window_map({(0, 0): 0, (0, 1): 2, (1, 0): 3, (1, 1): 6})
DECONV_0 = window_map({(0, 0): 2, (0, 1): 3, (1, 0): 3, (1, 1): 6})
# class 1, w = (0, -1, 0, 0 | 0, 0, 1, -3): plain 0, -1, 1, -3; guided and deconvnet keep only (1,0)'s +1
PLAIN_1 = window_map({(0, 0): 0, (0, 1): -1, (1, 0): 1, (1, 1): -3})
GUIDED_1 = window_map({(1, 0): 1})


def test_window_maps_match_the_literal_values():
    assert PLAIN_0.tolist() == [[0, 2, 2, 2], [2, 10, 10, 8], [2, 10, 10, 8], [2, 8, 8, 6]]
    assert GUIDED_0.tolist() == [[0, 2, 2, 2], [3, 11, 11, 8], [3, 11, 11, 8], [3, 9, 9, 6]]
    assert DECONV_0.tolist() == [[2, 5, 5, 3], [5, 14, 14, 9], [5, 14, 14, 9], [3, 9, 9, 6]]


@pytest.mark.parametrize("kind", RELU_KINDS)
def test_exact_gradient_saliency_guided_and_deconvnet_maps(kind):
    m, x = OneConvNet(kind), one_conv_input()
    assert torch.equal(image.Gradient(m).attribute(x, 0)[0, 0], PLAIN_0)
    assert torch.equal(image.Saliency(m).attribute(x, 1)[0], PLAIN_1.abs())
    assert torch.equal(image.GradientXInput(m).attribute(x, 1)[0, 0], PLAIN_1 * x[0, 0])
    assert torch.equal(image.GuidedBackprop(m).attribute(x, 0)[0, 0], GUIDED_0)
    assert torch.equal(image.GuidedBackprop(m).attribute(x, 1)[0, 0], GUIDED_1)
    assert torch.equal(image.Deconvnet(m).attribute(x, 0)[0, 0], DECONV_0)
    assert torch.equal(image.Deconvnet(m).attribute(x, 1)[0, 0], GUIDED_1)


def test_guided_backprop_is_plain_gradient_after_the_call():
    """The rule lives only inside the call: ordinary autograd afterwards is unchanged."""
    m, x = OneConvNet("functional"), one_conv_input().requires_grad_(True)
    image.GuidedBackprop(m).attribute(x.detach(), 0)
    (g,) = torch.autograd.grad(m(x)[0, 0], x)
    assert torch.equal(g[0, 0], PLAIN_0)
    assert torch._C._len_torch_function_stack() == 0


def test_guided_backprop_equals_gradient_without_negative_gradients():
    m, x = GapNet(positive=True), gap_input()
    g = image.Gradient(m).attribute(x, 0)
    assert g.abs().sum() > 0 and (g >= 0).all()
    torch.testing.assert_close(image.GuidedBackprop(m).attribute(x, 0), g, rtol=0, atol=0)


def test_guided_backprop_differs_from_gradient_on_a_mixed_sign_net():
    m, x = GapNet(), gap_input()
    assert not torch.allclose(image.GuidedBackprop(m).attribute(x, 0), image.Gradient(m).attribute(x, 0))


def test_guided_backprop_warns_on_non_relu_activations_and_on_no_relu():
    with pytest.warns(UserWarning) as record:
        image.GuidedBackprop(GapNet(activation=nn.GELU)).attribute(gap_input(), 0)
    messages = " | ".join(str(w.message) for w in record)
    assert "gelu were left unmodified" in messages and "no ReLU call" in messages
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.warns(UserWarning, match="no ReLU"):
        image.GuidedBackprop(linear).attribute(torch.rand(1, 1, 4, 4), 0)


# ----------------------------------------------------------------------------- CAM family

# activations at the ReLU output: A0 = [[0, 4], [31, 40]], A1 = [[0, 0], [6, 15]]
# Grad-CAM class 0: alpha = mean(1, 2, 3, 4) = 2.5, mean(1, 1, -1, 2) = 0.75
GRADCAM_0 = torch.tensor([[0.0, 10.0], [82.0, 111.25]])
# at the conv output (pre-ReLU) only active units pass gradient: alpha = 9/4, 1/4 over
# A0 = [[-5, 4], [31, 40]], A1 = [[-30, -21], [6, 15]] -> [[-18.75, 3.75], [71.25, 93.75]], ReLU
GRADCAM_CONV_0 = torch.tensor([[0.0, 3.75], [71.25, 93.75]])


def bilinear_2_to_4(m: torch.Tensor) -> torch.Tensor:
    # align_corners=False: output pixel centres map to source coordinates -0.25, 0.25, 0.75, 1.25,
    # clamped to [0, 1] -> weights on the second source pixel 0, 0.25, 0.75, 1
    u = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    return u @ m @ u.T


@pytest.mark.parametrize("kind", ["module", "inplace", "functional"])
def test_exact_gradcam_maps(kind):
    m, x = OneConvNet(kind), one_conv_input()
    layer = "relu" if kind != "functional" else "conv"
    expected = GRADCAM_0 if kind != "functional" else GRADCAM_CONV_0
    assert torch.equal(image.GradCAM(m, layer, upsample=None).attribute(x, 0)[0], expected)
    torch.testing.assert_close(image.GradCAM(m, layer).attribute(x, 0)[0], bilinear_2_to_4(expected))


def test_gradcam_relu_and_signed_maps():
    m, x = OneConvNet(), one_conv_input()
    # class 1: alpha = -1/4, -1/2 -> every value <= 0 -> all zeros after ReLU, signed without
    assert torch.equal(image.GradCAM(m, "relu", upsample=None).attribute(x, 1)[0], torch.zeros(2, 2))
    signed = image.GradCAM(m, "relu", relu=False, upsample=None).attribute(x, 1)[0]
    assert torch.equal(signed, torch.tensor([[0.0, -1.0], [-10.75, -17.5]]))


def test_gradcam_on_conv_before_inplace_relu_sees_pre_relu_values():
    """An inplace ReLU after the target layer must not overwrite the captured activations."""
    m, x = OneConvNet("inplace"), one_conv_input()
    assert torch.equal(image.GradCAM(m, "conv", upsample=None).attribute(x, 0)[0], GRADCAM_CONV_0)
    assert torch.equal(image.GradCAM(m, m.conv, upsample=None).attribute(x, 0)[0], GRADCAM_CONV_0)


def test_cam_equals_gradcam_times_positions_on_a_gap_linear_head():
    m, x = GapNet(), gap_input(4)
    targets = [0, 1, 2, 1]
    for upsample in (None, "bilinear"):
        cam = image.CAM(m, "features", upsample=upsample).attribute(x, targets)
        grad_cam = image.GradCAM(m, "features", upsample=upsample).attribute(x, targets)
        assert cam.abs().sum() > 0
        torch.testing.assert_close(cam, grad_cam * 16, rtol=1e-5, atol=1e-5)  # 4x4 positions after the pool
    # on this head the gradient is constant over positions, so HiResCAM's elementwise product is Grad-CAM
    torch.testing.assert_close(image.HiResCAM(m, "features").attribute(x, targets),
                               image.GradCAM(m, "features").attribute(x, targets), rtol=1e-5, atol=1e-6)


def test_cam_refuses_a_head_that_does_not_match_the_layer():
    m, x = GapNet(), gap_input(1)
    with pytest.raises(ValueError, match="linear classifier"):
        image.CAM(m, "features.0").attribute(x)


def test_default_layer_is_the_last_spatial_module():
    m, x = GapNet(), gap_input(2)
    torch.testing.assert_close(image.GradCAM(m).attribute(x), image.GradCAM(m, "features").attribute(x))


def test_gradcam_plus_plus_weights_follow_the_formula():
    m, x = GapNet(), gap_input(2)
    acts = m.features(x)
    grads = (m.fc.weight[0] / 16)[None, :, None, None].expand_as(acts)
    alpha = grads ** 2 / (2 * grads ** 2 + acts.sum((2, 3), keepdim=True) * grads ** 3)
    weights = (alpha * grads.clamp(min=0)).sum((2, 3))
    expected = (weights[:, :, None, None] * acts).sum(1).clamp(min=0)
    torch.testing.assert_close(image.GradCAMPlusPlus(m, "features", upsample=None).attribute(x, 0),
                               expected.detach(), rtol=1e-5, atol=1e-6)


def test_guided_gradcam_is_the_product():
    m, x = OneConvNet(), one_conv_input()
    expected = GUIDED_0 * bilinear_2_to_4(GRADCAM_0)
    torch.testing.assert_close(image.GuidedGradCAM(m, "relu").attribute(x, 0)[0, 0], expected)


def test_cam_normalize_scales_each_map_to_unit_range():
    m, x = GapNet(), gap_input(3)
    maps = image.GradCAM(m, normalize=True).attribute(x)
    flat = maps.flatten(1)
    assert torch.allclose(flat.amax(1), torch.ones(3)) and torch.allclose(flat.amin(1), torch.zeros(3))


class TwoBlockResNet(nn.Module):
    """A residual block reusing one inplace ReLU module, as torchvision's ResNet does."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = nn.ModuleDict({"conv": nn.Conv2d(4, 4, 3, padding=1)})
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 2)
        self.eval()

    def forward(self, x):
        h = self.relu(self.stem(x))
        out = self.block["conv"](h)
        out += h
        out = self.relu(out)
        return self.fc(out.mean((2, 3)))


def test_layer_used_twice_is_refused_and_block_reuse_is_handled():
    m, x = TwoBlockResNet(), torch.rand(2, 1, 6, 6)
    with pytest.raises(ValueError, match="ran 2 times"):
        image.GradCAM(m, "relu").attribute(x)
    # the residual `out += h` modifies the conv output in place: the captured activations survive
    gc = image.GradCAM(m, "block.conv", relu=False, upsample=None).attribute(x, 0)
    h = F.relu(m.stem(x))
    acts = m.block["conv"](h)
    # d logit / d acts = w / 36 (mean over the 6x6 positions), where the final ReLU is active
    g = (m.fc.weight[0][None, :, None, None] / 36) * (acts + h > 0)
    expected = (g.mean((2, 3), keepdim=True) * acts).sum(1)
    torch.testing.assert_close(gc, expected.detach(), rtol=1e-5, atol=1e-6)
    assert image.GuidedBackprop(m).attribute(x).shape == x.shape


# ----------------------------------------------------------------------------- Integrated Gradients


def test_integrated_gradients_on_a_linear_model_is_exact():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(2, 1, 4, 4)
    for method in ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left"):
        attr, delta = image.IntegratedGradients(lin, n_steps=7, method=method, baseline=0.25).attribute(
            x, [2, 0], return_delta=True)
        w = lin[1].weight.detach()[[2, 0]].view(2, 1, 4, 4)
        torch.testing.assert_close(attr, (x - 0.25) * w)
        assert delta.abs().max() < 1e-5


def test_integrated_gradients_completeness_on_smooth_and_relu_nets():
    x = gap_input(3)
    smooth = GapNet(activation=nn.Softplus)
    _, delta = image.IntegratedGradients(smooth, n_steps=50).attribute(x, return_delta=True)
    assert delta.abs().max() < 1e-4
    # a ReLU net is only piecewise smooth along the path: the error shrinks with more steps
    relu = GapNet()
    attr, delta = image.IntegratedGradients(relu, n_steps=300).attribute(x, return_delta=True)
    gap = (relu(x).max(1).values - relu(torch.zeros_like(x)).gather(1, relu(x).argmax(1, keepdim=True))[:, 0]).detach()
    assert gap.abs().min() > 1.0
    torch.testing.assert_close(attr.flatten(1).sum(1) - gap, delta, atol=1e-5, rtol=0)
    assert (delta.abs() < 5e-3 * gap.abs()).all()
    _, coarse = image.IntegratedGradients(relu, n_steps=20).attribute(x, return_delta=True)
    assert coarse.abs().max() > 2 * delta.abs().max()


def test_integrated_gradients_is_not_the_path_averaged_gradient():
    """The popular bug: forgetting (x - x') leaves a mean gradient that fails completeness."""
    m, x = GapNet(), gap_input(2)
    attr = image.IntegratedGradients(m, n_steps=64).attribute(x, 0)
    alphas, weights = quadrature(64, "gausslegendre")
    mean_grad = sum(w * image.Gradient(m).attribute(a * x, 0) for a, w in zip(alphas, weights))
    torch.testing.assert_close(attr, x * mean_grad, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(attr, mean_grad)


def test_quadrature_rules_integrate_polynomials_and_bad_rules_are_refused():
    m = GapNet()
    for method, degree in (("gausslegendre", 9), ("riemann_trapezoid", 1), ("riemann_middle", 1)):
        a, w = quadrature(5, method)
        for k in range(degree + 1):
            assert abs((w * a ** k).sum() - 1 / (k + 1)) < 1e-12, (method, k)
    with pytest.raises(ValueError, match="method='simpson'"):
        image.IntegratedGradients(m, method="simpson")
    with pytest.raises(ValueError, match="n_steps"):
        image.IntegratedGradients(m, n_steps=0)
    with pytest.raises(ValueError, match="trapezoid"):
        image.IntegratedGradients(m, n_steps=1, method="riemann_trapezoid")


# ----------------------------------------------------------------------------- SmoothGrad


def test_smoothgrad_noise_scales_with_the_input_range_not_against_it():
    """On a quadratic model d/dx (x^2) = 2x, the mean of squared-gradient samples reveals sigma."""

    class Square(nn.Module):
        def forward(self, x):
            return (x ** 2).flatten(1).sum(1, keepdim=True).repeat(1, 2)

    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, 0] = 10.0  # range 10
    sg = image.SmoothGrad(Square(), n_samples=2000, noise_level=0.2, kind="smoothgrad_sq").attribute(x, 0)
    # E[(2(x + e))^2] = 4 (x^2 + sigma^2) with sigma = 0.2 * 10 = 2 -> 16 away from the spike
    assert abs(sg[0, 0, 4, 4].item() - 16.0) < 2.0
    mean = image.SmoothGrad(Square(), n_samples=2000, noise_level=0.2).attribute(x, 0)
    assert abs(mean[0, 0, 0, 0].item() - 20.0) < 0.5


def test_smoothgrad_with_zero_noise_is_the_gradient():
    m, x = GapNet(), gap_input(2)
    torch.testing.assert_close(image.SmoothGrad(m, n_samples=3, noise_level=0.0).attribute(x, 0),
                               image.Gradient(m).attribute(x, 0))


# ----------------------------------------------------------------------------- occlusion


def test_occlusion_of_a_linear_model():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.rand(2, 1, 4, 4)
    w = lin[1].weight.detach()[1].view(4, 4)
    one = image.Occlusion(lin, window=1, stride=1).attribute(x, 1)
    torch.testing.assert_close(one, w * x[:, 0])
    # window 2, stride 1: each pixel averages the contributions of the windows covering it
    two = image.Occlusion(lin, window=2, stride=1, baseline=0.5).attribute(x, 1)
    contrib = w * (x[:, 0] - 0.5)
    expected = torch.zeros_like(contrib)
    count = torch.zeros(4, 4)
    for i in range(3):
        for j in range(3):
            drop = contrib[:, i:i + 2, j:j + 2].sum((1, 2))
            expected[:, i:i + 2, j:j + 2] += drop[:, None, None]
            count[i:i + 2, j:j + 2] += 1
    torch.testing.assert_close(two, expected / count)


def test_occlusion_windows_and_errors():
    assert window_starts(28, 4, 2) == list(range(0, 25, 2))
    assert window_starts(5, 2, 2) == [0, 2, 4]  # the last window is cut off at the border
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="larger than the image"):
        image.Occlusion(lin, window=5).attribute(x)
    with pytest.raises(ValueError, match="exceeds window"):
        image.Occlusion(lin, window=2, stride=3).attribute(x)
    with pytest.raises(ValueError, match="positive int"):
        image.Occlusion(lin, window=0).attribute(x)


# ----------------------------------------------------------------------------- shipped model


def test_methods_on_the_shipped_mnist_cnn(mnist_cnn):
    import data

    xs, ys = data.mnist("test")
    x = torch.from_numpy(xs[:2])[:, None]
    logits = mnist_cnn(x).detach()
    assert (logits.argmax(1).numpy() == ys[:2]).all()
    attr, delta = image.IntegratedGradients(mnist_cnn, n_steps=64).attribute(x, return_delta=True)
    gap = select(logits, logits.argmax(1)) - select(mnist_cnn(torch.zeros_like(x)).detach(), logits.argmax(1))
    assert (delta.abs() < 0.01 * gap.abs()).all()
    cam = image.CAM(mnist_cnn).attribute(x)
    positions = image.feature_maps(mnist_cnn, x).shape[2:].numel()  # the pooled layer's h * w
    torch.testing.assert_close(cam, image.GradCAM(mnist_cnn).attribute(x) * positions, rtol=1e-4, atol=1e-4)
    gb = image.GuidedBackprop(mnist_cnn).attribute(x)
    assert gb.abs().sum() > 0 and not torch.allclose(gb, image.Gradient(mnist_cnn).attribute(x))
    assert np.isfinite(image.Occlusion(mnist_cnn, window=7, stride=7).attribute(x).numpy()).all()
