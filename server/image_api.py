"""Image methods page and API: explain a test digit or an uploaded PNG with every CNN attribution
method, look at the filters, feature maps and activation-maximization images, a t-SNE map of the
test set and the model-randomization sanity check.

The work is ``textexplain.image``'s (methods, feature views, embedding, sanity check, PNG and
plotly rendering). The slow, per-model views (activation maximization, t-SNE, sanity check) run
once as background jobs and are reused from the job cache; the rest answers in one request.
Uploads are decoded with Pillow under a byte cap and a pixel cap, as PNG only.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import time
import warnings
from typing import Literal

import numpy as np
import torch
from flask import Blueprint, Response, jsonify, render_template
from pydantic import Field, field_validator, model_validator
from torch import nn

from textexplain import image as img

from .context import resources
from .jobs import jobs
from .method_params import method_params_model
from .validation import ApiError, Params, api

blueprint = Blueprint("image_api", __name__)

PAGES = [
    {"endpoint": "image_api.images_page", "title": "Images",
     "summary": "The classic CNN methods on MNIST digits: pick a test digit or upload a PNG and compare saliency, "
                "SmoothGrad, gradient x input, guided backprop, deconvnet, Integrated Gradients, occlusion, CAM, "
                "Grad-CAM and guided Grad-CAM; filters, feature maps, activation maximization, a t-SNE map of the "
                "test set and the model-randomization sanity check."},
]

IMAGE_KIND = "image-classifier"
SIDE = 28  # the demo model's input: 28 x 28 grey levels in [0, 1]
SPLIT = "test"
MAX_UPLOAD_BYTES = 1 << 20  # decoded PNG size
MAX_UPLOAD_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding
OVERLAY_SCALE = 6  # 28 px -> 168 px, nearest neighbour
PICKER_PER_CLASS = 3
MAX_SANITY_IMAGES = 64
MethodName = Literal[tuple(img.METHODS)]  # type: ignore[valid-type]
ImageMethodParams = method_params_model(img.METHODS, prefix="Image")  # from each method's declarations


# ------------------------------------------------------------------------------------ helpers

def image_models() -> list[dict]:
    res = resources()
    res.refresh()
    return [m.info() for m in res.models.values() if m.kind == IMAGE_KIND]


def _entry(name: str):
    entry = resources().model_entry(name)
    if entry.kind != IMAGE_KIND:
        raise ApiError(400, f"model {name!r} is of kind {entry.kind}, not an image classifier; choose one of "
                       f"{', '.join(m['name'] for m in image_models()) or 'none loaded'}")
    return entry


class _Loan:
    """``with _Loan(entry) as module`` -- a private copy of an image classifier (an ``nn.Module``)."""

    def __init__(self, entry):
        self._entry, self._loan = entry, entry.use()

    def __enter__(self) -> nn.Module:
        module = self._loan.__enter__()
        if not isinstance(module, nn.Module):
            self._loan.__exit__(None, None, None)
            raise ApiError(400, f"model {self._entry.name!r} does not load as a torch module")
        return module

    def __exit__(self, *exc):
        return self._loan.__exit__(*exc)


def n_classes(module: nn.Module) -> int:
    with torch.no_grad():
        return int(module(torch.zeros(1, 1, SIDE, SIDE)).shape[1])


def _labels(module: nn.Module, n_classes: int) -> list[str]:
    labels = list(getattr(module, "labels", None) or [])
    return labels if len(labels) == n_classes else [str(i) for i in range(n_classes)]


def png_data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


_test_set: tuple[np.ndarray, np.ndarray] | None = None


def test_digits() -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test split (500 digits): images (N, 28, 28) in [0, 1] and labels."""
    global _test_set
    if _test_set is None:
        import data
        _test_set = data.mnist(SPLIT)
    return _test_set


def picker_indices() -> list[int]:
    """The first few test digits of every class, for the picker."""
    _, y = test_digits()
    return [int(i) for c in range(10) for i in np.flatnonzero(y == c)[:PICKER_PER_CLASS]]


def decode_upload(data_url: str) -> tuple[np.ndarray, dict]:
    """A PNG (data URL or bare base64) -> (28, 28) float32 in [0, 1], white digit on black.

    Checked before decoding: size in bytes, PNG signature, pixel count. A mostly light image is
    inverted (MNIST digits are light on dark); the note says what was done.
    """
    from PIL import Image, UnidentifiedImageError

    payload = data_url.split(",", 1)[1] if data_url.startswith("data:") else data_url
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image: not valid base64; send the PNG as a data URL (data:image/png;base64,...)") from None
    if len(raw) > MAX_UPLOAD_BYTES:
        raise ApiError(413, f"image: the PNG has {len(raw):,} bytes; the limit is {MAX_UPLOAD_BYTES:,}")
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ApiError(400, "image: not a PNG file (upload a .png)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw), formats=["PNG"]) as im:
                width, height = im.size
                if width * height > MAX_UPLOAD_PIXELS or width < 1 or height < 1:
                    raise ApiError(400, f"image: {width}x{height} pixels is too large; at most "
                                   f"{MAX_UPLOAD_PIXELS:,} pixels")
                im.load()
                if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: scale, do not clip
                    wide = np.asarray(im, dtype=np.float64) / 65535.0
                    grey = Image.fromarray((wide.clip(0, 1) * 255).round().astype(np.uint8))
                elif im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                    rgba = im.convert("RGBA")
                    flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    flat.alpha_composite(rgba)
                    grey = flat.convert("L")
                else:
                    grey = im.convert("L")
    except ApiError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ApiError(400, f"image: cannot decode the PNG ({type(exc).__name__}: {exc})") from None
    resized = grey.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    x = np.asarray(resized, dtype=np.float32) / 255.0
    inverted = bool(x.mean() > 0.5)
    if inverted:
        x = 1.0 - x
    return x.clip(0, 1), {"width": width, "height": height, "inverted": inverted}


# ------------------------------------------------------------------------------------ requests

class ExplainImageRequest(Params):
    model: str = Field("mnist-cnn", min_length=1, max_length=200, description="an image classifier")
    index: int | None = Field(None, ge=0, description="a digit of the MNIST test split (0..499)")
    image: str | None = Field(None, max_length=1_500_000, description="a PNG as a data URL instead of index; "
                              "converted to 28x28 grey levels (a light background is inverted)")
    target: int | None = Field(None, ge=0, description="class to explain (default: predicted)")
    methods: list[MethodName] | None = Field(None, min_length=1, max_length=len(img.METHODS),  # type: ignore[valid-type]
                                             description="methods (default: all)")
    params: ImageMethodParams = Field(default_factory=ImageMethodParams,  # type: ignore[valid-type]
                                      description="hyperparameters per method (default: the library's)")

    @model_validator(mode="after")
    def _one_input(self):
        if (self.index is None) == (self.image is None):
            raise ValueError("give exactly one of index (a test digit) or image (a PNG data URL)")
        return self

    @field_validator("methods")
    @classmethod
    def _distinct(cls, methods):
        if methods is not None and len(set(methods)) != len(methods):
            raise ValueError("each method may appear once")
        return methods


class ModelRequest(Params):
    model: str = Field("mnist-cnn", min_length=1, max_length=200, description="an image classifier")


class ActivationMaxRequest(ModelRequest):
    steps: int = Field(128, ge=8, le=512, description="gradient-ascent steps")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class TsneRequest(ModelRequest):
    perplexity: float = Field(30.0, ge=5, le=100, description="t-SNE perplexity")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class SanityRequest(ModelRequest):
    methods: list[MethodName] = Field(default_factory=lambda: ["gradient", "gradient_x_input", "guided_backprop",  # type: ignore[valid-type]
                                                               "gradcam", "integrated_gradients"],
                                      min_length=1, max_length=len(img.METHODS))
    mode: Literal["cascading", "independent"] = Field("cascading", description="randomize cumulatively from the "
                                                      "top, or one layer at a time")
    n_images: int = Field(16, ge=2, le=MAX_SANITY_IMAGES, description="test digits compared")
    seed: int = Field(42, ge=0, le=2**31 - 1)


# ------------------------------------------------------------------------------------ the work

def explain_image(module: nn.Module, x: np.ndarray, target: int | None, methods: list[str],
                  params: dict[str, dict] | None = None) -> dict:
    """Prediction, one overlay per method (``params``: its hyperparameters by method name), and feature
    maps of the first and last conv layers."""
    xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    with torch.no_grad():
        probs = torch.softmax(module(xb), 1)[0].double().numpy()
    if target is not None and target >= len(probs):
        raise ApiError(400, f"target {target} is out of range: the model has classes 0..{len(probs) - 1}")
    target = int(np.argmax(probs)) if target is None else target
    overlays = []
    for name in methods:
        method = img.METHODS[name](module, **(params or {}).get(name, {}))
        start = time.perf_counter()
        attr = method.attribute(xb, target)
        seconds = time.perf_counter() - start
        amap = img.base.pixel_map(attr)[0].numpy()
        signed = bool(method.signed)
        overlays.append({"method": name, "title": img.METHODS[name].title, "signed": signed,
                         "summary": type(method).__doc__.strip().splitlines()[0] if type(method).__doc__ else "",
                         "png": png_data_url(img.overlay_png(x, amap, signed=signed, scale=OVERLAY_SCALE)),
                         "min": float(amap.min()), "max": float(amap.max()),
                         "scale": img.render.color_scale(amap), "seconds": round(seconds, 4)})
    return {"probs": probs, "labels": _labels(module, len(probs)), "predicted": int(np.argmax(probs)),
            "target": target, "input_png": png_data_url(img.render.to_png(img.render.image_rgb(x), OVERLAY_SCALE)),
            "overlays": overlays, "feature_maps": feature_map_views(module, xb)}


def _first_conv(module: nn.Module) -> str | None:
    return next((n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), None)


def feature_map_views(module: nn.Module, xb: torch.Tensor) -> list[dict]:
    """Activations of the first conv layer and of the last spatial layer, as PNG grids."""
    views = []
    for layer in dict.fromkeys([_first_conv(module), img.base.default_layer(module, xb)]):
        if layer is None:
            continue
        maps = img.feature_maps(module, xb, layer)[0]
        views.append({"layer": layer, "channels": int(maps.shape[0]), "size": list(maps.shape[1:]),
                      "png": png_data_url(img.images_grid_png(maps[:, None], ncols=16,
                                                              scale=max(1, 56 // maps.shape[-1]), value_range=None))})
    return views


def activation_max(module: nn.Module, req: ActivationMaxRequest, report) -> dict:
    n = n_classes(module)
    report(0, req.steps, "optimizing one image per class")
    am = img.ActivationMaximization(module, steps=req.steps, l2=0.05, blur_every=4, blur_sigma=0.5, jitter=1.0,
                                    degrees=5.0, seed=req.seed)
    images = am.visualize(list(range(n)), (1, SIDE, SIDE))
    report(req.steps, req.steps, "done")
    return {"labels": _labels(module, n), "params": am.get_params(),
            "images": [png_data_url(img.render.to_png(img.render.image_rgb(im), OVERLAY_SCALE // 2)) for im in images]}


def tsne(module: nn.Module, req: TsneRequest, report) -> dict:
    x, y = test_digits()
    report(0, 1, f"t-SNE of {len(x)} test digits")
    emb = img.FeatureEmbedding(module, perplexity=req.perplexity, seed=req.seed).fit(torch.from_numpy(x)[:, None], y)
    report(1, 1, "done")
    return {"x": emb.embedding_[:, 0], "y": emb.embedding_[:, 1], "label": y, "predicted": emb.predictions_,
            "index": np.arange(len(x)), "labels": _labels(module, n_classes(module)),
            "accuracy": float(np.mean(emb.predictions_ == y))}


def sanity(module: nn.Module, req: SanityRequest, report) -> dict:
    x, y = test_digits()
    pick = np.sort(np.random.default_rng(req.seed).choice(len(x), req.n_images, replace=False))
    xb = torch.from_numpy(x[pick])[:, None]
    report(0, 1, f"randomizing layers ({req.mode})")
    result = img.ModelRandomization(module, list(req.methods), mode=req.mode, seed=req.seed, progress=False).run(xb)
    report(1, 1, "done")
    return {"rows": result.rows, "markdown": result.to_markdown(), "figure": json.loads(result.figure().to_json()),
            "images": [int(i) for i in pick]}


def _start(kind: str, req: ModelRequest, work) -> Response:
    entry = _entry(req.model)

    def run(report):
        with _Loan(entry) as module:
            return work(module, req, report)

    resp = jsonify(jobs().submit(kind, (req.model_dump_json(),), run).info())
    resp.status_code = 202
    return resp


# ---------------------------------------------------------------------------------- endpoints

@blueprint.get("/images")
def images_page():
    _, y = test_digits()
    return render_template("images.html", page_data={
        "models": image_models(), "methods": img.describe_methods(),
        "picker": [{"index": i, "label": int(y[i])} for i in picker_indices()], "n_test": int(len(y))})


@blueprint.get("/api/images/digit/<int:index>.png")
def digit_png(index: int):
    """One test digit as a PNG (for the picker)."""
    x, _ = test_digits()
    if not 0 <= index < len(x):
        raise ApiError(404, f"no test digit {index}: indices are 0..{len(x) - 1}")
    return Response(img.render.to_png(img.render.image_rgb(x[index]), 2), mimetype="image/png",
                    headers={"Cache-Control": "max-age=86400"})


@blueprint.post("/api/images/explain")
@api(ExplainImageRequest, summary="Explain one digit with every image method", tag="images", lane="model")
def explain_endpoint(params: ExplainImageRequest):
    """The prediction, one heatmap overlay (PNG) per method for the target class, and feature maps."""
    entry = _entry(params.model)
    if params.index is not None:
        x, y = test_digits()
        if params.index >= len(x):
            raise ApiError(400, f"index {params.index} is out of range: the test split has digits 0..{len(x) - 1}")
        digit, source = x[params.index], {"index": params.index, "label": int(y[params.index])}
    else:
        digit, source = decode_upload(params.image)
    methods = list(params.methods or img.METHODS)
    with _Loan(entry) as module:
        out = explain_image(module, digit, params.target, methods, {m: params.params.of(m) for m in methods})
    return {"model": params.model, "source": source, **out}


@blueprint.get("/api/images/model")
@api(ModelRequest, summary="The first convolution's filters as images", tag="images", lane="model")
def model_info(params: ModelRequest):
    """Filters of the first Conv2d (each scaled by its own largest |weight|: grey is 0) and the layers."""
    entry = _entry(params.model)
    with _Loan(entry) as module:
        filters = img.filter_images(module)
        layers = [{"name": n, "type": type(m).__name__} for n, m in module.named_modules() if n]
    return {"model": params.model, "filters": png_data_url(img.images_grid_png(filters, ncols=16, scale=8)),
            "n_filters": int(filters.shape[0]), "kernel": list(filters.shape[2:]), "layers": layers}


@blueprint.post("/api/images/activation-max")
@api(ActivationMaxRequest, summary="Start activation maximization: one image per class (background job)",
     tag="images", lane="model")
def activation_max_endpoint(params: ActivationMaxRequest):
    """Gradient ascent on the input for each class logit, regularized (L2, blur, jitter); poll /api/jobs/<id>."""
    return _start("activation-max", params, activation_max)


@blueprint.post("/api/images/tsne")
@api(TsneRequest, summary="Start the t-SNE map of the test set's penultimate features (background job)",
     tag="images", lane="model")
def tsne_endpoint(params: TsneRequest):
    """Computed once per model and settings, then served from the job cache; poll /api/jobs/<id>."""
    return _start("tsne", params, tsne)


@blueprint.post("/api/images/sanity")
@api(SanityRequest, summary="Start the model-randomization sanity check (background job)", tag="images", lane="model")
def sanity_endpoint(params: SanityRequest):
    """Spearman rank correlation of each method's maps before and after randomizing layers; poll /api/jobs/<id>."""
    return _start("sanity", params, sanity)
