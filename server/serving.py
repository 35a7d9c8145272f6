"""Serving the app: a threaded WSGI server with reused request threads and kept-alive connections,
the process settings for serving, and opening the browser.

``listen(...)`` builds the app and binds its address; ``serve(server)`` answers requests until
Ctrl+C. The command line (``server.cli``) says what happens; this module prints nothing.
"""
from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import os
import queue
import socket
import threading
import time
import webbrowser
from typing import TYPE_CHECKING, Iterable

from . import DEFAULT_PORT

if TYPE_CHECKING:
    from flask import Flask

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only (``localhost`` or a loopback address)."""
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
    max_connections: int | None = None  # open connections at most; one more is answered 503 and closed

    def _reuse_state(self):
        state = vars(self).get("_reuse")
        if state is None:
            state = vars(self).setdefault("_reuse", (threading.Lock(), queue.SimpleQueue(), [0], [0]))
        return state

    def process_request(self, request, client_address):
        lock, pending, idle, open_connections = self._reuse_state()
        with lock:
            if self.max_connections is not None and open_connections[0] >= self.max_connections:
                refuse = True
            else:
                refuse, open_connections[0] = False, open_connections[0] + 1
        if refuse:
            self._refuse(request)
            return
        with lock:
            reuse = idle[0] > 0
            if reuse:
                idle[0] -= 1  # that waiting thread is now committed to take this connection
        if reuse:
            pending.put((request, client_address))
        else:
            threading.Thread(target=self._serve_connections, args=(request, client_address),
                             name="http-worker", daemon=self.daemon_threads).start()

    def _refuse(self, request) -> None:
        """Answer a connection over :attr:`max_connections` with a 503 (without waiting for it) and close it."""
        body = (b'{"error": {"status": 503, "message": "the server has too many open connections; '
                b'try again in a moment"}}')
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.shutdown_request(request)

    def _serve_connections(self, request, client_address):
        lock, pending, idle, open_connections = self._reuse_state()
        while True:
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
            with lock:
                open_connections[0] -= 1
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


class DeadlineSocketIO(socket.SocketIO):
    """A socket's reading side that gives up at :attr:`deadline` (``time.monotonic()``; None: no limit),
    however slowly the peer trickles its bytes in: every receive may wait only for the time left.
    Between receives the socket keeps ``send_seconds`` as its timeout, the limit of one answer's send."""

    deadline: float | None = None

    def __init__(self, sock: socket.socket, send_seconds: float | None):
        super().__init__(sock, "rb")
        sock._io_refs += 1  # as socket.makefile does: the socket closes for real once this is closed too
        self.send_seconds = send_seconds

    def readinto(self, b):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            self._sock.settimeout(left)
        try:
            return super().readinto(b)
        finally:
            self._sock.settimeout(self.send_seconds)


_failed = threading.local()  # set on a request thread when werkzeug reports an error in its request


def make_server(app: "Flask", host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, keep_alive_seconds: float = 15.0,
                header_seconds: float = 20.0, body_seconds: float = 60.0, send_seconds: float = 120.0,
                max_connections: int = 256, request_log: logging.Logger | None = None):
    """A threaded WSGI server (werkzeug's, without reloader or debugger, with reused request threads:
    :class:`ReusedThreadsMixIn`); port 0 picks a free one.

    Slow or idle clients cannot hold threads (slowloris): a connection is closed when its request line
    and headers have not arrived within ``header_seconds`` of its opening (within
    ``keep_alive_seconds`` after the previous answer on a kept-alive connection), when the body has
    not arrived within ``body_seconds`` after the headers, or when sending one answer's data takes
    longer than ``send_seconds``; at most ``max_connections`` are open at once, and one more is
    answered 503 and closed.

    ``request_log``: where the request log and the HTTP layer's errors go: werkzeug's own log on
    stderr when None (the command line), else this logger only (``lstmvis.serve``: a library prints
    nothing; the logger is silent until the user configures ``logging``).
    """
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
            self.rfile.close()  # werkzeug's reader, replaced by one with deadlines
            self._reader = DeadlineSocketIO(self.connection, send_seconds)
            self.rfile = io.BufferedReader(self._reader)
            # No Nagle delay: the headers and the body of an answer are two writes, and on a kept-alive
            # connection the second would wait for the client's delayed ACK of the first (40 ms).
            with contextlib.suppress(OSError, AttributeError):
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def handle_one_request(self):
            # The request line and headers must arrive within header_seconds (keep_alive_seconds after
            # the previous answer); then the body within body_seconds (see parse_request).
            wait = self.keep_alive_seconds if self._served else header_seconds
            self._reader.deadline = time.monotonic() + wait
            self._served += 1
            super().handle_one_request()

        def parse_request(self):
            ok = super().parse_request()
            self._reader.deadline = time.monotonic() + body_seconds
            return ok

        def log_error(self, format, *args):
            if self._served > 1 and format.startswith("Request timed out"):
                return  # an idle keep-alive connection closed: nothing went wrong
            super().log_error(format, *args)

        def log(self, type: str, message: str, *args) -> None:
            if request_log is None:
                return super().log(type, message, *args)
            request_log.log(logging.getLevelName(type.upper()), "%s - - [%s] " + message.rstrip(),
                            self.address_string(), self.log_date_time_string(), *args)

        def log_request(self, code="-", size="-") -> None:
            if request_log is None:
                return super().log_request(code, size)
            try:
                line = f"{self.command} {self.path} {self.request_version}"
            except AttributeError:  # no path: the request line was bad
                line = self.requestline
            self.log("info", '"%s" %s %s', line.translate(self._control_char_table), code, size)

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

    JSONErrorRequestHandler.keep_alive_seconds = keep_alive_seconds

    class ReusedThreadsWSGIServer(ReusedThreadsMixIn, BaseWSGIServer):
        multithread = True

        def log(self, type: str, message: str, *args) -> None:
            if type == "error":
                _failed.on = True  # werkzeug logs an error it caught while running the app or sending
            if request_log is None:
                super().log(type, message, *args)
            else:
                request_log.log(logging.getLevelName(type.upper()), message.rstrip(), *args)

    server = ReusedThreadsWSGIServer(host, port, app, handler=JSONErrorRequestHandler)
    server.max_connections = max_connections
    return server


def tune_process() -> None:
    """Settings for a serving process, made before any thread starts: the allocator's arenas (the limit
    counts from the first extra arena), and one torch intra-op thread per request: concurrent requests
    are the parallelism, and torch's worker threads would fight over the cores (spin-waiting threads
    make small models many times slower)."""
    from lstmvis.allocator import tune_allocator

    tune_allocator()
    import torch  # after the allocator: importing torch starts a thread

    torch.set_num_threads(1)


def listen(data_dir: str | os.PathLike | None = None, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
           cache_dir: str | os.PathLike | None = None, allow_hosts: Iterable[str] = (), resources=None,
           corpora: Iterable[str] = (), dask_client=None):
    """The app (:func:`server.app.create_app`) behind a server bound to ``host:port``, not yet serving.

    Tunes the process first (:func:`tune_process`). On loopback the app answers only requests
    addressed to a loopback name or to one of ``allow_hosts`` (against DNS rebinding: a web page
    must not reach this server under a name of its own). Raises ValueError when the address cannot
    be bound. ``resources``: a ready :class:`~server.resources.Resources` (``--models``).
    ``dask_client``: the cluster that runs match and cell ranking over Zarr stores (``--scheduler``).
    """
    tune_process()
    from .app import create_app  # after tune_process: the app's imports (torch) start threads

    config: dict = {"LSTMVIS_CACHE": str(cache_dir)} if cache_dir else {}
    if resources is not None:
        config["RESOURCES"] = resources
    config["WORKBENCH_CORPORA"] = [os.path.abspath(c) for c in corpora]  # the workbench's --corpus files
    config["DASK_CLIENT"] = dask_client  # server.store_views.CLIENT_KEY
    if is_loopback(host):
        config["ALLOWED_HOSTS"] = [*LOOPBACK_NAMES, *allow_hosts]
    app = create_app(data_dir, config)
    try:
        return make_server(app, host, port)
    except OSError as exc:
        raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                         f"choose another port with --port") from None


def url_of(server) -> str:
    """The address a browser opens for ``server`` (a wildcard bind is shown as 127.0.0.1)."""
    shown = "127.0.0.1" if server.host in ("0.0.0.0", "::") else server.host
    return f"http://{shown}:{server.server_port}/"


def serve(server, open_browser: bool = True) -> None:
    """Answer requests until Ctrl+C, then close the server; ``open_browser`` opens its address in the
    default web browser half a second after serving starts."""
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url_of(server),)).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
