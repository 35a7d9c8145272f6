"""The storage interface under ``StateStore`` and ``StoreWriter``: what a backend provides.

A state store has one logical layout (``lstmvis.store``'s module docstring) whatever holds it.
A backend is chosen by the path or URL (``backend_kind``): an HDF5 file (``lstmvis.store``), or a
Zarr v3 hierarchy (``lstmvis.zarr_backend``) for ``*.zarr`` paths and any fsspec URL
(``s3://``, ``gs://``, ``memory://``, ...).

Reading, a backend hands ``StateStore`` a *root node* that answers like an h5py file: ``name in
root``, ``root[name]``, ``root.get(name)``, ``root.attrs``; arrays have ``shape``, ``dtype``,
``ndim``, ``attrs`` and slicing. It checks what only it can check on open (``check``: an HDF5 file
holds all its own data, every chunk a dataset declares exists) and says what identifies the
content (``fingerprint``: the match index is rebuilt when it changes).

Writing, ``StoreWriter`` validates its arguments once and calls a ``WriteBackend``'s primitives:
whole arrays, row writes, attributes, the finished-sequence flags of a resumable write, and the
atomic completion (``commit``: the HDF5 file is renamed into place; the Zarr manifest is written).
"""
from __future__ import annotations

import re
from typing import Any, Protocol

import numpy as np

FORMAT = "lstmvis-state-store"
VERSION = 1

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class StoreError(ValueError):
    """A state store is missing, foreign, truncated, incomplete or inconsistent."""


def is_url(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://bucket/key``, ``file:///tmp/x``, ``memory://x``)."""
    return isinstance(path, str) and bool(_URL.match(path))


def backend_kind(path: Any) -> str:
    """``"zarr"`` for ``*.zarr`` paths (trailing slash allowed) and every URL, else ``"hdf5"``."""
    text = str(path).rstrip("/")
    return "zarr" if is_url(path) or text.endswith(".zarr") else "hdf5"


def is_array(node: Any) -> bool:
    """Whether a node of a backend's tree is an array (not a group)."""
    return hasattr(node, "shape") and hasattr(node, "dtype") and node.shape is not None


class ReadBackend(Protocol):
    """An open store: the root node ``StateStore`` reads, its checks and its identity."""

    url: str
    root: Any

    def check(self, cap: int) -> None:
        """Refuse content that only this backend can see is unsafe or incomplete (StoreError)."""

    def fingerprint(self) -> dict:
        """What identifies this store's content: equal while the content is the same."""

    def close(self) -> None:
        """Release the files or connections."""


class WriteBackend(Protocol):
    """Where ``StoreWriter`` puts a store; every method is called with checked arguments."""

    def put(self, name: str, data: np.ndarray, attrs: dict | None = None) -> None:
        """Write a whole (small) array ``name`` (``meta/depth``: inside group ``meta``)."""

    def create(self, name: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...]) -> None:
        """Create an array written later in row ranges (``write_rows``), all space allocated."""

    def write_rows(self, name: str, start: int, data: np.ndarray) -> None:
        """``name[start:start + len(data)] = data``."""

    def delete(self, name: str) -> None:
        """Remove an array or group if present."""

    def get_attr(self, group: str, key: str, default: Any = None) -> Any: ...

    def set_attr(self, group: str, key: str, value: Any) -> None: ...

    def load_done(self) -> np.ndarray | None:
        """The finished-sequence flags of a resumable write (None: none saved)."""

    def save_done(self, done: np.ndarray) -> None:
        """Make everything written so far durable, then record ``done`` (a sequence flagged done on
        storage has all its rows there)."""

    def commit(self) -> None:
        """Mark the store complete and put it in place atomically; closes the backend."""

    def suspend(self) -> None:
        """Close, keeping the unfinished store for a resume."""

    def discard(self) -> None:
        """Close and delete the unfinished store."""
