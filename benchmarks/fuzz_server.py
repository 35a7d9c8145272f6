"""Property-based fuzzing of every JSON endpoint, generated from the server's own OpenAPI document.

Requests are drawn with hypothesis from ``/api/openapi.json``: every operation, with parameters
and bodies that are valid (so the request reaches the library), valid but for one field (wrong
type, out of range, oversized, unknown), or chaos (random values, garbage bodies, wrong content
types, traversal in path names, deep nesting, lone surrogates, other HTTP methods). Field names
the schema cannot describe (a store, a source, a model, a hypothesis) also draw real values from
the running server, so valid requests do real work. Expensive knobs (samples, steps, budgets) are
drawn near their minimum so a run stays bounded; the schema's maxima are exercised by the
chaos mode (which must be refused or answered, never crash).

Every answer must be: not 5xx; JSON that strict parsers accept (no NaN); for 4xx the shape
``{"error": {"status": <the status>, "message": "<non-empty>"}}``. After the run the server must
still answer ``/api/status``.

    python benchmarks/fuzz_server.py --requests 5000              # live server on 127.0.0.1, demo data
    python benchmarks/fuzz_server.py --requests 300 --test-client # in process, no sockets

The CI test (tests/test_reliability_fuzz.py) runs a few hundred requests through the Flask test
client with hypothesis shrinking any failure to a minimal request.
"""
from __future__ import annotations

import argparse
import collections
import http.client
import json
import math
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# knobs that multiply a request's cost: valid draws stay within min + CHEAP of these
EXPENSIVE = {"num_samples": 40, "budget": 40, "n_steps": 8, "n_samples": 4, "sample": 0, "exact_max_tokens": 6,
             "window": 60, "k": 10, "top": 60, "limit": 60, "before": 30, "after": 30, "left": 20, "right": 20}
JUNK_STRINGS = ["", " ", "null", "None", "true", "NaN", "nan", "inf", "-inf", "1e309", "-1", "0x1f", "1_000",
                "٣", "¹", "0.5", "1,2,3", ",,,", "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd",
                "%00", "\x00", "\x1b[31m", "<script>alert(1)</script>", "' OR 1=1 --", "${jndi:ldap://x}",
                "{{7*7}}", "%s%s%s%n", "ǅ̈́İ", "👩‍👩‍👧", "\u202e", "a" * 5000, "9" * 5000, "-" * 300,
                "regex:(a+)+$", "regex:(", "tokens:", "meta:", "meta:nope=1", "quotes", "depth"]
JUNK_JSON: list[Any] = [None, True, False, 0, -1, 1, 2 ** 31, 2 ** 63, -(2 ** 63) - 1, 10 ** 40, 0.5, -0.0, 1e308,
                        -1e-308, "", "x", "1", [], {}, [[]], [None], {"": None}, {"a": [1, {"b": []}]},
                        ["gradient"] * 50, list(range(5000)), "\ud800", "a" * 3000]
HTTP_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/json; charset=latin-1", "", "*/*"]


# ------------------------------------------------------------------------------ the document

@dataclass
class Operation:
    method: str
    path: str  # OpenAPI template, e.g. /api/stores/{store}/match
    path_params: list[tuple[str, dict]]
    query: list[tuple[str, dict, bool]]  # name, schema, required
    body: dict | None  # resolved JSON schema of the body

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"


def resolve(schema: Any, components: dict, depth: int = 0) -> Any:
    """The schema with every ``$ref`` replaced by its target (bounded depth)."""
    if isinstance(schema, dict):
        if "$ref" in schema and depth < 20:
            target = components[schema["$ref"].rsplit("/", 1)[-1]]
            merged = {**resolve(target, components, depth + 1), **{k: v for k, v in schema.items() if k != "$ref"}}
            return merged
        return {k: resolve(v, components, depth + 1) for k, v in schema.items()}
    if isinstance(schema, list):
        return [resolve(v, components, depth + 1) for v in schema]
    return schema


def operations(doc: dict) -> list[Operation]:
    components = doc.get("components", {}).get("schemas", {})
    ops = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            params = op.get("parameters", [])
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            ops.append(Operation(
                method.upper(), path,
                [(p["name"], p.get("schema", {})) for p in params if p["in"] == "path"],
                [(p["name"], resolve(p.get("schema", {}), components), bool(p.get("required")))
                 for p in params if p["in"] == "query"],
                resolve(body, components) if body else None))
    return ops


# ------------------------------------------------------------------------------ domain hints

@dataclass
class Hints:
    """Real values for fields whose schema is just "a string": stores, sources, models, ..."""

    stores: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    store_sources: dict[str, list[str]] = field(default_factory=dict)
    store_tokens: dict[str, int] = field(default_factory=dict)
    store: str | None = None  # the store of the request being drawn (its sources are the real ones)
    models: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)
    n_cells: int = 8
    n_tokens: int = 100
    texts: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    @classmethod
    def from_server(cls, send) -> "Hints":
        h = cls()
        code, _, body = send("GET", "/api/stores", "", {}, b"")
        status = json.loads(body)
        if code != 200:
            raise RuntimeError(f"GET /api/stores answered {code}: {body[:300]!r}")
        ready = [s for s in status["stores"] if s.get("status") == "ready"]
        h.stores = [s["name"] for s in ready]
        h.sources = sorted({src for s in ready for src in s.get("sources", [])})
        h.n_cells = max([n for s in ready for n in s.get("cells", {}).values()] or [8])
        h.n_tokens = min([s.get("n_tokens", 100) for s in ready] or [100])
        h.store_sources = {s["name"]: list(s.get("sources", [])) for s in ready}
        h.store_tokens = {s["name"]: int(s.get("n_tokens", 100)) for s in ready}
        models = json.loads(send("GET", "/api/status", "", {}, b"")[2]).get("models", [])
        h.models = [m["name"] if isinstance(m, dict) else m for m in models]
        named = json.loads(send("GET", "/api/hypotheses", "", {}, b"")[2]).get("named", [])
        h.hypotheses = [n["name"] for n in named] + ["regex:[A-Z]+", "regex:def ", "tokens:the,a", "meta:label",
                                                    "meta:label=1", "meta:depth", "parens"]
        h.images = _hostile_pngs()
        h.texts = ["a gorgeous, witty film", "dull", "great <script>alert(1)</script> fun", "qwxz zzkq",
                   "\x00 good \x1b[0m", "İ ß 👩‍👩‍👧 film", "not bad at all , really", "e\u0301 " * 30]
        return h

    def for_field(self, name: str) -> list[Any] | None:
        sources = self.store_sources.get(self.store) or self.sources
        return {"store": self.stores, "source": sources, "sources[]": sources, "direction": [1, -1],
                "model": self.models, "hypothesis": self.hypotheses, "text": self.texts,
                "q": ["the", "a", "cat", "(", "def", "film", "xyz"], "image": self.images}.get(name)


def _hostile_pngs() -> list[str]:
    """PNG uploads as data URLs: fine ones, odd modes, a decompression bomb, truncated and foreign bytes."""
    import base64
    import io
    import zlib

    import numpy as np
    from PIL import Image

    def png(array: np.ndarray, mode: str | None = None) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array, mode).save(buf, format="PNG")
        return buf.getvalue()

    rng = np.random.default_rng(0)
    digit = png((rng.random((28, 28)) * 255).astype(np.uint8))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    width = height = 30_000  # 900 M pixels of zeros, a few hundred kB compressed
    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big")
                                            + bytes([8, 0, 0, 0, 0])) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    raw = [digit, png(np.zeros((1, 1), np.uint8)), png((rng.random((300, 200, 4)) * 255).astype(np.uint8)),
           png((rng.random((28, 28)) * 65535).astype(np.uint16)), png(np.ones((28, 28), bool)), digit[:60], bomb,
           b"\xff\xd8\xff\xe0 not a png", b"GIF89a" + bytes(40), b""]
    urls = ["data:image/png;base64," + base64.b64encode(r).decode() for r in raw]
    return urls + ["data:image/png;base64,!!!", "data:text/html,<script>alert(1)</script>", "not a data url",
                   "data:image/png;base64," + "A" * 1000]


# ------------------------------------------------------------------------------ value strategies

def _type_of(schema: dict) -> str | None:
    t = schema.get("type")
    if isinstance(t, list):
        return t[0]
    return t


def valid_value(draw, schema: dict, name: str, hints: Hints, depth: int = 0) -> Any:
    """A value the schema accepts (cheap knobs drawn near their minimum)."""
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf")
        return valid_value(draw, draw(st.sampled_from(options)), name, hints, depth)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return draw(st.sampled_from(schema["enum"]))
    real = hints.for_field(name)
    if real and draw(st.integers(0, 4)) > 0:
        return draw(st.sampled_from(real))
    t = _type_of(schema)
    if t == "integer":
        lo = int(schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1 if "exclusiveMinimum" in schema else 0))
        hi = int(schema.get("maximum", lo + 1000))
        if name in EXPENSIVE:
            hi = min(hi, lo + EXPENSIVE[name])
        if name in ("start", "position", "stop"):
            hi = min(hi, hints.store_tokens.get(hints.store, hints.n_tokens))
        if name == "cell":
            hi = min(hi, hints.n_cells - 1)
        return draw(st.integers(lo, max(lo, hi)))
    if t == "number":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -10.0))
        hi = schema.get("maximum", lo + 10.0)
        if name in ("threshold",):
            lo, hi = max(lo, -1.0), min(hi, 1.0)
        value = draw(st.floats(float(lo), float(hi), allow_nan=False, allow_infinity=False))
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            value = float(schema["exclusiveMinimum"]) + 1e-3
        return value
    if t == "boolean":
        return draw(st.booleans())
    if t == "null":
        return None
    if t == "string":
        lo, hi = schema.get("minLength", 0), min(schema.get("maxLength", 40), 60)
        return draw(st.text(min_size=lo, max_size=max(lo, hi)))
    if t == "array":
        items = schema.get("items", {})
        lo, hi = schema.get("minItems", 0), min(schema.get("maxItems", 5), 5)
        if name == "cells":
            return draw(st.lists(st.integers(0, max(0, hints.n_cells - 1)), min_size=max(lo, 1), max_size=max(lo, hi)))
        item = name + "[]"
        values = [valid_value(draw, items, item, hints, depth + 1) for _ in range(draw(st.integers(lo, max(lo, hi))))]
        if schema.get("uniqueItems") or name == "methods":
            values = list(dict.fromkeys(json.dumps(v) for v in values))
            values = [json.loads(v) for v in values] or [valid_value(draw, items, item, hints, depth + 1)]
        return values
    if t == "object" or "properties" in schema:
        return valid_object(draw, schema, hints, depth + 1)
    return draw(st.sampled_from(JUNK_JSON))


def valid_object(draw, schema: dict, hints: Hints, depth: int = 0) -> dict:
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    out = {}
    for name, sub in props.items():
        if name in required or (depth < 4 and draw(st.integers(0, 2)) == 0):
            out[name] = valid_value(draw, sub, name, hints, depth)
    return out


def invalid_value(draw, schema: dict, name: str) -> Any:
    """Something of the wrong type, out of range, oversized, or just junk."""
    t = _type_of(schema) or _type_of((schema.get("anyOf") or [{}])[0])
    choices: list[Any] = list(JUNK_JSON)
    if t in ("integer", "number"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if lo is not None:
            choices += [lo - 1, lo - 0.5, -(10 ** 12)]
        if hi is not None:
            choices += [hi + 1, hi * 10 + 7, 10 ** 18]
        choices += ["12", "1.5", "one", 1.5 if t == "integer" else "x", float("nan"), float("inf")]
    if t == "string":
        choices += [12, ["a"], {"a": 1}, "x" * (schema.get("maxLength", 100) + 1), "\ud800\udfff"[::-1]]
    if t == "array":
        choices += ["gradient", [[1]], [None] * 3, list(range(schema.get("maxItems", 10) + 1))]
    return draw(st.sampled_from(choices))


def chaos_value(draw) -> Any:
    leaf = st.one_of(st.sampled_from(JUNK_JSON), st.integers(), st.floats(), st.text(max_size=30), st.booleans(),
                     st.none())
    return draw(st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), c, max_size=4)),
                             max_leaves=12))


# ------------------------------------------------------------------------------ requests

@dataclass
class Request:
    method: str
    path: str
    query: str = ""
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    endpoint: str = ""  # the OpenAPI operation it came from
    mode: str = ""

    def __repr__(self) -> str:
        body = self.body[:300] + (b"..." if len(self.body) > 300 else b"")
        q = self.query[:300] + ("..." if len(self.query) > 300 else "")
        return f"<{self.mode}> {self.method} {self.path}?{q} {self.headers} {body!r}"


def _query_text(value: Any) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, float):
        return [repr(value) if math.isfinite(value) else str(value)]
    if isinstance(value, list):
        return [",".join(str(v) for v in value)]
    if isinstance(value, dict):
        return [json.dumps(value)]
    if value is None:
        return [""]
    return [str(value)]


def _encode_query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe=',', errors='surrogatepass')}"
                    for k, v in pairs)


def _path_value(draw, name: str, schema: dict, hints: Hints, bad: bool) -> str:
    if not bad:
        if name == "store" and hints.stores:
            return draw(st.sampled_from(hints.stores))
        if _type_of(schema) == "integer":
            return str(draw(st.integers(0, max(0, hints.n_cells - 1))))
        return draw(st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=16))
    value = draw(st.sampled_from(JUNK_STRINGS + ["-1", "99999999999999999999999", "1.5", "%2e%2e", "..", "."]))
    return value or "x"


@st.composite
def request_strategy(draw, ops: list[Operation], hints: Hints) -> Request:
    op = draw(st.sampled_from(ops))
    mode = draw(st.sampled_from(["valid", "valid", "one_bad", "one_bad", "one_bad", "chaos", "raw"]))
    bad_path = mode in ("chaos", "raw") or (mode == "one_bad" and op.path_params and draw(st.integers(0, 5)) == 0)
    path = op.path
    hints.store = None
    for name, schema in op.path_params:
        value = _path_value(draw, name, schema, hints, bad_path and draw(st.booleans()))
        if name == "store":
            hints.store = value
        path = path.replace("{" + name + "}", urllib.parse.quote(value, safe="", errors="surrogatepass"))
    req = Request(op.method, path, endpoint=op.key, mode=mode)

    # query parameters (GET) -----------------------------------------------------------------
    pairs: list[tuple[str, str]] = []
    bad_field = draw(st.sampled_from([q[0] for q in op.query])) if op.query and mode == "one_bad" else None
    for name, schema, required in op.query:
        if mode == "chaos" and draw(st.integers(0, 3)) == 0:
            continue  # required ones too
        if not required and mode != "chaos" and draw(st.integers(0, 2)) == 0:
            continue
        if name == bad_field or mode == "chaos":
            value = invalid_value(draw, schema, name) if draw(st.booleans()) else chaos_value(draw)
        else:
            value = valid_value(draw, schema, name, hints)
            if value is None:
                continue  # null in a query string is an absent parameter
        if name == "stop" and mode == "valid" and draw(st.integers(0, 3)) > 0:
            start = next((int(v) for k, v in pairs if k == "start"), 0)
            value = start + draw(st.integers(1, 4))  # a short brush, as the explorer sends
        for text in _query_text(value):
            pairs.append((name, text))
        if mode != "valid" and draw(st.integers(0, 15)) == 0:  # a repeated key
            pairs.append((name, _query_text(valid_value(draw, schema, name, hints))[0]))
    if mode in ("one_bad", "chaos") and draw(st.integers(0, 6)) == 0:
        pairs.append((draw(st.sampled_from(["unknown", "__proto__", "debug", "", "start[]"])), "1"))
    req.query = _encode_query(pairs)
    if mode == "raw" and draw(st.booleans()):
        req.query = draw(st.sampled_from(["%zz", "a=%ff%fe", "=", "&&&", "a=1&a=2&a=3", "%00=%00", "x" * 9000,
                                           "start=" + "9" * 5000, "cells=" + ",".join(["1"] * 5000)]))

    # body (POST) -----------------------------------------------------------------------------
    if op.body is not None:
        req.headers["Content-Type"] = "application/json"
        if mode == "valid":
            obj = valid_object(draw, op.body, hints)
        elif mode == "one_bad":
            obj = valid_object(draw, op.body, hints)
            props = list(op.body.get("properties", {}))
            if props and draw(st.integers(0, 4)) > 0:
                name = draw(st.sampled_from(props))
                obj[name] = invalid_value(draw, op.body["properties"][name], name)
            elif obj and draw(st.booleans()):
                del obj[draw(st.sampled_from(sorted(obj)))]
            else:
                obj[draw(st.sampled_from(["unknown", "__class__", "", "params.lime"]))] = chaos_value(draw)
        else:
            obj = chaos_value(draw)
        try:
            req.body = json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError):
            req.body = b"{}"
        if mode in ("chaos", "raw") and draw(st.integers(0, 2)) == 0:
            req.body = draw(st.sampled_from([b"", b"{", b"null", b"[]", b"\"text\"", b"\xff\xfe{}", b"{\"a\": NaN}",
                                             b"[" * 5000 + b"]" * 5000, b"{\"model\": Infinity}", b"1e999999",
                                             b"{\"text\": \"" + b"a" * 100000 + b"\"}", b"\x00" * 64]))
        if mode in ("chaos", "raw") and draw(st.integers(0, 2)) == 0:
            req.headers["Content-Type"] = draw(st.sampled_from(CONTENT_TYPES))
    elif mode in ("chaos", "raw") and draw(st.integers(0, 3)) == 0:
        req.headers["Content-Type"] = "application/json"
        req.body = draw(st.sampled_from([b"{}", b"[", b"\xff", b"{\"x\": 1}"]))

    if mode == "raw" and draw(st.integers(0, 2)) == 0:
        req.method = draw(st.sampled_from(HTTP_METHODS))
    return req


def oversized_requests(ops: list[Operation], limit: int) -> list[Request]:
    """Bodies over the size limit on every POST operation (each must be a JSON 413)."""
    big = json.dumps({"text": "a" * (limit + 10)}).encode()
    return [Request("POST", op.path.replace("{store}", "x").replace("{cell}", "0"), "",
                    {"Content-Type": "application/json"}, big, op.key, "oversized")
            for op in ops if op.body is not None]


# ------------------------------------------------------------------------------ transports

class TestClientTransport:
    """Requests through Flask's test client (no sockets)."""

    def __init__(self, app):
        self.client = app.test_client()

    def __call__(self, method: str, path: str, query: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        resp = self.client.open(path, method=method, query_string=query or None, headers=headers,
                                data=body if body else None)
        return resp.status_code, dict(resp.headers), resp.get_data()


class HTTPTransport:
    """Requests over a real socket to a server on 127.0.0.1 (raw paths, no client-side normalizing)."""

    def __init__(self, host: str, port: int, timeout: float = 300):
        assert host in ("127.0.0.1", "localhost", "::1"), "fuzzing only ever targets loopback"
        self.host, self.port, self.timeout = host, port, timeout

    def __call__(self, method: str, path: str, query: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            target = path + ("?" + query if query else "")
            try:
                conn.request(method, target, body=body or None, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered (e.g. 414) and closed before reading everything: read its answer
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()


# ------------------------------------------------------------------------------ the oracle

def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def problems_of(req: Request, status: int, headers: dict, body: bytes) -> list[str]:
    """What is wrong with an answer (empty when it is fine)."""
    out = []
    if status >= 500:
        out.append(f"{status} answer")
    if req.method == "HEAD" or (req.method == "OPTIONS" and status < 400):
        if status >= 400 and "json" not in {k.lower(): v for k, v in headers.items()}.get("content-type", ""):
            out.append(f"{status} answer to HEAD is not typed JSON")
        return out  # a HEAD answer has no body
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    if status < 400 and "json" not in ctype:
        return out  # a page, a PNG, plotly.js
    if "json" not in ctype:
        if req.method != "HEAD":
            out.append(f"{status} answer is {ctype or 'untyped'}, not JSON")
        return out
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        out.append(f"{status} answer is not strict JSON: {exc}")
        return out
    if status >= 400:
        err = data.get("error") if isinstance(data, dict) else None
        if not (isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"].strip()
                and err.get("status") == status):
            out.append(f"{status} answer lacks {{'error': {{'status', 'message'}}}}: {body[:200]!r}")
    return out


@dataclass
class Tally:
    """Counts per endpoint and status, latencies, and every violation."""

    by_endpoint: collections.Counter = field(default_factory=collections.Counter)
    by_status: collections.Counter = field(default_factory=collections.Counter)
    by_mode: collections.Counter = field(default_factory=collections.Counter)
    ok_by_endpoint: collections.Counter = field(default_factory=collections.Counter)
    seconds: list[float] = field(default_factory=list)
    violations: list[tuple[str, list[str]]] = field(default_factory=list)

    def record(self, req: Request, status: int, problems: list[str], seconds: float) -> None:
        self.by_endpoint[req.endpoint] += 1
        self.by_status[status] += 1
        self.by_mode[req.mode] += 1
        if status < 400:
            self.ok_by_endpoint[req.endpoint] += 1
        self.seconds.append(seconds)
        if problems:
            self.violations.append((repr(req), problems))

    @property
    def total(self) -> int:
        return sum(self.by_endpoint.values())


def send_and_check(send, req: Request, tally: Tally) -> list[str]:
    t0 = time.perf_counter()
    try:
        status, headers, body = send(req.method, req.path, req.query, req.headers, req.body)
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        status, headers, body = 599, {}, b""
        problems = [f"no answer: {type(exc).__name__}: {exc}"]
    else:
        problems = problems_of(req, status, headers, body)
    tally.record(req, status, problems, time.perf_counter() - t0)
    return problems


# ------------------------------------------------------------------------------ the run

def run(send, n_requests: int, seed: int = 0, progress: bool = True) -> Tally:
    """Draw ``n_requests`` requests with hypothesis and check every answer (no shrinking: count all)."""
    from hypothesis import HealthCheck, Phase, given, settings

    doc = json.loads(send("GET", "/api/openapi.json", "", {}, b"")[2])
    ops = operations(doc)
    hints = Hints.from_server(send)
    tally = Tally()
    for req in oversized_requests(ops, 2 * 1024 * 1024):
        send_and_check(send, req, tally)
    started = time.perf_counter()

    @settings(max_examples=n_requests, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(req=request_strategy(ops, hints))
    def one(req):
        send_and_check(send, req, tally)
        if progress and tally.total % 250 == 0:
            print(f"  {tally.total} requests, {len(tally.violations)} violations, "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    import random
    random.seed(seed)
    from hypothesis import seed as hseed
    hseed(seed)(one)()
    return tally


def report(tally: Tally, alive: bool, ops: list[Operation]) -> str:
    lines = [f"requests: {tally.total}; violations: {len(tally.violations)}; server alive afterwards: {alive}",
             "status counts: " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.by_status.items())),
             "modes: " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.by_mode.items())),
             "", "| endpoint | requests | 2xx/3xx | 4xx |", "|---|---:|---:|---:|"]
    for op in sorted(ops, key=lambda o: o.key):
        n, ok = tally.by_endpoint[op.key], tally.ok_by_endpoint[op.key]
        lines.append(f"| `{op.key}` | {n} | {ok} | {n - ok} |")
    if tally.seconds:
        s = sorted(tally.seconds)
        lines.append(f"\nlatency p50 {s[len(s) // 2] * 1000:.1f} ms, p99 {s[int(len(s) * 0.99)] * 1000:.1f} ms, "
                     f"max {s[-1]:.2f} s")
    for req, problems in tally.violations[:30]:
        lines.append(f"VIOLATION {problems}: {req}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=5000, help="generated requests (default 5000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-client", action="store_true", help="in process through Flask's test client")
    p.add_argument("--port", type=int, default=0, help="serve on this loopback port (default: a free one)")
    p.add_argument("--out", help="write the report (markdown) here")
    args = p.parse_args()
    import logging

    import torch
    torch.set_num_threads(1)
    from conftest_server import demo_resources, live_server
    from server.app import create_app
    app = create_app(None, {"RESOURCES": demo_resources(), "TESTING": False})
    logging.getLogger("server.app").setLevel(logging.CRITICAL)
    app.logger.setLevel(logging.CRITICAL)  # 500s are counted here, not printed
    t0 = time.perf_counter()
    if args.test_client:
        send = TestClientTransport(app)
        tally = run(send, args.requests, args.seed)
        alive = send("GET", "/api/status", "", {}, b"")[0] == 200
        ops = operations(json.loads(send("GET", "/api/openapi.json", "", {}, b"")[2]))
    else:
        with live_server(app) as base:
            port = int(base.rsplit(":", 1)[1])
            send = HTTPTransport("127.0.0.1", port)
            tally = run(send, args.requests, args.seed)
            alive = send("GET", "/api/status", "", {}, b"")[0] == 200
            ops = operations(json.loads(send("GET", "/api/openapi.json", "", {}, b"")[2]))
    text = report(tally, alive, ops) + f"\n\nwall time {time.perf_counter() - t0:.0f} s"
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if alive and not tally.violations else 1


if __name__ == "__main__":
    sys.exit(main())
