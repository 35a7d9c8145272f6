"""The Zarr v3 backend: a state store as a Zarr hierarchy, on a local disk or any fsspec URL.

Chosen for ``*.zarr`` paths and every URL (``lstmvis.backend.backend_kind``). Same logical layout
as the HDF5 file, with the states cut into *parts* of whole sequences (one per corpus shard), so
shards are written independently (by the workers of a Dask cluster: ``lstmvis.extract(...,
client=)``), and a manifest::

    <store>/zarr.json             group attrs: format, version, n_tokens, n_sequences, fingerprint,
                                  parts (the first sequence of every part), complete (False)
    <store>/vocab, card, offsets, token_ids, text_bytes, text_offsets, spans, meta/<name>
    <store>/states/zarr.json      attr sources (their order)
    <store>/parts/<k>/<source>    (rows of part k, D), chunks of whole rows, about CHUNK_BYTES each
    <store>/parts/<k>.done        a part's completion marker: written after all its rows, with
                                  the part's id (new each time the part is written)
    <store>/parts/<k>.index/      the part's match index, built by a worker (``lstmvis.cluster``)
    <store>/manifest.json         written last (one PUT, or a rename on a local disk): the store
                                  opens only when it is there and names every part as complete,
                                  with the parts' ids (``part_ids``: what identifies a part's rows)

A part is written by one writer only and its chunks never straddle two parts, so no two writers
ever touch the same object. A crash leaves the completed parts (their markers) for a resume and
no manifest, so the store does not open. Object storage is reached through fsspec; endpoints and
credentials come from fsspec's configuration (``FSSPEC_S3_ENDPOINT_URL`` etc.) or the usual
environment of the client library (``AWS_ACCESS_KEY_ID``, ...).
"""
from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
import numpy as np

from .backend import FORMAT, StoreError, is_url

CHUNK_BYTES = 4 << 20   # one chunk of states: ~4 MiB, a good object-store GET; a part holds many
TOKEN_CHUNK = 1 << 20   # token ids per chunk
PART_TOKENS = 1 << 22   # default tokens per part (corpus shard), in whole sequences
MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------- addresses
def _fs_and_root(url: str | os.PathLike):
    """``(fsspec filesystem, root path in it, zarr store, display url)`` of a store address."""
    import fsspec
    import zarr.storage

    if is_url(url):
        fs, root = fsspec.core.url_to_fs(str(url))
        if not fs.async_impl:
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            fs_async = AsyncFileSystemWrapper(fs)
        else:
            fs_async = fsspec.filesystem(fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0],
                                         asynchronous=True, **fs.storage_options)
        store = zarr.storage.FsspecStore(fs_async, path=root)
        return fs, root, store, str(url)
    path = Path(url).resolve()
    return fsspec.filesystem("file"), str(path), zarr.storage.LocalStore(path), str(Path(url))


def _put_atomic(fs, path: str, data: bytes) -> None:
    """Write one small object whole: a rename on a local disk, a single PUT on object storage."""
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def _read_small(fs, path: str) -> bytes | None:
    try:
        return fs.cat_file(path)
    except (FileNotFoundError, OSError):
        return None


def plan_parts(offsets: np.ndarray, part_tokens: int = PART_TOKENS) -> list[int]:
    """The first sequence of every part: runs of whole sequences of about ``part_tokens`` tokens
    (a sequence longer than that is a part of its own). A function of the corpus alone, so a
    single process and a cluster cut the same shards."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if part_tokens < 1:
        raise ValueError(f"part_tokens must be at least 1, got {part_tokens}")
    starts, n_seq = [0], len(offsets) - 1
    while True:
        nxt = int(np.searchsorted(offsets, offsets[starts[-1]] + part_tokens, side="left"))
        nxt = max(nxt, starts[-1] + 1)
        if nxt >= n_seq:
            return starts
        starts.append(nxt)


def part_name(k: int) -> str:
    return f"parts/{k:05d}"


def _state_chunk_rows(n_rows: int, n_cells: int, itemsize: int) -> int:
    return max(1, min(max(n_rows, 1), CHUNK_BYTES // max(1, n_cells * itemsize)))


# ---------------------------------------------------------------------------- reading
class PartedArray:
    """The ``(N, D)`` states of one source: its parts' arrays read as one (row slices, columns)."""

    ndim = 2

    def __init__(self, arrays: list, row_starts: np.ndarray, n_cells: int, dtype):
        self.arrays, self.row_starts = arrays, np.asarray(row_starts, dtype=np.int64)
        self.shape = (int(self.row_starts[-1]), int(n_cells))
        self.dtype = np.dtype(dtype)
        self.attrs: dict = {}

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def chunks(self) -> tuple[int, int]:
        return tuple(self.arrays[0].chunks) if self.arrays else (1, self.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if key == () or key is Ellipsis:
            key = (slice(None),)
        key = key if isinstance(key, tuple) else (key,)
        rows, rest = key[0], key[1:]
        if isinstance(rows, (int, np.integer)):
            r = int(rows) + (self.shape[0] if rows < 0 else 0)
            if not 0 <= r < self.shape[0]:
                raise IndexError(f"row {rows} is outside 0..{self.shape[0] - 1}")
            return self[(slice(r, r + 1), *rest)][0]
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("states are read in row ranges: use store.dataset(source)[a:b] or [a:b, cells]")
        a, b, _ = rows.indices(self.shape[0])
        b = max(a, b)
        first = max(0, int(np.searchsorted(self.row_starts, a, side="right")) - 1)
        pieces = []
        for k in range(first, len(self.arrays)):
            lo, hi = int(self.row_starts[k]), int(self.row_starts[k + 1])
            if lo >= b:
                break
            if hi > a:
                pieces.append(np.asarray(self.arrays[k][(slice(max(a, lo) - lo, min(b, hi) - lo), *rest)]))
        if not pieces:
            return np.zeros((0, self.shape[1]), self.dtype)[(slice(None), *rest)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class _PartedGroup:
    """``root["states"]``: its attrs, and a ``PartedArray`` per source."""

    def __init__(self, group, parts: list, row_starts: np.ndarray):
        self._group, self._parts, self._row_starts = group, parts, row_starts
        self.attrs = dict(group.attrs)
        self._arrays: dict[str, PartedArray] = {}

    def get(self, name: str, default=None):
        if name in self._arrays:
            return self._arrays[name]
        arrays = [p.get(name) for p in self._parts]
        if not arrays or any(a is None or not hasattr(a, "shape") or a.ndim != 2 for a in arrays):
            return default
        if len({a.shape[1] for a in arrays}) != 1 or len({str(a.dtype) for a in arrays}) != 1:
            return default
        if [a.shape[0] for a in arrays] != np.diff(self._row_starts).tolist():
            return default
        out = self._arrays[name] = PartedArray(arrays, self._row_starts, arrays[0].shape[1], arrays[0].dtype)
        return out

    def __getitem__(self, name: str) -> PartedArray:
        out = self.get(name)
        if out is None:
            raise KeyError(name)
        return out

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None


class ZarrRoot:
    """The root node ``StateStore`` reads: the Zarr group, with ``states`` joined over the parts and
    ``attrs["complete"]`` from the manifest."""

    def __init__(self, group, manifest: dict | None):
        self.group, self.manifest = group, manifest
        self.attrs = dict(group.attrs)
        self.attrs["complete"] = bool(manifest and manifest.get("complete") is True)
        self._states = None

    def _parted(self) -> _PartedGroup | None:
        if self._states is None and "states" in self.group:
            part_starts = list(self.attrs.get("parts", [0]))
            offsets = np.asarray(self.group["offsets"][()], dtype=np.int64)
            if any(not isinstance(s, int) or not 0 <= s < len(offsets) - 1 for s in part_starts) and len(offsets) > 1:
                raise StoreError("the store's parts do not fit its sequences")
            row_starts = np.array([offsets[s] for s in part_starts] + [offsets[-1]], dtype=np.int64)
            parts = [self.group.get(part_name(k)) for k in range(len(part_starts))]
            if any(p is None for p in parts):
                raise StoreError("a part of the store is missing")
            self._states = _PartedGroup(self.group["states"], parts, row_starts)
        return self._states

    def row_starts(self) -> np.ndarray:
        """The first row of every part, and the number of rows at the end."""
        return self._parted()._row_starts

    def get(self, name: str, default=None):
        if name == "states":
            return self._parted() or default
        return self.group.get(name, default)

    def __getitem__(self, name: str):
        out = self.get(name)
        if out is None:
            raise KeyError(name)
        return out

    def __contains__(self, name: str) -> bool:
        return name in self.group


class ZarrReadBackend:
    """A Zarr store opened read-only."""

    def __init__(self, url, fs, root_path: str, group, manifest: dict | None):
        self.url, self.fs, self.root_path = url, fs, root_path
        self.group, self.manifest = group, manifest
        self.root = ZarrRoot(group, manifest)

    def check(self, cap: int) -> None:
        """Refuse symlinks in a local store (they could make it read other files), parts the
        manifest does not name as complete, and arrays with chunks never written (a tiny store must
        not declare a huge array: unwritten chunks read as zeros)."""
        if not is_url(self.url):
            for folder, dirs, files in os.walk(self.root_path):
                for name in dirs + files:
                    if os.path.islink(os.path.join(folder, name)):
                        raise StoreError(f"{self.url} is refused: {os.path.join(folder, name)} is a symlink; lstmvis "
                                         "reads only stores that hold all their own data")
        parts = self.root.attrs.get("parts", [0])
        if self.manifest.get("parts") != parts:
            raise StoreError(f"{self.url} is damaged: its manifest names other parts than the store has")
        with warnings.catch_warnings():  # the markers and the manifest are not Zarr nodes: said once per walk
            warnings.simplefilter("ignore")
            members = list(self.group.members(max_depth=None))
        for name, node in members:
            if hasattr(node, "nchunks_initialized") and node.nchunks_initialized < node.nchunks:
                raise StoreError(f"{self.url} is refused: array /{name} declares {'x'.join(map(str, node.shape))} "
                                 f"{node.dtype} but only {node.nchunks_initialized:,} of its {node.nchunks:,} "
                                 "chunks hold data; the store is damaged or crafted")

    def fingerprint(self) -> dict:
        """The store's address and the id its manifest got when it was completed."""
        return {"store": self.url, "manifest": self.manifest.get("id")}

    def close(self) -> None:
        pass


def open_read(url) -> ZarrReadBackend:
    """Open a Zarr store for ``StateStore.open``; a missing store or one that is not Zarr is refused
    here, an incomplete one (no manifest) by ``StateStore``'s checks."""
    import zarr

    fs, root_path, store, shown = _fs_and_root(url)
    if not fs.exists(f"{root_path}/zarr.json"):
        if fs.exists(root_path):
            raise StoreError(f"{shown} is not a Zarr state store (no zarr.json): create one with `lstmvis extract` "
                             "or StateStore.from_arrays")
        raise FileNotFoundError(f"no state store at {shown}: create one with `lstmvis extract` or "
                                "StateStore.from_arrays")
    try:
        group = zarr.open_group(store=store, mode="r")
    except Exception as exc:  # a broken zarr.json
        raise StoreError(f"{shown} is not a readable Zarr store ({type(exc).__name__}: {exc})") from None
    raw = _read_small(fs, f"{root_path}/{MANIFEST}")
    manifest = None
    if raw is not None:
        try:
            manifest = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise StoreError(f"{shown} is damaged: its manifest is not JSON") from None
        if not isinstance(manifest, dict):
            raise StoreError(f"{shown} is damaged: its manifest is not a JSON object")
    return ZarrReadBackend(shown, fs, root_path, group, manifest)


# ---------------------------------------------------------------------------- writing
class ZarrWriting:
    """``WriteBackend`` of a Zarr store (see the module docstring); ``mark_part`` is what a worker
    calls once its part's rows are written."""

    def __init__(self, url, fs, root_path: str, group):
        self.url, self.fs, self.root_path, self.group = url, fs, root_path, group
        self.part_starts: list[int] = list(group.attrs.get("parts", [0]))
        offsets = np.asarray(group["offsets"][()], dtype=np.int64) if "offsets" in group else None
        self._offsets = offsets
        self._marked: set[int] = set()

    @classmethod
    def new(cls, url, offsets: np.ndarray, parts: Sequence[int] | None) -> "ZarrWriting":
        """A fresh store at ``url`` (whatever was there is removed) with ``parts`` (first sequence of
        each; default ``plan_parts(offsets)``)."""
        import zarr

        fs, root_path, store, shown = _fs_and_root(url)
        if not is_url(url) and not Path(url).resolve().parent.is_dir():
            raise FileNotFoundError(f"folder {Path(url).resolve().parent} does not exist: create it first")
        if fs.exists(root_path):
            if not fs.exists(f"{root_path}/zarr.json") and fs.ls(root_path):
                raise ValueError(f"{shown} exists and is not a Zarr store: give a new path for the store")
            fs.rm(root_path, recursive=True)
        parts = plan_parts(offsets) if parts is None else [int(p) for p in parts]
        n_seq = len(offsets) - 1
        if parts[0] != 0 or any(b <= a for a, b in zip(parts, parts[1:])) or parts[-1] >= max(n_seq, 1):
            raise ValueError(f"parts must be increasing first sequences starting at 0, below {n_seq}")
        group = zarr.open_group(store=store, mode="w")
        group.attrs["parts"] = parts
        self = cls(shown, fs, root_path, group)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        return self

    @classmethod
    def reopen(cls, url) -> "ZarrWriting":
        """The unfinished store at ``url``, to resume it or to write one of its parts (a worker)."""
        import zarr

        fs, root_path, store, shown = _fs_and_root(url)
        if not fs.exists(f"{root_path}/zarr.json"):
            raise StoreError(f"no unfinished Zarr store at {shown}")
        return cls(shown, fs, root_path, zarr.open_group(store=store, mode="r+"))

    # the rows of each part
    def part_rows(self, k: int) -> tuple[int, int]:
        ends = self.part_starts[1:] + [len(self._offsets) - 1]
        return int(self._offsets[self.part_starts[k]]), int(self._offsets[ends[k]])

    def part_sequences(self, k: int) -> tuple[int, int]:
        ends = self.part_starts[1:] + [len(self._offsets) - 1]
        return self.part_starts[k], ends[k]

    @property
    def n_parts(self) -> int:
        return len(self.part_starts)

    def _create_array(self, name: str, shape, dtype, chunks, data=None):
        kwargs = dict(name=name, shape=shape, dtype=dtype, chunks=chunks, fill_value=0, overwrite=True,
                      config={"write_empty_chunks": True})
        if data is None:
            return self.group.create_array(compressors=None, **kwargs)
        return self.group.create_array(**kwargs)

    def put(self, name: str, data: np.ndarray, attrs: dict | None = None) -> None:
        data = np.asarray(data)
        chunks = (max(1, min(len(data), TOKEN_CHUNK)),) + data.shape[1:] if data.ndim else ()
        arr = self._create_array(name, data.shape, data.dtype, chunks, data=data)
        if data.size:
            arr[...] = data
        for key, value in (attrs or {}).items():
            arr.attrs[key] = value

    def create(self, name: str, shape: tuple[int, ...], dtype: str, chunks) -> None:
        if name.startswith("states/"):
            source, n_cells = name[len("states/"):], shape[1]
            for k in range(self.n_parts):
                a, b = self.part_rows(k)
                rows = _state_chunk_rows(b - a, n_cells, np.dtype(dtype).itemsize)
                self._create_array(f"{part_name(k)}/{source}", (b - a, n_cells), dtype, (rows, n_cells))
        else:
            self._create_array(name, shape, dtype, (max(1, min(shape[0], TOKEN_CHUNK)),) + tuple(shape[1:]))

    def write_rows(self, name: str, start: int, data: np.ndarray) -> None:
        stop = start + len(data)
        if not name.startswith("states/"):
            self._array(name)[start:stop] = data
            return
        source = name[len("states/"):]
        for k in range(self.n_parts):
            a, b = self.part_rows(k)
            if a < stop and b > start and b > a:
                lo, hi = max(a, start), min(b, stop)
                self._array(f"{part_name(k)}/{source}")[lo - a:hi - a] = data[lo - start:hi - start]

    def _array(self, name: str):
        """An array to write rows into; chunks equal to the fill value are written too (the config is
        not stored with the array: a chunk left out would make the store refuse to open)."""
        return self.group[name].with_config({"write_empty_chunks": True})

    def delete(self, name: str) -> None:
        if name in self.group:
            del self.group[name]

    def get_attr(self, group: str, key: str, default=None):
        node = self.group.get(group) if group else self.group
        return default if node is None else node.attrs.get(key, default)

    def set_attr(self, group: str, key: str, value) -> None:
        node = self.group.require_group(group) if group else self.group
        node.attrs[key] = value.item() if isinstance(value, np.generic) else value

    # completion of parts and of the store
    def _marker(self, k: int) -> str:
        return f"{self.root_path}/{part_name(k)}.done"

    def mark_part(self, k: int) -> None:
        """Record that part ``k`` has all its rows (call after its last write returned)."""
        marker = {"part": k, "rows": self.part_rows(k), "id": uuid.uuid4().hex}
        _put_atomic(self.fs, self._marker(k), json.dumps(marker).encode())
        self._marked.add(k)

    def part_id(self, k: int) -> str | None:
        """The id part ``k``'s marker got when the part was completed (``None``: no marker)."""
        raw = _read_small(self.fs, self._marker(k))
        try:
            marker = json.loads(raw) if raw is not None else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        return marker.get("id") if isinstance(marker, dict) and isinstance(marker.get("id"), str) else None

    def part_done(self, k: int) -> bool:
        if k not in self._marked and self.fs.exists(self._marker(k)):
            self._marked.add(k)
        return k in self._marked

    def load_done(self) -> np.ndarray:
        done = np.zeros(len(self._offsets) - 1, dtype=bool)
        for k in range(self.n_parts):
            if self.part_done(k):
                a, b = self.part_sequences(k)
                done[a:b] = True
        return done

    def save_done(self, done: np.ndarray) -> None:
        """Mark every part whose sequences are all done (Zarr writes are on storage when they return);
        a part marked already keeps its marker, and so its id."""
        for k in range(self.n_parts):
            a, b = self.part_sequences(k)
            if k not in self._marked and done[a:b].all() and not self.part_done(k):
                self.mark_part(k)

    def commit(self) -> None:
        """Mark the parts not marked yet (the caller wrote every row) and write the manifest, with every
        part's id: from now on the store opens."""
        part_ids = []
        for k in range(self.n_parts):
            part_ids.append(self.part_id(k))
            if part_ids[-1] is None:  # not marked yet, or by an older writer without ids
                self.mark_part(k)
                part_ids[-1] = self.part_id(k)
        manifest = {"format": FORMAT, "complete": True, "id": uuid.uuid4().hex, "parts": self.part_starts,
                    "part_ids": part_ids,
                    "n_tokens": int(self._offsets[-1]), "sources": json.loads(self.get_attr("states", "sources", "[]"))}
        _put_atomic(self.fs, f"{self.root_path}/{MANIFEST}", json.dumps(manifest).encode())

    def suspend(self) -> None:
        pass

    def discard(self) -> None:
        if self.fs.exists(self.root_path):
            self.fs.rm(self.root_path, recursive=True)


# ---------------------------------------------------------------------------- one part as a store
class _PartRoot:
    """The root node of part ``k`` read as a store of its own: its sequences (offsets from 0), token
    ids and states; vocabulary and card of the whole store."""

    def __init__(self, root: ZarrRoot, k: int):
        states = root._parted()
        a, b = int(states._row_starts[k]), int(states._row_starts[k + 1])
        starts = list(root.attrs.get("parts", [0]))
        offsets = np.asarray(root.group["offsets"][()], dtype=np.int64)
        s0, s1 = starts[k], (starts[k + 1] if k + 1 < len(starts) else len(offsets) - 1)
        self._arrays = {"offsets": offsets[s0:s1 + 1] - offsets[s0], "token_ids": root.group["token_ids"][a:b],
                        "vocab": root.group["vocab"], "card": root.group["card"]}
        self.first_sequence, self.first_row = s0, a
        self.attrs = {**root.attrs, "n_tokens": b - a, "n_sequences": s1 - s0}
        self._states = _PartedGroup(root.group["states"], [states._parts[k]], np.array([0, b - a]))

    def get(self, name: str, default=None):
        return self._states if name == "states" else self._arrays.get(name, default)

    def __getitem__(self, name: str):
        out = self.get(name)
        if out is None:
            raise KeyError(name)
        return out

    def __contains__(self, name: str) -> bool:
        return name == "states" or name in self._arrays


class PartBackend:
    """``ReadBackend`` of one part of an open Zarr store (``StateStore(part_path(...), PartBackend(...))``).

    Its fingerprint is the store's address, the part's number and the part's id from the manifest
    (the manifest's id for stores written before parts had ids): a part's match index stays valid
    while that part is unchanged, whatever happens to the other parts. ``index_fs`` and
    ``index_path`` name the folder beside the part where its match index is kept on the store's own
    storage (``None`` for a local store: the index is written there directly)."""

    def __init__(self, whole: ZarrReadBackend, k: int):
        self.root = _PartRoot(whole.root, k)
        self.url = f"{whole.url}/{part_name(k)}"
        ids = whole.manifest.get("part_ids") if whole.manifest else None
        part_id = ids[k] if isinstance(ids, list) and len(ids) == len(whole.root.attrs.get("parts", [0])) \
            and isinstance(ids[k], str) else None
        self._fingerprint = {"store": whole.url, "part": k, "part_id": part_id} if part_id else \
            {**whole.fingerprint(), "part": k}
        remote = is_url(whole.url)
        self.index_fs = whole.fs if remote else None
        self.index_path = f"{whole.root_path}/{part_name(k)}.index" if remote else None

    def check(self, cap: int) -> None:
        """The whole store was checked when it was opened."""

    def fingerprint(self) -> dict:
        return self._fingerprint

    def close(self) -> None:
        pass
