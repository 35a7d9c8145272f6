"""The Flask app factory: the JSON provider, URL converters, error handlers and security defaults,
and the blueprints of every page, registered in :data:`BLUEPRINTS`.

Adding a page and its API is one new module plus one entry in :data:`BLUEPRINTS`. The module
defines ``blueprint`` (a ``flask.Blueprint``) and, for pages that belong in the navigation bar
and on the landing page, ``PAGES``: a list of ``{"endpoint", "title", "summary"}`` dicts.
API views use :func:`server.validation.api`; they reach models and stores through
:func:`server.context.resources` (``with resources().model(name) as m: ...``; ``resources().store(name)``)
and the app's caches through :func:`server.context.caches`. Serving the app is :mod:`server.serving`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, abort, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.routing import IntegerConverter

from lstmvis.backend import is_url

from . import cells_api, core_api, explain_api, explorer_api, image_api, jobs, pages, seeds_api, textcnn_api, workbench_api
from .caches import Caches
from .concurrency import Gates
from .context import CACHES_KEY, RESOURCES_KEY
from .resources import Resources
from .validation import refuse_foreign_requests, refuse_oversize_streams, register_error_handlers

# Modules that define ``blueprint`` (and optionally ``PAGES``), registered in this order.
BLUEPRINTS = [core_api, pages, explorer_api, cells_api, textcnn_api, jobs, explain_api, image_api, seeds_api,
              workbench_api]

DEFAULT_CONFIG = {
    "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,  # request size limit (bytes); an image upload fits easily
    "DEMO_BUILD": "background",  # background | sync | off: when demo stores that are missing get built
    "MODEL_POOL_SIZE": 2,  # private copies of each model lent to concurrent requests
    "LSTMVIS_CACHE": None,  # where demo stores are cached (default: $LSTMVIS_CACHE or ~/.cache/lstmvis)
    "DEMO": None,  # build and serve the demo stores (default: only when no data directory is given)
    "PROGRESS": True,  # progress bar on stderr while demo stores build
    "RESOURCES": None,  # a ready Resources object to share (tests, benchmarks)
    "JSON_DIGITS": 5,  # floats in state arrays are rounded to this many decimals
    "PLOTLY_COMPILE_HINT": True,  # serve plotly.js with V8's eager-compile hint (see core_api.PlotlyBundle)
    "COMPUTE_SLOTS": None,  # API requests computing at once per lane (None: one per core; 0: no limit)
    "JOB_WORKERS": 1,  # background jobs (corpus audits, t-SNE) running at once
    "INDEX_JOB_VALUES": 20_000_000,  # a match index of more values (tokens x cells) is built as a job
    "INDEX_WAIT_S": 5.0,  # a small store's request waits this long for the index job a page started before a 202
    "FRAME_ANCESTORS": [],  # origins whose pages may show the tool in an iframe (notebooks; default: none)
    "WORKBENCH_CORPORA": (),  # CSV/JSONL files (lstmvis serve --corpus) the workbench offers as file:NAME
}

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")


class NumpyJSONProvider(DefaultJSONProvider):
    """JSON that understands numpy scalars and arrays, and writes NaN/inf as null (valid JSON)."""

    sort_keys = False

    @staticmethod
    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            if o.dtype.kind == "f" and not np.isfinite(o).all():
                return np.where(np.isfinite(o), o, None).tolist()
            return o.tolist()
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o) if math.isfinite(o) else None
        if isinstance(o, np.bool_):
            return bool(o)
        if isinstance(o, Path):
            return str(o)
        return DefaultJSONProvider.default(o)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        # Python floats (and np.float64, a float subclass) never reach ``default``: a NaN among them
        # would be written as the bare word NaN, which JSON.parse in the browser rejects.
        try:
            return super().dumps(obj, allow_nan=False, **kwargs)
        except ValueError:
            return super().dumps(_finite(obj), allow_nan=False, **kwargs)


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (containers copied)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class BoundedIntConverter(IntegerConverter):
    """``<int:...>`` with at most 18 digits: longer numbers are no route (404), not a ValueError in
    Python's int() (over 4300 digits) that would surface as a 500."""

    regex = r"\d{1,18}"


def host_name(header: str) -> str:
    """The host of a ``Host`` header, lower-cased, without the port (IPv6 keeps its brackets).

    Our own parser: werkzeug 3.1.9's TRUSTED_HOSTS cuts every entry at its first ``:``, so no
    IPv6 name (``[::1]``) can ever be trusted there.
    """
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1]
    return header.partition(":")[0]


def create_app(data_dir: str | os.PathLike | None = None, config: dict | None = None) -> Flask:
    """Build the Flask app.

    ``data_dir=None`` serves the bundled demo (shipped models, demo stores built once and cached);
    a directory serves the state stores (``*.h5``) and checkpoints (``*.pt``) found inside it.
    ``config`` overrides :data:`DEFAULT_CONFIG` and any Flask setting.
    """
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.url_map.converters["int"] = BoundedIntConverter
    # No slash merging: a doubled slash is no route (404) rather than a redirect to a merged path, so a
    # store name (``<path:store>``, stores in --data subfolders) can never start with "/".
    app.url_map.merge_slashes = False
    app.json = NumpyJSONProvider(app)
    app.config.update(DEFAULT_CONFIG)
    app.config.update(DEBUG=False, PROPAGATE_EXCEPTIONS=False, TRAP_HTTP_EXCEPTIONS=False,
                      SEND_FILE_MAX_AGE_DEFAULT=3600)
    app.config.update(config or {})
    app.config["DATA_DIR"] = None if data_dir is None else str(data_dir) if is_url(data_dir) else \
        str(Path(data_dir).resolve())

    res = app.config["RESOURCES"]
    if res is None:
        res = Resources(data_dir, cache_dir=app.config["LSTMVIS_CACHE"], demo=app.config["DEMO"],
                        build=app.config["DEMO_BUILD"], pool_size=app.config["MODEL_POOL_SIZE"],
                        progress=app.config["PROGRESS"])
    app.extensions[RESOURCES_KEY] = res
    app.extensions[CACHES_KEY] = Caches()
    app.extensions[jobs.RUNNER_KEY] = jobs.JobRunner(workers=app.config["JOB_WORKERS"])
    slots = app.config["COMPUTE_SLOTS"]
    app.extensions["lstmvis_gates"] = Gates(slots) if slots != 0 else None

    register_error_handlers(app)
    nav: list[dict] = []
    for module in BLUEPRINTS:
        app.register_blueprint(module.blueprint)
        nav.extend(getattr(module, "PAGES", ()))
    app.config["NAV_PAGES"] = nav

    @app.context_processor
    def _nav():
        return {"nav_pages": nav, "plotly_url": core_api.plotly_url}

    allowed_hosts = {h.lower() for h in app.config.get("ALLOWED_HOSTS") or ()}
    if allowed_hosts:
        @app.before_request
        def _refuse_foreign_hosts():
            host = host_name(request.headers.get("Host", ""))
            if host not in allowed_hosts:
                abort(400, description=f"Host {host!r} is not trusted: this server answers only "
                                       f"{', '.join(sorted(allowed_hosts))} (add a name with --allow-host)")

    app.before_request(refuse_foreign_requests)
    app.before_request(refuse_oversize_streams)

    ancestors = [a for a in app.config["FRAME_ANCESTORS"] or () if a.isprintable() and not set(a) & set(" ;,'")]
    csp = CSP.replace("frame-ancestors 'none'", "frame-ancestors 'self' " + " ".join(ancestors)) if ancestors else CSP

    @app.after_request
    def _security_headers(resp):
        resp.headers.setdefault("Content-Security-Policy", csp)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        if not ancestors:  # with frame-ancestors in the CSP, browsers ignore X-Frame-Options
            resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return resp

    return app
