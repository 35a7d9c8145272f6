"""CNN image methods on the shipped mnist-cnn: faithfulness, sanity checks, Captum side by side, figures.

    python benchmarks/bench_image.py [--n 500] [--sanity-n 200] [--sections deletion,captum,relu,sanity,embedding,images]
                                     [--out benchmarks/results/image.md]

- deletion: deletion AUC (Petsiuk et al. 2018; lower is better) of every attribution method over
  the first ``--n`` test digits, against a random ranking and the input-intensity ranking.
  Pixels are set to 0 (the MNIST background) in attribution order, 49 at a time, and the
  softmax probability of the predicted class is integrated over the deleted fraction. Also the
  insertion AUC (higher is better: pixels restored onto a black image) and seconds per image.
- captum: ours and Captum on the same digits and targets: largest difference relative to the
  largest |attribution|, and time ratio (ours / captum).
- relu: the same network written with ``F.relu`` in ``forward``: guided backprop from Captum
  (module hooks) against ours (a thread-local function mode).
- sanity: cascading and independent parameter randomization (Adebayo et al. 2018), Spearman
  rank correlation per randomized layer per method, plus what an input-only map would score.
- embedding: t-SNE of the penultimate features of the test digits: trustworthiness and
  k-NN label accuracy in feature space.
- images: activation maximization for every channel of the last conv layer and a class image
  per digit, attribution overlays, the randomization cascade, top-9 patches, first-layer
  filters, DeepDream -- PNGs under benchmarks/images/.

One torch thread (the machine is shared); seeds fixed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
from textexplain import image  # noqa: E402
from textexplain.image.base import pixel_map  # noqa: E402
from textexplain.image.render import grid_rgb, image_rgb, overlay_rgb, to_png  # noqa: E402
from textexplain.image.sanity import spearman_rows  # noqa: E402

DATE, MACHINE = time.strftime("%Y-%m-%d"), "2 cores shared with other jobs, 1 torch thread"
IMAGES = ROOT / "benchmarks" / "images"
SECTIONS = ("deletion", "captum", "relu", "sanity", "embedding", "images")


def last_conv_name(model: nn.Module) -> str:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1]


def methods(model: nn.Module) -> dict[str, image.ImageMethod]:
    return {
        "saliency": image.Saliency(model),
        "gradient": image.Gradient(model),
        "gradient_x_input": image.GradientXInput(model),
        "smoothgrad (n=50, 15%)": image.SmoothGrad(model, n_samples=50, noise_level=0.15),
        "smoothgrad_sq": image.SmoothGrad(model, n_samples=50, noise_level=0.15, kind="smoothgrad_sq"),
        "integrated_gradients (50)": image.IntegratedGradients(model, n_steps=50),
        "guided_backprop": image.GuidedBackprop(model),
        "deconvnet": image.Deconvnet(model),
        "occlusion (4x4, stride 2)": image.Occlusion(model, window=4, stride=2),
        "cam": image.CAM(model),
        "gradcam": image.GradCAM(model),
        "gradcam_plus_plus": image.GradCAMPlusPlus(model),
        "hirescam": image.HiResCAM(model),
        "guided_gradcam": image.GuidedGradCAM(model),
        "deeplift": image.DeepLift(model),
        "lrp (epsilon 1e-3)": image.LRP(model),
        "lrp (gamma 0.25 on convs)": image.LRP(model, rule="gamma"),
        "lrp (alpha 1, beta 0 on convs)": image.LRP(model, rule="alpha_beta"),
    }


def ranked_curves(model: nn.Module, x: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor,
                  step: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fractions, deletion probs (S, B), insertion probs (S, B)) for pixel scores (B, H, W)."""
    b, _, h, w = x.shape
    gen = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(h * w, generator=gen) for _ in range(b)])  # random tie-breaking
    keyed = scores.flatten(1).gather(1, perm)
    order = perm.gather(1, torch.argsort(-keyed, dim=1, stable=True))
    counts = list(range(0, h * w, step)) + [h * w]
    dele, ins = [], []
    with torch.no_grad():
        for c in counts:
            mask = torch.zeros(b, h * w, dtype=torch.bool)
            mask.scatter_(1, order[:, :c], True)
            mask = mask.view(b, 1, h, w)
            dele.append(F.softmax(model(torch.where(mask, 0.0, x)), 1).gather(1, targets[:, None])[:, 0].numpy())
            ins.append(F.softmax(model(torch.where(mask, x, 0.0)), 1).gather(1, targets[:, None])[:, 0].numpy())
    return np.array(counts) / (h * w), np.array(dele), np.array(ins)


def section_deletion(model, x, y, args) -> list[str]:
    with torch.no_grad():
        targets = model(x).argmax(1)
    acc = float((targets.numpy() == y).mean())
    rows, overlays = [], {}
    shown = [int(np.flatnonzero(y == d)[0]) for d in (0, 2, 3, 5, 7, 9) if (y == d).any()]
    baselines = {"random ranking": torch.zeros(x.shape[0], 28, 28), "input intensity (x itself)": x[:, 0]}
    for name, scores in baselines.items():
        f, d, i = ranked_curves(model, x, scores, targets, 49, args.seed)
        rows.append((name, np.trapezoid(d.mean(1), f), np.trapezoid(i.mean(1), f), float("nan")))
    for name, method in methods(model).items():
        start = time.perf_counter()
        attr = torch.cat([method.attribute(x[s:s + 100], targets[s:s + 100]) for s in range(0, len(x), 100)])
        seconds = (time.perf_counter() - start) / len(x)
        scores = pixel_map(attr)
        f, d, i = ranked_curves(model, x, scores, targets, 49, args.seed)
        rows.append((name, np.trapezoid(d.mean(1), f), np.trapezoid(i.mean(1), f), seconds))
        overlays[name] = scores[shown]
        print(f"  {name}: deletion {rows[-1][1]:.3f} insertion {rows[-1][2]:.3f} ({seconds * 1e3:.1f} ms/image)",
              flush=True)
    random_auc = rows[0][1]
    out = [f"### Deletion AUC on {len(x)} test digits (mnist-cnn, test accuracy on them {acc:.3f})", "",
           "Pixels set to 0 in attribution order (49 per step, ties in random order); probability of the predicted class integrated "
           "over the deleted fraction. Lower deletion and higher insertion are better.", "",
           "| ranking | deletion AUC | vs random | insertion AUC | ms / image |", "|---|---|---|---|---|"]
    for name, dl, ins, sec in sorted(rows, key=lambda r: r[1]):
        ms = "" if np.isnan(sec) else f"{sec * 1e3:.1f}"
        out.append(f"| {name} | {dl:.3f} | {dl / random_auc:.2f}x | {ins:.3f} | {ms} |")
    if "images" in args.sections:
        save_attribution_figure(x[shown], overlays)
    return out


def save_attribution_figure(x, overlays) -> None:
    names = ["saliency", "gradient_x_input", "smoothgrad (n=50, 15%)", "integrated_gradients (50)", "guided_backprop",
             "occlusion (4x4, stride 2)", "gradcam", "guided_gradcam"]
    tiles = []
    for i in range(len(x)):
        tiles.append(image_rgb(x[i]))
        tiles += [overlay_rgb(x[i], overlays[n][i], alpha=0.7) for n in names]
    image.save_png(to_png(grid_rgb(tiles, ncols=len(names) + 1, padding=2), scale=4), IMAGES / "mnist_attributions.png")


def section_captum(model, x, args) -> list[str]:
    from captum.attr import DeepLift as CaptumDeepLift
    from captum.attr import (Deconvolution, GuidedBackprop, InputXGradient, IntegratedGradients, LayerAttribution,
                             LayerGradCam, Occlusion, Saliency)

    x = x[:args.captum_n]
    with torch.no_grad():
        targets = model(x).argmax(1)
    conv = model.get_submodule(last_conv_name(model))
    relu_after = model.features[[i for i, m in enumerate(model.features) if m is conv][0] + 1]

    def captum_gradcam():
        a = LayerGradCam(model, relu_after).attribute(x, targets, relu_attributions=True)
        return LayerAttribution.interpolate(a, (28, 28), "bilinear")[:, 0]

    pairs = [
        ("saliency", lambda: image.Saliency(model).attribute(x, targets),
         lambda: Saliency(model).attribute(x, targets, abs=True)[:, 0]),
        ("gradient_x_input", lambda: image.GradientXInput(model).attribute(x, targets),
         lambda: InputXGradient(model).attribute(x, targets)),
        ("integrated_gradients (50, Gauss-Legendre)", lambda: image.IntegratedGradients(model).attribute(x, targets),
         lambda: IntegratedGradients(model).attribute(x, target=targets, n_steps=50, internal_batch_size=256)),
        ("guided_backprop", lambda: image.GuidedBackprop(model).attribute(x, targets),
         lambda: GuidedBackprop(model).attribute(x, targets)),
        ("deconvnet", lambda: image.Deconvnet(model).attribute(x, targets),
         lambda: Deconvolution(model).attribute(x, targets)),
        ("gradcam (bilinear, ReLU)", lambda: image.GradCAM(model, layer=relu_after).attribute(x, targets),
         captum_gradcam),
        ("deeplift (max pools: captum's rule misses the reference winner)",
         lambda: image.DeepLift(model, eps=1e-10).attribute(x, targets),
         lambda: CaptumDeepLift(model, eps=1e-10).attribute(x, target=targets)),
        ("occlusion (4x4, stride 2)", lambda: image.Occlusion(model, window=4, stride=2).attribute(x, targets),
         lambda: Occlusion(model).attribute(x, (1, 4, 4), strides=(1, 2, 2), target=targets,
                                             perturbations_per_eval=169)[:, 0]),
    ]
    out = [f"### Against Captum {__import__('captum').__version__} on {len(x)} test digits (same targets)", "",
           "| method | max abs difference / max abs value | ours (s) | captum (s) | ours / captum |", "|---|---|---|---|---|"]
    for name, ours_fn, theirs_fn in pairs:
        times = {"ours": [], "captum": []}
        for _ in range(args.repeats):  # interleaved repetitions, median
            for who, fn in (("ours", ours_fn), ("captum", theirs_fn)):
                start = time.perf_counter()
                result = fn()
                times[who].append(time.perf_counter() - start)
                if who == "ours":
                    ours = result
                else:
                    theirs = result.detach()
        ours_t, theirs_t = float(np.median(times["ours"])), float(np.median(times["captum"]))
        rel = float((ours.reshape(theirs.shape) - theirs).abs().max() / theirs.abs().max())
        out.append(f"| {name} | {rel:.1e} | {ours_t:.3f} | {theirs_t:.3f} | {ours_t / theirs_t:.2f} |")
        print(f"  captum {name}: rel diff {rel:.1e}, ours/captum {ours_t / theirs_t:.2f}", flush=True)
    out += ["", "Same targets passed to both (no extra forward pass for predictions); interleaved repetitions, median."]
    return out


class FunctionalReLU(nn.Module):
    """The shipped mnist-cnn rewritten with F.relu in forward (same weights, same function)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        for m in self.model.features:
            x = F.relu(x) if isinstance(m, nn.ReLU) else m(x)
        return self.model.fc(self.model.pool(x).flatten(1))


def section_relu(model, x, args) -> list[str]:
    from captum.attr import GuidedBackprop

    x = x[:args.captum_n]
    func = FunctionalReLU(model).eval()
    with torch.no_grad():
        targets = model(x).argmax(1)
        assert torch.equal(func(x), model(x))
    plain = image.Gradient(model).attribute(x, targets)
    reference = image.GuidedBackprop(model).attribute(x, targets)  # nn.ReLU modules
    captum_module = GuidedBackprop(model).attribute(x, targets)
    captum_func = GuidedBackprop(func).attribute(x, targets)
    ours_func = image.GuidedBackprop(func).attribute(x, targets)

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    out = ["### Guided backprop through functional `F.relu` (same weights, forward rewritten with F.relu)", "",
           "| implementation | model | max diff to guided backprop (nn.ReLU model) | max diff to the plain gradient |",
           "|---|---|---|---|",
           f"| captum | nn.ReLU modules | {rel(captum_module, reference):.1e} | {rel(captum_module, plain):.2f} |",
           f"| captum | F.relu | {rel(captum_func, reference):.2f} | {rel(captum_func, plain):.1e} |",
           f"| ours | F.relu | {rel(ours_func, reference):.1e} | {rel(ours_func, plain):.2f} |",
           "", "Differences are relative to the largest |value| of the reference map."]
    return out


def section_sanity(model, x, args) -> list[str]:
    x = x[:args.sanity_n]
    sanity_methods = ["gradient", "saliency", "gradient_x_input", image.IntegratedGradients(model, n_steps=32),
                      "guided_backprop", "gradcam", "deeplift", "lrp"]
    out = [f"### Model parameter randomization on {len(x)} test digits (Spearman rank correlation with the trained "
           "model's maps; mean over digits)", ""]
    results = {}
    for mode in ("cascading", "independent"):
        start = time.perf_counter()
        results[mode] = image.ModelRandomization(model, sanity_methods, mode=mode, seed=42, progress=False).run(x)
        print(f"  sanity {mode}: {time.perf_counter() - start:.0f} s", flush=True)
    with torch.no_grad():
        targets = model(x).argmax(1)
    layers = list(dict.fromkeys(r["layer"] for r in results["cascading"].rows))
    names = list(dict.fromkeys(r["method"] for r in results["cascading"].rows))
    for mode in ("cascading", "independent"):
        what = "from the logits down, cumulatively" if mode == "cascading" else "one layer at a time"
        out += [f"**{mode}** ({what}); each cell: Spearman of |maps| (signed maps in brackets)", "",
                "| method | " + " | ".join(layers) + " | input-only map |",
                "|---|" + "---|" * (len(layers) + 1)]
        for name in names:
            cells = {r["layer"]: r for r in results[mode].rows if r["method"] == name}
            method = image.METHODS[name](model) if name != "integrated_gradients" else sanity_methods[3]
            maps = pixel_map(method.attribute(x, targets)).flatten(1).numpy()
            echo = float(np.nanmean(spearman_rows(np.abs(maps), x.flatten(1).numpy())))
            out.append(f"| {name} | " + " | ".join(cell(cells[l]) for l in layers) + f" | {echo:.2f} |")
        out.append("")
    out.append("Input-only map: Spearman between the trained model's |map| and the digit itself, i.e. what a map "
               "that ignores the model entirely would score against it. [k/n]: the randomized map was constant "
               "(no rank correlation) on n - k digits; the mean is over the k others.")
    if "images" in args.sections:
        save_sanity_figure(model, x[:3], targets[:3], layers)
    return out


def cell(row: dict) -> str:
    text = f"{row['spearman_abs']:.2f} ({row['spearman']:.2f})"
    return text if row["n_defined"] == row["n"] else f"{text} [{row['n_defined']}/{row['n']}]"


def save_sanity_figure(model, x, targets, layers) -> None:
    """Rows: digits x methods; columns: trained, then cumulatively randomized from the logits down."""
    import copy

    names = ["gradient", "guided_backprop", "gradcam"]
    randomized = copy.deepcopy(model)
    models = [copy.deepcopy(randomized)]
    for step, name in enumerate(layers):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(42 + step)
            randomized.get_submodule(name).reset_parameters()
        models.append(copy.deepcopy(randomized))
    tiles = []
    for i in range(len(x)):
        for n in names:
            tiles.append(image_rgb(x[i]))
            for m in models:
                attr = pixel_map(image.METHODS[n](m).attribute(x[i:i + 1], targets[i:i + 1]))[0]
                tiles.append(overlay_rgb(x[i], attr.abs(), alpha=0.85, signed=False))
    image.save_png(to_png(grid_rgb(tiles, ncols=len(models) + 1, padding=2), scale=4), IMAGES / "mnist_sanity_cascade.png")


def section_embedding(model, x, y, args) -> list[str]:
    from sklearn.manifold import trustworthiness
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    start = time.perf_counter()
    emb = image.FeatureEmbedding(model, perplexity=30, seed=args.seed).fit(x, y)
    seconds = time.perf_counter() - start
    knn_feat = cross_val_score(KNeighborsClassifier(5), emb.features_, y, cv=5).mean()
    knn_pix = cross_val_score(KNeighborsClassifier(5), x.flatten(1).numpy(), y, cv=5).mean()
    trust = trustworthiness(emb.features_, emb.embedding_, n_neighbors=5)
    _, idx = emb.neighbors(np.arange(len(x)), k=5)
    same = float((y[idx] == y[:, None]).mean())
    if "images" in args.sections:
        save_tsne_png(emb.embedding_, y)
    return [f"### t-SNE of penultimate features ({len(x)} test digits, {emb.features_.shape[1]} dims)", "",
            "| measure | value |", "|---|---|",
            f"| 5-NN label accuracy, penultimate features (5-fold CV) | {knn_feat:.3f} |",
            f"| 5-NN label accuracy, raw pixels (5-fold CV) | {knn_pix:.3f} |",
            f"| share of the 5 nearest neighbours with the same label | {same:.3f} |",
            f"| t-SNE trustworthiness (5 neighbours) | {trust:.3f} |",
            f"| seconds (features + t-SNE + index) | {seconds:.1f} |"]


DIGIT_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def save_tsne_png(points: np.ndarray, labels: np.ndarray, size: int = 520) -> None:
    """A dependency-free scatter: each digit drawn as its label's colour (plotly needs kaleido for PNG)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    lo, hi = points.min(0), points.max(0)
    xy = (points - lo) / (hi - lo) * (size - 40) + 20
    for (px, py), lab in zip(xy, labels):
        draw.text((px, py), str(int(lab)), fill=DIGIT_COLORS[int(lab)])
    buf = __import__("io").BytesIO()
    canvas.save(buf, format="PNG")
    image.save_png(buf.getvalue(), IMAGES / "mnist_tsne.png")


def section_images(model, x, args) -> list[str]:
    conv = last_conv_name(model)
    n_channels = model.get_submodule(conv).out_channels
    start = time.perf_counter()
    am = image.ActivationMaximization(model, layer=conv, steps=256, lr=0.05, seed=args.seed)
    channels = am.visualize(list(range(n_channels)), (1, 28, 28))
    t_channels = time.perf_counter() - start
    image.save_png(image.images_grid_png(channels, ncols=8, scale=4, padding=1), IMAGES / "mnist_last_conv_channels.png")
    start = time.perf_counter()
    classes = image.ActivationMaximization(model, layer=None, steps=256, lr=0.05, fft=True, l2=100.0, center=0.0,
                                           seed=args.seed).visualize(list(range(10)), (1, 28, 28))
    t_classes = time.perf_counter() - start
    image.save_png(image.images_grid_png(classes, ncols=10, scale=4, padding=1), IMAGES / "mnist_class_images.png")
    with torch.no_grad():
        probs = F.softmax(model(classes), 1)
        chan_acts = image.feature_maps(model, channels, conv).mean((2, 3))
        data_acts = image.feature_maps(model, x, conv).mean((2, 3))
    own = chan_acts.diagonal()
    beats_data = float((own > data_acts.max(0).values).float().mean())
    pred = probs.argmax(1).tolist()
    # top-9 patches of the first 8 channels of the last conv layer, filters of the first
    tp = image.TopPatches(model, layer=conv, k=9, progress=False).fit(x)
    tiles = [image_rgb(p) for c in range(8) for p in tp.patches(c)]
    image.save_png(to_png(grid_rgb(tiles, ncols=9, padding=1), scale=4), IMAGES / "mnist_top9_patches.png")
    filters = image.filter_images(model)
    image.save_png(image.images_grid_png(filters, ncols=8, scale=12, padding=1), IMAGES / "mnist_conv1_filters.png")
    dream = image.DeepDream(model, layer=conv, octaves=3, octave_scale=1.4, steps=20, jitter=2, seed=args.seed)
    dreamt = dream.dream(x[:8])
    image.save_png(image.images_grid_png(torch.cat([x[:8], dreamt]), ncols=8, scale=4), IMAGES / "mnist_deepdream.png")
    return ["### Activation maximization", "",
            f"- every channel of the last conv layer `{conv}` ({n_channels} channels, 256 Adam steps, jitter/scale/"
            f"rotate, pixel parameterization): {t_channels:.0f} s for all; in {beats_data:.0%} of the channels the "
            f"optimized image drives the channel's mean activation above its maximum over the {len(x)} test digits.",
            f"- one image per class (logit, FFT parameterization, L2 towards black): {t_classes:.0f} s; the model "
            f"classifies them as {pred} (mean probability of the intended class "
            f"{float(probs.diagonal().mean()):.3f}).",
            f"- top-9 patches: receptive field of `{conv}` = {tp.receptive_field_.size[0]}x"
            f"{tp.receptive_field_.size[1]} px, jump {tp.receptive_field_.jump[0]}."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="test digits for deletion AUC and embedding (default 500)")
    ap.add_argument("--sanity-n", type=int, default=200, help="test digits for the randomization tests")
    ap.add_argument("--captum-n", type=int, default=100, help="test digits for the Captum comparison")
    ap.add_argument("--repeats", type=int, default=3, help="timing repetitions (median)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the markdown report here")
    args = ap.parse_args()
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = data.load_model("mnist-cnn")
    xs, ys = data.mnist("test")
    order = np.random.default_rng(args.seed).permutation(len(xs))[:args.n]  # the file is grouped by digit
    x, y = torch.from_numpy(xs[order])[:, None], ys[order]
    card = data.model_card("mnist-cnn")
    report = [f"## textexplain.image on mnist-cnn ({DATE}, {MACHINE})", "",
              f"Command: `python benchmarks/bench_image.py --n {args.n} --sanity-n {args.sanity_n} "
              f"--captum-n {args.captum_n} --sections {','.join(args.sections)}`", "",
              f"Model: mnist-cnn, {card['architecture']['config']}, test accuracy {card['metrics']['test_accuracy']}.",
              ""]
    for section in args.sections:
        print(f"[{section}]", flush=True)
        start = time.perf_counter()
        if section == "deletion":
            report += section_deletion(model, x, y, args)
        elif section == "captum":
            report += section_captum(model, x, args)
        elif section == "relu":
            report += section_relu(model, x, args)
        elif section == "sanity":
            report += section_sanity(model, x, args)
        elif section == "embedding":
            report += section_embedding(model, x, y, args)
        else:
            report += section_images(model, x, args)
        report += ["", f"_{section}: {time.perf_counter() - start:.0f} s_", ""]
    text = "\n".join(report)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
