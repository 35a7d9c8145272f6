"""Highlighted-text rendering of explanations: HTML (one or several methods) and terminal ANSI.

Every piece of user text (tokens, the text between them, labels, model and method names) is
HTML-escaped; the output holds no script and no event handlers, and values show on hover via
``title``. Signed scores use a symmetric diverging scale (blue = for the target, red = against,
white = 0), unsigned scores a sequential one (white to purple). Colours are interpolated in
CIELAB so equal score steps look like equal colour steps. The normalisation is explicit and
printed in the legend:

- ``"max_abs"`` (default): colour = score / max |score| of the explanation;
- ``"sum_abs"``: colour = score / sum |score| (the L1-normalised scores);
- a number: colour = score / that number, clipped to [-1, 1] (one fixed scale across texts).
"""
from __future__ import annotations

import html
import os
import sys
import tempfile
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .convergence import Convergence, default_max_steps


class Renderable(Protocol):
    """What rendering reads of an explanation; ``textexplain.Explanation`` is one. (A protocol rather
    than an import: ``Explanation``'s own ``to_html``/``to_terminal`` call this module.)"""

    text: str
    tokens: list[str]
    scores: np.ndarray
    method: str
    target: int
    predicted: int
    target_label: str
    labels: list[str]
    probs: np.ndarray
    signed: bool
    spans: list[tuple[int, int]] | None
    params: dict[str, Any]
    delta: float | None
    info: dict[str, Any]
    convergence: Convergence | None

    def to_words(self, how: str = "sum") -> Renderable: ...

# RdBu-like ends with equal CIELAB lightness (L* = 40), so +v and -v are equally prominent
POSITIVE = (20, 96, 165)     # blue: evidence for the target
NEGATIVE = (183, 31, 47)     # red: evidence against the target
SEQUENTIAL = (84, 39, 143)   # Purples: unsigned magnitude
WHITE = (255, 255, 255)


# ---------------------------------------------------------------- colour
def _srgb_to_lab(rgb: Sequence[int]) -> np.ndarray:
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124564, 0.3575761, 0.1804375],
                    [0.2126729, 0.7151522, 0.0721750],
                    [0.0193339, 0.1191920, 0.9503041]]) @ c
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _lab_to_srgb(lab: np.ndarray) -> tuple[int, int, int]:
    fy = (lab[0] + 16) / 116
    f = np.array([fy + lab[1] / 500, fy, fy - lab[2] / 200])
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array([0.95047, 1.0, 1.08883])
    c = np.array([[3.2404542, -1.5371385, -0.4985314],
                  [-0.9692660, 1.8760108, 0.0415560],
                  [0.0556434, -0.2040259, 1.0572252]]) @ xyz
    c = np.clip(c, 0, 1)
    c = np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)
    return tuple(int(round(v)) for v in np.clip(c * 255, 0, 255))  # type: ignore[return-value]


_LAB = {name: _srgb_to_lab(rgb) for name, rgb in
        (("white", WHITE), ("pos", POSITIVE), ("neg", NEGATIVE), ("seq", SEQUENTIAL))}


def score_color(value: float, signed: bool, gamma: float = 1.0) -> tuple[int, int, int]:
    """RGB for a normalised score in [-1, 1] (signed) or [0, 1] (unsigned)."""
    v = float(np.clip(value, -1.0, 1.0)) if signed else float(np.clip(abs(value), 0.0, 1.0))
    strength = abs(v) ** (1.0 / gamma)
    end = _LAB["seq"] if not signed else (_LAB["pos"] if v >= 0 else _LAB["neg"])
    return _lab_to_srgb(_LAB["white"] + strength * (end - _LAB["white"]))


def _luminance(rgb: Sequence[int]) -> float:
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2])


def _text_color(rgb: tuple[int, int, int]) -> str:
    """White or black, whichever has the higher WCAG contrast on ``rgb`` (never below 4.58:1)."""
    y = _luminance(rgb)
    return "#fff" if 1.05 / (y + 0.05) >= (y + 0.05) / 0.05 else "#000"


# ---------------------------------------------------------------- normalisation
def scale_of(scores: np.ndarray, normalize: str | float) -> tuple[float, str]:
    """The divisor and a sentence saying how colours were normalised."""
    scores = np.asarray(scores, dtype=np.float64)
    if isinstance(normalize, str):
        if normalize == "max_abs":
            v = float(np.abs(scores).max()) if scores.size else 0.0
            return (v or 1.0), f"colour = score / max|score| ({v:.4g})"
        if normalize == "sum_abs":
            v = float(np.abs(scores).sum()) if scores.size else 0.0
            return (v or 1.0), f"colour = score / sum|score| ({v:.4g})"
        raise ValueError(f"normalize={normalize!r} is not supported: use 'max_abs', 'sum_abs' or a positive number")
    if isinstance(normalize, bool) or not isinstance(normalize, (int, float)) or not normalize > 0:
        raise ValueError(f"normalize must be 'max_abs', 'sum_abs' or a positive number, got {normalize!r}")
    return float(normalize), f"colour = score / {float(normalize):.4g} (fixed scale, clipped)"


def _check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ValueError(f"gamma must be a positive number (1 = linear, >1 brightens small scores), got {gamma!r}")
    return float(gamma)


# ---------------------------------------------------------------- pieces of text
def segments(e: Renderable) -> list[tuple[str, int | None]]:
    """The text cut into ``(piece, token index or None)``: tokens at their spans, the text between
    them kept as is. Without spans, tokens joined by spaces."""
    if e.spans is None:
        out: list[tuple[str, int | None]] = []
        for i, tok in enumerate(e.tokens):
            if i:
                out.append((" ", None))
            out.append((tok, i))
        return out
    out, pos = [], 0
    for i, (a, b) in enumerate(e.spans):
        if a > pos:
            out.append((e.text[pos:a], None))
        out.append((e.text[a:b], i))
        pos = max(pos, b)
    if pos < len(e.text):
        out.append((e.text[pos:], None))
    return out


def _fmt(x: float) -> str:
    return f"{x:+.4g}"


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _prob_summary(e: Renderable) -> str:
    return ", ".join(f"{_esc(lab)} {p:.3f}" for lab, p in zip(e.labels, e.probs))


def _tokens_html(e: Renderable, scale: float, gamma: float) -> str:
    parts = []
    for piece, i in segments(e):
        if i is None:
            parts.append(_esc(piece))
            continue
        s = float(e.scores[i])
        rgb = score_color(s / scale, e.signed, gamma)
        tip = f"{e.tokens[i]}: {s:+.6g}" + (f" (#{i})" if e.tokens[i] != piece else "")
        parts.append(f'<span title="{_esc(tip)}" style="background:rgb{rgb};color:{_text_color(rgb)};'
                     f'border-radius:3px;padding:1px 1px">{_esc(piece)}</span>')
    return "".join(parts)


def legend_html(signed: bool, scale: float, note: str, target_label: str | None = None, gamma: float = 1.0) -> str:
    """A colour bar with its end values and the normalisation sentence."""
    stops = np.linspace(-1, 1, 9) if signed else np.linspace(0, 1, 5)
    gradient = ", ".join(f"rgb{score_color(v, signed, gamma)}" for v in stops)
    bar = (f'<span style="display:inline-block;width:140px;height:10px;vertical-align:middle;'
           f'border:1px solid #ccc;background:linear-gradient(to right, {gradient})"></span>')
    if signed:
        who = f" {_esc(target_label)}" if target_label is not None else " the target"
        ends = (f'<span>{_fmt(-scale)} against{who}</span> {bar} <span>{_fmt(scale)} for{who}</span>')
    else:
        ends = f"<span>0</span> {bar} <span>{scale:.4g} (unsigned magnitude)</span>"
    return f'<span style="font-size:0.85em;color:#444">{ends} &middot; {_esc(note)}</span>'


def _of_a_unit(e: Renderable) -> bool:
    """Whether ``e`` explains one unit's activation (``lstmvis.explain_cell``) rather than a class."""
    return "activation" in e.info and len(e.labels) == 1


def _activation_summary(e: Renderable) -> str:
    baseline = e.info.get("activation_baseline")
    return f"activation {e.info['activation']:.4g}" + (f" (baseline {baseline:.4g})" if baseline is not None else "")


def _header_html(e: Renderable) -> str:
    model = e.info.get("model")
    head = [f"<b>{_esc(e.method)}</b>"]
    if model:
        head.append(f"model {_esc(model)}")
    if _of_a_unit(e):  # lstmvis.explain_cell: one cell's activation, no classes
        head.append(f"explains <b>{_esc(e.labels[0])}</b>: {_esc(_activation_summary(e))}")
    else:
        pred = e.predicted
        head.append(f"predicted <b>{_esc(e.labels[pred])}</b> ({e.probs[pred]:.3f})")
        head.append(f"target <b>{_esc(e.target_label)}</b> ({e.probs[e.target]:.3f})")
        head.append(f"probabilities: {_prob_summary(e)}")
    if e.delta is not None:
        head.append(_delta_html(e))
    return " &middot; ".join(head)


def convergence_fix(e: Renderable) -> str:
    """What to change when an Integrated Gradients result is not complete to 1%."""
    convergence = e.convergence
    if convergence is not None and convergence.unresolved_alpha:  # F jumps between neighbouring inputs
        where = (f"F jumps near alpha={convergence.unresolved_alpha[0]:.4g} faster than {convergence.precision} "
                 "resolves")
        if convergence.precision == "float64":
            return f"{where}: no quadrature closes this gap; try another baseline"
        if "precision" not in e.params:  # lstmvis.explain_cell: the model's own precision only
            return f"{where}, so more steps cannot help"
        if e.params["precision"] == "auto":  # float64 probes found the jump there too
            return f"{where}, and so does float64: no quadrature closes this gap; try another baseline"
        return f"{where}, so more steps cannot help: use precision='float64' (or 'auto')"
    if e.params.get("method") == "adaptive":
        n_steps = int(e.params.get("n_steps") or 50)
        spent = default_max_steps(n_steps, e.params.get("max_steps"))
        return f"allow refinement: max_steps={max(default_max_steps(n_steps, None), 2 * spent)}"
    return "raise n_steps, or use the adaptive rule with max_steps"


def _delta_text(e: Renderable) -> str:
    """"completeness delta +0.002", and the precision when it is not the model's own."""
    in_float64 = e.convergence is not None and e.convergence.precision == "float64"
    return f"completeness delta {e.delta:+.3g}" + (" (in float64)" if in_float64 else "")


def _not_converged(e: Renderable) -> bool:
    return e.convergence is not None and not e.convergence.converged


def _delta_html(e: Renderable) -> str:
    """The completeness delta, flagged when the method reports it did not converge."""
    text = _delta_text(e)
    if _not_converged(e):
        share = e.convergence.relative_delta
        return (f'<span style="color:#a50f15" title="sum of scores misses F(x) - F(baseline) by {share:.1%}: '
                f'{_esc(convergence_fix(e))}">{text} ({share:.1%} of the output change: not converged)</span>')
    return text


def _prepare(e: Renderable, words: bool | str) -> Renderable:
    if not all(hasattr(e, attr) for attr in ("tokens", "scores", "to_words")):
        raise TypeError(f"expected a textexplain.Explanation, got {type(e).__name__}")
    if words:
        return e.to_words(how="sum" if words is True else words)
    return e


FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif;line-height:2;font-size:15px"


def explanation_html(e: Renderable, normalize: str | float = "max_abs", gamma: float = 1.0,
                     words: bool | str = False) -> str:
    """One explanation as an HTML fragment: header, highlighted text, legend.

    ``words=True`` (or an aggregation name: sum, mean, max, absmax) merges sub-tokens and
    characters into whitespace-separated words first.
    """
    e = _prepare(e, words)
    gamma = _check_gamma(gamma)
    scale, note = scale_of(e.scores, normalize)
    return (f'<div class="textexplain" style="{FONT};max-width:60em">'
            f'<div style="font-size:0.9em;color:#333">{_header_html(e)}</div>'
            f'<div style="white-space:pre-wrap;padding:4px 0">{_tokens_html(e, scale, gamma)}</div>'
            f'<div>{legend_html(e.signed, scale, note, e.target_label, gamma)}</div></div>')


def side_by_side_html(explanations: Sequence[Renderable], normalize: str | float = "max_abs",
                      gamma: float = 1.0, words: bool | str = False, shared_scale: bool = False) -> str:
    """Several explanations of one text, one method per row (LIT-style), with the prediction on top.

    Each row has its own scale (methods differ in units) unless ``shared_scale`` is True, which
    divides every row by the largest value across rows (only meaningful for comparable units).
    """
    explanations = [_prepare(e, words) for e in explanations]
    if not explanations:
        raise ValueError("no explanations to show: pass a list of Explanation objects of one text")
    first = explanations[0]
    if any(e.text != first.text for e in explanations):
        raise ValueError("side_by_side_html shows explanations of one text: these explanations are of different "
                         "texts; render them one by one with explanation_html")
    gamma = _check_gamma(gamma)
    if shared_scale and isinstance(normalize, str):
        normalize = max(scale_of(e.scores, normalize)[0] for e in explanations)
    model = first.info.get("model")
    pred = first.predicted
    probs = "".join(
        f'<td style="padding:0 10px 0 0">{_esc(lab)} <span style="display:inline-block;height:9px;'
        f'width:{max(1, round(60 * p))}px;background:#4a90a4;vertical-align:middle"></span> {p:.3f}'
        f'{" &#10004;" if j == pred else ""}</td>'
        for j, (lab, p) in enumerate(zip(first.labels, first.probs)))
    rows = []
    for e in explanations:
        scale, note = scale_of(e.scores, normalize)
        kind = "signed" if e.signed else "unsigned"
        extra = f"<br>{_delta_html(e)}" if e.delta is not None else ""
        target = e.target_label
        rows.append(
            f'<tr style="border-top:1px solid #ddd"><td style="vertical-align:top;padding:6px 12px 6px 0;'
            f'width:13em"><b>{_esc(e.method)}</b><br><span style="font-size:0.8em;color:#555">{kind}, '
            f'target {_esc(target)}{extra}</span></td><td style="padding:6px 0">'
            f'<div style="white-space:pre-wrap">{_tokens_html(e, scale, gamma)}</div>'
            f'<div>{legend_html(e.signed, scale, note, target, gamma)}</div></td></tr>')
    title = f"model {_esc(model)} &middot; " if model else ""
    return (f'<div class="textexplain" style="{FONT}"><div style="font-size:0.9em;color:#333">{title}'
            f'predicted <b>{_esc(first.labels[pred])}</b></div>'
            f'<table style="border-collapse:collapse;font-size:0.9em"><tr>{probs}</tr></table>'
            f'<table style="border-collapse:collapse;width:100%">{"".join(rows)}</table></div>')


def html_page(body: str, title: str = "textexplain") -> str:
    """A complete HTML document around a fragment (UTF-8, no scripts)."""
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>{_esc(title)}</title></head><body style=\"margin:2em\">{body}</body></html>\n")


def write_html(path: str | os.PathLike, body: str, title: str = "textexplain") -> Path:
    """Write ``body`` as a complete page to ``path`` atomically (temp file in the same folder, rename)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file name such as {path / 'explanation.html'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html_page(body, title))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# ---------------------------------------------------------------- terminal
def printable(text: str) -> str:
    """``text`` with control characters (escape sequences included) shown as ``\\xNN``, so user text
    cannot drive the terminal. Newlines and tabs are kept."""
    out = []
    for ch in text:
        if ch in "\n\t" or unicodedata.category(ch)[0] != "C":
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
    return "".join(out)


def _ansi_bg(rgb: tuple[int, int, int], mode: str) -> str:
    fg = "255;255;255" if _text_color(rgb) == "#fff" else "0;0;0"
    if mode == "truecolor":
        return f"\x1b[48;2;{rgb[0]};{rgb[1]};{rgb[2]}m\x1b[38;2;{fg}m"
    cube = 16 + 36 * round(rgb[0] / 255 * 5) + 6 * round(rgb[1] / 255 * 5) + round(rgb[2] / 255 * 5)
    return f"\x1b[48;5;{cube}m\x1b[38;5;{231 if fg.startswith('255') else 233}m"


def color_mode(color_option: str = "auto", stream=None) -> str:
    """``truecolor``, ``256`` or ``none``; ``auto`` looks at the stream and $COLORTERM / $NO_COLOR."""
    if color_option not in ("auto", "truecolor", "256", "none"):
        raise ValueError(f"color={color_option!r} is not supported: use auto, truecolor, 256 or none")
    if color_option != "auto":
        return color_option
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or not getattr(stream, "isatty", lambda: False)():
        return "none"
    return "truecolor" if os.environ.get("COLORTERM", "").lower() in ("truecolor", "24bit") else "256"


def terminal(e: Renderable, normalize: str | float = "max_abs", color: str = "auto", gamma: float = 1.0,
             words: bool | str = False, stream=None) -> str:
    """The explanation as terminal text: coloured token backgrounds (ANSI) or, without colour,
    each token followed by its score in brackets."""
    e = _prepare(e, words)
    mode = color_mode(color, stream)
    gamma = _check_gamma(gamma)
    scale, note = scale_of(e.scores, normalize)
    pred = e.predicted
    subject = (f"{e.labels[0]}, {_activation_summary(e)}" if _of_a_unit(e) else
               f"predicted {e.labels[pred]} ({e.probs[pred]:.3f}), target {e.target_label} ({e.probs[e.target]:.3f})")
    head = (f"{e.method}: {subject}" + (f", {_delta_text(e)}" if e.delta is not None else "")
            + (f" (NOT CONVERGED: {e.convergence.relative_delta:.1%} of the output change; "
               f"{convergence_fix(e)})" if _not_converged(e) else ""))
    body = []
    for piece, i in segments(e):
        if i is None:
            body.append(printable(piece))
        elif mode == "none":
            body.append(f"{printable(piece)}[{e.scores[i]:+.3g}]")
        else:
            body.append(_ansi_bg(score_color(e.scores[i] / scale, e.signed, gamma), mode)
                        + printable(piece) + "\x1b[0m")
    label = printable(e.target_label)
    if mode == "none":
        key = f"{'signed: + for, - against ' + label if e.signed else 'unsigned magnitude'}; {note}"
    else:
        swatches = "".join(_ansi_bg(score_color(v, e.signed, gamma), mode) + "  " for v in
                           (np.linspace(-1, 1, 9) if e.signed else np.linspace(0, 1, 5))) + "\x1b[0m"
        ends = (f"{_fmt(-scale)} against {label} {swatches} {_fmt(scale)} for {label}"
                if e.signed else f"0 {swatches} {scale:.4g}")
        key = f"{ends}; {note}"
    return f"{printable(head)}\n{''.join(body)}\n{key}"
