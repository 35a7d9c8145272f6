"""What a view reaches of the app handling its request: the models and stores, and the caches.

Blueprints import these accessors (never the app factory), so the factory imports the blueprints
and nothing imports it back.
"""
from __future__ import annotations

import select
import socket

from flask import current_app, request

from .caches import Caches
from .resources import Resources

RESOURCES_KEY = "lstmvis"  # app.extensions keys, set by server.app.create_app
CACHES_KEY = "lstmvis.caches"


def resources() -> Resources:
    """The registry of models and stores of the app handling this request."""
    return current_app.extensions[RESOURCES_KEY]


def caches() -> Caches:
    """The caches of the app handling this request (one :class:`~server.caches.Caches` per app)."""
    return current_app.extensions[CACHES_KEY]


def client_gone() -> bool:
    """Whether the client of this request has closed its connection, so it will never read the answer
    (long computations ask between steps and stop). Only the threaded server (``server.serving``)
    shows the socket; elsewhere the client counts as present."""
    sock = request.environ.get("werkzeug.socket")
    if sock is None:
        return False
    try:
        if not select.select([sock], [], [], 0)[0]:
            return False  # nothing to read: the client waits for its answer
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""  # end of stream: closed
    except BlockingIOError:
        return False
    except (OSError, ValueError):  # reset by the peer, or already closed here
        return True
