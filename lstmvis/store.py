"""StateStore: hidden states of a whole corpus on disk (HDF5), read lazily.

All sequences are flattened into one token stream with explicit sequence offsets (LSTMVis has no
boundaries). One 2-D array ``(N_tokens, n_cells)`` per source (e.g. ``rnn.l1.c``), token ids, the
vocabulary, optional per-token meta tracks, per-sequence original text and per-token character
spans, and the model card the states came from.

Layout (``format = "lstmvis-state-store"``, ``version = 1``), the same in every backend
(``lstmvis.backend``): one HDF5 file, or a Zarr v3 hierarchy for ``*.zarr`` paths and fsspec URLs
(``lstmvis.zarr_backend``: the states in parts of whole sequences, plus a manifest)::

    /                 attrs: format, version, complete, n_tokens, n_sequences
    /vocab            uint8 JSON list of tokens (index = token id)
    /card             uint8 JSON object (model card, extraction settings)
    /token_ids        (N,) int32
    /offsets          (S + 1,) int64, offsets[0] = 0, offsets[-1] = N
    /states/<source>  (N, D) float32 or float16; group attr ``sources`` keeps their order
    /meta/<name>      (N,) numbers, or int32 codes with attr ``categories`` (JSON) for strings
    /text_bytes       uint8 UTF-8 of all sequence texts; /text_offsets (S + 1,) byte offsets
    /spans            (N, 2) int64 character span of each token within its sequence text

Writes are atomic: a store is written to a temporary file in the same folder, marked
``complete`` and renamed into place, so a killed write never leaves a store that opens.

Opening checks declared sizes against the data the file really holds (a small file cannot declare
a billion tokens) and reads whole into memory at most ``read_cap()`` bytes (2 GiB, or ``$LSTMVIS_MAX_READ_BYTES``):
sequence offsets, vocabulary and card.
"""
from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from textexplain.spans import spans_by_search

from . import zarr_backend
from .backend import FORMAT, VERSION, StoreError, backend_kind, is_array, is_url
from .detokenize import join_style

CHUNK_BYTES = 1 << 20
MAX_READ_BYTES_ENV = "LSTMVIS_MAX_READ_BYTES"
DEFAULT_MAX_READ_BYTES = 2 << 30


def json_blob(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)


def read_json_blob(ds) -> object:
    return json.loads(ds[()].tobytes().decode("utf-8"))


def check_source_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid source or meta name {name!r}: use a non-empty string without '/'")
    return name


def state_chunks(n_rows: int, n_cells: int, itemsize: int) -> tuple[int, int]:
    """Row-block chunks of about 1 MiB: cheap row slices and bounded column scans."""
    rows = max(1, min(max(n_rows, 1), CHUNK_BYTES // max(1, n_cells * itemsize)))
    return rows, max(1, n_cells)


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def partial_path_for(path: Path) -> Path:
    """Where an unfinished extraction into ``path`` keeps its work for a resume."""
    return path.with_name(path.name + ".partial")


def read_cap(value: int | None = None) -> int:
    """The most bytes read whole into memory from one untrusted file: ``value``, else
    ``$LSTMVIS_MAX_READ_BYTES``, else 2 GiB."""
    if value is None:
        raw = os.environ.get(MAX_READ_BYTES_ENV, "")
        if not raw.strip():
            return DEFAULT_MAX_READ_BYTES
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{MAX_READ_BYTES_ENV}={raw!r} is not a number of bytes") from None
    if value < 1:
        raise ValueError(f"the read cap must be a positive number of bytes, got {value}")
    return int(value)


def declared_bytes(ds: h5py.Dataset) -> int:
    return int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize


def _amount(n_bytes: int) -> str:
    return f"{n_bytes:,} bytes" if n_bytes < 2**20 else f"{n_bytes / 2**20:,.0f} MiB"


def check_read_size(path: Path, what: str, n_bytes: int, cap: int) -> None:
    """Refuse to read ``n_bytes`` whole into memory when that is over ``cap``."""
    if n_bytes > cap:
        raise StoreError(f"{path} is refused: reading {what} needs {_amount(n_bytes)} of memory, more than the "
                         f"{_amount(cap)} allowed (raise it with {MAX_READ_BYTES_ENV}=BYTES)")


def _missing_data(name: str, ds: h5py.Dataset) -> str | None:
    """Why dataset ``ds`` declares more data than the file holds (None: all of it is stored).

    Contiguous data must be allocated in full. Chunked data (perhaps compressed, so its bytes
    say nothing) must have every chunk written: a chunk never written reads as the fill value,
    which lets a tiny file declare a huge array."""
    if ds.shape is None:  # an empty (null) dataspace holds nothing and declares nothing
        return None
    layout = ds.id.get_create_plist().get_layout()
    size = f"{'x'.join(map(str, ds.shape))} {ds.dtype} ({_amount(declared_bytes(ds))})"
    if layout == h5py.h5d.CONTIGUOUS and ds.id.get_storage_size() < declared_bytes(ds):
        return f"dataset /{name} declares {size} but the file holds {ds.id.get_storage_size():,} bytes of it"
    if layout == h5py.h5d.CHUNKED:
        expected = int(np.prod([-(-n // c) for n, c in zip(ds.shape, ds.chunks)], dtype=object))
        stored = ds.id.get_num_chunks()
        if stored < expected:
            return f"dataset /{name} declares {size} but only {stored:,} of its {expected:,} chunks hold data"
    return None


def check_stored_data(path: Path, f: h5py.File) -> None:
    """Refuse a file whose datasets declare more data than the file holds (see ``_missing_data``),
    before anything is read: a 10 KB file must not make the reader allocate gigabytes."""
    missing = f.visititems(lambda name, obj: _missing_data(name, obj) if isinstance(obj, h5py.Dataset) else None)
    if missing:
        raise StoreError(f"{path} is refused: {missing}; the file is damaged or crafted")


def read_text_datasets(f: h5py.Group) -> list[str]:
    """The texts written by ``write_text_datasets``."""
    data, offsets = f["text_bytes"][()].tobytes(), f["text_offsets"][()]
    return [data[a:b].decode("utf-8", "surrogatepass") for a, b in zip(offsets[:-1], offsets[1:])]


def encode_texts(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``text_bytes`` (UTF-8 of all texts) and ``text_offsets`` (byte offsets, one more than texts)."""
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    text_offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=text_offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), text_offsets


def write_text_datasets(f: h5py.Group, texts: Sequence[str]) -> None:
    data, offsets = encode_texts(texts)
    f.create_dataset("text_bytes", data=data)
    f.create_dataset("text_offsets", data=offsets)


def meta_array(name: str, values) -> tuple[np.ndarray, dict]:
    """A meta track as stored: numbers as they are, strings as int32 codes with attr ``categories``."""
    check_source_name(name)
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"meta track {name!r} must be 1-D (one value per token), got shape {arr.shape}")
    if arr.dtype.kind in "USO":
        categories, codes = np.unique(arr.astype(str), return_inverse=True)
        return codes.astype(np.int32), {"categories": json.dumps([str(c) for c in categories])}
    if arr.dtype.kind in "biuf":
        return arr, {}
    raise TypeError(f"meta track {name!r} has dtype {arr.dtype}: use numbers, booleans or strings")


def check_self_contained(path: Path, f: h5py.File) -> None:
    """Refuse soft/external links, external storage and virtual datasets: through them an
    untrusted store would make the reader (and the server) return the bytes of any file."""
    # the visitors stop at the first non-None result (raising inside them upsets h5py's locks)
    link = f.visititems_links(lambda name, lnk: None if isinstance(lnk, h5py.HardLink)
                              else f"/{name} is a {type(lnk).__name__}")
    outside = link or f.visititems(lambda name, obj: f"dataset /{name} keeps its data in other files"
                                   if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual) else None)
    if outside:
        raise StoreError(f"{path} is refused: {outside}; lstmvis reads only HDF5 files that hold all their own "
                         "data (links, external and virtual storage could make it read other files)")


class HDF5Backend:
    """A store file opened read-only with h5py (the root node is the h5py file)."""

    def __init__(self, path: Path, f: h5py.File):
        self.path, self.root, self.url = Path(path), f, str(path)

    def check(self, cap: int) -> None:
        check_self_contained(self.path, self.root)
        check_stored_data(self.path, self.root)

    def fingerprint(self) -> dict:
        """Stores are written once, atomically, then renamed: path, size, mtime and inode identify one."""
        stat = os.stat(self.path)
        return {"store": str(self.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "inode": stat.st_ino}

    def close(self) -> None:
        if self.root.id.valid:
            self.root.close()


class HDF5Writing:
    """``WriteBackend`` of one HDF5 file, written at ``tmp`` and renamed to ``path`` on ``commit``."""

    def __init__(self, path: Path, tmp: Path, mode: str):
        self.path, self.tmp = path, tmp
        self.f = h5py.File(tmp, mode)

    def put(self, name: str, data: np.ndarray, attrs: dict | None = None) -> None:
        ds = self.f.create_dataset(name, data=data)
        for key, value in (attrs or {}).items():
            ds.attrs[key] = value

    def create(self, name: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...] | None) -> None:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # all space now: later writes change no metadata (checkpoint)
        self.f.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl, chunks=chunks if shape[0] else None)

    def write_rows(self, name: str, start: int, data: np.ndarray) -> None:
        self.f[name][start:start + len(data)] = data

    def delete(self, name: str) -> None:
        if name in self.f:
            del self.f[name]

    def get_attr(self, group: str, key: str, default=None):
        node = self.f.get(group) if group else self.f
        return default if node is None else node.attrs.get(key, default)

    def set_attr(self, group: str, key: str, value) -> None:
        (self.f.require_group(group) if group else self.f).attrs[key] = value

    def load_done(self) -> np.ndarray | None:
        return np.asarray(self.f["done"][()], dtype=bool) if "done" in self.f else None

    def save_done(self, done: np.ndarray) -> None:
        """Every dataset written while extracting has its space allocated before the first call, so
        writes change only data, never HDF5 metadata; the states are flushed before the flags."""
        if "done" not in self.f:
            self.f.create_dataset("done", data=done)
        self.f.flush()
        self.f["done"][...] = done
        self.f.flush()

    def commit(self) -> None:
        self.delete("done")
        self.f.attrs["complete"] = True
        self.f.close()
        os.replace(self.tmp, self.path)

    def suspend(self) -> None:
        if self.f.id.valid:
            self.f.close()

    def discard(self) -> None:
        try:
            self.suspend()
        finally:
            self.tmp.unlink(missing_ok=True)


def _check_codes(path: Path, what: str, ds: h5py.Dataset, size: int) -> None:
    """Integer codes in ``ds`` must index a table of ``size`` entries (read in blocks)."""
    step = 1 << 22
    for a in range(0, ds.shape[0], step):
        block = ds[a:a + step]
        if len(block) and (block.min() < 0 or block.max() >= size):
            raise StoreError(f"{path} is damaged: {what} holds codes outside 0..{size - 1}")


class StateStore:
    """A read-only, lazily loaded store of per-token hidden states (see the module docstring).

    Open with ``StateStore.open(path)``; create with ``StateStore.from_arrays(...)`` or
    ``lstmvis.extract(...)``. Positions are global token indices into the flattened stream.
    """

    def __init__(self, path: str | Path, backend):
        self.url = backend.url
        self.path = Path(path) if not is_url(path) else Path(backend.url.split("://", 1)[1])
        self.backend = backend
        _file = self._f = backend.root
        self._states_group = _file["states"]
        self.sources: list[str] = json.loads(self._states_group.attrs["sources"])
        self._datasets: dict = {}  # opened once: each h5py look-up costs ~0.3 ms per query
        self.n_tokens = int(_file.attrs["n_tokens"])
        self.offsets = np.asarray(_file["offsets"][()], dtype=np.int64)
        self.n_sequences = len(self.offsets) - 1
        self.vocab: list[str] = read_json_blob(_file["vocab"])
        self.card: dict = read_json_blob(_file["card"]) if "card" in _file else {}
        self._token_ids = _file["token_ids"]
        self._meta = _file["meta"] if "meta" in _file else None
        self.meta_names: list[str] = json.loads(self._meta.attrs["names"]) if self._meta is not None else []
        self._text_offsets = np.asarray(_file["text_offsets"][()], dtype=np.int64) if "text_offsets" in _file else None
        self._spans = _file["spans"] if "spans" in _file else None
        self._vocab_array = np.array(self.vocab, dtype=object)

    # ------------------------------------------------------------------ opening and validation
    @classmethod
    def open(cls, path: str | Path, *, max_read_bytes: int | None = None) -> "StateStore":
        """Open a store lazily; a missing, foreign, truncated or incomplete file gives a clear error.

        ``path``: an HDF5 file, a ``*.zarr`` folder or an fsspec URL (``s3://bucket/states.zarr``;
        ``lstmvis.backend``). ``max_read_bytes``: the most read whole into memory (offsets,
        vocabulary, card); default ``$LSTMVIS_MAX_READ_BYTES``, else 2 GiB."""
        cap = read_cap(max_read_bytes)
        if backend_kind(path) == "zarr":
            backend = zarr_backend.open_read(path)
            return cls._checked(path, backend, cap, backend.url)
        path = Path(path)
        if not path.exists():
            partial = partial_path_for(path)
            hint = (f" (an unfinished extraction is at {partial}: rerun the same `extract` to resume it)"
                    if partial.exists() else ": create one with `lstmvis extract` or StateStore.from_arrays")
            raise FileNotFoundError(f"no state store at {path}{hint}")
        if path.is_dir():
            raise StoreError(f"{path} is a folder, not a state store file (for an LSTMVis project folder "
                             "use `lstmvis import-lstmvis DIR --out STORE`)")
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise StoreError(f"{path} is not a readable HDF5 file: it is truncated, corrupt or not a state "
                             f"store ({exc})") from None
        return cls._checked(path, HDF5Backend(path, f), cap, path)

    @classmethod
    def _checked(cls, path, backend, cap: int, where) -> "StateStore":
        """The store on an opened ``backend`` once ``_validate`` passed; the backend closed otherwise."""
        try:
            cls._validate(where, backend, cap)
            return cls(path, backend)
        except StoreError:
            backend.close()
            raise
        except Exception as exc:  # whatever else a damaged or hand-made file trips over
            backend.close()
            raise StoreError(f"{where} is damaged or not a state store ({type(exc).__name__}: {exc}); "
                             "recreate the store") from None
        except BaseException:
            backend.close()
            raise

    @staticmethod
    def _validate(path: Path, backend, cap: int) -> None:
        f = backend.root
        if f.attrs.get("format") != FORMAT:
            raise StoreError(f"{path} is an HDF5 file but not an lstmvis state store (no format attribute "
                             f"{FORMAT!r}); to read an LSTMVis project use `lstmvis import-lstmvis DIR --out STORE`")
        version = int(f.attrs.get("version", -1))
        if version > VERSION or version < 1:
            raise StoreError(f"{path} has store format version {version}; this lstmvis reads version {VERSION}: "
                             "upgrade lstmvis or re-extract")
        if not bool(f.attrs.get("complete", False)):
            raise StoreError(f"{path} is an incomplete store (its extraction did not finish): rerun the "
                             "extraction to resume or recreate it")
        missing = [k for k in ("vocab", "token_ids", "offsets", "states") if k not in f]
        if missing:
            raise StoreError(f"{path} is damaged: it lacks {', '.join(missing)}; recreate the store")
        backend.check(cap)
        whole = [f[k] for k in ("offsets", "text_offsets", "vocab", "card") if is_array(f.get(k))]
        check_read_size(path, "its offsets, vocabulary and card", sum(declared_bytes(ds) for ds in whole), cap)
        n = int(f.attrs["n_tokens"])
        offsets = f["offsets"][()]
        if (offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) < 1 or offsets[0] != 0
                or offsets[-1] != n or np.any(np.diff(offsets) < 0)):
            raise StoreError(f"{path} is damaged: sequence offsets do not cover the {n} tokens")
        vocab = read_json_blob(f["vocab"])
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
            raise StoreError(f"{path} is damaged: its vocabulary is not a list of token strings")
        if f["token_ids"].shape != (n,) or f["token_ids"].dtype.kind not in "iu":
            raise StoreError(f"{path} is damaged: token_ids has shape {f['token_ids'].shape} and dtype "
                             f"{f['token_ids'].dtype}, expected ({n},) integers")
        _check_codes(path, "token_ids", f["token_ids"], len(vocab))
        group = f["states"]
        sources = json.loads(group.attrs.get("sources", "[]"))
        if not isinstance(sources, list) or len(set(map(str, sources))) != len(sources):
            raise StoreError(f"{path} is damaged: its list of sources is not a list of distinct names")
        for name in sources:
            ds = group.get(check_source_name(name)) if isinstance(name, str) and "/" not in name else None
            if not is_array(ds) or ds.ndim != 2 or ds.shape[0] != n or ds.dtype.kind != "f":
                raise StoreError(f"{path} is damaged: states of {name!r} are missing or not ({n}, cells) floats")
        if "meta" in f:
            for name in json.loads(f["meta"].attrs.get("names", "[]")):
                ds = f["meta"].get(check_source_name(name)) if isinstance(name, str) and "/" not in name else None
                if not is_array(ds) or ds.shape != (n,) or ds.dtype.kind not in "biuf":
                    raise StoreError(f"{path} is damaged: meta track {name!r} is missing or not ({n},) numbers")
                if "categories" in ds.attrs:
                    categories = json.loads(ds.attrs["categories"])
                    if not isinstance(categories, list) or ds.dtype.kind not in "iu":
                        raise StoreError(f"{path} is damaged: meta track {name!r} has malformed categories")
                    _check_codes(path, f"meta track {name!r}", ds, len(categories))
        if "spans" in f and f["spans"].shape != (n, 2):
            raise StoreError(f"{path} is damaged: spans has shape {f['spans'].shape}, expected ({n}, 2)")
        if "text_offsets" in f:
            text_offsets = f["text_offsets"][()]
            n_bytes = f["text_bytes"].shape[0] if "text_bytes" in f else -1
            if (text_offsets.shape != offsets.shape or text_offsets.dtype.kind not in "iu" or text_offsets[0] != 0
                    or text_offsets[-1] != n_bytes or np.any(np.diff(text_offsets) < 0)):
                raise StoreError(f"{path} is damaged: its texts do not match its {len(offsets) - 1} sequences")

    # ------------------------------------------------------------------ creation
    @classmethod
    def from_arrays(cls, path: str | Path, states: Mapping[str, np.ndarray], tokens: Sequence[str] | None = None,
                    offsets: Sequence[int] | None = None, *, token_ids: Sequence[int] | None = None,
                    vocab: Sequence[str] | None = None, meta: Mapping[str, np.ndarray] | None = None,
                    card: dict | None = None, texts: Sequence[str] | None = None,
                    spans: np.ndarray | None = None, dtype: str | None = None) -> "StateStore":
        """Write a store from in-memory arrays (atomically) and open it.

        ``states``: ``{source: (N, D) array}``. Give ``tokens`` (one string per position) or
        ``token_ids`` + ``vocab``. ``offsets``: sequence starts, ``len = n_sequences + 1``,
        ``offsets[0] = 0``, ``offsets[-1] = N`` (default: one sequence). ``meta``: ``{name: (N,)}``.
        ``texts``: each sequence's original text; ``spans``: ``(N, 2)`` character spans of the
        tokens within their sequence's text. ``dtype``: ``"float32"`` or ``"float16"`` (default:
        float16 arrays stay float16, anything else becomes float32).
        """
        if not states:
            raise ValueError("states is empty: give at least one {source: (N, D) array}")
        token_ids, vocab = _ids_and_vocab(tokens, token_ids, vocab)
        n = len(token_ids)
        offsets = np.array([0, n] if offsets is None else offsets, dtype=np.int64)
        writer = StoreWriter(path, n_tokens=n, offsets=offsets, vocab=vocab, card=card)
        try:
            writer.write_tokens(0, token_ids)
            for name, arr in states.items():
                arr = np.asarray(arr)
                if arr.ndim != 2 or arr.shape[0] != n:
                    raise ValueError(f"states[{name!r}] has shape {arr.shape}: expected ({n}, n_cells), one row "
                                     "per token")
                ds_dtype = dtype or ("float16" if arr.dtype == np.float16 else "float32")
                writer.add_source(name, arr.shape[1], ds_dtype)
                writer.write_states(name, 0, arr)
            for name, values in (meta or {}).items():
                writer.add_meta(name, values)
            if texts is not None:
                writer.set_texts(texts)
                if spans is None:
                    spans = spans_by_search(texts, [vocab[i] for i in token_ids], offsets)
            if spans is not None:
                writer.set_spans(spans)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        return cls.open(path)

    # ------------------------------------------------------------------ reading
    def _check_range(self, start: int | None, stop: int | None) -> tuple[int, int]:
        start = 0 if start is None else int(start)
        stop = self.n_tokens if stop is None else int(stop)
        if not 0 <= start <= stop <= self.n_tokens:
            raise IndexError(f"token range [{start}, {stop}) is outside the store's 0..{self.n_tokens}")
        return start, stop

    def dataset(self, source: str):
        """The lazy ``(N, D)`` array of a source (an h5py dataset, or the Zarr parts as one array): for
        index builders and column scans."""
        ds = self._datasets.get(source)
        if ds is None:
            if source not in self.sources:
                raise KeyError(f"unknown source {source!r}: the store has {', '.join(self.sources)}")
            ds = self._datasets[source] = self._states_group[source]
        return ds

    def n_cells(self, source: str) -> int:
        return int(self.dataset(source).shape[1])

    def states(self, source: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """States of ``source`` for positions ``[start, stop)`` as float32 ``(T, D)``."""
        start, stop = self._check_range(start, stop)
        return np.asarray(self.dataset(source)[start:stop], dtype=np.float32)

    def token_ids(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        return np.asarray(self._token_ids[start:stop], dtype=np.int64)

    def tokens(self, start: int | None = None, stop: int | None = None) -> list[str]:
        return self._vocab_array[self.token_ids(start, stop)].tolist()

    def meta(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """A meta track for ``[start, stop)``: numbers, or strings for categorical tracks."""
        if name not in self.meta_names:
            raise KeyError(f"unknown meta track {name!r}: the store has {self.meta_names or 'none'}")
        start, stop = self._check_range(start, stop)
        ds = self._meta[name]
        values = ds[start:stop]
        if "categories" in ds.attrs:
            return np.array(json.loads(ds.attrs["categories"]), dtype=object)[values]
        return values

    def sequence_of(self, position: int | np.ndarray) -> int | np.ndarray:
        """Index of the sequence holding a position (or an array of positions)."""
        pos = np.asarray(position)
        if np.any(pos < 0) or np.any(pos >= self.n_tokens):
            raise IndexError(f"position {position} is outside the store's 0..{self.n_tokens - 1}")
        seq = np.searchsorted(self.offsets, pos, side="right") - 1
        return int(seq) if seq.ndim == 0 else seq

    def sequence_bounds(self, i: int) -> tuple[int, int]:
        """``(start, stop)`` token positions of sequence ``i``."""
        i = self._check_sequence(i)
        return int(self.offsets[i]), int(self.offsets[i + 1])

    def _check_sequence(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.n_sequences:
            raise IndexError(f"sequence {i} is outside 0..{self.n_sequences - 1}")
        return i

    @functools.cached_property  # read-only store: the vocabulary is looked at once
    def tokenization(self) -> str | None:
        """How the store's texts were cut into tokens: the card's ``tokenization`` (``lstmvis.extract``
        writes the model's: ``word``, ``char``, ``whitespace``, ``hf:<name>``; ``from_arrays`` takes it in
        ``card``), else ``char`` when every ordinary token of the vocabulary is one character, else
        ``None`` (not known)."""
        named = self.card.get("tokenization")
        if isinstance(named, str) and named:
            return named
        return "char" if join_style(self.vocab) == "char" else None

    @property
    def has_texts(self) -> bool:
        """Whether the original texts are stored (else ``sequence_text`` joins tokens with spaces)."""
        return self._text_offsets is not None

    @property
    def has_spans(self) -> bool:
        """Whether character spans are stored (else they point into the space-joined tokens)."""
        return self._spans is not None

    def sequence_text(self, i: int) -> str:
        """The original text of sequence ``i``.

        Stores written by ``extract`` keep the exact text. Without stored texts, the tokens
        joined by single spaces stand in (and ``token_spans`` point into that text).
        """
        i = self._check_sequence(i)
        if self._text_offsets is None:
            return " ".join(self.tokens(*self.sequence_bounds(i)))
        a, b = self._text_offsets[i], self._text_offsets[i + 1]
        return self._f["text_bytes"][a:b].tobytes().decode("utf-8", "surrogatepass")

    def token_spans(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """``(T, 2)`` character spans of tokens ``[start, stop)`` within their own sequence's text."""
        start, stop = self._check_range(start, stop)
        if self._spans is not None:
            return np.asarray(self._spans[start:stop], dtype=np.int64)
        out = np.zeros((stop - start, 2), dtype=np.int64)
        if stop == start:
            return out
        for seq in range(self.sequence_of(start), self.sequence_of(stop - 1) + 1):
            a, b = self.sequence_bounds(seq)
            lengths = np.array([len(t) for t in self.tokens(a, b)], dtype=np.int64)
            begins = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
            lo, hi = max(a, start), min(b, stop)
            out[lo - start:hi - start, 0] = begins[lo - a:hi - a]
            out[lo - start:hi - start, 1] = begins[lo - a:hi - a] + lengths[lo - a:hi - a]
        return out

    # ------------------------------------------------------------------ select & match (lstmvis.query)
    def select(self, *args, **kwargs):
        """Cells on over a token range: see ``lstmvis.query.select``."""
        from .query import select

        return select(self, *args, **kwargs)

    def match(self, *args, **kwargs):
        """Runs elsewhere where the selected cells are on: see ``lstmvis.query.match``."""
        from .query import match

        return match(self, *args, **kwargs)

    # ------------------------------------------------------------------ housekeeping
    def info(self) -> dict:
        """A summary: sizes, sources with cells and dtype, meta tracks, model name."""
        return {
            "path": self.url, "n_tokens": self.n_tokens, "n_sequences": self.n_sequences,
            "vocab_size": len(self.vocab),
            "sources": {s: {"cells": self.n_cells(s), "dtype": str(self.dataset(s).dtype)} for s in self.sources},
            "meta": list(self.meta_names), "has_texts": self.has_texts,
            "model": self.card.get("model") or self.card.get("name"),
        }

    def fingerprint(self) -> dict:
        """What identifies the store's content (the backend's): the match index is rebuilt when it changes."""
        return self.backend.fingerprint()

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return (f"StateStore({self.url!r}, {self.n_tokens} tokens, {self.n_sequences} sequences, "
                f"sources={self.sources})")


def _ids_and_vocab(tokens, token_ids, vocab) -> tuple[np.ndarray, list[str]]:
    if tokens is not None and token_ids is not None:
        raise ValueError("give either tokens or token_ids + vocab, not both")
    if tokens is not None:
        if isinstance(tokens, str):
            raise TypeError("tokens must be a list of strings (one per position), not one string")
        if vocab is not None:
            raise ValueError("vocab goes with token_ids; with tokens the vocabulary is built for you")
        index: dict[str, int] = {}
        ids = np.fromiter((index.setdefault(str(t), len(index)) for t in tokens), dtype=np.int64, count=len(tokens))
        return ids, list(index)
    if token_ids is None or vocab is None:
        raise ValueError("give tokens (one string per position) or token_ids together with vocab")
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    vocab = [str(t) for t in vocab]
    if len(ids) and (ids.min() < 0 or ids.max() >= len(vocab)):
        raise ValueError(f"token_ids must lie in 0..{len(vocab) - 1} (the vocabulary size)")
    return ids, vocab


class StoreWriter:
    """Writes a store through its backend (``lstmvis.backend``), atomically: an HDF5 file is written
    at a temporary path and renamed into place on ``finish``; a Zarr store is complete only once
    ``finish`` writes its manifest.

    With ``partial_path`` (HDF5) the temporary file has a fixed name, so an interrupted extraction
    can be reopened by ``resume`` and continued; a Zarr store resumes where it is. ``parts``
    (Zarr): the sequence index at which each part starts (``zarr_backend.plan_parts``).
    """

    def __init__(self, path: str | Path, n_tokens: int, offsets: np.ndarray, vocab: Sequence[str],
                 card: dict | None = None, partial_path: Path | None = None, parts: Sequence[int] | None = None):
        kind = backend_kind(path)
        self.path = Path(path) if kind == "hdf5" else path
        if kind == "hdf5":
            if self.path.is_dir():
                raise ValueError(f"{self.path} is a folder: give a file path for the store, e.g. states.h5")
            if not self.path.parent.is_dir():
                raise FileNotFoundError(f"folder {self.path.parent} does not exist: create it first")
        offsets = np.asarray(offsets, dtype=np.int64)
        if (offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != n_tokens
                or np.any(np.diff(offsets) < 0)):
            raise ValueError(f"offsets must start at 0, never decrease and end at the token count {n_tokens} "
                             "(length = number of sequences + 1)")
        self.n_tokens, self.n_sequences = n_tokens, len(offsets) - 1
        if kind == "hdf5":
            self.tmp = partial_path or temp_path_for(self.path)
            self.backend = HDF5Writing(self.path, self.tmp, "w")
            self.f = self.backend.f
        else:
            self.backend = zarr_backend.ZarrWriting.new(path, offsets, parts)
        b = self.backend
        for key, value in (("format", FORMAT), ("version", VERSION), ("complete", False), ("n_tokens", n_tokens),
                           ("n_sequences", self.n_sequences)):
            b.set_attr("", key, value)
        b.put("vocab", json_blob(list(vocab)))
        b.put("card", json_blob(card or {}))
        b.put("offsets", offsets)
        b.create("token_ids", (n_tokens,), "int32" if len(vocab) < 2 ** 31 else "int64", None)
        b.set_attr("states", "sources", "[]")

    @classmethod
    def resume(cls, path: str | Path, partial_path: Path | None = None) -> "StoreWriter":
        """Reopen an unfinished store (HDF5: the one written with ``partial_path``)."""
        self = cls.__new__(cls)
        if backend_kind(path) == "hdf5":
            self.path, self.tmp = Path(path), partial_path
            self.backend = HDF5Writing(self.path, partial_path, "r+")
            self.f = self.backend.f
        else:
            self.path, self.backend = path, zarr_backend.ZarrWriting.reopen(path)
        if self.backend.get_attr("", "format") != FORMAT:
            self.backend.suspend()
            raise StoreError(f"{partial_path or path} is not an unfinished state store")
        self.n_tokens = int(self.backend.get_attr("", "n_tokens"))
        self.n_sequences = int(self.backend.get_attr("", "n_sequences"))
        return self

    @property
    def sources(self) -> list[str]:
        return json.loads(self.backend.get_attr("states", "sources"))

    @property
    def fingerprint(self) -> str | None:
        """What made this store (set by ``extract``, compared on a resume)."""
        return self.backend.get_attr("", "fingerprint")

    @fingerprint.setter
    def fingerprint(self, value: str) -> None:
        self.backend.set_attr("", "fingerprint", value)

    def add_source(self, name: str, n_cells: int, dtype: str = "float32") -> None:
        check_source_name(name)
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        sources = self.sources
        if name in sources:
            raise ValueError(f"source {name!r} is given twice")
        itemsize = np.dtype(dtype).itemsize
        self.backend.create(f"states/{name}", (self.n_tokens, n_cells), dtype,
                            state_chunks(self.n_tokens, n_cells, itemsize))
        self.backend.set_attr("states", "sources", json.dumps(sources + [name]))

    def write_tokens(self, start: int, ids: np.ndarray) -> None:
        self.backend.write_rows("token_ids", start, np.asarray(ids))

    def write_states(self, name: str, start: int, arr: np.ndarray) -> None:
        if len(arr):
            self.backend.write_rows(f"states/{name}", start, arr)

    def add_meta(self, name: str, values) -> None:
        names = json.loads(self.backend.get_attr("meta", "names", "[]") or "[]")
        if name in names:
            raise ValueError(f"meta track {name!r} is given twice")
        if len(values) != self.n_tokens:
            raise ValueError(f"meta track {name!r} has {len(values)} values: expected one per token ({self.n_tokens})")
        data, attrs = meta_array(name, values)
        self.backend.put(f"meta/{name}", data, attrs)
        self.backend.set_attr("meta", "names", json.dumps(names + [name]))

    def replace_meta(self, meta: Mapping[str, np.ndarray]) -> None:
        """Write every meta track afresh (also after a resume)."""
        self.backend.delete("meta")
        for name, values in meta.items():
            self.add_meta(name, values)

    def set_texts(self, texts: Sequence[str]) -> None:
        if len(texts) != self.n_sequences:
            raise ValueError(f"texts has {len(texts)} entries: expected one per sequence ({self.n_sequences})")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be strings (one original text per sequence)")
        data, offsets = encode_texts(texts)
        self.backend.put("text_bytes", data)
        self.backend.put("text_offsets", offsets)

    def set_spans(self, spans) -> None:
        spans = np.asarray(spans, dtype=np.int64)
        if spans.shape != (self.n_tokens, 2):
            raise ValueError(f"spans has shape {spans.shape}: expected ({self.n_tokens}, 2), one (start, end) "
                             "per token")
        self.backend.put("spans", spans)

    def done_flags(self) -> np.ndarray | None:
        """The finished sequences of an unfinished store (None: none recorded)."""
        return self.backend.load_done()

    def checkpoint(self, done: np.ndarray) -> None:
        """Make the store readable after any kill, with ``done`` as its finished sequences: the
        states are made durable before the done flags, so a sequence marked done on storage has all
        its rows there."""
        self.backend.save_done(np.asarray(done, dtype=bool))

    def finish(self) -> None:
        """Mark complete and put in place (atomic)."""
        self.backend.commit()

    def suspend(self) -> None:
        """Close, keeping the unfinished store for a resume."""
        self.backend.suspend()

    def abort(self) -> None:
        """Close and delete the unfinished store."""
        self.backend.discard()
