"""What one app keeps in memory between requests: values built once per key, one set per app.

The app factory makes one :class:`Caches` per app (``app.extensions``) and views reach it through
:func:`server.context.caches`, so two apps in one process (tests, benchmarks) never share a cached
value, and nothing per store lives in a module global.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Hashable


class BuiltOnce:
    """Values built on first request and kept: concurrent first requests for one key wait for one
    build instead of each doing it. A build that raises keeps nothing (the next request tries again).

    ``max_entries``: beyond this many values, all are dropped before the next one is kept (for keys
    that users choose, such as hypothesis specs).
    """

    def __init__(self, max_entries: int | None = None):
        self.max_entries = max_entries
        self._values: dict[Hashable, Any] = {}
        self._building: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The value of ``key``, built with ``build()`` when there is none yet."""
        with self._guard:
            if key in self._values:
                return self._values[key]
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._values:  # built by the request this one waited for
                    return self._values[key]
            try:
                value = build()
                with self._guard:
                    if self.max_entries is not None and len(self._values) >= self.max_entries:
                        self._values.clear()
                    self._values[key] = value
                return value
            finally:
                with self._guard:
                    if self._building.get(key) is lock:
                        del self._building[key]

    def __len__(self) -> int:
        return len(self._values)


class Caches:
    """Every cache of one app's views over state stores and models."""

    def __init__(self) -> None:
        self.surfaces = BuiltOnce()  # store -> server.store_views.TokenSurface
        self.search_indexes = BuiltOnce()  # store -> server.explorer_api.TextSearchIndex
        self.hypotheses = BuiltOnce(max_entries=64)  # (store, spec) -> per-token values
        self.rankings = BuiltOnce(max_entries=64)  # (store, source, spec, method) -> lstmvis CellRanking
        self.workbenches = BuiltOnce(max_entries=8)  # (model, corpus) -> textexplain Workbench
        self.workbench_features = BuiltOnce(max_entries=8)  # (model, corpus) -> penultimate layer of every row
        self.workbench_selections = BuiltOnce(max_entries=256)  # token -> (corpus, row ids)
        self.textcnn_reports = BuiltOnce()  # (model, store, k) -> top n-grams of every filter
        self.textcnn_mappable = BuiltOnce()  # (model, entry id) -> whether lstmvis.textcnn maps its Conv1d stack
