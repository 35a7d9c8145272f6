"""Request validation with pydantic, JSON errors, and the OpenAPI document built from the models.

Every API view is wrapped by :func:`api`: it validates the query string (GET) or the JSON body
(POST) against a pydantic model and hands the parsed model to the view as ``params``. A request
that does not validate gets a 400 JSON error naming each bad field and what is wrong with it.
The same models generate ``/api/openapi.json``, so the document cannot drift from the code.
"""
from __future__ import annotations

import contextlib
import functools
import re
from typing import Annotated, Any, Callable

from flask import Flask, Response, current_app, jsonify, render_template, request
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .concurrency import LANES

OPENAPI_VERSION = "3.1.0"


class ApiError(Exception):
    """An error that becomes a JSON response with this HTTP status and message."""

    def __init__(self, status: int, message: str, **details: Any):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details


class Params(BaseModel):
    """Base of every request model: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _split_csv(value: Any) -> Any:
    """``"1,5 7"`` or ``["1,5", "7"]`` (repeated query keys) -> ``["1", "5", "7"]``."""
    if isinstance(value, str):
        return [v for v in re.split(r"[,\s]+", value.strip()) if v]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [part for v in value for part in _split_csv(v)]
    return value


# ``1,5,7`` in a query string or ``[1, 5, 7]`` in JSON.
CsvInts = Annotated[list[int], BeforeValidator(_split_csv)]
CsvStrs = Annotated[list[str], BeforeValidator(_split_csv)]


def error_response(status: int, message: str, **details: Any) -> Response:
    """The one JSON error shape of the whole API: ``{"error": {"status", "message", ...}}``."""
    resp = jsonify({"error": {"status": status, "message": message, **details}})
    resp.status_code = status
    return resp


def _describe(errors: list[dict]) -> list[dict]:
    out = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ())) or "request"
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            msg = "unknown parameter"
        out.append({"field": where, "message": msg})
    return out


def validation_error(exc: ValidationError, source: str) -> Response:
    problems = _describe(exc.errors(include_url=False))
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return error_response(400, f"invalid {source}: {summary}", problems=problems)


def _raw_params(multi: frozenset[str]) -> tuple[dict, str]:
    """The request's parameters as a plain dict, and where they came from."""
    if request.method in ("GET", "HEAD", "DELETE"):
        raw: dict[str, Any] = {}
        for key in request.args:
            values = request.args.getlist(key)
            raw[key] = values if key in multi or len(values) > 1 else values[0]
        return raw, "query parameters"
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # json.loads on a body like [[[[...]]]] (not a ValueError, so not silenced)
        raise ApiError(400, "the JSON body is nested too deeply") from None
    if body is None:
        raise ApiError(400, "the request body is not valid JSON")
    if not isinstance(body, dict):
        raise ApiError(400, f"the JSON body must be an object, got {type(body).__name__}")
    return body, "JSON body"


# Fetch metadata a browser sends with a request that another page (another site, or another port of
# this machine: ports do not count for "same-site") made: such a request never reaches the API.
FOREIGN_FETCH_SITES = ("cross-site", "same-site")
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def refuse_foreign_requests() -> None:
    """Refuse an API request another web page made, and any API request with a body that is not JSON.

    A page on another origin can make the browser send GETs (``<img src>``) and simple POSTs (forms,
    ``fetch(..., {mode: "no-cors"})``) without asking the server (no CORS preflight). Such a request
    is answered 403 when the browser marks it as foreign: ``Sec-Fetch-Site`` ``cross-site`` or
    ``same-site`` or, from a browser that sends no fetch metadata, an ``Origin`` that is not this
    server's own. Typing the address (``Sec-Fetch-Site: none``), the server's own pages and clients
    that are no browser (scripts, curl) are answered as before. Every request that may carry a body
    must declare ``Content-Type: application/json``, also when the body is empty: a cross-site page
    cannot send that header without a preflight, which this server never allows (415 otherwise).
    """
    if not request.path.startswith("/api/") or request.routing_exception is not None:
        return  # pages may be linked from anywhere; no route: the 404 or 405 says more
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    origin = request.headers.get("Origin")
    if site in FOREIGN_FETCH_SITES or (not site and origin is not None
                                       and origin.rstrip("/") != f"{request.scheme}://{request.host}"):
        raise ApiError(403, "this API answers only the server's own pages and clients that are not a web page "
                            f"of another site (Sec-Fetch-Site: {site or '-'}, Origin: {origin or '-'})")
    if request.method in BODY_METHODS and not request.is_json:
        raise ApiError(415, "send the body as JSON with the header Content-Type: application/json "
                            "(also when it is empty)")


def refuse_oversize_streams() -> None:
    """413 for a body without ``Content-Length`` (chunked) that is longer than ``MAX_CONTENT_LENGTH``.

    werkzeug refuses a declared length over the limit, but a chunked body is only cut at the limit,
    so its first ``MAX_CONTENT_LENGTH`` bytes would be answered as if they were the whole request.
    """
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is None or request.content_length is not None or "wsgi.input_terminated" not in request.environ:
        return
    if len(request.get_data(cache=True)) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


def api(model: type[Params] | None = None, *, summary: str = "", tag: str = "",
        response_example: Any = None, lane: str | None = "store") -> Callable:
    """Validate the request against ``model`` and call the view with ``params=<model instance>``.

    Use it under the blueprint's route decorator. The view returns a dict/list (sent as JSON) or
    a Response. ``summary`` and ``tag`` go into the OpenAPI document. ``lane`` is the queue the
    request waits in for its turn to compute (:mod:`server.concurrency`): ``"store"`` (default),
    ``"model"`` for model calls, None for views that only read small in-memory state.
    """
    if lane is not None and lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}; lanes are {', '.join(LANES)} (or None)")
    multi = frozenset(name for name, f in (model.model_fields.items() if model else ())
                      if getattr(f.annotation, "__origin__", None) is list)

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if model is not None:  # before the queue: a bad request is answered at once
                raw, source = _raw_params(multi)
                try:
                    kwargs["params"] = model.model_validate(raw)
                except ValidationError as exc:
                    return validation_error(exc, source)
            gates = current_app.extensions.get("lstmvis_gates")
            with gates.admit(lane) if gates is not None else contextlib.nullcontext():
                out = view(*args, **kwargs)
                return out if isinstance(out, Response) else jsonify(out)

        wrapper.api_spec = {"model": model, "summary": summary or (view.__doc__ or "").strip().split("\n")[0],
                            "description": (view.__doc__ or "").strip(), "tag": tag,
                            "example": response_example, "lane": lane}
        return wrapper

    return decorate


def wants_html() -> bool:
    """A browser asking for a page (not the JSON API): a 404 then gets a page with the navigation."""
    if request.path.startswith("/api/"):
        return False
    accept = request.accept_mimetypes
    return accept.best_match(["application/json", "text/html"]) == "text/html" and accept["text/html"] > accept["application/json"]


def register_error_handlers(app: Flask) -> None:
    """Every error, from routing (404/405), size limits (413), bad JSON (400) or our own checks,
    comes back as the same JSON shape; an unexpected exception is logged and answered with a
    500 that reveals nothing of the server's internals."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.message, **exc.details)

    @app.errorhandler(ValidationError)
    def _pydantic_error(exc: ValidationError):
        return validation_error(exc, "request")

    @app.errorhandler(ValueError)
    @app.errorhandler(IndexError)
    def _library_refusal(exc: Exception):
        # The libraries refuse bad input (a brush across a sequence end, a range past the end, ...)
        # with ValueError/IndexError and a message naming the fix: that is the client's 400.
        current_app.logger.info("refused %s %s: %s", request.method, request.path, exc)
        return error_response(400, str(exc).strip("'\"") or type(exc).__name__)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        message = exc.description or exc.name
        if exc.code == 413:
            limit = current_app.config.get("MAX_CONTENT_LENGTH")
            message = f"the request is larger than the server's limit of {limit} bytes"
        elif exc.code == 404:
            message = f"no such page or endpoint: {request.path}"
        elif exc.code == 405:
            allowed = ", ".join(sorted(exc.valid_methods or ()))
            message = f"method {request.method} is not allowed on {request.path}; use {allowed}"
        if exc.code == 404 and wants_html():
            return render_template("404.html", path=request.path), 404
        resp = error_response(exc.code or 500, message)
        if exc.code == 405 and exc.valid_methods:
            resp.headers["Allow"] = ", ".join(exc.valid_methods)
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal server error (the server log has the details)")


def _flask_path_to_openapi(rule: str) -> tuple[str, list[dict]]:
    params = []

    def repl(m: re.Match) -> str:
        conv, name = m.group(1), m.group(2)
        schema = {"type": "integer"} if conv == "int" else {"type": "string"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
        return "{" + name + "}"

    return re.sub(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>", repl, rule), params


def openapi_document(app: Flask) -> dict:
    """An OpenAPI 3.1 document for every view decorated with :func:`api`."""
    paths: dict[str, dict] = {}
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
            "status": {"type": "integer"}, "message": {"type": "string"},
            "problems": {"type": "array", "items": {"type": "object"}}}, "required": ["status", "message"]}}},
    }
    error_ref = {"description": "bad input; the message says what is wrong",
                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        spec = getattr(view, "api_spec", None)
        if spec is None:
            if not rule.rule.startswith("/api/"):
                continue
            doc = (getattr(view, "__doc__", None) or "").strip()  # an /api/ route that validates no input
            spec = {"model": None, "summary": doc.split("\n")[0] or rule.endpoint, "description": doc, "tag": "",
                    "example": None}
        path, path_params = _flask_path_to_openapi(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            responses = {"200": {"description": "success"}, "400": error_ref, "404": error_ref,
                         "403": {**error_ref, "description": "the request came from another site's web page"}}
            if method in BODY_METHODS:
                responses["415"] = {**error_ref, "description": "the body is not declared application/json"}
            op: dict[str, Any] = {"operationId": f"{rule.endpoint}.{method.lower()}", "summary": spec["summary"],
                                  "parameters": list(path_params), "responses": responses}
            if spec["description"] and spec["description"] != spec["summary"]:
                op["description"] = spec["description"]
            if spec["tag"]:
                op["tags"] = [spec["tag"]]
            model = spec["model"]
            if model is not None:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in schema.pop("$defs", {}).items():
                    schemas[name] = sub
                if method == "GET":
                    required = set(schema.get("required", ()))
                    for name, prop in schema.get("properties", {}).items():
                        op["parameters"].append({"name": name, "in": "query", "required": name in required,
                                                 "description": prop.get("description", ""), "schema": prop})
                else:
                    schemas[model.__name__] = schema
                    op["requestBody"] = {"required": True, "content": {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
            paths.setdefault(path, {})[method.lower()] = op
    return {"openapi": OPENAPI_VERSION,
            "info": {"title": "lstmvis + textexplain API", "version": app.config.get("API_VERSION", "1"),
                     "description": "JSON API of the lstmvis browser tool. Errors always have the shape "
                                    "{\"error\": {\"status\", \"message\"}}."},
            "paths": paths, "components": {"schemas": schemas}}
