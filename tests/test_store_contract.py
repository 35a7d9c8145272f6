"""The store contract, run against every backend: HDF5, Zarr on the local disk, and Zarr on an
S3-compatible server on loopback (moto's server mode) reached through s3fs, as a real client.

Layout, lazy reads, offsets, meta, card, validation on open (declared sizes included), atomic
completion, resumption, and ``lstmvis convert`` both ways (exact).
"""
import json
import os
import socket

import numpy as np
import pytest

import lstmvis
from lstmvis import StateStore, StoreError, extraction
from lstmvis.cli import main as cli_main
from lstmvis.store import StoreWriter

from test_extract import TEXTS, char_lm, patch_write_states

BACKENDS = ["hdf5", "zarr", "s3"]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a free loopback port, with fsspec configured to reach it through s3fs."""
    moto_server = pytest.importorskip("moto.server")
    import fsspec.config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FSSPEC_S3_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", FSSPEC_S3_ENDPOINT_URL=endpoint)
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if not fs.exists("lstmvis-test"):  # moto keeps its buckets per process, across servers
        fs.mkdir("lstmvis-test")
    yield endpoint
    fsspec.config.conf.pop("s3", None)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


_COUNTER = iter(range(10**6))


@pytest.fixture(params=BACKENDS)
def location(request, tmp_path):
    """A function name -> a fresh store address of this backend."""
    if request.param == "hdf5":
        return lambda name: tmp_path / f"{name}.h5"
    if request.param == "zarr":
        return lambda name: str(tmp_path / f"{name}.zarr")
    request.getfixturevalue("s3_server")
    run = next(_COUNTER)
    return lambda name: f"s3://lstmvis-test/run{run}/{name}.zarr"


def _arrays(n_seq=7, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, size=n_seq)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = int(offsets[-1])
    tokens = [f"w{int(i)}" for i in rng.integers(0, 30, size=n)]
    states = {"rnn.l0.h": rng.standard_normal((n, 5)).astype(np.float32),
              "rnn.l0.c": rng.standard_normal((n, 3)).astype(np.float16)}
    meta = {"depth": np.arange(n) % 4, "pos": np.array(["a", "b", "c"])[np.arange(n) % 3]}
    return states, tokens, offsets, meta


def test_layout_lazy_reads_offsets_meta_card(location):
    states, tokens, offsets, meta = _arrays()
    n = len(tokens)
    with StateStore.from_arrays(location("s"), states, tokens=tokens, offsets=offsets, meta=meta,
                                card={"name": "toy", "metrics": {"bpc": 1.5}}) as store:
        assert store.sources == ["rnn.l0.h", "rnn.l0.c"]
        assert store.n_tokens == n and store.n_sequences == len(offsets) - 1
        assert store.offsets.dtype == np.int64 and store.offsets.tolist() == offsets.tolist()
        assert store.tokens() == tokens and store.tokens(3, 9) == tokens[3:9]
        for name, arr in states.items():
            ds = store.dataset(name)
            assert ds.shape == arr.shape and ds.dtype == arr.dtype  # lazy: read only when sliced
            np.testing.assert_array_equal(np.asarray(ds[5:40]), arr[5:40])
            np.testing.assert_array_equal(np.asarray(ds[2:30, 1]), arr[2:30, 1])
            got = store.states(name, 4, n - 1)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, arr[4:n - 1].astype(np.float32))
        assert store.meta_names == ["depth", "pos"]
        np.testing.assert_array_equal(store.meta("depth", 0, 6), meta["depth"][:6])
        assert store.meta("pos", 1, 4).tolist() == ["b", "c", "a"]
        assert store.card == {"name": "toy", "metrics": {"bpc": 1.5}}
        last = store.n_sequences - 1
        assert store.sequence_bounds(last) == (int(offsets[-2]), n)
        assert store.sequence_of(n - 1) == last
        fingerprint = store.fingerprint()
        assert fingerprint == StateStore.open(location("s")).fingerprint()
    with StateStore.from_arrays(location("s"), states, tokens=tokens, offsets=offsets) as again:
        assert again.fingerprint() != fingerprint  # rewritten: the match index must be rebuilt


def test_match_and_select_agree_across_backends(location, tmp_path):
    states, tokens, offsets, _ = _arrays(seed=1)
    reference = StateStore.from_arrays(tmp_path / "ref.h5", states, tokens=tokens, offsets=offsets)
    with StateStore.from_arrays(location("m"), states, tokens=tokens, offsets=offsets) as store:
        cells = store.select("rnn.l0.h", 3, 5, threshold=0.2)
        assert cells.tolist() == reference.select("rnn.l0.h", 3, 5, threshold=0.2).tolist()
        got = store.match("rnn.l0.h", [0, 1, 2], threshold=0.2, top=10)
        want = reference.match("rnn.l0.h", [0, 1, 2], threshold=0.2, top=10)
        assert [h.to_dict() for h in got.hits] == [h.to_dict() for h in want.hits]
        np.testing.assert_array_equal(got.counts, want.counts)


def test_validation_on_open(location):
    with pytest.raises(FileNotFoundError, match="no state store"):
        StateStore.open(location("missing"))
    states, tokens, offsets, _ = _arrays()
    writer = StoreWriter(location("unfinished"), len(tokens), offsets, sorted(set(tokens)))
    writer.suspend()  # never finished: not complete
    where = getattr(writer, "tmp", location("unfinished"))
    with pytest.raises(StoreError, match="incomplete"):
        StateStore.open(where)
    writer.abort()


def _drop_one_chunk(address) -> None:
    """Remove the stored data of one chunk of a states array (a crafted or damaged store)."""
    if str(address).endswith(".h5"):
        import h5py

        with h5py.File(address, "r+") as f:  # a chunked dataset re-made with no chunks written
            ds = f["states"]["rnn.l0.h"]
            shape, dtype, chunks = ds.shape, ds.dtype, ds.chunks
            del f["states"]["rnn.l0.h"]
            f["states"].create_dataset("rnn.l0.h", shape=shape, dtype=dtype, chunks=chunks)
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(address))
    chunk = sorted(p for p in fs.find(root) if "/parts/00000/rnn.l0.h/c/" in p)[-1]
    fs.rm(chunk)


def test_declared_sizes_must_be_stored(location):
    states, tokens, offsets, _ = _arrays()
    StateStore.from_arrays(location("d"), states, tokens=tokens, offsets=offsets).close()
    _drop_one_chunk(location("d"))
    with pytest.raises(StoreError, match="chunks"):
        StateStore.open(location("d"))


def test_zarr_manifest_decides_completion(tmp_path):
    states, tokens, offsets, _ = _arrays()
    path = str(tmp_path / "c.zarr")
    StateStore.from_arrays(path, states, tokens=tokens, offsets=offsets).close()
    manifest = tmp_path / "c.zarr" / "manifest.json"
    saved = manifest.read_text()
    manifest.unlink()
    with pytest.raises(StoreError, match="incomplete"):
        StateStore.open(path)
    manifest.write_text(json.dumps({**json.loads(saved), "parts": [0, 1]}))
    with pytest.raises(StoreError, match="manifest"):
        StateStore.open(path)
    os.symlink("/etc/passwd", tmp_path / "c.zarr" / "link")
    manifest.write_text(saved)
    with pytest.raises(StoreError, match="symlink"):
        StateStore.open(path)


def test_interrupted_extraction_resumes(location, monkeypatch):
    """A killed extraction leaves no store that opens as complete; the rerun resumes (finished parts
    or sequences are not run again) and gives the states of one uninterrupted run."""
    lm = char_lm()
    texts = [t for t in TEXTS if t] * 3
    path = location("r")
    monkeypatch.setattr(extraction, "STAGE_BYTES", 1)
    monkeypatch.setattr(extraction, "CHECKPOINT_SECONDS", 0.0)  # every finished sequence is recorded at once
    patch_write_states(monkeypatch, 12 * 4 + 1, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        lstmvis.extract(lm, texts, path, batch_size=2, chunk_size=9, progress=False, part_tokens=60)
    with pytest.raises((StoreError, FileNotFoundError)):
        StateStore.open(path)
    kept = {}
    if not str(path).endswith(".h5"):  # the ids of the parts completed before the interruption
        from lstmvis.zarr_backend import ZarrWriting

        unfinished = ZarrWriting.reopen(path)
        kept = {k: unfinished.part_id(k) for k in range(unfinished.n_parts) if unfinished.part_id(k)}
        assert 0 < len(kept) < unfinished.n_parts
    monkeypatch.undo()
    monkeypatch.setattr(extraction, "STAGE_BYTES", 1)
    written = []
    patch_write_states(monkeypatch, written=written)
    with lstmvis.extract(lm, texts, path, batch_size=2, chunk_size=9, progress=False, part_tokens=60) as resumed:
        got = {s: resumed.states(s) for s in resumed.sources}
        processed = {int(resumed.sequence_of(start)) for start in written}
        if kept:  # kept parts keep their ids (and so their match indexes); rewritten ones get new ids
            ids = resumed.backend.manifest["part_ids"]
            assert all(ids[k] == i for k, i in kept.items()) and len(set(ids)) == len(ids) and None not in ids
    assert 0 < len(processed) < len(texts)  # work done before the interruption was kept
    monkeypatch.undo()
    with lstmvis.extract(lm, texts, location("fresh"), progress=False, batch_size=2, chunk_size=9,
                         part_tokens=60) as fresh:
        for s in fresh.sources:  # resumed sequences ran in other batches: rounding may differ
            np.testing.assert_allclose(got[s], fresh.states(s), atol=1e-6, rtol=0)


def test_backends_give_bitwise_equal_extractions(location, tmp_path):
    lm = char_lm()
    with lstmvis.extract(lm, TEXTS, tmp_path / "ref.h5", progress=False, part_tokens=50) as ref, \
            lstmvis.extract(lm, TEXTS, location("x"), progress=False, part_tokens=50) as got:
        assert got.sources == ref.sources
        for s in ref.sources:
            np.testing.assert_array_equal(got.states(s), ref.states(s))
        assert got.card == ref.card and got.tokens() == ref.tokens()
        assert [got.sequence_text(i) for i in range(got.n_sequences)] == list(TEXTS)


@pytest.mark.parametrize("direction", ["h5-zarr-h5"])
def test_convert_both_ways_is_exact(tmp_path, capsys, direction):
    states, tokens, offsets, meta = _arrays(seed=3)
    texts = [" ".join(tokens[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    StateStore.from_arrays(tmp_path / "a.h5", states, tokens=tokens, offsets=offsets, meta=meta, card={"name": "t"},
                           texts=texts).close()
    assert cli_main(["convert", str(tmp_path / "a.h5"), str(tmp_path / "b.zarr"), "--part-tokens", "50"]) == 0
    assert cli_main(["convert", str(tmp_path / "b.zarr"), str(tmp_path / "c.h5")]) == 0
    with StateStore.open(tmp_path / "a.h5") as a, StateStore.open(tmp_path / "b.zarr") as b, \
            StateStore.open(tmp_path / "c.h5") as c:
        for other in (b, c):
            assert other.sources == a.sources and other.meta_names == a.meta_names and other.card == a.card
            assert other.vocab == a.vocab and other.offsets.tolist() == a.offsets.tolist()
            np.testing.assert_array_equal(other.token_ids(), a.token_ids())
            np.testing.assert_array_equal(other.token_spans(), a.token_spans())
            for s in a.sources:
                assert other.dataset(s).dtype == a.dataset(s).dtype
                np.testing.assert_array_equal(np.asarray(other.dataset(s)[:]), np.asarray(a.dataset(s)[:]))
            for m in a.meta_names:
                np.testing.assert_array_equal(other.meta(m), a.meta(m))
            assert [other.sequence_text(i) for i in range(a.n_sequences)] == texts
        assert len(b.backend.root.attrs["parts"]) > 1
