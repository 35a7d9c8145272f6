"""What a view reaches of the app handling its request: the models and stores, and the caches.

Blueprints import these accessors (never the app factory), so the factory imports the blueprints
and nothing imports it back.
"""
from __future__ import annotations

from flask import current_app

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
