"""The app's own routes: the OpenAPI document, the server's status, and plotly.js from the installed
plotly package (no CDN, nothing downloads)."""
from __future__ import annotations

import functools
import gzip
import hashlib
from pathlib import Path

from flask import Blueprint, abort, current_app, request, url_for

from .context import resources
from .validation import api, openapi_document

blueprint = Blueprint("core", __name__)

YEAR = 365 * 24 * 3600


@blueprint.get("/api/openapi.json")
@api(summary="This OpenAPI 3.1 document, generated from the request models", tag="meta", lane=None)
def openapi():
    """The OpenAPI document of every JSON endpoint."""
    return openapi_document(current_app)


@blueprint.get("/api/status")
@api(summary="Loaded models and stores, and the state of the demo build", tag="meta", lane=None)
def status():
    """Which models and stores are loaded, and whether demo stores are still building."""
    return resources().summary()


class PlotlyBundle:
    """plotly.min.js from the installed plotly package, read once and kept ready to send.

    * a versioned URL (``/static/vendor/plotly-<plotly version>-<content hash>/plotly.min.js``) that may be
      cached for a year: a second visit takes plotly.js (and Chromium its compiled code) from the cache;
    * gzip-compressed once (4.8 MB -> about 1.4 MB) for clients that accept it;
    * one line in front of the package's file, the V8 compile hint ``//# allFunctionsCalledOnLoad``
      (Chromium 136+; other browsers read a comment): plotly.js runs nearly all of its code while it
      loads, so compiling it eagerly on the background thread that already parses the streamed
      script saves the main thread a lazy compile of most functions. The package's bytes follow unchanged.
    """

    COMPILE_HINT = b"//# allFunctionsCalledOnLoad\n"

    def __init__(self, path: Path, version: str, compile_hint: bool = True):
        raw = path.read_bytes()
        self.body = (self.COMPILE_HINT if compile_hint else b"") + raw
        digest = hashlib.sha256(self.body).hexdigest()
        self.tag = f"{version}-{digest[:12]}"
        self.etag = digest[:32]
        self.gzip = gzip.compress(self.body, compresslevel=6, mtime=0)

    @classmethod
    @functools.cache
    def installed(cls, compile_hint: bool = True) -> "PlotlyBundle":
        import plotly
        path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
        return cls(path, plotly.__version__, compile_hint)

    def response(self, max_age: int):
        from flask import Response
        zipped = "gzip" in request.accept_encodings
        resp = Response(self.gzip if zipped else self.body, mimetype="text/javascript")
        if zipped:
            resp.headers["Content-Encoding"] = "gzip"
        resp.headers["Vary"] = "Accept-Encoding"
        resp.set_etag(self.etag + ("-gz" if zipped else ""))
        resp.cache_control.public = True
        resp.cache_control.max_age = max_age
        if max_age >= YEAR:
            resp.cache_control.immutable = True
        return resp.make_conditional(request)


def plotly_bundle() -> PlotlyBundle:
    return PlotlyBundle.installed(current_app.config["PLOTLY_COMPILE_HINT"])


def plotly_url() -> str:
    """The versioned address of plotly.js, for templates (``{{ plotly_url() }}``)."""
    return url_for("core.plotly_versioned", tag=plotly_bundle().tag)


@blueprint.get("/static/vendor/plotly.min.js")
def plotly_js():
    """plotly.js from the installed plotly package: no CDN, nothing downloads (unversioned address: an hour's cache)."""
    return plotly_bundle().response(max_age=3600)


@blueprint.get("/static/vendor/plotly-<tag>/plotly.min.js")
def plotly_versioned(tag: str):
    """plotly.js under an address that names its version and content: cached for a year."""
    bundle = plotly_bundle()
    if tag != bundle.tag:
        abort(404)
    return bundle.response(max_age=YEAR)
