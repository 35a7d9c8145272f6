"""The Flask app factory, its security defaults, and the ``lstmvis serve`` command.

Adding a page and its API is one new module plus one line in :data:`BLUEPRINTS`. The module
defines ``blueprint`` (a ``flask.Blueprint``) and, for pages that belong in the navigation bar
and on the landing page, ``PAGES``: a list of ``{"endpoint", "title", "summary"}`` dicts.
API views use :func:`server.validation.api`; they reach models and stores through
:func:`resources` (``with resources().model(name) as m: ...``; ``resources().store(name)``).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import hashlib
import importlib
import io
import ipaddress
import math
import os
import queue
import socket
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Any

import numpy as np
from flask import Blueprint, Flask, abort, current_app, request, url_for
from flask.json.provider import DefaultJSONProvider
from werkzeug.routing import IntegerConverter

from lstmvis.allocator import tune_allocator

from .concurrency import Gates
from .resources import Resources
from .validation import api, openapi_document, register_error_handlers

# Modules that define ``blueprint`` (and optionally ``PAGES``), registered in this order.
BLUEPRINTS = [
    "server.pages",
    "server.states_api",
    "server.jobs",
    "server.explain_api",
    "server.image_api",
]

DEFAULT_PORT = 8765
DEFAULT_CONFIG = {
    "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,  # request size limit (bytes); an image upload fits easily
    "DEMO_BUILD": "background",  # background | sync | off: when demo stores that are missing get built
    "MODEL_POOL_SIZE": 2,  # private copies of each model lent to concurrent requests
    "LSTMVIS_CACHE": None,  # where demo stores are cached (default: $LSTMVIS_CACHE or ~/.cache/lstmvis)
    "DEMO": None,  # build and serve the demo stores (default: only when no data directory is given)
    "PROGRESS": True,  # progress bar on stderr while demo stores build
    "RESOURCES": None,  # a ready Resources object to share (tests, benchmarks)
    "JSON_DIGITS": 5,  # floats in state arrays are rounded to this many decimals
    "PLOTLY_COMPILE_HINT": True,  # serve plotly.js with V8's eager-compile hint (see PlotlyBundle)
    "COMPUTE_SLOTS": None,  # API requests computing at once per lane (None: one per core; 0: no limit)
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


def resources() -> Resources:
    """The registry of models and stores of the app handling this request."""
    return current_app.extensions["lstmvis"]


core = Blueprint("core", __name__)


@core.get("/api/openapi.json")
@api(summary="This OpenAPI 3.1 document, generated from the request models", tag="meta", lane=None)
def openapi():
    """The OpenAPI document of every JSON endpoint."""
    return openapi_document(current_app)


@core.get("/api/status")
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


YEAR = 365 * 24 * 3600


def plotly_bundle() -> PlotlyBundle:
    return PlotlyBundle.installed(current_app.config["PLOTLY_COMPILE_HINT"])


def plotly_url() -> str:
    """The versioned address of plotly.js, for templates (``{{ plotly_url() }}``)."""
    return url_for("core.plotly_versioned", tag=plotly_bundle().tag)


@core.get("/static/vendor/plotly.min.js")
def plotly_js():
    """plotly.js from the installed plotly package: no CDN, nothing downloads (unversioned address: an hour's cache)."""
    return plotly_bundle().response(max_age=3600)


@core.get("/static/vendor/plotly-<tag>/plotly.min.js")
def plotly_versioned(tag: str):
    """plotly.js under an address that names its version and content: cached for a year."""
    bundle = plotly_bundle()
    if tag != bundle.tag:
        abort(404)
    return bundle.response(max_age=YEAR)


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
    app.config["DATA_DIR"] = str(Path(data_dir).resolve()) if data_dir is not None else None

    res = app.config["RESOURCES"]
    if res is None:
        res = Resources(data_dir, cache_dir=app.config["LSTMVIS_CACHE"], demo=app.config["DEMO"],
                        build=app.config["DEMO_BUILD"], pool_size=app.config["MODEL_POOL_SIZE"],
                        progress=app.config["PROGRESS"])
    app.extensions["lstmvis"] = res
    slots = app.config["COMPUTE_SLOTS"]
    app.extensions["lstmvis_gates"] = Gates(slots) if slots != 0 else None

    register_error_handlers(app)
    app.register_blueprint(core)
    nav: list[dict] = []
    for module_name in BLUEPRINTS:
        module = importlib.import_module(module_name)
        app.register_blueprint(module.blueprint)
        nav.extend(getattr(module, "PAGES", ()))
    app.config["NAV_PAGES"] = nav

    @app.context_processor
    def _nav():
        return {"nav_pages": nav, "plotly_url": plotly_url}

    allowed_hosts = {h.lower() for h in app.config.get("ALLOWED_HOSTS") or ()}
    if allowed_hosts:
        @app.before_request
        def _refuse_foreign_hosts():
            host = host_name(request.headers.get("Host", ""))
            if host not in allowed_hosts:
                abort(400, description=f"Host {host!r} is not trusted: this server answers only "
                                       f"{', '.join(sorted(allowed_hosts))} (add a name with --allow-host)")

    @app.after_request
    def _security_headers(resp):
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return resp

    return app


# ------------------------------------------------------------------------------------- serving

def host_name(header: str) -> str:
    """The host of a ``Host`` header, lower-cased, without the port (IPv6 keeps its brackets).

    Our own parser: werkzeug 3.1.9's TRUSTED_HOSTS cuts every entry at its first ``:``, so no
    IPv6 name (``[::1]``) can ever be trusted there.
    """
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1]
    return header.partition(":")[0]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ReusedThreadsMixIn:
    """Like ``socketserver.ThreadingMixIn`` (every connection gets a thread of its own, none waits for
    another), except that a thread which has answered its connection waits up to
    :attr:`idle_seconds` for the next one instead of exiting.

    Clients that do not keep connections alive (and werkzeug's own handler, which closes every one)
    open a connection per request, so with ThreadingMixIn every request ran on a brand-new thread:
    its first large allocations came from a fresh malloc arena (page faults on every tensor), which
    made a 50-token IG explanation cost about 75 ms of CPU instead of 50 (and a match about 1 ms
    more). Reused threads keep their warm arenas. Idle threads beyond the current need exit after
    ``idle_seconds``; there is no upper bound, as with ThreadingMixIn.
    """

    daemon_threads = True
    idle_seconds = 60.0

    def _reuse_state(self):
        state = vars(self).get("_reuse")
        if state is None:
            state = vars(self).setdefault("_reuse", (threading.Lock(), queue.SimpleQueue(), [0]))
        return state

    def process_request(self, request, client_address):
        lock, pending, idle = self._reuse_state()
        with lock:
            reuse = idle[0] > 0
            if reuse:
                idle[0] -= 1  # that waiting thread is now committed to take this connection
        if reuse:
            pending.put((request, client_address))
        else:
            threading.Thread(target=self._serve_connections, args=(request, client_address),
                             name="http-worker", daemon=self.daemon_threads).start()

    def _serve_connections(self, request, client_address):
        lock, pending, idle = self._reuse_state()
        while True:
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
            with lock:
                idle[0] += 1
            while True:
                try:
                    request, client_address = pending.get(timeout=self.idle_seconds)
                    break
                except queue.Empty:
                    with lock:
                        if idle[0] > 0:  # nobody committed this thread to a connection: retire
                            idle[0] -= 1
                            return
                    # a connection was handed to this thread just as it timed out: take it


_failed = threading.local()  # set on a request thread when werkzeug reports an error in its request


def make_server(app: Flask, host: str = "127.0.0.1", port: int = DEFAULT_PORT):
    """A threaded WSGI server (werkzeug's, without reloader or debugger, with reused request threads:
    :class:`ReusedThreadsMixIn`); port 0 picks a free one."""
    from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler

    class JSONErrorRequestHandler(WSGIRequestHandler):
        """werkzeug's request handler with two changes.

        * Errors the HTTP layer answers before Flask sees the request (a request line over 64 KiB,
          malformed syntax) come in the API's JSON error shape too, not as an HTML page.
        * Keep-alive: werkzeug closes every connection after one answer, because it cannot tell
          where a request body the app left unread ends and the next request begins. Here a
          request whose body has a known length (``Content-Length`` up to the app's limit, no chunked
          encoding, no ``Expect: 100-continue``) has its body read whole before the app runs (as
          waitress does), so the next request on the connection starts right after it, and the
          connection stays open; an HTTP/1.0 request, ``Connection: close``, any other body, a body
          cut short, or an error while sending keep werkzeug's close. A connection idle for
          :attr:`keep_alive_seconds` is closed. Each request on a connection gets its own answer
          in order, on the connection's thread.
        """

        keep_alive_seconds = 15.0
        _keep = False
        _served = 0

        def send_error(self, code, message=None, explain=None):
            import json
            self._keep = False
            short, long = self.responses.get(code, ("error", ""))
            text = f"{message or short}: {explain or long}".rstrip(": ")
            body = json.dumps({"error": {"status": int(code), "message": text}}).encode()
            self.log_error("code %d, message %s", code, message or short)
            self.send_response(code, message)
            self.send_header("Connection", "close")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 205, 304):
                self.wfile.write(body)

        def setup(self):
            super().setup()
            # No Nagle delay: the headers and the body of an answer are two writes, and on a kept-alive
            # connection the second would wait for the client's delayed ACK of the first (40 ms).
            with contextlib.suppress(OSError, AttributeError):
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def handle_one_request(self):
            # Between requests the socket waits at most keep_alive_seconds for the next request line;
            # while a request is handled it has no time limit (as with werkzeug).
            self.connection.settimeout(self.keep_alive_seconds if self._served else None)
            self._served += 1
            super().handle_one_request()

        def parse_request(self):
            ok = super().parse_request()
            self.connection.settimeout(None)
            return ok

        def log_error(self, format, *args):
            if self._served > 1 and format.startswith("Request timed out"):
                return  # an idle keep-alive connection closed: nothing went wrong
            super().log_error(format, *args)

        def _body_length(self) -> int | None:
            """The request body's length when the connection may stay open after this request."""
            if (self.request_version != "HTTP/1.1" or self.close_connection or "Transfer-Encoding" in self.headers
                    or "Expect" in self.headers):
                return None
            length = self.headers.get("Content-Length", "0").strip()
            limit = self.server.app.config.get("MAX_CONTENT_LENGTH") or 0
            if not length.isdigit() or len(length) > 18 or int(length) > limit:
                return None
            return int(length)

        def run_wsgi(self):
            length = self._body_length()
            if length is None:
                return super().run_wsgi()
            raw = self.rfile
            body = raw.read(length) if length else b""
            self.rfile, self._keep = io.BytesIO(body), len(body) == length  # short: the client stopped sending
            _failed.on = False
            try:
                super().run_wsgi()
            finally:
                self.rfile, self._keep = raw, False
            if _failed.on:  # werkzeug caught an error while sending: the answer may be cut short
                self.close_connection = True

        def send_header(self, keyword, value):
            if self._keep and keyword.lower() == "connection" and value.lower() == "close":
                return  # werkzeug closes unconditionally; here the body was read whole, so the next request is next
            super().send_header(keyword, value)

    class ReusedThreadsWSGIServer(ReusedThreadsMixIn, BaseWSGIServer):
        multithread = True

        def log(self, type: str, message: str, *args) -> None:
            if type == "error":
                _failed.on = True  # werkzeug logs an error it caught while running the app or sending
            super().log(type, message, *args)

    return ReusedThreadsWSGIServer(host, port, app, handler=JSONErrorRequestHandler)


def _cmd_serve(args: argparse.Namespace) -> int:
    if not is_loopback(args.host):
        print("\n" + "!" * 78 + f"\nWARNING: serving on {args.host}, reachable from other machines.\n"
              "Anyone who can reach this port can run the models and read every store in the data\n"
              "directory. There is no authentication. Use --host 127.0.0.1 unless you mean it.\n"
              + "!" * 78 + "\n", file=sys.stderr)
    if args.data is not None and not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data}: no such directory")
    tune_allocator()  # before any thread starts: the arena limit counts from the first extra arena
    import torch

    # Concurrent requests are the parallelism: one intra-op thread each, so that torch's worker
    # threads do not fight over the cores (spin-waiting threads make small models many times slower).
    torch.set_num_threads(1)
    config = {"LSTMVIS_CACHE": args.cache} if args.cache else {}
    if is_loopback(args.host):  # DNS rebinding: a web page must not reach this server under a name of its own
        config["ALLOWED_HOSTS"] = ["localhost", "127.0.0.1", "[::1]", *getattr(args, "allow_host", [])]
    app = create_app(args.data, config)
    try:
        server = make_server(app, args.host, args.port)
    except OSError as exc:
        raise ValueError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
                         f"choose another port with --port") from None
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown_host}:{server.server_port}/"
    what = f"the stores and models in {args.data}" if args.data else "the bundled demo"
    print(f"lstmvis: serving {what} at {url}  (Ctrl+C to stop)", file=sys.stderr, flush=True)
    if not args.no_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("lstmvis: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def add_serve(sub) -> None:
    """Register ``lstmvis serve`` on the CLI's subparsers."""
    p = sub.add_parser(
        "serve", help="open the browser tool (no arguments: the bundled demo)",
        description="Serve the browser tool: the hidden-state explorer, cell discovery, text-CNN filters, text "
                    "explanations and image methods. With no arguments it serves the bundled demo (shipped models; demo "
                    "state stores are built once, with a progress bar, and cached in $LSTMVIS_CACHE or "
                    "~/.cache/lstmvis). With --data DIR it serves the *.h5 state stores and *.pt checkpoints "
                    "in DIR. It listens on 127.0.0.1 only, unless --host says otherwise.")
    p.add_argument("--data", metavar="DIR", help="serve the stores and checkpoints in DIR instead of the demo")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; "
                   "0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; anything else "
                   "exposes the tool to the network)")
    p.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    p.add_argument("--cache", metavar="DIR", help="where demo stores are cached (default $LSTMVIS_CACHE or "
                   "~/.cache/lstmvis)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to this host name, e.g. the name a reverse proxy forwards "
                        "(on loopback only localhost, 127.0.0.1 and [::1] are answered, against DNS rebinding)")
    p.set_defaults(func=_cmd_serve)

