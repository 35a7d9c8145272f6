"""The HTML pages of the lstmvis side: landing page, hidden-state explorer, cell discovery, text CNN.

Pages are thin Jinja shells; the data arrive through the JSON API, and every token is put on
the page with ``textContent`` (never as HTML), so text from stores or users cannot inject markup.
"""
from __future__ import annotations

from flask import Blueprint, render_template, request

from .context import resources
from .store_views import start_index
from .textcnn_api import textcnn_models

blueprint = Blueprint("pages", __name__)

# Navigation bar and landing page entries, in order.
PAGES = [
    {"endpoint": "pages.explorer", "title": "Explorer",
     "summary": "LSTMVis select and match: brush a phrase in the text, get the cells that are on over it, "
                "and find every other place in the corpus where the same cells fire."},
    {"endpoint": "pages.cells", "title": "Cells",
     "summary": "Find interpretable cells: rank every cell against a hypothesis (inside quotes, bracket "
                "depth, comments, a regex, ...), then see a cell over the text, its top contexts and its gate "
                "saturation, and explain what in the input drives it."},
    {"endpoint": "pages.textcnn", "title": "Text CNN",
     "summary": "What each Conv1D filter of a text CNN detects: its top-activating n-grams over a corpus."},
]


def _page_data(**extra) -> dict:
    """What every page's script needs at start: stores (with their state) and models."""
    res = resources()
    return {"status": res.summary(), **extra}


@blueprint.get("/")
def landing():
    res = resources()
    return render_template("landing.html", status=res.summary())


@blueprint.get("/explorer")
def explorer():
    return render_template("explorer.html", page_data=_page_data(store_info=_first_store_info()))


def _first_store_info() -> dict | None:
    """``/api/stores/<name>`` of the store the explorer opens on (``?store=``, else the first ready one),
    so that the page asks for its first window of tokens and states without waiting for that call."""
    from .validation import ApiError

    res = resources()
    ready = [name for name, s in res.stores.items() if s.status == "ready"]
    name = request.args.get("store", "")
    name = name if name in ready else (ready[0] if ready else None)
    if name is None:
        return None
    try:
        store = res.stores[name].open()
        source = request.args.get("source", "")
        start_index(store, source if source in store.sources else next(iter(store.sources), ""))  # built while the page loads
        return res.stores[name].info(detail=True)
    except (ApiError, OSError):  # the page then asks the API, which explains the problem
        return None


@blueprint.get("/cells")
def cells():
    return render_template("cells.html", page_data=_page_data())


@blueprint.get("/textcnn")
def textcnn():
    return render_template("textcnn.html", page_data=_page_data(textcnn_models=textcnn_models()))


@blueprint.get("/jobs")
def jobs_page():
    """Background jobs: running, queued and recently finished (``/api/jobs``)."""
    return render_template("jobs.html")
