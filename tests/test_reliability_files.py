"""Hostile and damaged files: every one gets a clear error, nothing executes, nothing leaks.

Stores: truncated at many points, every field corrupted one at a time, and stores that point
outside themselves (HDF5 external storage, external/soft links, virtual datasets) so that a
reader would return the bytes of another file. Checkpoints and model cards in a served data
directory: pickled code, weights that do not fit the architecture, broken cards. Names that
reach the file system: ``..``, absolute paths, symlinks, URL-encoded traversal.
(``data.load_checkpoint`` on its own is covered by tests/test_data_models.py.)
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from lstmvis import StateStore, StoreError

SECRET = b"TOP-SECRET-do-not-serve-0123456789abcdef" * 8

TOKENS = "the cat sat on the mat a dog ran".split()


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "base.h5"
    rng = np.random.default_rng(0)
    StateStore.from_arrays(path, {"rnn.l0.h": rng.random((9, 4), dtype=np.float32),
                                  "rnn.l0.c": rng.random((9, 4), dtype=np.float32)},
                           tokens=TOKENS, offsets=[0, 6, 9], meta={"label": np.arange(9), "pos": ["x", "y", "z"] * 3},
                           texts=["the cat sat on the mat", "a dog ran"]).close()
    return path


def read_everything(store: StateStore) -> None:
    store.tokens()
    store.token_spans()
    store.info()
    for s in store.sources:
        store.states(s)
    for m in store.meta_names:
        store.meta(m)
    for i in range(store.n_sequences):
        store.sequence_text(i)


def _replace(path: str, data, **kw):
    def edit(f: h5py.File) -> None:
        attrs = dict(f[path].attrs)
        del f[path]
        ds = f.create_dataset(path, data=data, **kw)
        ds.attrs.update(attrs)
    return edit


def _attr(obj: str, key: str, value=None, delete: bool = False):
    def edit(f: h5py.File) -> None:
        if delete:
            del f[obj].attrs[key]
        else:
            f[obj].attrs[key] = value
    return edit


# name -> how the file is damaged; each must be refused on open with a StoreError
CORRUPTIONS = {
    "n_tokens missing": _attr("/", "n_tokens", delete=True),
    "n_tokens not a number": _attr("/", "n_tokens", "abc"),
    "n_tokens too large": _attr("/", "n_tokens", 10 ** 12),
    "version not a number": _attr("/", "version", "x"),
    "sources not JSON": _attr("states", "sources", "[not json"),
    "sources not a list": _attr("states", "sources", '{"a": 1}'),
    "sources are numbers": _attr("states", "sources", "[1, 2]"),
    "source name with a slash": lambda f: (f["states"].create_group("sub").create_dataset(
        "x", data=np.zeros((9, 2), "f4")), f["states"].attrs.__setitem__("sources", '["sub/x"]')),
    "source name ..": _attr("states", "sources", '[".."]'),
    "sources listed twice": _attr("states", "sources", '["rnn.l0.h", "rnn.l0.h"]'),
    "sources attribute missing": _attr("states", "sources", delete=True),
    "states is not a group": lambda f: (f.__delitem__("states"), f.create_dataset("states", data=[1])),
    "vocab not JSON": _replace("vocab", np.frombuffer(b"[bad", dtype=np.uint8)),
    "vocab not a list": _replace("vocab", np.frombuffer(b'{"a": 1}', dtype=np.uint8)),
    "vocab not UTF-8": _replace("vocab", np.frombuffer(b"\xff\xfe", dtype=np.uint8)),
    "vocab of numbers": _replace("vocab", np.frombuffer(b"[1, 2, 3, 4, 5, 6, 7, 8]", dtype=np.uint8)),
    "card not JSON": _replace("card", np.frombuffer(b"[1", dtype=np.uint8)),
    "token ids past the vocabulary": _replace("token_ids", np.full(9, 99, dtype=np.int32)),
    "negative token ids": _replace("token_ids", np.full(9, -5, dtype=np.int32)),
    "float token ids": _replace("token_ids", np.full(9, 0.5)),
    "too few token ids": _replace("token_ids", np.zeros(5, dtype=np.int32)),
    "offsets decrease": _replace("offsets", np.array([0, 3, 2, 9])),
    "offsets 2-D": _replace("offsets", np.array([[0, 9]])),
    "offsets float": _replace("offsets", np.array([0.0, 4.5, 9.0])),
    "offsets strings": _replace("offsets", np.array([b"a", b"b"])),
    "states too short": _replace("states/rnn.l0.h", np.zeros((5, 4), dtype="f4")),
    "states 1-D": _replace("states/rnn.l0.h", np.zeros(9, dtype="f4")),
    "states strings": _replace("states/rnn.l0.h", np.array([[b"x"] * 4] * 9)),
    "states integers": _replace("states/rnn.l0.h", np.ones((9, 4), dtype="i8")),
    "states a group": lambda f: (f["states"].__delitem__("rnn.l0.h"), f["states"].create_group("rnn.l0.h")),
    "meta too short": _replace("meta/label", np.zeros(3)),
    "meta names not JSON": _attr("meta", "names", "nope"),
    "meta categories not JSON": _attr("meta/pos", "categories", "[x"),
    "meta codes past the categories": _attr("meta/pos", "categories", '["a"]'),
    "spans wrong shape": _replace("spans", np.zeros((9, 3), dtype="i8")),
    "text offsets past the text": _replace("text_offsets", np.array([0, 22, 10 ** 9])),
    "text offsets decrease": _replace("text_offsets", np.array([0, 30, 5])),
    "text bytes missing": lambda f: f.__delitem__("text_bytes"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupted_store_is_refused_on_open(base_store, tmp_path, name):
    path = tmp_path / "damaged.h5"
    shutil.copy(base_store, path)
    with h5py.File(path, "r+") as f:
        CORRUPTIONS[name](f)
    with pytest.raises(StoreError) as err:
        StateStore.open(path)
    assert str(path) in str(err.value)
    # the file handle is closed again: the file can be replaced at once
    path.unlink()


def test_the_undamaged_base_store_reads(base_store):
    """The corruption tests start from a store that opens and reads: they can fail."""
    with StateStore.open(base_store) as s:
        read_everything(s)
        assert s.tokens() == TOKENS


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.33, 0.5, 0.75, 0.9, 0.99, 0.999])
def test_truncated_store_is_refused(base_store, tmp_path, fraction):
    data = base_store.read_bytes()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(StoreError, match="truncated|not a readable HDF5|damaged"):
        StateStore.open(path)


@pytest.mark.parametrize("seed", range(8))
def test_bit_flipped_store_is_refused_or_reads(base_store, tmp_path, seed):
    """Random byte corruption: either a StoreError on open, or a store whose every read works
    (flipped bytes inside state values are not detectable and are fine)."""
    data = bytearray(base_store.read_bytes())
    rng = np.random.default_rng(seed)
    for pos in rng.integers(0, len(data), 16):
        data[pos] ^= 0xFF
    path = tmp_path / "flipped.h5"
    path.write_bytes(bytes(data))
    try:
        store = StateStore.open(path)
    except StoreError:
        return
    with store:
        try:
            read_everything(store)
        except (ValueError, IndexError, KeyError, OSError) as exc:  # a clear, catchable error is fine
            assert str(exc)


def test_foreign_files_are_refused(tmp_path):
    cases = {
        "empty.h5": b"",
        "text.h5": b"token id\nthe 1\n",
        "zip.h5": b"PK\x03\x04" + bytes(200),
        "hdf5-magic-then-junk.h5": b"\x89HDF\r\n\x1a\n" + os.urandom(500),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(StoreError, match="not a readable HDF5"):
            StateStore.open(tmp_path / name)
    with h5py.File(tmp_path / "keras.h5", "w") as f:  # a valid HDF5 file of some other program
        f.create_dataset("model_weights/dense/kernel", data=np.ones((3, 3)))
    with pytest.raises(StoreError, match="not an lstmvis state store"):
        StateStore.open(tmp_path / "keras.h5")


# --------------------------------------------------------------- stores pointing outside themselves

def _hostile_stores(base: Path, folder: Path, secret: Path) -> dict[str, Path]:
    """Stores that would read ``secret`` (or another HDF5 file) if the reader followed them."""
    out = {}

    def variant(name, edit):
        path = folder / f"{name}.h5"
        shutil.copy(base, path)
        with h5py.File(path, "r+") as f:
            edit(f)
        out[name] = path

    n_bytes = len(SECRET)
    variant("external-states", lambda f: (f["states"].__delitem__("rnn.l0.h"), f["states"].create_dataset(
        "rnn.l0.h", shape=(9, 4), dtype="f4", external=[(str(secret), 0, 144)])))
    variant("external-text", lambda f: (f.__delitem__("text_bytes"), f.create_dataset(
        "text_bytes", shape=(31,), dtype="u1", external=[(str(secret), 0, n_bytes)])))
    other = folder / "other.h5"
    with h5py.File(other, "w") as g:
        g.create_dataset("x", data=np.frombuffer(SECRET[:144], dtype="f4").reshape(9, 4))

    def external_link(f):
        del f["states"]["rnn.l0.h"]
        f["states"]["rnn.l0.h"] = h5py.ExternalLink(str(other), "/x")
    variant("external-link", external_link)

    def soft_link(f):
        del f["states"]["rnn.l0.h"]
        f["states"]["rnn.l0.h"] = h5py.SoftLink("/states/rnn.l0.c")
    variant("soft-link", soft_link)

    def virtual(f):
        del f["states"]["rnn.l0.h"]
        layout = h5py.VirtualLayout(shape=(9, 4), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "x", shape=(9, 4))
        f["states"].create_virtual_dataset("rnn.l0.h", layout)
    variant("virtual", virtual)
    return out


def test_stores_that_point_outside_themselves_are_refused(base_store, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    for name, path in _hostile_stores(base_store, tmp_path, secret).items():
        with pytest.raises(StoreError, match="refused") as err:
            StateStore.open(path)
        assert SECRET[:10].decode() not in str(err.value), name


def test_server_never_serves_another_files_bytes(base_store, tmp_path):
    """A data directory with hostile stores: each is listed as an error, none serves the secret."""
    from server.app import create_app

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    secret = tmp_path / "secret.txt"  # outside the data directory
    secret.write_bytes(SECRET)
    hostile = _hostile_stores(base_store, data_dir, secret)
    (data_dir / "other.h5").unlink()  # keep only the stores that point outside
    app = create_app(data_dir, {"TESTING": True, "DEMO_BUILD": "off", "PROGRESS": False})
    client = app.test_client()
    listed = {s["name"]: s for s in client.get("/api/stores").get_json()["stores"]}
    needle = SECRET[:12].decode()
    for name in hostile:
        if name == "other":
            continue
        assert listed[name]["status"] == "error" and "refused" in listed[name]["message"], listed[name]
        for url in (f"/api/stores/{name}", f"/api/stores/{name}/tokens?start=0&stop=9",
                    f"/api/stores/{name}/states?source=rnn.l0.h&start=0&stop=9",
                    f"/api/stores/{name}/search?q=SECRET"):
            resp = client.get(url)
            assert 400 <= resp.status_code < 500 and resp.is_json, (url, resp.status_code)
            assert resp.get_json()["error"]["message"]
            assert needle not in resp.get_data(as_text=True)


# --------------------------------------------------------------- checkpoints and cards in --data

class _RunsCode:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def hostile_data_dir(tmp_path_factory):
    import torch

    from data.registry import CHECKPOINTS
    d = tmp_path_factory.mktemp("hostile-data")
    marker = d.parent / "PWNED"
    good = torch.load(CHECKPOINTS / "sentiment-lstm.pt", map_location="cpu", weights_only=True)
    torch.save({"arch": "RNNClassifier", "config": {}, "state_dict": {}, "x": _RunsCode(marker)}, d / "pickled.pt")
    torch.save(dict(good, config=dict(good["config"], hidden=3)), d / "wrong-shapes.pt")
    torch.save(dict(good, config={"no_such_argument": 1}), d / "wrong-config.pt")
    torch.save(dict(good, arch="__import__"), d / "unknown-arch.pt")
    (d / "truncated.pt").write_bytes((CHECKPOINTS / "sentiment-lstm.pt").read_bytes()[:2000])
    torch.save(good, d / "broken-card.pt")
    (d / "broken-card.json").write_text("{not json")
    torch.save(good, d / "list-card.pt")
    (d / "list-card.json").write_text("[1, 2]")
    return d, marker


def test_hostile_checkpoints_give_clear_errors_and_run_nothing(hostile_data_dir):
    from data.registry import CheckpointError
    from server.resources import Resources
    from server.validation import ApiError

    d, marker = hostile_data_dir
    res = Resources(d, demo=False, build="off")  # a broken card must not keep the server from starting
    for name, pattern in {"pickled": "not a safe checkpoint", "truncated": "not a safe checkpoint",
                          "wrong-shapes": "does not fit", "wrong-config": "does not fit",
                          "unknown-arch": "unknown architecture"}.items():
        with pytest.raises(ApiError, match=pattern) as refused:  # the library's CheckpointError, as a 409
            with res.model(name):
                pass
        assert refused.value.status == 409 and not res.models[name].info()["usable"]
    for name in ("broken-card", "list-card"):  # the weights are fine: the model loads, the card says why
        with res.model(name) as m:
            assert m.predict_proba(["a fine film"]).shape == (1, 2)
        assert "card" in res.models[name].card["description"] or "json" in res.models[name].card["description"]
    assert not marker.exists(), "unpickling ran code"
    assert issubclass(CheckpointError, ValueError)


# --------------------------------------------------------------- names that reach the file system

TRAVERSALS = ["..", "../..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..\\..\\windows",
              "/etc/passwd", "%2Fetc%2Fpasswd", "....//....//etc/passwd", "toy%00.h5", "~root", "toy/../../x"]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_in_url_names_is_refused(name, tmp_path_factory):
    from conftest_server import make_toy_store
    from server.app import create_app

    d = tmp_path_factory.getbasetemp() / "traversal-data"
    if not d.exists():
        d.mkdir()
        make_toy_store(d / "toy.h5").close()
    app = create_app(d, {"TESTING": True, "DEMO_BUILD": "off", "PROGRESS": False})
    client = app.test_client()
    urls = [f"/api/stores/{name}", f"/api/stores/{name}/tokens", f"/api/stores/toy/states?source={name}",
            f"/api/stores/toy/select?source={name}&start=0&stop=2", f"/static/{name}", f"/static/vendor/{name}",
            f"/{name}"]
    for url in urls:
        resp = client.get(url)
        body = resp.get_data(as_text=True)
        assert resp.status_code in (400, 403, 404, 405, 308), (url, resp.status_code)
        assert "root:" not in body and "import " not in body, url
        if resp.status_code != 308:
            assert resp.is_json and resp.get_json()["error"]["message"], url


def test_symlinks_and_absolute_names_stay_inside_the_data_dir(tmp_path):
    from server.resources import confine
    from server.validation import ApiError

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside.h5").write_bytes(b"x")
    os.symlink(tmp_path / "outside.h5", root / "link.h5")
    os.symlink(tmp_path, root / "sub" / "up")
    for bad in ("../outside.h5", "/etc/passwd", "link.h5", "sub/up/outside.h5", "sub/../../outside.h5"):
        with pytest.raises(ApiError) as err:
            confine(root, bad)
        assert err.value.status == 403
    assert confine(root, "sub") == (root / "sub").resolve()


# --------------------------------------------------------------- LSTMVis projects (lstm.yml)

@pytest.fixture(scope="module")
def lstmvis_project(tmp_path_factory, base_store):
    from lstmvis.project import SIDECAR, export_lstmvis
    folder = tmp_path_factory.mktemp("lstmvis") / "project"
    with StateStore.open(base_store) as store:
        export_lstmvis(store, folder)
    (folder / SIDECAR).unlink()  # import the plain LSTMVis layout, as LSTMVis itself writes it
    return folder


def _edit_yml(edit):
    def apply(folder: Path) -> None:
        import yaml
        config = yaml.safe_load((folder / "lstm.yml").read_text())
        edit(config)
        (folder / "lstm.yml").write_text(yaml.safe_dump(config))
    return apply


def _raw_yml(text: str):
    return lambda folder: (folder / "lstm.yml").write_text(text)


def _states_file(folder: Path) -> tuple[Path, str]:
    import yaml
    config = yaml.safe_load((folder / "lstm.yml").read_text())
    entry = config["states"]["types"][0]
    return folder / config["files"][entry.get("file", config["states"].get("file"))], entry["path"]


def _external_states(folder: Path) -> None:
    path, name = _states_file(folder)
    with h5py.File(path, "r+") as f:
        shape = f[name].shape
        del f[name]
        secret = str(folder.parent / "secret.txt")
        f.create_dataset(name, shape=shape, dtype="f4", external=[(secret, 0, 4 * shape[0] * shape[1])])


def _symlinked_states(folder: Path) -> None:
    path, _ = _states_file(folder)
    path.unlink()
    os.symlink(folder.parent / "secret.txt", path)


MALFORMED_PROJECTS = {
    "empty lstm.yml": (_raw_yml(""), "needs the keys"),
    "not YAML": (_raw_yml("states: [\n  - :"), "not valid YAML"),
    "a YAML list": (_raw_yml("- a\n- b"), "needs the keys"),
    "python object tag": (_raw_yml("!!python/object/apply:os.system ['touch PWNED']"), "not valid YAML"),
    "alias bomb": (_raw_yml("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                            "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                            "states: *d\nword_sequence: *d"), "malformed"),
    "word_sequence a string": (_edit_yml(lambda c: c.__setitem__("word_sequence", "abc")), "malformed"),
    "word_sequence without file": (_edit_yml(lambda c: c["word_sequence"].pop("file")), "malformed"),
    "files a list": (_edit_yml(lambda c: c.__setitem__("files", ["a", "b"])), "not listed under 'files'"),
    "file ../ traversal": (_edit_yml(lambda c: c["files"].__setitem__(c["word_sequence"]["file"], "../secret.txt")),
                           "outside the project folder"),
    "absolute file": (_edit_yml(lambda c: c["files"].__setitem__(c["word_sequence"]["file"], "/etc/passwd")),
                      "outside the project folder"),
    "states a string": (_edit_yml(lambda c: c.__setitem__("states", "x")), "malformed"),
    "types entries strings": (_edit_yml(lambda c: c["states"].__setitem__("types", ["x"])), "malformed"),
    "types entry without path": (_edit_yml(lambda c: c["states"]["types"][0].pop("path")), "malformed"),
    "meta a list": (_edit_yml(lambda c: c.__setitem__("meta", [1, 2])), "malformed"),
    "dictionary id too large": (lambda f: (f / "words.dict").write_text("a 99999999999999999999999\n"), "malformed"),
    "states symlinked outside": (_symlinked_states, "outside the project folder"),
    "states in external storage": (_external_states, "refused"),
    "truncated word file": (lambda f: (f / "train.h5").write_bytes((f / "train.h5").read_bytes()[:500]),
                            "not a readable HDF5"),
    "foreign word file": (lambda f: (f / "train.h5").write_bytes(b"not hdf5 at all"), "not a readable HDF5"),
}


@pytest.mark.parametrize("name", list(MALFORMED_PROJECTS))
def test_malformed_lstmvis_projects_are_clear_errors(lstmvis_project, tmp_path, name):
    from lstmvis.project import import_lstmvis
    folder = tmp_path / "project"
    shutil.copytree(lstmvis_project, folder)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    edit, message = MALFORMED_PROJECTS[name]
    edit(folder)
    with pytest.raises(ValueError, match=message):
        import_lstmvis(folder, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists() and not (folder / "PWNED").exists()
    assert not list(tmp_path.glob(".out.h5.tmp*")), "a refused import leaves no temporary store"


def test_the_unedited_lstmvis_project_imports(lstmvis_project, tmp_path):
    from lstmvis.project import import_lstmvis
    with import_lstmvis(lstmvis_project, tmp_path / "out.h5") as store:
        assert store.tokens() == TOKENS


# --------------------------------------------------------------- tiny files declaring huge sizes (issue 24, finding 4)

def _unwritten(path: str, shape, dtype, chunks=None, maxshape=None, resize_to=None):
    """Replace ``path`` by a dataset that declares ``shape`` but whose data were never written."""
    def edit(f: h5py.File) -> None:
        attrs = dict(f[path].attrs)
        del f[path]
        ds = f.create_dataset(path, shape=shape, dtype=dtype, chunks=chunks, maxshape=maxshape)
        if resize_to is not None:
            ds.resize(resize_to)
        ds.attrs.update(attrs)
    return edit


def _huge_stream(n: int):
    """A store declaring ``n`` tokens: n_tokens, unwritten token_ids and states, honest offsets."""
    def edit(f: h5py.File) -> None:
        f.attrs["n_tokens"] = n
        for name in ("offsets", "text_offsets", "text_bytes", "spans", "meta"):
            del f[name]
        f.create_dataset("offsets", data=np.array([0, n]))
        _unwritten("token_ids", (n,), "i4")(f)
        for source in ("rnn.l0.h", "rnn.l0.c"):
            _unwritten(f"states/{source}", (n, 4), "f4", chunks=(65536, 4))(f)
    return edit


HUGE_DECLARATIONS = {
    "125 M offsets in unwritten chunks": _unwritten("offsets", (125_000_001,), "i8", chunks=(1 << 16,)),
    "offsets resized to 125 M": _unwritten("offsets", (3,), "i8", chunks=(4,), maxshape=(None,),
                                           resize_to=(125_000_001,)),
    "20 M unwritten contiguous token ids": _huge_stream(20_000_000),
    "2e9 tokens": _huge_stream(2_000_000_000),
    "100 MB card never written": _unwritten("card", (100_000_000,), "u1"),
}


@pytest.mark.parametrize("name", list(HUGE_DECLARATIONS))
def test_a_small_file_declaring_huge_data_is_refused_before_allocating(base_store, tmp_path, name):
    import tracemalloc
    path = tmp_path / "huge.h5"
    shutil.copy(base_store, path)
    with h5py.File(path, "r+") as f:
        HUGE_DECLARATIONS[name](f)
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(StoreError, match="declares .* but (the file holds|only)") as err:
            StateStore.open(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value) and "crafted" in str(err.value)
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB allocated before the refusal"


def test_compressed_and_chunked_stores_with_all_their_data_open(base_store, tmp_path):
    """Declared sizes are checked honestly: compressed chunks hold fewer bytes than they declare."""
    path = tmp_path / "compressed.h5"
    shutil.copy(base_store, path)
    with h5py.File(path, "r+") as f:
        for name in ("states/rnn.l0.h", "offsets", "token_ids"):
            data, attrs = f[name][()], dict(f[name].attrs)
            del f[name]
            f.create_dataset(name, data=data, chunks=True, compression="gzip", shuffle=True).attrs.update(attrs)
    with StateStore.open(path) as store:
        read_everything(store)
        assert store.tokens() == TOKENS


def test_what_open_reads_into_memory_is_capped(base_store, monkeypatch):
    with pytest.raises(StoreError, match="more than the 64 bytes allowed .*LSTMVIS_MAX_READ_BYTES"):
        StateStore.open(base_store, max_read_bytes=64)
    monkeypatch.setenv("LSTMVIS_MAX_READ_BYTES", "64")
    with pytest.raises(StoreError, match="offsets, vocabulary and card"):
        StateStore.open(base_store)
    monkeypatch.setenv("LSTMVIS_MAX_READ_BYTES", "lots")
    with pytest.raises(ValueError, match="not a number of bytes"):
        StateStore.open(base_store)
    monkeypatch.delenv("LSTMVIS_MAX_READ_BYTES")
    StateStore.open(base_store, max_read_bytes=10_000).close()


def _huge_word_sequence(folder: Path) -> None:
    with h5py.File(folder / "train.h5", "r+") as f:
        del f["words"]
        f.create_dataset("words", shape=(600_000_000,), dtype="i8", chunks=(1 << 16,))


def test_an_lstmvis_project_declaring_huge_data_is_refused_before_allocating(lstmvis_project, tmp_path):
    import tracemalloc

    from lstmvis.project import import_lstmvis
    folder = tmp_path / "project"
    shutil.copytree(lstmvis_project, folder)
    _huge_word_sequence(folder)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="declares .* but only 0 of its") as err:
            import_lstmvis(folder, tmp_path / "out.h5")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "train.h5" in str(err.value)
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB allocated before the refusal"
    assert not (tmp_path / "out.h5").exists()
    with pytest.raises(ValueError, match="more than the 16 bytes allowed"):
        import_lstmvis(lstmvis_project, tmp_path / "out.h5", max_read_bytes=16)


def test_lstm_yml_expanding_through_aliases_is_refused(lstmvis_project, tmp_path):
    from lstmvis.project import import_lstmvis
    folder = tmp_path / "project"
    shutil.copytree(lstmvis_project, folder)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = (folder / "lstm.yml").read_text().replace("name:", "name_was:")
    (folder / "lstm.yml").write_text("\n".join(lines) + "\nname: *a8\n" + text)
    with pytest.raises(ValueError, match="expands to more than"):
        import_lstmvis(folder, tmp_path / "out.h5")


# --------------------------------------------------------------- symlinked project files (issue 24, finding 8)

def test_a_symlinked_sidecar_or_lstm_yml_leading_out_of_the_project_is_refused(base_store, lstmvis_project, tmp_path):
    from lstmvis.project import SIDECAR, export_lstmvis, import_lstmvis
    with StateStore.open(base_store) as store:
        export_lstmvis(store, tmp_path / "elsewhere")  # its sidecar holds vocabulary, texts and card
    folder = tmp_path / "project"
    shutil.copytree(lstmvis_project, folder)
    os.symlink(tmp_path / "elsewhere" / SIDECAR, folder / SIDECAR)
    with pytest.raises(ValueError, match=f"{SIDECAR} .* outside the project folder"):
        import_lstmvis(folder, tmp_path / "out.h5")
    (folder / SIDECAR).unlink()
    os.symlink(folder / "nowhere.h5", folder / SIDECAR)  # a dangling link inside is no sidecar
    import_lstmvis(folder, tmp_path / "out.h5").close()
    (folder / SIDECAR).unlink()
    (folder / "lstm.yml").rename(tmp_path / "lstm.yml")
    os.symlink(tmp_path / "lstm.yml", folder / "lstm.yml")
    with pytest.raises(ValueError, match="lstm.yml .* outside the project folder"):
        import_lstmvis(folder, tmp_path / "out2.h5")
