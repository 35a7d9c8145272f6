"""Text explanations page and API: one text, one model, several methods side by side, with
faithfulness numbers per method; and a corpus audit that ranks the tokens a classifier relies on.

The work is the library's: ``textexplain.explain`` for each method, ``textexplain.render`` for
the colour scales and the exported HTML, ``textexplain.metrics`` for faithfulness and
``textexplain.audit`` for the corpus audit. Colours are computed here with the library's scale,
and the page puts every token on screen with ``textContent``, so user text cannot become markup.
"""
from __future__ import annotations

import json
import time
from typing import Literal

import numpy as np
from flask import Blueprint, jsonify, render_template
from pydantic import Field, field_validator

import textexplain
from data.provider import LABELLED_CORPORA
from textexplain import audit as text_audit
from textexplain import metrics, render
from textexplain.methods import make_explainer

from .context import resources
from .jobs import jobs
from .method_params import method_params_model
from .validation import ApiError, Params, api

blueprint = Blueprint("explain_api", __name__)

PAGES = [
    {"endpoint": "explain_api.explain_page", "title": "Explanations",
     "summary": "Why did a text classifier decide that? Type a text, pick methods (gradient, gradient x input, "
                "Integrated Gradients, SmoothGrad, occlusion, LIME, SHAP) and compare their token highlights "
                "side by side, with completeness and faithfulness numbers for each; audit a corpus for the "
                "tokens a model leans on (the planted junk token of sentiment-shortcut shows on top)."},
]

MAX_TEXT_CHARS = 2000
MAX_TOKENS = 256
CURVE_POINTS = 51  # deletion/insertion curves of long texts are sampled at this many points
DEFAULT_METHODS = ["gradient", "gradient_x_input", "integrated_gradients", "occlusion"]
NOT_CLASSIFIERS = ("language-model", "image-classifier")
MAX_AUDIT_SAMPLE = 1000  # texts per audit job (about a minute with IG on two busy cores)
SHORTCUT_MODEL = "sentiment-shortcut"

MethodName = Literal[tuple(textexplain.METHODS)]  # type: ignore[valid-type]
MethodParams = method_params_model(textexplain.METHODS)  # from each method's declarations
TITLES = {name: cls.title for name, cls in textexplain.METHODS.items()}
# where the page's inputs start when they differ from the library's defaults (cheaper or safer on the page)
PAGE_PRESETS = {"integrated_gradients": {"max_steps": 200, "precision": "auto"}, "lime": {"num_samples": 1000}}


def method_inputs() -> dict[str, dict]:
    """What the page builds its hyperparameter inputs from: each method's title, declarations and presets."""
    return {name: {"title": cls.title, "params": cls.describe_hyperparameters(), "presets": PAGE_PRESETS.get(name, {})}
            for name, cls in textexplain.METHODS.items()}


class ExplainRequest(Params):
    model: str = Field(min_length=1, max_length=200, description="a text classifier, e.g. sentiment-lstm")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="the text to explain")
    target: int | str | None = Field(None, description="class index or label to explain (default: predicted)")
    methods: list[MethodName] = Field(default_factory=lambda: list(DEFAULT_METHODS), min_length=1,  # type: ignore[valid-type]
                                      max_length=len(textexplain.METHODS),
                                      description=f"methods, one row each: {', '.join(textexplain.METHODS)}")
    params: MethodParams = Field(default_factory=MethodParams, description="hyperparameters per method")
    faithfulness: bool = Field(True, description="measure comprehensiveness, sufficiency, deletion/insertion "
                               "AUC and Kendall tau with leave-one-out for each method")
    normalize: Literal["max_abs", "sum_abs"] = Field("max_abs", description="colour = score / max|score| or "
                                                     "score / sum|score| of each method's row")
    html: bool = Field(False, description="also return the rows as one standalone HTML fragment "
                       "(textexplain.render.side_by_side_html; every token escaped)")

    @field_validator("methods")
    @classmethod
    def _distinct(cls, methods: list[str]) -> list[str]:
        if len(set(methods)) != len(methods):
            raise ValueError("each method may appear once")
        return methods


# ------------------------------------------------------------------------------------ helpers

def text_classifiers() -> list[dict]:
    """The models this page can explain: shipped classifiers and user models that may be one."""
    res = resources()
    res.refresh()
    return [m.info() for m in res.models.values() if m.kind not in NOT_CLASSIFIERS]


def borrow_classifier(name: str):
    """``with borrow_classifier(name) as model`` -- a private copy of a TextModel, or a 4xx error."""
    entry = resources().model_entry(name)
    if entry.kind in NOT_CLASSIFIERS:
        raise ApiError(400, f"model {name!r} is of kind {entry.kind}, not a text classifier; choose one of "
                       f"{', '.join(m['name'] for m in text_classifiers()) or 'none loaded'}")
    return _Checked(entry.use(), name)


class _Checked:
    """Context manager around a model loan that refuses anything but a ``textexplain.TextModel``."""

    def __init__(self, loan, name: str):
        self._loan, self._name = loan, name

    def __enter__(self):
        model = self._loan.__enter__()
        if not isinstance(model, textexplain.TextModel):
            self._loan.__exit__(None, None, None)
            raise ApiError(400, f"model {self._name!r} is not a text classifier (it loads as "
                           f"{type(model).__name__}, not a textexplain.TextModel)")
        return model

    def __exit__(self, *exc):
        return self._loan.__exit__(*exc)


def _rgb(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


class ColourScale:
    """The library's colour scales (``render.score_color``) tabulated once at ``steps`` levels per unit,
    so that colouring a row is a table lookup instead of a colour-space conversion per token."""

    def __init__(self, steps: int = 200):
        self.steps = steps
        self.signed = self._table(np.linspace(-1, 1, 2 * steps + 1), True)
        self.unsigned = self._table(np.linspace(0, 1, steps + 1), False)

    @staticmethod
    def _table(values: np.ndarray, signed: bool) -> list[tuple[str, str]]:
        colours = [render.score_color(float(v), signed) for v in values]
        return [(_rgb(c), render._text_color(c)) for c in colours]

    def lookup(self, normalized: np.ndarray, signed: bool) -> tuple[list[str], list[str]]:
        """Background and text colour of each normalized score ([-1, 1] signed, [0, 1] unsigned)."""
        if signed:
            idx = np.rint((np.clip(normalized, -1, 1) + 1) * self.steps).astype(int)
            table = self.signed
        else:
            idx = np.rint(np.clip(np.abs(normalized), 0, 1) * self.steps).astype(int)
            table = self.unsigned
        pairs = [table[i] for i in idx]
        return [p[0] for p in pairs], [p[1] for p in pairs]


COLOURS = ColourScale()


def colour_row(scores: np.ndarray, signed: bool, normalize: str) -> dict:
    """Background and text colour of each token, and the legend, on the library's colour scale."""
    scale, note = render.scale_of(scores, normalize)
    colors, text_colors = COLOURS.lookup(np.asarray(scores, dtype=np.float64) / scale, signed)
    stops = np.linspace(-1, 1, 9) if signed else np.linspace(0, 1, 5)
    return {"colors": colors, "text_colors": text_colors,
            "legend": {"scale": scale, "note": note, "signed": signed,
                       "stops": COLOURS.lookup(stops, signed)[0]}}


RANDOM_DRAWS = 10  # random rankings averaged for the faithfulness floor
FAITHFULNESS_KEYS = ("comprehensiveness", "sufficiency", "deletion_auc", "insertion_auc", "loo_kendall_tau",
                     "curve_fractions", "deletion_curve", "insertion_curve", "n_model_evaluations")


def _faithfulness(model, token_ids: list[int], scores: np.ndarray, target: int) -> dict:
    points = CURVE_POINTS if len(token_ids) + 1 > CURVE_POINTS else None
    full = metrics.faithfulness_scores(model, token_ids, scores, target, curve_points=points)
    return {k: full[k] for k in FAITHFULNESS_KEYS}


def explain_text(model, req: ExplainRequest) -> dict:
    """Every requested method on one text (the request's work; also used by the benchmark)."""
    tokens = model.tokenize(req.text)
    if len(tokens) > MAX_TOKENS:
        raise ApiError(400, f"the text has {len(tokens)} tokens; the server explains at most {MAX_TOKENS}: "
                       "shorten it")
    target = req.target  # resolved by the first method (None = predicted), which also gives the probabilities
    rows, explanations = [], []
    for method in req.methods:
        start = time.perf_counter()
        e = make_explainer(model, method, **req.params.of(method)).explain(req.text, target)
        target = e.target
        seconds = time.perf_counter() - start
        explanations.append(e)
        row = {"method": method, "title": TITLES[method], "signed": e.signed,
               "scores": e.scores, "delta": e.delta, "params": e.params, "seconds": round(seconds, 4),
               **colour_row(e.scores, e.signed, req.normalize)}
        if e.convergence is not None:  # methods that promise completeness: how far off, and the fix if too far
            row.update(relative_delta=e.convergence.relative_delta, converged=e.convergence.converged,
                       convergence_fix=None if e.convergence.converged else render.convergence_fix(e),
                       precision=e.convergence.precision)
        if req.faithfulness:
            row["faithfulness"] = _faithfulness(model, e.token_ids, e.scores, target)
        rows.append(row)
    first = explanations[0]
    out = {"model": model.name, "text": first.text, "tokens": first.tokens, "token_ids": first.token_ids,
           "spans": first.spans, "labels": list(model.labels), "probs": first.probs,
           "predicted": first.predicted, "target": target, "target_label": model.labels[target],
           "normalize": req.normalize, "explanations": rows}
    if req.html:
        out["html"] = render.side_by_side_html(explanations, normalize=req.normalize)
    if req.faithfulness:
        # the floor every method should beat: random rankings of the same tokens, averaged over seeded draws
        points = CURVE_POINTS if len(first.token_ids) + 1 > CURVE_POINTS else None
        out["random_faithfulness"] = metrics.random_floor(model, first.token_ids, target, draws=RANDOM_DRAWS,
                                                          curve_points=points)
    return out


# ------------------------------------------------------------------------------- corpus audit

class AuditRequest(Params):
    model: str = Field(min_length=1, max_length=200, description="a text classifier")
    corpus: Literal[LABELLED_CORPORA] | None = Field(  # type: ignore[valid-type]
        None, description="shipped corpus (default: rotten_tomatoes_shortcut for sentiment-shortcut, else "
                          "rotten_tomatoes)")
    split: Literal["train", "dev", "test"] = Field("test", description="corpus split")
    method: MethodName = Field("gradient_x_input", description="explanation method")  # type: ignore[valid-type]
    params: MethodParams = Field(default_factory=MethodParams, description="hyperparameters per method")
    sample: int = Field(200, ge=10, le=MAX_AUDIT_SAMPLE, description="audit a seeded random sample of this many "
                        f"texts (at most {MAX_AUDIT_SAMPLE})")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the sample")
    target: Literal[text_audit.TARGETS] = Field("predicted", description="explain each text for the "  # type: ignore[valid-type]
                                                 "predicted class or its gold label")
    rank_by: Literal[text_audit.RANK_BY] = Field("reliance", description="ranking statistic "  # type: ignore[valid-type]
                                                  "(reliance: lower 95% bound of the mean contribution per text)")
    normalize: Literal[text_audit.NORMALIZE] = Field("none", description="rescale each explanation first")  # type: ignore[valid-type]
    min_count: int | None = Field(None, ge=2, le=1000, description="rank only tokens seen this often for a class "
                                  "(default: one per 100 texts, at least 3)")
    top: int = Field(20, ge=1, le=100, description="tokens returned per class")
    flip: int = Field(text_audit.FLIP_TOP, ge=0, le=20, description="flip-test this many top tokens of each "
                      "class (0: none); the headline lists them by the accuracy their flip costs")


def _audit_corpus(model, req: AuditRequest) -> tuple[list[str], list[str] | None, str]:
    """The seeded sample of the corpus split, with gold labels as the model's label names when they fit."""
    import data

    corpus = req.corpus or ("rotten_tomatoes_shortcut" if model.name == SHORTCUT_MODEL else "rotten_tomatoes")
    texts, gold = getattr(data, corpus)(req.split)
    keep = np.sort(np.random.default_rng(req.seed).choice(len(texts), min(req.sample, len(texts)), replace=False))
    names = list(data.SENTIMENT_LABELS)
    labels = [names[int(gold[i])] for i in keep] if set(names) <= set(model.labels) else None
    return [texts[i] for i in keep], labels, corpus


def run_audit(model, req: AuditRequest, report) -> dict:
    """The audit job: explain the sample in small batches (reporting progress), rank tokens per class,
    flip-test the top ones (the library's audit does both), and mark where each example's token sits."""
    texts, labels, corpus = _audit_corpus(model, req)
    if req.target == "label" and labels is None:
        raise ValueError(f"{model.name}'s labels {model.labels} are not the corpus labels: use target 'predicted'")
    done = 0
    report(0, len(texts), "explaining")

    explainer = make_explainer(model, req.method, **req.params.of(req.method))  # one for the whole audit

    def explain_batch(model, texts_, method, target=None, progress=None):
        nonlocal done
        out = explainer.explain_batch(texts_, target, progress=progress)
        done += len(out)
        report(done, len(texts), "flip test" if done == len(texts) and req.flip else "explaining")
        return out

    result = text_audit.audit(model, texts, labels, method=req.method, target=req.target, rank_by=req.rank_by,
                              normalize=req.normalize, min_count=req.min_count, flip_top=req.flip, batch_size=16,
                              progress=False, explain_batch=explain_batch)
    out = result.to_dict(top=req.top)
    for ranked in out["tokens"].values():
        for st in ranked:
            for ex in st["examples"]:
                spans = model.token_spans(ex["text"])
                ex["span"] = list(spans[ex["position"]]) if spans else None
    out.update(corpus=corpus, split=req.split, sample=len(texts), labels=list(model.labels),
               figure=json.loads(result.figure(top=min(req.top, 15)).to_json()))
    return out


# ---------------------------------------------------------------------------------- endpoints

@blueprint.get("/explain")
def explain_page():
    return render_template("explain.html", page_data={
        "models": text_classifiers(), "methods": list(textexplain.METHODS), "titles": TITLES,
        "method_inputs": method_inputs(), "default_methods": DEFAULT_METHODS, "max_text_chars": MAX_TEXT_CHARS, "max_tokens": MAX_TOKENS,
        "audit": {"corpora": list(LABELLED_CORPORA), "max_sample": MAX_AUDIT_SAMPLE}})


@blueprint.get("/api/explain/models")
@api(summary="Text classifiers that can be explained, with their labels", tag="explanations", lane=None)
def explain_models():
    """The text classifiers (shipped and user models), the explanation methods, and each model's labels."""
    out = []
    for info in text_classifiers():
        card = info.get("card") or {}
        out.append({**info, "labels": card.get("labels")})
    return {"models": out, "methods": list(textexplain.METHODS), "titles": TITLES}


@blueprint.post("/api/explain")
@api(ExplainRequest, summary="Explain one text with several methods, side by side", tag="explanations", lane="model")
def explain_endpoint(params: ExplainRequest):
    """Predicted probabilities, one row of token scores (and colours) per method, the completeness
    delta where a method promises completeness, and faithfulness numbers per method."""
    with borrow_classifier(params.model) as model:
        return explain_text(model, params)


@blueprint.post("/api/audit")
@api(AuditRequest, summary="Start a corpus audit: the tokens a classifier relies on per class", tag="explanations", lane="model")
def audit_endpoint(params: AuditRequest):
    """Starts (or finds) a background job; poll ``/api/jobs/<id>`` for progress and the ranked tokens,
    their mean attribution, counts, example sentences and the flip test."""
    entry = resources().model_entry(params.model)
    if entry.kind in NOT_CLASSIFIERS:
        raise ApiError(400, f"model {params.model!r} is of kind {entry.kind}, not a text classifier")

    def work(report):
        with _Checked(entry.use(), params.model) as model:
            return run_audit(model, params, report)

    job = jobs().submit("audit", (params.model_dump_json(),), work)
    resp = jsonify(job.info())
    resp.status_code = 202
    return resp
