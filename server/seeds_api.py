"""The seed papers' remaining views, for the images, explanations and text-CNN pages:

- Zeiler-Fergus reconstructions of one conv unit (``textexplain.image.top_reconstructions``) and of
  one text-CNN filter over its top n-grams (``lstmvis.textcnn.filter_reconstruction``);
- the data randomization sanity check (``textexplain.image.DataRandomization``,
  ``textexplain.sanity.data_randomization_check``) against a model trained on permuted labels, as a job;
- features over training: first-layer filters, a unit's top patches and activation-maximization
  class images at each snapshot of ``mnist-cnn`` (``data.load_snapshots``), as a job;
- embedding-dimension saliency (``textexplain.embedding_saliency``), tokens x dimensions.

Requests are validated by the models below; the work is the library's.
"""
from __future__ import annotations

import numpy as np
import torch
from flask import Blueprint, jsonify
from pydantic import Field

import data
import textexplain
from textexplain import image as img
from textexplain.sanity import data_randomization_check, randomization_check

from .context import resources
from .explain_api import MAX_TEXT_CHARS, MethodName, _Checked, borrow_classifier
from .image_api import (OVERLAY_SCALE, SIDE, MethodName as ImageMethodName, _entry, _labels, _Loan, n_classes,
                        png_data_url, test_digits)
from .jobs import jobs
from .textcnn_api import filters_report
from .validation import ApiError, Params, api

blueprint = Blueprint("seeds_api", __name__, url_prefix="/api")

RANDOMIZED_SUFFIX = "-randlabels"
MAX_RANDOMIZATION_TEXTS = 40
MAX_RANDOMIZATION_IMAGES = 64
PATCH_SCALE = 4


def _conv_layers(module: torch.nn.Module) -> list[str]:
    """Names of the layers a unit can be picked from: the Conv2d, ReLU and MaxPool2d modules, in order."""
    return [n for n, m in module.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ReLU, torch.nn.MaxPool2d))]


def _png(x: torch.Tensor, signed: bool = False) -> str:
    """One (1, h, w) patch as a PNG data URL: grey levels in [0, 1], or for ``signed`` the images page's
    signed colour scale symmetric around 0 (``textexplain.image.render.colorize``)."""
    a = x[0].detach().numpy()
    rgb = img.render.colorize(a, signed=True, clip_percentile=100) if signed else img.render.image_rgb(a)
    return png_data_url(img.render.to_png(rgb, PATCH_SCALE))


# ----------------------------------------------------------------------------- image deconvnet

class DeconvRequest(Params):
    model: str = Field("mnist-cnn", min_length=1, max_length=200, description="an image classifier")
    layer: str | None = Field(None, max_length=100, description="a conv/ReLU/pool layer (default: the last ReLU)")
    unit: int = Field(0, ge=0, description="feature map (channel) of the layer")
    k: int = Field(9, ge=1, le=25, description="top images")


@blueprint.post("/images/deconv")
@api(DeconvRequest, summary="Zeiler-Fergus: a unit's top patches next to their deconvnet reconstructions",
     tag="images", lane="model")
def image_deconv(params: DeconvRequest):
    """The ``k`` test digits that activate the unit most: each receptive-field patch and the deconvnet
    projection of its strongest activation (every other unit zeroed), both as PNGs."""
    entry = _entry(params.model)
    x, _ = test_digits()
    images = torch.from_numpy(x)[:, None]
    with _Loan(entry) as module:
        layers = _conv_layers(module)
        layer = params.layer or next((n for n in reversed(layers) if isinstance(module.get_submodule(n), torch.nn.ReLU)),
                                     layers[-1] if layers else None)
        if layer is None or layer not in layers:
            raise ApiError(400, f"layer {params.layer!r} is not a conv, ReLU or max-pool layer of {params.model!r}: "
                           f"choose one of {', '.join(layers) or 'none'}")
        try:
            top = img.TopPatches(module, layer, k=params.k, progress=False).fit(images)
            n_units = len(top.values_)
            if params.unit >= n_units:
                raise ApiError(400, f"unit {params.unit} is out of range: {layer!r} has units 0..{n_units - 1}")
            rec = img.top_reconstructions(module, images, layer, params.unit, k=params.k, top=top)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    return {"model": params.model, "layer": layer, "layers": layers, "unit": params.unit, "n_units": n_units,
            "receptive_field": list(top.receptive_field_.size),
            "items": [{"index": int(i), "value": float(v), "position": [int(p) for p in pos],
                       "patch": _png(patch), "reconstruction": _png(r, signed=True),
                       "min": float(r.min()), "max": float(r.max())}
                      for i, v, pos, patch, r in zip(rec.image_index, rec.values, rec.positions, rec.patches,
                                                     rec.reconstructions)]}


# ----------------------------------------------------------------------------- data randomization

class ImageDataRandomizationRequest(Params):
    model: str = Field("mnist-cnn", min_length=1, max_length=200, description="the trained image classifier")
    randomized: str | None = Field(None, max_length=200, description="the same architecture trained on permuted "
                                   f"labels (default: model + '{RANDOMIZED_SUFFIX}')")
    methods: list[ImageMethodName] = Field(default_factory=lambda: ["gradient", "gradient_x_input",  # type: ignore[valid-type]
                                                                    "guided_backprop", "gradcam",
                                                                    "integrated_gradients"],
                                           min_length=1, max_length=len(img.METHODS))
    n_images: int = Field(16, ge=2, le=MAX_RANDOMIZATION_IMAGES, description="test digits compared (stratified)")
    seed: int = Field(42, ge=0, le=2**31 - 1)


def _stratified(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices spread over the classes (round robin over a seeded shuffle of each class)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    out: list[int] = []
    while len(out) < n and any(per_class):
        for idx in per_class:
            if idx and len(out) < n:
                out.append(idx.pop())
    return np.sort(np.asarray(out))


@blueprint.post("/images/data-randomization")
@api(ImageDataRandomizationRequest, summary="Start the data randomization sanity check (background job)",
     tag="images", lane="model")
def image_data_randomization(params: ImageDataRandomizationRequest):
    """Spearman correlation of each method's maps for the trained and the permuted-labels model; poll /api/jobs/<id>."""
    entry = _entry(params.model)
    rand_entry = _entry(params.randomized or params.model + RANDOMIZED_SUFFIX)

    def run(report):
        x, y = test_digits()
        pick = _stratified(y, params.n_images, params.seed)
        report(0, 1, f"explaining {len(pick)} digits with both models")
        with _Loan(entry) as module, _Loan(rand_entry) as randomized:
            result = img.DataRandomization(module, randomized, list(params.methods), progress=False).run(
                torch.from_numpy(x[pick])[:, None])
        report(1, 1, "done")
        return {"rows": result.rows, "markdown": result.to_markdown(), "images": [int(i) for i in pick],
                "model": params.model, "randomized": rand_entry.name}

    resp = jsonify(jobs().submit("data-randomization", (params.model_dump_json(),), run).info())
    resp.status_code = 202
    return resp


class TextDataRandomizationRequest(Params):
    model: str = Field("sentiment-cnn", min_length=1, max_length=200, description="the trained text classifier")
    randomized: str | None = Field(None, max_length=200, description="the same recipe on permuted labels "
                                   f"(default: model + '{RANDOMIZED_SUFFIX}')")
    methods: list[MethodName] = Field(default_factory=lambda: ["gradient", "gradient_x_input",  # type: ignore[valid-type]
                                                               "integrated_gradients", "occlusion"],
                                      min_length=1, max_length=len(textexplain.METHODS))
    n_texts: int = Field(12, ge=2, le=MAX_RANDOMIZATION_TEXTS, description="test sentences compared (both classes)")
    seed: int = Field(0, ge=0, le=2**31 - 1)


@blueprint.post("/explain/data-randomization")
@api(TextDataRandomizationRequest, summary="Start both text sanity checks: data and model randomization (background job)",
     tag="explain", lane="model")
def text_data_randomization(params: TextDataRandomizationRequest):
    """Spearman correlation of each method's token scores for the trained and the permuted-labels model,
    and for the trained model with every layer above the embedding randomized; poll /api/jobs/<id>."""
    name, rand_name = params.model, params.randomized or params.model + RANDOMIZED_SUFFIX
    for n in (name, rand_name):
        with borrow_classifier(n):  # 4xx now, not in the job, for a missing model or one of another kind
            pass
    entries = [resources().model_entry(n) for n in (name, rand_name)]  # the job's thread has no app context

    def run(report):
        texts, labels = data.rotten_tomatoes("test")
        pick = _stratified(np.asarray(labels), params.n_texts, params.seed)
        with _Checked(entries[0].use(), name) as model, _Checked(entries[1].use(), rand_name) as randomized:
            chosen = [texts[i] for i in pick]
            try:
                result = data_randomization_check(model, randomized, chosen, list(params.methods),
                                                  progress=False, report=report)
                report(len(chosen), len(chosen), "model randomization (cascading, every layer above the embedding)")
                cascade = randomization_check(model, chosen, list(params.methods), mode="cascading",
                                              include_original=False, progress=False)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
        verdict = cascade.passed()
        model_rows = [{**r, "passes": verdict[r["method"]]} for r in cascade.summary()
                      if r["stage"] == cascade.check_stage]
        return {"summary": result.summary(), "records": result.records, "markdown": result.to_markdown(),
                "model_randomization": model_rows, "check_stage": cascade.check_stage,
                "texts": chosen, "model": name, "randomized": rand_name}

    resp = jsonify(jobs().submit("text-data-randomization", (params.model_dump_json(),), run).info())
    resp.status_code = 202
    return resp


# ----------------------------------------------------------------------------- features over training

class EvolutionRequest(Params):
    model: str = Field("mnist-cnn", min_length=1, max_length=200, description="a model with training snapshots")
    layer: str = Field("features.4", min_length=1, max_length=100, description="the layer of the unit")
    unit: int = Field(0, ge=0, description="feature map whose top patches are shown")
    steps: int = Field(64, ge=8, le=256, description="activation-maximization steps per class image")


@blueprint.post("/images/evolution")
@api(EvolutionRequest, summary="Start features over training: filters, a unit's top patches and class images per "
     "snapshot (background job)", tag="images", lane="model")
def image_evolution(params: EvolutionRequest):
    """For each snapshot (epochs 1, 2, 5 and the final model): first-layer filters, the unit's top-9
    test patches and one activation-maximization image per class; poll /api/jobs/<id>."""
    if params.model not in data.registry.SNAPSHOTS:
        raise ApiError(404, f"no training snapshots of {params.model!r}: models with snapshots are "
                       f"{', '.join(data.registry.SNAPSHOTS)}")
    probe = data.load_model(params.model)
    layers = _conv_layers(probe)
    if params.layer not in layers:
        raise ApiError(400, f"layer {params.layer!r} is not a conv, ReLU or max-pool layer of {params.model!r}: "
                       f"choose one of {', '.join(layers)}")
    width = img.feature_maps(probe, torch.zeros(1, 1, SIDE, SIDE), params.layer).shape[1]
    if params.unit >= width:
        raise ApiError(400, f"unit {params.unit} is out of range: {params.layer!r} has units 0..{width - 1}")

    def run(report):
        x, _ = test_digits()
        images = torch.from_numpy(x)[:, None]
        snaps = data.load_snapshots(params.model)
        out = []
        for i, (label, module) in enumerate(snaps):
            report(i, len(snaps), f"snapshot {label}")
            filters = img.filter_images(module)
            top = img.TopPatches(module, params.layer, k=9, progress=False).fit(images)
            n = n_classes(module)
            am = img.ActivationMaximization(module, steps=params.steps, l2=0.05, blur_every=4, blur_sigma=0.5,
                                            jitter=1.0, degrees=5.0, seed=0)
            classes = am.visualize(list(range(n)), (1, SIDE, SIDE))
            card = getattr(module, "card", {}) or {}
            out.append({"label": label, "metrics": card.get("metrics", {}),
                        "filters": png_data_url(img.images_grid_png(filters, ncols=8, scale=6)),
                        "patches": png_data_url(img.images_grid_png(top.patches(params.unit), ncols=3,
                                                                    scale=PATCH_SCALE)),
                        "classes": [png_data_url(img.render.to_png(img.render.image_rgb(c), OVERLAY_SCALE // 2))
                                    for c in classes], "labels": _labels(module, n)})
        report(len(snaps), len(snaps), "done")
        return {"model": params.model, "layer": params.layer, "unit": params.unit, "snapshots": out}

    resp = jsonify(jobs().submit("evolution", (params.model_dump_json(),), run).info())
    resp.status_code = 202
    return resp


# ----------------------------------------------------------------------------- text

class EmbeddingSaliencyRequest(Params):
    model: str = Field(min_length=1, max_length=200, description="a text classifier")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="the text")
    target: int | str | None = Field(None, description="class index or label (default: predicted)")


@blueprint.post("/explain/embedding-saliency")
@api(EmbeddingSaliencyRequest, summary="Gradient x input per token and embedding dimension (Li et al. 2016)",
     tag="explain", lane="model")
def embedding_saliency_endpoint(params: EmbeddingSaliencyRequest):
    """The tokens x dimensions matrix of gradient x input; its row sums are the token scores."""
    with borrow_classifier(params.model) as model:
        try:
            sal = textexplain.embedding_saliency(model, params.text, params.target)
        except (ValueError, KeyError, IndexError) as exc:
            raise ApiError(400, str(exc)) from None
    return {"model": params.model, "tokens": sal.tokens, "matrix": sal.matrix.tolist(),
            "scores": sal.scores.tolist(), "target": sal.target, "label": sal.label,
            "max_abs": float(np.abs(sal.matrix).max())}


class TextDeconvRequest(Params):
    model: str | None = Field(None, max_length=200, description="a text CNN (default: the first loaded)")
    store: str | None = Field(None, max_length=300, description="the corpus store (as /api/textcnn/filters)")
    layer: str = Field("convs.0", min_length=1, max_length=100, description="a Conv1d layer")
    filter: int = Field(0, ge=0, description="the filter")
    k: int = Field(9, ge=1, le=50, description="top n-grams")


@blueprint.post("/textcnn/deconv")
@api(TextDeconvRequest, summary="Zeiler-Fergus for a Conv1d filter: which tokens of its top n-grams carry it",
     tag="textcnn", lane="model")
def textcnn_deconv(params: TextDeconvRequest):
    """For each top n-gram of the filter: its text's tokens with the deconvnet reconstruction of the
    activation summed per token (and its dot product with each token's embedding)."""
    from lstmvis.textcnn import filter_reconstruction

    name, s, report = filters_report(params.model, params.store, params.k)
    filt = next((f for f in report["filters"] if f["layer"] == params.layer and f["filter"] == params.filter), None)
    if filt is None:
        raise ApiError(400, f"no filter {params.filter} in layer {params.layer!r}: layers are "
                       f"{', '.join(report['fields'])}")
    items = []
    with resources().model(name) as model:
        for hit in filt["ngrams"]:
            rec = filter_reconstruction(model, s.sequence_text(hit["text_index"]), params.layer, params.filter,
                                        hit["position"])
            a, b = hit["start"], hit["stop"]
            lo, hi = max(0, a - 2), min(len(rec.tokens), b + 2)  # the n-gram and two tokens either side
            items.append({"activation": hit["activation"], "start": a - lo, "stop": b - lo,
                          "tokens": rec.tokens[lo:hi], "per_token": rec.per_token[lo:hi].tolist(),
                          "share": rec.share[lo:hi].tolist(),
                          "outside": float(np.abs(np.delete(rec.per_token, range(lo, hi))).sum())})
    return {"model": name, "store": report["store"], "layer": params.layer, "filter": params.filter, "items": items}

