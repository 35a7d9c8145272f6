"""The classifier workbench: page and API over a labelled corpus and a text classifier.

The numbers are the library's (``textexplain.workbench.Workbench``, ``metrics``,
``counterfactuals``, ``projection``, ``audit.global_explanations``); this module only names
corpora, validates requests, keeps one ``Workbench`` per (model, corpus) in the app's caches and
runs the slow views (UMAP, t-SNE, global explanations) as jobs. The table is paged, sorted and
filtered on the server, so a 100k-row corpus is never sent whole. Every view takes the same
selection parameters (filters, and ``ids`` or a ``selection`` token for a lasso on the projector),
so a selection is shared by putting the same parameters in each request (and in the page's URL).

Corpora: ``rotten_tomatoes:test`` and the other shipped splits; ``store:NAME`` for a state store
with texts (its meta tracks, read at each sequence's first token, become columns; a ``label``
track the gold label); ``file:NAME`` for a CSV/JSONL named with ``lstmvis serve --corpus FILE``.
The Workbench keeps the lent model copy only for its vocabulary and tokenizer, never calls it again.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from flask import Blueprint, current_app, jsonify, render_template
from pydantic import BeforeValidator, Field

import textexplain
from data.provider import LABELLED_CORPORA, load_labelled_corpus
from textexplain import audit as text_audit
from textexplain import counterfactuals, projection
from textexplain.methods import make_explainer
from textexplain.workbench import MAX_PAGE, SLICE_KINDS, RowFilter, Workbench

from .caches import BuiltOnce
from .context import caches, resources
from .explain_api import DEFAULT_METHODS, MAX_TEXT_CHARS, MethodName, MethodParams, _Checked, borrow_classifier, \
    method_inputs, text_classifiers
from .jobs import jobs
from .validation import ApiError, CsvStrs, Params, _split_csv, api

blueprint = Blueprint("workbench_api", __name__)

PAGES = [
    {"endpoint": "workbench_api.workbench_page", "title": "Workbench",
     "summary": "Audit a classifier over a whole labelled corpus: a sortable, filterable table of predictions, "
                "confidence and loss; explain, edit and pin rows; counterfactuals (word swaps, embedding "
                "neighbours, deleting top tokens, HotFlip); two models side by side; an embedding projector; "
                "sliced metrics with calibration; expected saliency, token importance and the audit in one view."},
]

SPLITS = ("train", "dev", "test")
SHIPPED = [f"{c}:{s}" for c in LABELLED_CORPORA for s in SPLITS]
DEFAULT_CORPUS = f"{LABELLED_CORPORA[0]}:test"  # the page opens on the smallest shipped split
PROJECTOR_MAX = 20_000  # rows projected at most (a seeded sample beyond)
GLOBAL_MAX = 1000  # texts per global-explanations job
SELECTIONS_KEPT = 256
CORPORA_KEY = "WORKBENCH_CORPORA"  # app config: paths of --corpus files
MAX_ROW_ID = 2**31 - 1
RowId = Annotated[int, Field(ge=0, le=MAX_ROW_ID)]
RowIds = Annotated[list[RowId], BeforeValidator(_split_csv)]  # ``1,5,7`` in a query string or a JSON list


# ------------------------------------------------------------------------------------ corpora

def read_corpus_file(path: str | Path, what: str = "--corpus") -> dict:
    """``{"texts", "labels", "meta"}`` of a CSV (header row) or JSONL file with the columns
    ``text``, ``label`` and any others (meta columns); ValueError naming the line on bad input
    (``what``: how the messages name the file's origin, ``--corpus`` or ``corpora=``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(f"{what} {path}: give a .csv or .jsonl file (columns text,label[,meta...])")
    rows: list[dict] = []
    with path.open(encoding="utf-8", newline="") as fh:
        if suffix == ".csv":
            reader = csv.DictReader(fh)
            missing = {"text", "label"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{what} {path}: the header must name the columns text and label "
                                 f"(missing: {', '.join(sorted(missing))})")
            rows = list(reader)
        else:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{what} {path}, line {n}: not JSON ({exc.msg})") from None
                if not isinstance(row, dict) or "text" not in row or "label" not in row:
                    raise ValueError(f"{what} {path}, line {n}: each line must be an object with text and label")
                rows.append(row)
    if not rows:
        raise ValueError(f"{what} {path}: no rows")
    for n, row in enumerate(rows, start=1):
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise ValueError(f"{what} {path}, row {n}: the text is empty")
    meta_names = [k for k in rows[0] if k not in ("text", "label")]
    return {"texts": [r["text"] for r in rows], "labels": [str(r["label"]) for r in rows],
            "meta": {k: [str(r.get(k, "")) for r in rows] for k in meta_names}}


def check_corpus_files(paths, what: str = "--corpus") -> list[str]:
    """The absolute paths of the workbench's corpus files, each read once now, so that a bad file is
    refused when the server starts, with the line that is wrong; two files of one name are refused
    (the page names a corpus ``file:NAME`` by its file's name)."""
    if not isinstance(paths, (list, tuple)):
        raise TypeError(f"{what} must be a list of corpus file paths, got {type(paths).__name__}: "
                        "e.g. corpora=['reviews.csv']")
    names: dict[str, str] = {}
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{what}: {path!r} is not a file path")
        path = str(Path(path).expanduser().resolve())
        read_corpus_file(path, what)
        name = Path(path).name
        if name in names and names[name] != path:
            raise ValueError(f"{what}: two corpus files are named {name!r} ({names[name]} and {path}): the workbench "
                             "names a corpus by its file's name; rename one of them")
        names[name] = path
    return list(names.values())


def corpus_files() -> dict[str, Path]:
    return {f"file:{Path(p).name}": Path(p) for p in current_app.config.get(CORPORA_KEY) or ()}


def corpus_names() -> list[str]:
    stores = [f"store:{name}" for name, s in resources().stores.items() if s.status == "ready"]
    return [*SHIPPED, *stores, *corpus_files()]


def load_corpus(name: str) -> dict:
    """Texts, gold labels (or None) and meta columns of a corpus the server knows, or a 404."""
    if name in SHIPPED:
        texts, labels = load_labelled_corpus(name)
        return {"texts": texts, "labels": labels, "meta": {}}
    files = corpus_files()
    if name in files:
        return read_corpus_file(files[name])
    if name.startswith("store:"):
        store = resources().store(name[len("store:"):])
        if not store.has_texts:
            raise ApiError(400, f"store {name[6:]!r} keeps no texts: the workbench needs the texts")
        n = int(store.n_sequences)
        starts = [store.sequence_bounds(i)[0] for i in range(n)]
        meta = {m: store.meta(m)[starts] for m in store.meta_names}
        labels = meta.pop("label", None)
        return {"texts": [store.sequence_text(i) for i in range(n)],
                "labels": None if labels is None else [str(v) for v in labels], "meta": meta}
    raise ApiError(404, f"unknown corpus {name!r}; corpora: {', '.join(corpus_names())}")


def _bench_cache() -> BuiltOnce:
    return caches().workbenches


def workbench(model_name: str, corpus: str) -> Workbench:
    """The Workbench of (model, corpus), built on first use and kept in the app's caches."""
    def build() -> Workbench:
        data = load_corpus(corpus)
        with borrow_classifier(model_name) as model:
            labels = data["labels"]
            if labels is not None and not set(labels) <= set(model.labels):
                unknown = sorted(set(labels) - set(model.labels))[:5]
                raise ApiError(400, f"corpus {corpus!r} has labels {unknown} that {model_name} does not know "
                                    f"(its labels: {model.labels})")
            return Workbench(model, data["texts"], labels, data["meta"], name=corpus)
    if corpus not in corpus_names():
        raise ApiError(404, f"unknown corpus {corpus!r}; corpora: {', '.join(corpus_names())}")
    return _bench_cache().get((model_name, corpus), build)


# ---------------------------------------------------------------------------------- requests

class Selection(Params):
    """Which rows: every filter that is set must hold."""

    model: str = Field(min_length=1, max_length=200, description="a text classifier")
    corpus: str = Field(DEFAULT_CORPUS, min_length=1, max_length=300, description="a corpus name")
    regex: str | None = Field(None, max_length=200, description="regular expression searched in the text")
    label: str | None = Field(None, max_length=200, description="gold label")
    predicted: str | None = Field(None, max_length=200, description="predicted label")
    correct: Literal["correct", "wrong"] | None = Field(None, description="correct or wrong predictions only")
    conf_min: float | None = Field(None, ge=0, le=1, description="lowest confidence kept")
    conf_max: float | None = Field(None, ge=0, le=1, description="highest confidence kept")
    len_min: int | None = Field(None, ge=0, le=100_000, description="fewest tokens kept")
    len_max: int | None = Field(None, ge=0, le=100_000, description="most tokens kept")
    token: str | None = Field(None, max_length=100, description="rows containing this token")
    meta: str | None = Field(None, max_length=300, description="NAME=VALUE: rows whose meta column has the value")
    ids: RowIds | None = Field(None, max_length=PROJECTOR_MAX, description="only these row ids")
    selection: str | None = Field(None, max_length=64, description="a selection token from /api/workbench/selection")
    threshold: float | None = Field(None, ge=0, le=1, description="binary models: p(second label) >= threshold "
                                    "predicts the second label (default: argmax)")


def resolve(sel: Selection) -> tuple[Workbench, np.ndarray]:
    """The Workbench (under the request's decision rule) and the selected row ids."""
    wb = workbench(sel.model, sel.corpus)
    if sel.threshold is not None:
        wb = copy.copy(wb)  # columns recomputed on a shallow copy: the cached one is shared by requests
        wb.set_threshold(sel.threshold)
    meta = {}
    if sel.meta:
        name, eq, value = sel.meta.partition("=")
        if not eq:
            raise ApiError(400, "meta must be NAME=VALUE")
        meta[name] = value
    ids = sel.ids
    if sel.selection:
        kept = caches().workbench_selections.get(sel.selection, lambda: None)
        if kept is None or kept[0] != sel.corpus:
            raise ApiError(404, f"unknown selection {sel.selection!r}: select the rows again")
        ids = list(kept[1]) if ids is None else sorted(set(ids) & set(kept[1]))
    f = RowFilter(regex=sel.regex, label=sel.label, predicted=sel.predicted,
                  correct=None if sel.correct is None else sel.correct == "correct",
                  confidence=(sel.conf_min, sel.conf_max), length=(sel.len_min, sel.len_max), meta=meta,
                  ids=None if ids is None else tuple(ids), token=sel.token)
    return wb, wb.select(f)


class RowsRequest(Selection):
    sort: str = Field("id", max_length=100, description="id, text, label, predicted, confidence, loss, length, "
                      "correct or a meta column")
    desc: bool = Field(False, description="descending order")
    offset: int = Field(0, ge=0, le=10_000_000, description="first row of the page")
    limit: int = Field(50, ge=1, le=MAX_PAGE, description="rows per page")


class MetricsRequest(Selection):
    slice: Literal[SLICE_KINDS] | None = Field(None, description="also the metrics of each slice")  # type: ignore[valid-type]
    slice_meta: str | None = Field(None, max_length=100, description="meta column of a meta slice")
    slice_tokens: CsvStrs | None = Field(None, max_length=20, description="tokens of a token slice")
    bins: int = Field(10, ge=2, le=50, description="calibration bins")


class SelectionRequest(Params):
    model: str = Field(min_length=1, max_length=200)
    corpus: str = Field(min_length=1, max_length=300)
    ids: list[RowId] = Field(max_length=200_000, description="row ids of the selection")


class ProjectionRequest(Selection):
    method: Literal[projection.PROJECTIONS] = Field("pca", description="pca (at once), umap or tsne (a job)")  # type: ignore[valid-type]
    seed: int = Field(0, ge=0, le=2**31 - 1)


class CounterfactualRequest(Params):
    model: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    kind: Literal["replace", "neighbours", "delete", "hotflip"] = Field("hotflip", description="generator")
    replacements: dict[str, list[str]] = Field(default_factory=dict, max_length=50,
                                               description="replace: word -> substitutes")
    k: int = Field(3, ge=1, le=20, description="neighbours per token, or tokens to delete")
    method: MethodName = Field("gradient_x_input", description="delete: the method that ranks tokens")  # type: ignore[valid-type]
    params: MethodParams = Field(default_factory=MethodParams)
    max_changes: int = Field(3, ge=1, le=8, description="hotflip: most substitutions")
    beam: int = Field(4, ge=1, le=16, description="hotflip: states kept per depth")


class GlobalRequest(Selection):
    method: MethodName = Field("gradient_x_input", description="explanation method")  # type: ignore[valid-type]
    params: MethodParams = Field(default_factory=MethodParams)
    sample: int = Field(200, ge=10, le=GLOBAL_MAX, description="seeded sample of the selection")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    importance_top: int = Field(8, ge=0, le=30, description="tokens tested for removal/permutation importance")


# ---------------------------------------------------------------------------------- endpoints

@blueprint.get("/workbench")
def workbench_page():
    return render_template("workbench.html", page_data={
        "models": text_classifiers(), "corpora": corpus_names(), "default_corpus": DEFAULT_CORPUS, "methods": list(textexplain.METHODS),
        "method_inputs": method_inputs(), "default_methods": DEFAULT_METHODS[:2], "max_page": MAX_PAGE,
        "slice_kinds": list(SLICE_KINDS), "projections": list(projection.PROJECTIONS)})


@blueprint.get("/api/workbench/corpora")
@api(summary="Corpora and text classifiers the workbench can open", tag="workbench", lane=None)
def corpora_endpoint():
    return {"corpora": corpus_names(), "models": [m["name"] for m in text_classifiers()]}


@blueprint.get("/api/workbench/rows")
@api(RowsRequest, summary="One page of the selected rows, sorted", tag="workbench", lane="model")
def rows_endpoint(params: RowsRequest):
    """Text, gold label, prediction, probabilities, confidence, loss and length of one page of rows."""
    wb, ids = resolve(params)
    chosen = ids if params.sort == "id" and not params.desc else wb.sort(ids, params.sort, params.desc)
    page = chosen[params.offset:params.offset + params.limit]
    return {"total": int(ids.size), "offset": params.offset, "labels": wb.labels, "meta": list(wb.meta),
            "has_labels": wb.gold is not None, "rows": wb.rows(page)}


@blueprint.get("/api/workbench/metrics")
@api(MetricsRequest, summary="Accuracy, per-class scores, confusion matrix and calibration of the selection",
     tag="workbench", lane="model")
def metrics_endpoint(params: MetricsRequest):
    wb, ids = resolve(params)
    out = wb.metrics(ids, bins=params.bins)
    if params.slice:
        out["slices"] = [{"slice": name, **wb.metrics(part, bins=params.bins)} for name, part in
                         wb.slice_ids(ids, params.slice, name=params.slice_meta, tokens=params.slice_tokens or ())]
    return out


@blueprint.post("/api/workbench/selection")
@api(SelectionRequest, summary="Keep a selection of row ids on the server; answers its token", tag="workbench",
     lane=None)
def selection_endpoint(params: SelectionRequest):
    """For selections too long for a URL (a lasso over thousands of points): pass ``selection=TOKEN``."""
    wb = workbench(params.model, params.corpus)
    if params.ids and (min(params.ids) < 0 or max(params.ids) >= len(wb)):
        raise ApiError(400, f"row ids must lie in 0..{len(wb) - 1}")
    token = secrets.token_hex(8)
    caches().workbench_selections.get(token, lambda: (params.corpus, sorted(set(params.ids))))
    return {"selection": token, "n": len(set(params.ids))}


def _features(sel: Selection, wb: Workbench, ids: np.ndarray) -> np.ndarray:
    def build():
        with borrow_classifier(sel.model) as model:
            return projection.penultimate(model, wb.texts)
    return caches().workbench_features.get((sel.model, sel.corpus), build)[ids]


@blueprint.get("/api/workbench/projection")
@api(ProjectionRequest, summary="The penultimate layer of the selected rows in 2-D", tag="workbench", lane="model")
def projection_endpoint(params: ProjectionRequest):
    """PCA answers at once; UMAP and t-SNE answer 202 with a job (poll ``/api/jobs/<id>``)."""
    wb, ids = resolve(params)
    if ids.size > PROJECTOR_MAX:
        ids = np.sort(np.random.default_rng(params.seed).choice(ids, PROJECTOR_MAX, replace=False))
    if ids.size < 2:
        raise ApiError(400, "the selection has fewer than two rows: nothing to project")

    def result(coords: np.ndarray) -> dict:
        return {"method": params.method, "ids": ids, "x": np.round(coords[:, 0], 4), "y": np.round(coords[:, 1], 4),
                "labels": wb.labels, "gold": None if wb.gold is None else wb.gold[ids], "predicted": wb.predicted[ids],
                "confidence": np.round(wb.confidence[ids], 4),
                "meta": {k: v[ids].astype(str) for k, v in wb.meta.items()}}

    if params.method == "pca":
        return result(projection.pca(_features(params, wb, ids))[0])
    feats = _features(params, wb, ids)

    def work(report):
        report(0, 1, params.method)
        out = result(projection.project(feats, params.method, params.seed))
        report(1, 1, "done")
        return out

    job = jobs().submit("projection", (params.model_dump_json(),), work)
    resp = jsonify(job.info())
    resp.status_code = 202
    return resp


@blueprint.post("/api/workbench/counterfactuals")
@api(CounterfactualRequest, summary="Counterfactual texts of one text, with the model's predictions",
     tag="workbench", lane="model")
def counterfactuals_endpoint(params: CounterfactualRequest):
    with borrow_classifier(params.model) as model:
        if params.kind == "replace":
            if not params.replacements:
                raise ApiError(400, "replace needs replacements: {word: [substitutes]}")
            items = counterfactuals.replace_words(model, params.text, params.replacements)
        elif params.kind == "neighbours":
            items = counterfactuals.neighbour_replacements(model, params.text, params.k)
        elif params.kind == "delete":
            e = make_explainer(model, params.method, **params.params.of(params.method)).explain(params.text)
            items = counterfactuals.delete_top_tokens(model, params.text, e.scores, params.k)
        else:
            r = counterfactuals.hotflip(model, params.text, max_changes=params.max_changes, beam=params.beam)
            note = (", ".join(f"{c['old']} -> {c['new']}" for c in r.changes) +
                    ("" if r.flipped else f" (no flip within {params.max_changes} changes)"))
            items = [{"text": r.text, "kind": "hotflip", "note": note, "flipped": r.flipped,
                      "n_changes": len(r.changes), "evaluated": r.evaluated}]
        base = model.predict_proba(params.text)[0]
        return {"text": params.text, "labels": list(model.labels), "probs": base.tolist(),
                "predicted": model.labels[int(np.argmax(base))],
                "counterfactuals": counterfactuals.with_predictions(model, items)}


@blueprint.post("/api/workbench/global")
@api(GlobalRequest, summary="Start the global view of the selection: expected saliency, token importance, audit",
     tag="workbench", lane="model")
def global_endpoint(params: GlobalRequest):
    """A job: a seeded sample of the selection is explained once; the audit's token ranking and flip
    tests, the mean attribution per token (overall and per gold-label slice) and the accuracy drop
    when each top token is removed or permuted come back together."""
    wb, ids = resolve(params)
    if ids.size == 0:
        raise ApiError(400, "the selection is empty")
    keep = np.sort(np.random.default_rng(params.seed).choice(ids, min(params.sample, ids.size), replace=False))
    texts = [wb.texts[i] for i in keep]
    labels = None if wb.gold is None else [wb.labels[wb.gold[i]] for i in keep]
    slices = None if labels is None else {lab: [j for j, y in enumerate(labels) if y == lab] for lab in wb.labels}
    entry = resources().model_entry(params.model)

    def work(report):
        done = 0
        report(0, len(texts), "explaining")
        with _Checked(entry.use(), params.model) as model:
            explainer = make_explainer(model, params.method, **params.params.of(params.method))

            def explain_batch(model_, batch, method=None, target=None, progress=None, **_):
                nonlocal done
                out = explainer.explain_batch(batch, target, progress=False)
                done += len(out)
                report(done, len(texts), "explaining" if done < len(texts) else "importance and flip tests")
                return out

            out = text_audit.global_explanations(model, texts, labels, method=params.method, slices=slices,
                                                 importance_top=params.importance_top, seed=params.seed,
                                                 explain_batch=explain_batch, batch_size=16, flip_top=3)
        out["rows"] = keep.tolist()
        return out

    job = jobs().submit("workbench-global", (params.model_dump_json(),), work)
    resp = jsonify(job.info())
    resp.status_code = 202
    return resp
