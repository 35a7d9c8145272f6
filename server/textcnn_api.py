"""The text-CNN page's JSON API: what each Conv1d filter of a text CNN detects, as its top-activating
n-grams over the texts of a store (``lstmvis.textcnn`` does the work)."""
from __future__ import annotations

from flask import Blueprint
from pydantic import Field

from lstmvis import top_ngrams
from lstmvis.textcnn import conv_stack

from .context import caches, resources
from .validation import ApiError, Params, api

blueprint = Blueprint("textcnn_api", __name__, url_prefix="/api")


class TextCNNQuery(Params):
    model: str | None = Field(None, max_length=200, description="a text-CNN classifier (default: the first loaded)")
    store: str | None = Field(None, max_length=300, description="corpus: the texts of this store (default: the "
                              "first ready store with texts)")
    layer: str | None = Field(None, max_length=100, description="one Conv1d layer, e.g. convs.0 (default: all)")
    k: int = Field(9, ge=1, le=50, description="top n-grams per filter")


def maps_as_textcnn(entry) -> bool:
    """Whether ``lstmvis.textcnn`` can map the receptive fields of the classifier's Conv1d stack: asked
    once per model entry, on a lent copy (a model that cannot be loaded or probed is no text CNN)."""
    if entry.kind != "classifier" or entry.problem:
        return False

    def probe() -> bool:
        try:
            with entry.use() as model:
                conv_stack(model.module)
        except Exception:  # noqa: BLE001 -- UnsupportedLayout, no .module, a forward pass that fails: not mappable
            return False
        return True
    return caches().textcnn_mappable.get((entry.name, id(entry)), probe)


def fits(model_tokenization: str | None, store_tokenization: str | None) -> bool:
    """Whether a model may read a store's texts: the same tokenization, or one of them not known
    (offered, marked as such on the page)."""
    return model_tokenization is None or store_tokenization is None or model_tokenization == store_tokenization


def textcnn_models() -> list[dict]:
    """The classifiers whose Conv1d filters the text-CNN page can show (any layout lstmvis.textcnn maps)."""
    res = resources()
    res.refresh()
    return [m.info() for m in res.models.values() if maps_as_textcnn(m)]


def _filters_report(name: str, store, k: int) -> dict:
    """Every filter's top ``k`` n-grams over the store's texts, each also as it reads in the original text."""
    texts = [store.sequence_text(i) for i in range(store.n_sequences)]
    with resources().model(name) as model:
        try:
            conv_stack(model.module)
        except TypeError as exc:
            raise ApiError(400, f"model {name!r} has no Conv1d filters to show: {exc}") from None
        result = top_ngrams(model, texts, k=k, progress=False)
        spans = {h.text_index: model.token_spans(texts[h.text_index]) for f in result.filters for h in f.ngrams}
    report = result.to_dict()
    for f, filt in zip(report["filters"], result.filters):
        f["max"] = filt.ngrams[0].activation if filt.ngrams else None
        for hit, h in zip(f["ngrams"], filt.ngrams):
            sp = spans[h.text_index]
            hit["original"] = texts[h.text_index][sp[h.start][0]:sp[h.stop - 1][1]] if sp else " ".join(h.tokens)
    return report


def filters_report(model: str | None, store: str | None, k: int) -> tuple[str, object, dict]:
    """The model's name, the corpus store and every filter's top ``k`` n-grams over its texts, for the
    model and store asked for (defaults: the first text CNN; the sentiment store, else the first
    ready store with texts); computed once per model, store and k, concurrent first requests wait."""
    res = resources()
    cnns = [m["name"] for m in textcnn_models()]
    name = model or (cnns[0] if cnns else None)
    if name is None:
        raise ApiError(404, "no text-CNN model is loaded")
    entry = res.model_entry(name)
    if entry.kind != "classifier":
        raise ApiError(400, f"model {name!r} is a {entry.kind}, not a text classifier with Conv1d filters")
    tokenization = entry.tokenization if entry.loaded else None
    stores = [s for s in res.stores.values() if s.status == "ready" and s.open().has_texts
              and fits(tokenization, s.open().tokenization)]
    store_name = store or next((s.name for s in stores if s.name == "sentiment"), None) or \
        (stores[0].name if stores else None)
    if store_name is None:
        raise ApiError(409, f"no ready store with texts cut as {name!r} cuts them ({tokenization}) to use as the corpus")
    s = res.store(store_name)
    if not s.has_texts:
        raise ApiError(409, f"store {store_name!r} keeps no original texts to run the model on")
    if not fits(tokenization, s.tokenization):
        fitting = ", ".join(x.name for x in stores) or "none is loaded"
        raise ApiError(400, f"store {store_name!r} is tokenized by {s.tokenization!r}, model {name!r} by "
                            f"{tokenization!r}: its n-grams would not be the units the model was trained on; pick a "
                            f"store extracted with the model's tokenizer ({fitting}), or extract one with "
                            f"lstmvis.extract({name!r}, texts, path)")
    report = caches().textcnn_reports.get((name, store_name, str(s.path), k),
                                          lambda: {**_filters_report(name, s, k), "model": name,
                                                   "store": store_name, "k": k, "models": cnns})
    return name, s, report


@blueprint.get("/textcnn/filters")
@api(TextCNNQuery, summary="Top-activating input n-grams of every Conv1d filter of a text CNN", tag="textcnn")
def textcnn_filters(params: TextCNNQuery):
    """For each filter, the ``k`` highest pre-activation outputs over the store's texts, each shown as
    the n-gram under its receptive field (and as it reads in the original text)."""
    _, _, report = filters_report(params.model, params.store, params.k)
    if params.layer is not None:
        if params.layer not in report["fields"]:
            raise ApiError(404, f"unknown layer {params.layer!r}: the model has {', '.join(report['fields'])}")
        return {**report, "filters": [f for f in report["filters"] if f["layer"] == params.layer]}
    return report
