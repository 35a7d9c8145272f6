"""Import and export LSTMVis projects (the folder format of LSTMVis's own server).

An LSTMVis project folder holds ``lstm.yml`` and the files it names::

    lstm.yml      name, description, files (reference name -> file name), word_sequence
                  {file, path, dict_file}, states {file, types: [{type, layer, path, file?}]},
                  meta {name: {file, path, dict?, vis: {type, range}}}
    states.h5     one float32 dataset (N_tokens, n_cells) per source, rows aligned with tokens
    train.h5      dataset ``words``: the 1-D word-id sequence (all sequences flattened)
    words.dict    one ``token id`` line per token, ids 1-based; a line starting with a space is
                  the space token

Export names the h and c of the first recurrent module's layers as LSTMVis's own extraction
script does (``output{L}`` / ``states{L}``, types ``output`` / ``state``, layers 1-based) and
every other source by its store name (type ``state``). Tokens with line breaks or tabs are shown
escaped (``\\n``, ``\\t``) in ``words.dict``; meta tracks go to ``meta.h5`` (numbers as scalar
tracks, strings as discrete tracks with a ``.dict``). LSTMVis has no sequence boundaries and no
texts, so export also writes ``lstmvis_store.h5`` (not listed in ``lstm.yml``, so LSTMVis ignores
it) with the exact vocabulary, offsets, texts, spans, card and source names; import uses it when
present, which makes export -> import an exact round trip.

Import of a foreign project: sources are named ``lstmvis.l{layer-1}.h`` for ``output`` and
``lstmvis.l{layer-1}.c`` for ``state`` types (falling back to the dataset path); sequences end
after each ``</s>`` token when the vocabulary has one (LSTMVis's preprocessing appends it to every
input line), otherwise the whole stream is one sequence.
"""
from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import yaml

from .store import (CHUNK_BYTES, StateStore, StoreWriter, check_read_size, check_self_contained, check_source_name,
                    check_stored_data, declared_bytes, json_blob, read_cap, read_json_blob, read_text_datasets,
                    write_text_datasets)

SIDECAR = "lstmvis_store.h5"
COPY_BYTES = 64 * CHUNK_BYTES  # states are copied in row blocks of about this size
MAX_CONFIG_VALUES = 100_000  # lstm.yml is a few dozen values; YAML aliases could make it expand without end
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


# ---------------------------------------------------------------------- export
def _dict_token(token: str) -> str:
    if token == " ":
        return " "
    out = "".join(_ESCAPES.get(ch, ch) for ch in token)
    out = re.sub(r"\s", "\u2581", out)  # other whitespace inside a token would split the line
    return out or "\u2205"  # the empty token


def _lstmvis_path(source: str, first_module: str | None) -> tuple[str, str, int]:
    """(dataset path, LSTMVis type, 1-based layer) for a store source."""
    m = re.fullmatch(r"(.+)\.l(\d+)\.(h|c)", source)
    if m and m.group(1) == first_module:
        layer = int(m.group(2)) + 1
        return (f"output{layer}", "output", layer) if m.group(3) == "h" else (f"states{layer}", "state", layer)
    m = re.search(r"\.l(\d+)\.", source)
    return source, "state", int(m.group(1)) + 1 if m else 1


def export_lstmvis(store: StateStore | str | Path, folder: str | Path, name: str | None = None,
                   description: str | None = None) -> Path:
    """Write ``store`` as an LSTMVis project folder (created; must not exist or be empty)."""
    own = not isinstance(store, StateStore)
    store = StateStore.open(store) if own else store
    folder = Path(folder)
    try:
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ValueError(f"{folder} exists and is not an empty folder: choose a new folder for the project")
        tmp = folder.with_name(f".{folder.name}.tmp-export")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _write_project(store, tmp, name, description)
            if folder.exists():
                folder.rmdir()
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        if own:
            store.close()
    return folder


def _write_project(store: StateStore, tmp: Path, name: str | None, description: str | None) -> None:
    first = re.fullmatch(r"(.+)\.l\d+\.[a-z_]+", store.sources[0]) if store.sources else None
    first_module = first.group(1) if first else None
    paths, types = {}, []
    with h5py.File(tmp / "states.h5", "w") as f:
        for source in store.sources:
            path, kind, layer = _lstmvis_path(source, first_module)
            if path in paths.values():
                path, kind = source, "state"
            paths[source] = path
            types.append({"type": kind, "layer": layer, "path": path})
            ds = f.create_dataset(path, shape=(store.n_tokens, store.n_cells(source)), dtype="float32")
            step = _copy_rows(store.n_cells(source))
            for a in range(0, store.n_tokens, step):
                b = min(a + step, store.n_tokens)
                ds[a:b] = store.states(source, a, b)
    with h5py.File(tmp / "train.h5", "w") as f:
        f.create_dataset("words", data=(store.token_ids() + 1).astype(np.int64))
    with open(tmp / "words.dict", "w", encoding="utf-8", newline="\n") as fh:
        for i, token in enumerate(store.vocab):
            fh.write(f"{_dict_token(token)} {i + 1}\n")
    config = {
        "name": name or store.card.get("name") or store.path.stem,
        "description": description or f"exported by lstmvis from {store.path.name}: {store.n_tokens} tokens, "
                                      f"{store.n_sequences} sequences",
        "files": {"states": "states.h5", "train": "train.h5", "words": "words.dict"},
        "word_sequence": {"file": "train", "path": "words", "dict_file": "words"},
        "states": {"file": "states", "types": types},
    }
    if store.meta_names:
        config["files"]["meta"] = "meta.h5"
        config["meta"] = {}
        with h5py.File(tmp / "meta.h5", "w") as f:
            for meta_name in store.meta_names:
                values = store.meta(meta_name)
                entry = {"file": "meta", "path": meta_name}
                if values.dtype == object:
                    labels = sorted(set(values.tolist()))
                    codes = {lab: i + 1 for i, lab in enumerate(labels)}
                    f.create_dataset(meta_name, data=np.array([codes[v] for v in values], dtype=np.int64))
                    dict_ref = f"meta_{meta_name}"
                    config["files"][dict_ref] = f"{dict_ref}.dict"
                    with open(tmp / f"{dict_ref}.dict", "w", encoding="utf-8", newline="\n") as fh:
                        fh.writelines(f"{_dict_token(lab)} {i}\n" for lab, i in codes.items())
                    entry.update({"dict": dict_ref, "vis": {"type": "discrete", "range": "dict"}})
                else:
                    f.create_dataset(meta_name, data=values)
                    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 0.0)
                    entry["vis"] = {"type": "scalar", "range": [lo, hi]}
                config["meta"][meta_name] = entry
    with open(tmp / "lstm.yml", "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh, sort_keys=False, allow_unicode=True)
    with h5py.File(tmp / SIDECAR, "w") as f:
        f.attrs["format"] = "lstmvis-store-sidecar"
        f.attrs["sources"] = json.dumps({paths[s]: s for s in store.sources})
        f.create_dataset("vocab", data=json_blob(store.vocab))
        f.create_dataset("card", data=json_blob(store.card))
        f.create_dataset("offsets", data=store.offsets)
        if store.has_texts:
            write_text_datasets(f, [store.sequence_text(i) for i in range(store.n_sequences)])
        if store.has_spans:
            f.create_dataset("spans", data=store.token_spans())


def _copy_rows(n_cells: int) -> int:
    return max(1, COPY_BYTES // (4 * max(1, n_cells)))


# ---------------------------------------------------------------------- import
def read_words_dict(path: Path) -> dict[int, str]:
    """``{id: token}`` from a LSTMVis ``.dict`` file (``token id`` per line)."""
    out = {}
    with open(path, encoding="utf-8", newline="\n") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            token, sep, ident = line.rpartition(" ")
            if not sep or not ident.lstrip("-").isdigit():
                raise ValueError(f"{path}:{n}: expected 'token id', got {line!r}")
            out[int(ident)] = token if token else " "
    return out


def _inside(folder: Path, path: Path, what: str) -> Path:
    """``path`` resolved (symlinks followed); it must stay inside the project folder."""
    resolved = path.resolve()
    if folder.resolve() not in resolved.parents:
        raise ValueError(f"{what} ({path}) resolves to {resolved}, outside the project folder {folder}: "
                         "an LSTMVis project may only use its own files")
    return resolved


def _load_config(folder: Path) -> dict:
    yml = folder / "lstm.yml"
    if not yml.is_file():
        raise FileNotFoundError(f"{folder} is not an LSTMVis project: it has no lstm.yml")
    try:
        config = yaml.safe_load(_inside(folder, yml, "lstm.yml").read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{yml} is not valid YAML: {exc}") from None
    if not isinstance(config, dict) or "states" not in config or "word_sequence" not in config:
        raise ValueError(f"{yml} needs the keys 'states' and 'word_sequence' (see LSTMVis's README)")
    _check_config_size(yml, config)
    for key in ("name", "description"):
        if not isinstance(config.get(key, ""), (str, type(None))):
            raise ValueError(f"{yml}: {key} must be a string")
    return config


def _check_config_size(yml: Path, config: dict) -> None:
    """Refuse a config that expands (through YAML aliases) to more than ``MAX_CONFIG_VALUES`` values."""
    todo, seen = [config], 0
    while todo:
        node = todo.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ValueError(f"{yml} expands to more than {MAX_CONFIG_VALUES:,} values (through YAML aliases?): "
                             "refused")
        if isinstance(node, dict):
            todo.extend(node.keys())
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)


def _file(folder: Path, config: dict, ref: str) -> Path:
    files = config.get("files") or {}
    if not isinstance(ref, str) or ref not in files or not isinstance(files[ref], str):
        raise ValueError(f"lstm.yml refers to file {ref!r}, which is not listed under 'files' with a file name")
    path = _inside(folder, folder / files[ref], f"files.{ref} in lstm.yml")
    if not path.is_file():
        raise FileNotFoundError(f"{path} (files.{ref} in lstm.yml) does not exist")
    return path


def import_lstmvis(folder: str | Path, out: str | Path, dtype: str = "float32", *,
                   max_read_bytes: int | None = None) -> StateStore:
    """Read an LSTMVis project folder into a new store at ``out`` (written atomically).

    Every file read must lie inside ``folder`` (symlinks followed). ``max_read_bytes``: the most
    read whole into memory from one dataset (word ids, offsets, texts, spans, a meta track);
    default ``$LSTMVIS_MAX_READ_BYTES``, else 2 GiB."""
    try:
        return _import_lstmvis(Path(folder), out, dtype, read_cap(max_read_bytes))
    except (TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:  # entries of the wrong shape
        raise ValueError(f"{Path(folder) / 'lstm.yml'} is malformed ({type(exc).__name__}: {exc}); see LSTMVis's "
                         "README for the layout of lstm.yml") from None


def _open_h5(path: Path) -> h5py.File:
    """A project HDF5 file, read-only: unreadable ones, ones that point at other files and ones
    that declare more data than they hold are a ValueError."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path} is not a readable HDF5 file (truncated or foreign): {exc}") from None
    try:
        check_self_contained(path, f)
        check_stored_data(path, f)
    except BaseException:
        f.close()
        raise
    return f


def _read_whole(path: Path, f: h5py.Group, name: str, cap: int) -> np.ndarray:
    """Dataset ``name`` of ``f`` read whole, if it exists and fits under the read cap."""
    ds = f.get(name) if isinstance(name, str) else None
    if not isinstance(ds, h5py.Dataset):
        raise ValueError(f"{name!r} is not a dataset in {path}")
    check_read_size(path, f"dataset {name!r}", declared_bytes(ds), cap)
    return ds[()]


def _import_lstmvis(folder: Path, out: str | Path, dtype: str, cap: int) -> StateStore:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: give the LSTMVis project folder holding lstm.yml")
    config = _load_config(folder)
    ws = config["word_sequence"]
    words = _file(folder, config, ws["file"])
    with _open_h5(words) as f:
        raw_ids = np.asarray(_read_whole(words, f, ws["path"], cap)).reshape(-1).astype(np.int64)
    sidecar = folder / SIDECAR
    if sidecar.is_symlink() or sidecar.exists():
        sidecar = _inside(folder, sidecar, SIDECAR)
    side = _open_h5(sidecar) if sidecar.is_file() else None
    try:
        if side is not None:
            for name in ("vocab", "card", "text_bytes", "spans"):
                if name in side:
                    check_read_size(sidecar, f"dataset {name!r}", declared_bytes(side[name]), cap)
            vocab = read_json_blob(side["vocab"])
            token_ids = raw_ids - 1
            offsets = _read_whole(sidecar, side, "offsets", cap)
            source_names = json.loads(side.attrs["sources"])
            card = read_json_blob(side["card"])
        else:
            id_to_token = read_words_dict(_file(folder, config, ws["dict_file"])) if ws.get("dict_file") else {}
            vocab, token_ids = _vocab_from_ids(raw_ids, id_to_token)
            offsets = _offsets_at_end_tokens(token_ids, vocab)
            source_names = {}
            card = {"name": config.get("name") or folder.name, "description": config.get("description", ""),
                    "imported_from": "LSTMVis project"}
        n = len(token_ids)
        states_cfg = config["states"]
        types = states_cfg.get("types") or []
        if not types:
            raise ValueError("lstm.yml lists no states types: nothing to import")
        writer = StoreWriter(out, n, offsets, vocab, card=card)
        try:
            writer.write_tokens(0, token_ids)
            used = set()
            files = {}
            for entry in types:
                ref = entry.get("file", states_cfg.get("file"))
                if ref not in files:
                    files[ref] = _open_h5(_file(folder, config, ref))
                f = files[ref]
                path = entry["path"]
                if path not in f:
                    raise ValueError(f"states path {path!r} is not a dataset in {ref}")
                ds = f[path]
                if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.shape[0] != n:
                    raise ValueError(f"states {ref}::{path} has shape {getattr(ds, 'shape', None)}, but the word "
                                     f"sequence has {n} tokens: LSTMVis needs one row per token")
                name = source_names.get(path) or _source_name(entry, used)
                used.add(name)
                writer.add_source(check_source_name(name), ds.shape[1], dtype)
                step = _copy_rows(ds.shape[1])
                for a in range(0, n, step):
                    writer.write_states(name, a, np.asarray(ds[a:min(a + step, n)], dtype=np.float32))
            for f in files.values():
                f.close()
            for meta_name, values in _read_meta(folder, config, n, cap).items():
                writer.add_meta(meta_name, values)
            if side is not None and "text_bytes" in side:
                writer.set_texts(read_text_datasets(side))
            if side is not None and "spans" in side:
                writer.set_spans(side["spans"][()])
            writer.finish()
        except BaseException:
            writer.abort()
            raise
    finally:
        if side is not None:
            side.close()
    return StateStore.open(out)


def _source_name(entry: dict, used: set[str]) -> str:
    kind = {"output": "h", "state": "c"}.get(entry.get("type"))
    layer = entry.get("layer")
    if kind and isinstance(layer, int) and layer >= 1:
        name = f"lstmvis.l{layer - 1}.{kind}"
        if name not in used:
            return name
    name = str(entry["path"])
    if name in used:
        raise ValueError(f"two states entries are both named {name!r}")
    return name


def _vocab_from_ids(raw_ids: np.ndarray, id_to_token: dict[int, str]) -> tuple[list[str], np.ndarray]:
    known = set(id_to_token)
    missing = sorted(set(np.unique(raw_ids).tolist()) - known)
    if missing:
        warnings.warn(f"{len(missing)} word ids have no entry in the dictionary (e.g. {missing[:5]}): they are "
                      "imported as tokens '<id:N>'", stacklevel=3)
        id_to_token = {**id_to_token, **{i: f"<id:{i}>" for i in missing}}
    ids_sorted = np.array(sorted(id_to_token), dtype=np.int64)
    vocab = [id_to_token[i] for i in ids_sorted.tolist()]
    return vocab, np.searchsorted(ids_sorted, raw_ids)


def _offsets_at_end_tokens(token_ids: np.ndarray, vocab: list[str]) -> np.ndarray:
    n = len(token_ids)
    if "</s>" in vocab:
        ends = np.flatnonzero(token_ids == vocab.index("</s>")) + 1
        cuts = [0, *ends[ends < n].tolist(), n]
        return np.array(cuts, dtype=np.int64)
    return np.array([0, n], dtype=np.int64)


def _read_meta(folder: Path, config: dict, n: int, cap: int) -> dict[str, np.ndarray]:
    out = {}
    for name, entry in (config.get("meta") or {}).items():
        if not isinstance(entry, dict) or "file" not in entry or "path" not in entry:
            warnings.warn(f"meta {name!r} has no file/path in lstm.yml: skipped", stacklevel=3)
            continue
        meta_file = _file(folder, config, entry["file"])
        with _open_h5(meta_file) as f:
            values = np.asarray(_read_whole(meta_file, f, entry["path"], cap))
        if values.ndim != 1 or len(values) != n:
            warnings.warn(f"meta {name!r} has shape {values.shape}, not one value per token ({n}): skipped",
                          stacklevel=3)
            continue
        if entry.get("dict"):
            labels = read_words_dict(_file(folder, config, entry["dict"]))
            values = np.array([labels.get(int(v), str(v)) for v in values], dtype=object)
        out[str(name)] = values
    return out
