"""Network visualization, top patches, receptive fields, embeddings, sanity checks and rendering."""
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from test_image_models import GapNet, gap_input
from textexplain import image, render
from textexplain.image.base import ImageMethod
from textexplain.image.sanity import spearman_rows
from textexplain.image.visualize import gaussian_blur, random_affine

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: one torch thread per module


# ----------------------------------------------------------------------------- filters and maps


def test_filter_images_scale_each_filter_around_grey():
    conv = nn.Conv2d(1, 2, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 2.0
        conv.weight[0, 0, 1, 1] = -1.0
        conv.weight[1, 0, 2, 2] = -0.5
    model = nn.Sequential(conv, nn.Flatten())
    f = image.filter_images(model)
    assert f.shape == (2, 1, 3, 3)
    assert f[0, 0, 0, 0] == 1.0 and f[0, 0, 1, 1] == 0.25 and f[0, 0, 2, 2] == 0.5
    assert f[1, 0, 2, 2] == 0.0 and f[1, 0, 0, 0] == 0.5
    with pytest.raises(ValueError, match="Conv2d"):
        image.filter_images(model, "1")


def test_feature_maps_are_the_layer_outputs():
    m, x = GapNet(), gap_input(2)
    torch.testing.assert_close(image.feature_maps(m, x, "features.2"), m.features[:3](x))
    torch.testing.assert_close(image.feature_maps(m, x), m.features(x))  # default: last spatial layer


# ----------------------------------------------------------------------------- transforms


def test_transforms():
    img = torch.rand(3, 2, 9, 9, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(random_affine(img, gen), img, atol=1e-5, rtol=0)  # identity by default
    moved = random_affine(img, gen, jitter=2, scale=(0.9, 1.1), degrees=20)
    assert moved.shape == img.shape and not torch.allclose(moved, img)
    const = torch.full((1, 1, 7, 7), 0.3)
    torch.testing.assert_close(gaussian_blur(const, 1.0), const)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    blurred = gaussian_blur(spike, 1.0)
    assert abs(blurred.sum().item() - 1.0) < 1e-5 and blurred[0, 0, 4, 4] < 0.2
    assert torch.allclose(blurred[0, 0], blurred[0, 0].T)  # isotropic


# ----------------------------------------------------------------------------- activation maximization



@pytest.mark.parametrize("fft", [False, True])
def test_activation_maximization_raises_the_objective(fft):
    m = GapNet()
    am = image.ActivationMaximization(m, layer="features.3", steps=40, lr=0.1, fft=fft, seed=1)
    imgs = am.visualize([0, 3], (2, 8, 8))
    assert imgs.shape == (2, 2, 8, 8) and imgs.min() >= 0 and imgs.max() <= 1
    grey = torch.full((2, 2, 8, 8), 0.5)
    acts = image.feature_maps(m, imgs, "features.3").mean((2, 3))
    acts_grey = image.feature_maps(m, grey, "features.3").mean((2, 3))
    assert acts[0, 0] > acts_grey[0, 0] + 0.5 and acts[1, 3] > acts_grey[1, 3] + 0.5
    # each image is specific to its own unit
    assert acts[0, 0] - acts[1, 0] > 0 and acts[1, 3] - acts[0, 3] > 0
    torch.testing.assert_close(am.visualize([0, 3], (2, 8, 8)), imgs)  # seeded


def test_class_visualization_reaches_the_class():
    m = GapNet()
    imgs = image.ActivationMaximization(m, steps=60, lr=0.1, l2=0.1, blur_every=4).visualize([0, 1, 2], (2, 8, 8))
    logits = m(imgs).detach()
    random_best = m(torch.rand(100, 2, 8, 8, generator=torch.Generator().manual_seed(0))).detach().amax(0)
    for i in range(3):
        assert logits[i, i] > random_best[i]  # above the best of 100 random images ...
        assert all(logits[i, i] > logits[j, i] for j in range(3) if j != i)  # ... and of the other classes' images
    with pytest.raises(ValueError, match="non-negative"):
        image.ActivationMaximization(m).visualize([], (2, 8, 8))
    with pytest.raises(ValueError, match="unit 9 out of range"):
        image.ActivationMaximization(m, layer="features.3", steps=1).visualize([9], (2, 8, 8))
    with pytest.raises(ValueError, match="class 5 out of range"):
        image.ActivationMaximization(m, steps=1).visualize([5], (2, 8, 8))
    with pytest.raises(ValueError, match="channels must be"):
        image.DeepDream(m, layer="features.3", channels=[7], steps=1).dream(gap_input(1))


def test_deepdream_amplifies_the_layer():
    m, x = GapNet(), gap_input(2)
    dd = image.DeepDream(m, layer="features.3", octaves=2, octave_scale=1.5, steps=5, jitter=1, min_size=4)
    out = dd.dream(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    energy = lambda z: image.feature_maps(m, z, "features.3").pow(2).sum((1, 2, 3))  # noqa: E731
    assert (energy(out) > 1.2 * energy(x)).all()
    torch.testing.assert_close(dd.dream(x), out)


# ----------------------------------------------------------------------------- receptive fields, top patches


def chain(pool: type = nn.AvgPool2d) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), pool(2), nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
                        pool(2), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    return net.eval()


def test_receptive_field_arithmetic_and_gradient_footprint():
    net = chain()
    rf = image.receptive_field(net, "6", torch.rand(1, 1, 28, 28))
    assert rf == image.ReceptiveField((18, 18), (4, 4), (1.5, 1.5))
    assert image.receptive_field(net, "7", torch.rand(1, 1, 28, 28)) == rf  # ReLU changes nothing
    # footprint of unit (2, 3) with every ReLU removed and positive weights: exactly the box
    linear = nn.Sequential(*[nn.Identity() if isinstance(m, nn.ReLU) else m for m in net[:7]])
    with torch.no_grad():
        for p in linear.parameters():
            p.abs_()
    x = torch.rand(1, 1, 28, 28, requires_grad=True)
    (g,) = torch.autograd.grad(linear(x)[0, 0, 2, 3], x)
    rows, cols = torch.nonzero(g[0, 0], as_tuple=True)
    y0, y1, x0, x1 = rf.box(2, 3)
    assert (rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1) == (y0, y1, x0, x1)
    assert (y0, y1, x0, x1) == (1, 19, 5, 23)  # centre 1.5 + 4 * (2, 3) = (9.5, 13.5), +-8.5


class Branchy(nn.Module):
    """Parallel 3x3 and 5x5 convs summed: a chain-only arithmetic would claim a 7x7 field."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 5, padding=2)
        self.head = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.head(F.relu(self.a(x) + self.b(x))).mean((2, 3))


def test_receptive_field_refuses_branches_and_accepts_functional_relu():
    with pytest.raises(ValueError, match="not a plain chain"):
        image.receptive_field(Branchy(), "head", torch.rand(1, 1, 12, 12))

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3, stride=2)

        def forward(self, x):
            return self.c2(F.relu(self.c1(x))).mean((2, 3))

    rf = image.receptive_field(Functional(), "c2", torch.rand(1, 1, 12, 12))
    assert rf == image.ReceptiveField((5, 5), (2, 2), (2.0, 2.0))


def test_top_patches_match_brute_force():
    net = chain(nn.MaxPool2d)
    x = torch.rand(23, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    tp = image.TopPatches(net, layer="7", k=4, batch_size=5, progress=False).fit(x)
    acts = net[:8](x).detach()  # (23, 4, 4, 4)
    best = acts.flatten(2).max(2).values  # (23, 4)
    live = [u for u in range(4) if len(set(best[:, u].tolist())) == len(x)]  # a dead unit ties at 0
    assert len(live) >= 3
    for unit in range(4):
        order = best[:, unit].argsort(descending=True)[:4]
        np.testing.assert_allclose(tp.values_[unit], best[order, unit].numpy(), rtol=1e-6)
        if unit not in live:
            continue
        assert tp.image_index_[unit].tolist() == order.tolist()
        y, xx = tp.position_[unit, 0]
        assert acts[order[0], unit, y, xx] == best[order[0], unit]
    patches = tp.patches(1)
    assert patches.shape == (4, 1, 18, 18)
    y0, y1, x0, x1 = tp.boxes_[1, 0]
    img = x[tp.image_index_[1, 0], 0]
    padded = F.pad(img, (18, 18, 18, 18))
    torch.testing.assert_close(patches[0, 0], padded[y0 + 18:y1 + 18, x0 + 18:x1 + 18])
    with pytest.raises(ValueError, match="k must be"):
        image.TopPatches(net, layer="7", k=50).fit(x)


# ----------------------------------------------------------------------------- embedding


def test_feature_embedding_and_neighbours():
    m = GapNet()
    x = torch.rand(40, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    emb = image.FeatureEmbedding(m, perplexity=5, seed=0).fit(x, labels=list(range(40)))
    feats = m.pool(m.features(x)).flatten(1).detach().numpy()
    np.testing.assert_allclose(emb.features_, feats, rtol=1e-5, atol=1e-6)
    assert emb.embedding_.shape == (40, 2) and np.isfinite(emb.embedding_).all()
    assert emb.predictions_.tolist() == m(x).argmax(1).tolist()
    dist, idx = emb.neighbors([0, 7], k=3)
    for q, row in zip([0, 7], idx):
        d = np.linalg.norm(feats - feats[q], axis=1)
        d[q] = np.inf
        assert row.tolist() == np.argsort(d)[:3].tolist()
    _, new_idx = emb.neighbors(x[:2], k=1)
    assert new_idx[:, 0].tolist() == [0, 1]
    with pytest.raises(ValueError, match="perplexity"):
        image.FeatureEmbedding(m, perplexity=50).fit(x)


# ----------------------------------------------------------------------------- sanity checks


class InputEcho(ImageMethod):
    """Returns the input: a 'method' that ignores the model entirely."""

    name = "input_echo"

    def _attribute(self, x, targets):
        return x.clone()


def test_spearman_rows_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 30)), rng.normal(size=(4, 30))
    b[1] = a[1] * 2 + 1
    a[2, :10] = 0  # ties
    ours = spearman_rows(a, b)
    ref = [spearmanr(a[i], b[i]).statistic for i in range(4)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert ours[1] == pytest.approx(1.0)
    assert np.isnan(spearman_rows(np.ones((1, 5)), rng.normal(size=(1, 5))))[0]


def test_model_randomization_cascading_and_independent():
    m, x = GapNet(), gap_input(4)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    rng_before = torch.get_rng_state()
    echo = InputEcho(m)
    res = image.ModelRandomization(m, ["gradient", echo], mode="cascading", progress=False).run(x)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    assert [r["layer"] for r in res.rows if r["method"] == "gradient"] == ["fc", "features.3", "features.0"]
    assert all(r["spearman"] == pytest.approx(1.0) for r in res.rows if r["method"] == "input_echo")
    # first step: only fc re-initialized with seed 42 -> recompute the gradient maps by hand
    copy = GapNet()
    torch.manual_seed(42)
    copy.fc.reset_parameters()
    original = image.Gradient(m).attribute(x, m(x).argmax(1)).sum(1).flatten(1).numpy()
    randomized = image.Gradient(copy).attribute(x, m(x).argmax(1)).sum(1).flatten(1).numpy()
    expected = np.mean([spearmanr(o, r).statistic for o, r in zip(original, randomized)])
    assert res.rows[0]["spearman"] == pytest.approx(expected, abs=1e-9)
    assert res.rows[0]["spearman"] < 0.99
    ind = image.ModelRandomization(m, ["gradient"], mode="independent", progress=False).run(x)
    assert ind.rows[0]["spearman"] == pytest.approx(expected, abs=1e-9)  # same first layer
    assert ind.rows[1]["spearman"] != pytest.approx(res.rows[2]["spearman"])  # not cumulative
    assert "| gradient | cascading | fc |" in res.to_markdown()
    assert len(res.figure().data) == 2
    with pytest.raises(ValueError, match="mode"):
        image.ModelRandomization(m, mode="bottom_up").run(x)


# ----------------------------------------------------------------------------- rendering


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_rendering_png_and_plotly():
    signed = np.array([[-2.0, 0.0], [1.0, 2.0]])
    rgb = image.render.colorize(signed, clip_percentile=100)
    # the tool's one convention (textexplain.render): blue positive, white 0, red negative, purples unsigned
    assert rgb[0, 1].tolist() == [255, 255, 255] and rgb[1, 1].tolist() == list(render.POSITIVE)
    assert rgb[0, 0].tolist() == list(render.NEGATIVE)
    unsigned = image.render.colorize(np.array([[0.0, 1.0]]), clip_percentile=100)
    assert unsigned[0, 0].tolist() == [255, 255, 255] and unsigned[0, 1].tolist() == list(render.SEQUENTIAL)
    x = gap_input(3)[:, :1]
    assert png_size(image.overlay_png(x[0], torch.rand(8, 8), scale=3)) == (24, 24)
    assert png_size(image.images_grid_png(x, ncols=2, scale=2, padding=1)) == ((2 * 9 + 1) * 2, (2 * 9 + 1) * 2)
    fig = image.attribution_figure(x, {"a": torch.rand(3, 8, 8), "b": torch.rand(3, 1, 8, 8)})
    assert len(fig.data) == 9
    assert len(image.images_figure(x, titles=["0", "1", "2"]).data) == 3
    with pytest.raises(ValueError, match="differ in size"):
        image.overlay_png(x[0], torch.rand(4, 4))


def test_save_png_is_atomic(tmp_path):
    data = image.images_grid_png(gap_input(2)[:, :1])
    path = image.save_png(data, tmp_path / "sub" / "grid.png")
    assert path.read_bytes() == data and list(path.parent.iterdir()) == [path]
