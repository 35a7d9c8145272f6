"""Rendering: heatmap overlays and image grids as PNG bytes (Pillow) and as plotly figures."""
from __future__ import annotations

import io
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..render import NEGATIVE, POSITIVE, SEQUENTIAL, WHITE

# colour maps as (position, RGB) anchors, interpolated linearly
COLORMAPS: dict[str, list[tuple[float, tuple[int, int, int]]]] = {
    "gray": [(0.0, (0, 0, 0)), (1.0, (255, 255, 255))],
    "hot": [(0.0, (0, 0, 0)), (0.4, (230, 0, 0)), (0.75, (255, 210, 0)), (1.0, (255, 255, 255))],
    "viridis": [(0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)),
                (1.0, (253, 231, 37))],
    # the tool's one convention (textexplain/render.py): red = negative / against, white = 0,
    # blue = positive / for the explained class; purples for unsigned magnitudes
    "bwr": [(0.0, NEGATIVE), (0.5, WHITE), (1.0, POSITIVE)],
    "purples": [(0.0, WHITE), (1.0, SEQUENTIAL)],
}


def _numpy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return a.detach().cpu().float().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float32)


def color_scale(values: torch.Tensor | np.ndarray, clip_percentile: float = 99.5) -> float:
    """The |value| that :func:`colorize` maps to the end colour: the ``clip_percentile`` of |values|
    (their maximum when that is 0, 1 for an all-zero map). Legends show it."""
    v = np.abs(_numpy(values))
    top = float(np.percentile(v, clip_percentile)) if v.size else 0.0
    return top if top > 0 else (float(v.max()) if v.size else 0.0) or 1.0


def colorize(values: torch.Tensor | np.ndarray, cmap: str | None = None, signed: bool | None = None,
             clip_percentile: float = 99.5) -> np.ndarray:
    """Map a 2-D array to RGB uint8 (H, W, 3).

    Signed maps (default: when any value is negative) are scaled symmetrically around 0 with the
    diverging "bwr" map (red negative, white 0, blue positive, as every page); unsigned ones from 0
    with "purples". The scale is the ``clip_percentile``
    of |values| so that one extreme pixel does not wash out the rest.
    """
    v = _numpy(values)
    if v.ndim != 2:
        raise ValueError(f"colorize needs a 2-D map (H, W), got shape {v.shape}")
    if cmap is not None and cmap not in COLORMAPS:
        raise ValueError(f"unknown colormap {cmap!r}; choose from {', '.join(COLORMAPS)}")
    signed = bool((v < 0).any()) if signed is None else signed
    top = color_scale(v, clip_percentile)
    pos = np.clip(v / top, -1, 1) * 0.5 + 0.5 if signed else np.clip(v / top, 0, 1)
    anchors = COLORMAPS[cmap or ("bwr" if signed else "purples")]
    xs = [a[0] for a in anchors]
    rgb = np.stack([np.interp(pos, xs, [a[1][c] for a in anchors]) for c in range(3)], -1)
    return rgb.round().astype(np.uint8)


def image_rgb(image: torch.Tensor | np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """One image (C, H, W) with C in {1, 3}, or (H, W), to RGB uint8 (H, W, 3)."""
    a = _numpy(image)
    if a.ndim == 3:
        if a.shape[0] not in (1, 3):
            raise ValueError(f"an image needs 1 or 3 channels, got shape {a.shape}")
        a = np.repeat(a, 3, 0) if a.shape[0] == 1 else a
        a = a.transpose(1, 2, 0)
    elif a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    else:
        raise ValueError(f"an image must be (C, H, W) or (H, W), got shape {a.shape}")
    lo, hi = value_range
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def overlay_rgb(image: torch.Tensor | np.ndarray, attribution: torch.Tensor | np.ndarray, alpha: float = 0.6,
                cmap: str | None = None, signed: bool | None = None,
                value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Blend a colourized attribution map over a grey version of the image, RGB uint8 (H, W, 3)."""
    attr = _numpy(attribution)
    attr = attr.sum(0) if attr.ndim == 3 else attr
    base = image_rgb(image, value_range).astype(np.float32).mean(-1, keepdims=True)
    if base.shape[:2] != attr.shape:
        raise ValueError(f"image {base.shape[:2]} and attribution {attr.shape} differ in size")
    heat = colorize(attr, cmap, signed).astype(np.float32)
    return ((1 - alpha) * base + alpha * heat).round().astype(np.uint8)


def to_png(rgb: np.ndarray, scale: int = 1) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or grey (H, W) uint8 array, enlarged ``scale`` times (nearest)."""
    img = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def overlay_png(image: torch.Tensor | np.ndarray, attribution: torch.Tensor | np.ndarray, alpha: float = 0.6,
                cmap: str | None = None, signed: bool | None = None, scale: int = 4,
                value_range: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """PNG bytes of :func:`overlay_rgb`."""
    return to_png(overlay_rgb(image, attribution, alpha, cmap, signed, value_range), scale)


def grid_rgb(tiles: Sequence[np.ndarray], ncols: int = 8, padding: int = 1,
             pad_color: tuple[int, int, int] = (80, 80, 80)) -> np.ndarray:
    """Lay out RGB uint8 tiles (all the same size) row by row with ``padding`` px between them."""
    if not len(tiles):
        raise ValueError("grid needs at least one tile")
    h, w = tiles[0].shape[:2]
    if any(t.shape[:2] != (h, w) for t in tiles):
        raise ValueError("all grid tiles must have the same size")
    ncols = min(ncols, len(tiles))
    nrows = -(-len(tiles) // ncols)
    out = np.empty((nrows * (h + padding) + padding, ncols * (w + padding) + padding, 3), np.uint8)
    out[:] = pad_color
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        out[y:y + h, x:x + w] = t
    return out


def images_grid_png(images: torch.Tensor | np.ndarray, ncols: int = 8, scale: int = 4, padding: int = 1,
                    value_range: tuple[float, float] | None = (0.0, 1.0)) -> bytes:
    """PNG of a grid of images (N, C, H, W). ``value_range=None`` rescales each image to its own min-max."""
    a = _numpy(images)
    if a.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {a.shape}")
    tiles = []
    for im in a:
        rng = value_range or (float(im.min()), float(im.max()) if im.max() > im.min() else float(im.min()) + 1)
        tiles.append(image_rgb(im, rng))
    return to_png(grid_rgb(tiles, ncols, padding), scale)


def save_png(data: bytes, path: str | Path) -> Path:
    """Write PNG bytes atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # plain open: the umask sets permissions
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def attribution_figure(images: torch.Tensor | np.ndarray, attributions: Mapping[str, torch.Tensor | np.ndarray],
                       signed: Mapping[str, bool] | None = None, alpha: float = 0.6,
                       value_range: tuple[float, float] = (0.0, 1.0), row_titles: Sequence[str] | None = None):
    """Plotly figure: one row per image, the image then one overlay per method."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    imgs = _numpy(images)
    names = list(attributions)
    n, cols = len(imgs), len(names) + 1
    fig = make_subplots(rows=n, cols=cols, column_titles=["input", *names],
                        row_titles=list(row_titles) if row_titles is not None else None,
                        horizontal_spacing=0.01, vertical_spacing=0.01)
    for i in range(n):
        fig.add_trace(go.Image(z=image_rgb(imgs[i], value_range), hoverinfo="skip"), row=i + 1, col=1)
        for j, name in enumerate(names):
            rgb = overlay_rgb(imgs[i], _numpy(attributions[name])[i], alpha,
                              signed=(signed or {}).get(name), value_range=value_range)
            fig.add_trace(go.Image(z=rgb, hoverinfo="skip"), row=i + 1, col=j + 2)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=130 * n + 60, width=130 * cols, margin=dict(l=10, r=30, t=40, b=10),
                      template="plotly_white")
    return fig


def images_figure(images: torch.Tensor | np.ndarray, titles: Sequence[str] | None = None, ncols: int = 8,
                  value_range: tuple[float, float] | None = (0.0, 1.0)):
    """Plotly figure of a grid of images (N, C, H, W), e.g. activation maximization results."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    a = _numpy(images)
    ncols = min(ncols, len(a))
    nrows = -(-len(a) // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=list(titles) if titles is not None else None,
                        horizontal_spacing=0.01, vertical_spacing=0.04)
    for i, im in enumerate(a):
        rng = value_range or (float(im.min()), float(im.max()) if im.max() > im.min() else float(im.min()) + 1)
        fig.add_trace(go.Image(z=image_rgb(im, rng), hoverinfo="skip"), row=i // ncols + 1, col=i % ncols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=110 * nrows + 40, width=110 * ncols, margin=dict(l=10, r=10, t=30, b=10),
                      template="plotly_white")
    return fig
