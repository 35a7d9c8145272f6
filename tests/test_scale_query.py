"""Match and cell ranking (AUROC, Pearson, Spearman) over a Zarr store as Dask tasks per part (a
LocalCluster of 2 worker processes; and a Zarr store on a moto S3 server): exactly the single-process
result on the same data in HDF5, ties included (across parts too); the per-token counts stay on the
workers; the parts' indexes are kept beside the parts, on S3 too, and rebuilt only when their part
changes."""
import json
import shutil

import numpy as np
import pytest

from lstmvis import StateStore, StoreError, cluster, match, rank_cells
from lstmvis.convert import convert
from lstmvis.index import FILE_KINDS

from test_scale_cluster import local_client  # noqa: F401  (the 2-process LocalCluster fixture)
from test_store_contract import s3_server  # noqa: F401

pytestmark = pytest.mark.slow  # clusters of worker processes: 20-100 s a test (CI runs them)


def _stores(tmp_path, zarr_address, seed=0):
    """The same synthetic states (coarse float16 values: many ties) as HDF5 and as a Zarr store of many parts."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, size=120)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = int(offsets[-1])
    states = {"h": (np.round(rng.standard_normal((n, 12)) * 4) / 8).astype(np.float16)}
    tokens = [f"w{i % 17}" for i in range(n)]
    h5 = StateStore.from_arrays(tmp_path / "s.h5", states, tokens=tokens, offsets=offsets)
    return h5, convert(tmp_path / "s.h5", zarr_address, part_tokens=500)


def _same_match(got, want):
    assert [h.to_dict() for h in got.hits] == [h.to_dict() for h in want.hits]
    np.testing.assert_array_equal(np.asarray(got.counts), want.counts)
    np.testing.assert_array_equal(got.length_histogram, want.length_histogram)


QUERIES = [dict(cells=[0, 1, 2], threshold=0.2, top=7), dict(cells=[3], threshold=0.0, top=40, min_length=1),
           dict(cells=[0, 4, 5, 6], threshold=0.3, top=25, sign="negative", pad_left=0),
           dict(cells=[1, 13], threshold=0.1, top=30, sign="both", pad_right=2, context=(2, 3)),
           dict(cells=[2, 7], threshold=0.25, top=15, phrase_length=3)]


@pytest.fixture
def s3_client(s3_server):  # noqa: F811
    """A LocalCluster of 2 processes started once the S3 server is up (the workers inherit its settings)."""
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c) as client:
        yield client


@pytest.mark.parametrize("where", ["local", "s3"])
def test_match_and_rank_on_a_cluster_equal_one_process(tmp_path, request, where):
    local_client = request.getfixturevalue("local_client" if where == "local" else "s3_client")
    address = str(tmp_path / "s.zarr") if where == "local" else f"s3://lstmvis-test/q-{tmp_path.name}/s.zarr"
    h5, zs = _stores(tmp_path, address)
    assert len(zs.backend.root.attrs["parts"]) > 5
    for q in QUERIES if where == "local" else QUERIES[:2]:
        want = match(h5, "h", **q)
        got = cluster.match(zs, local_client, "h", **q)
        _same_match(got, want)
    hypothesis = (np.arange(h5.n_tokens) % 3 == 0).astype(float)
    want = rank_cells(h5, "h", hypothesis, method="auroc")
    got = cluster.rank_cells(zs, local_client, "h", hypothesis)
    assert got.scores.tolist() == want.scores.tolist()  # bit for bit
    assert got.order.tolist() == want.order.tolist()


def test_part_indexes_are_built_by_the_workers_beside_the_parts(local_client, tmp_path):  # noqa: F811
    h5, zs = _stores(tmp_path, str(tmp_path / "b.zarr"), seed=1)
    heard = []
    n_parts = len(zs.backend.root.attrs["parts"])
    assert cluster.build_part_indexes(zs, local_client, "h", progress=lambda *p: heard.append(p)) == n_parts
    assert heard == [(done, n_parts) for done in range(n_parts + 1)]  # part by part
    assert sorted(p.name for p in (tmp_path / "b.zarr" / "parts").glob("*.index")) == \
        [f"{k:05d}.index" for k in range(n_parts)]
    StateStore.open(tmp_path / "b.zarr").close()  # the index folders do not upset the store's checks
    with pytest.raises(ValueError, match="Zarr"):
        cluster.match(h5, local_client, "h", [0])
    with pytest.raises(ValueError, match="unknown source"):
        cluster.build_part_indexes(zs, local_client, "nope")


def test_ties_across_part_boundaries_and_runs_at_part_edges(local_client, tmp_path):  # noqa: F811
    """Every sequence is the same 6 steps, so equal matches repeat in every part, and runs start at a
    part's first token and end at its last: ``top`` cuts inside groups of ties spread over parts."""
    pattern = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [1, 1, 1]], dtype=np.float16)
    n_seq = 30
    offsets = np.arange(n_seq + 1) * len(pattern)
    states = {"h": np.tile(pattern, (n_seq, 1))}
    h5 = StateStore.from_arrays(tmp_path / "t.h5", states, tokens=["a"] * int(offsets[-1]), offsets=offsets)
    zs = convert(tmp_path / "t.h5", str(tmp_path / "t.zarr"), part_tokens=2 * len(pattern) - 1)
    firsts = zs.backend.root.attrs["parts"]
    assert len(firsts) > 10
    row_starts = zs.backend.root.row_starts()
    assert row_starts[:-1].tolist() == [int(zs.offsets[s]) for s in firsts]  # parts are whole sequences
    at_edges = 0
    for q in [dict(cells=[0, 1], top=1), dict(cells=[0, 1], top=7), dict(cells=[0, 1, 2], top=13, min_length=1),
              dict(cells=[2], top=5, pad_left=0), dict(cells=[0], top=40, pad_left=0, pad_right=1),
              dict(cells=[1], top=3, context=0)]:
        want = match(h5, "h", threshold=0.5, **q)
        got = cluster.match(zs, local_client, "h", threshold=0.5, **q)
        _same_match(got, want)
        assert len({h.sequence for h in want.hits}) > 1 or q["top"] == 1  # ties over several parts
        at_edges += sum(h.start in row_starts or h.stop in row_starts for h in want.hits)
    assert at_edges >= 30
    zs.backend.root.attrs["parts"] = [0, firsts[2], firsts[1], *firsts[3:]]  # not runs of whole sequences
    with pytest.raises(StoreError, match="whole sequences"):
        cluster.match(zs, local_client, "h", [0])


def test_counts_stay_on_the_workers_until_read(local_client, tmp_path):  # noqa: F811
    h5, zs = _stores(tmp_path, str(tmp_path / "c.zarr"), seed=2)
    want = match(h5, "h", [0, 1, 2], threshold=0.2)
    got = cluster.match(zs, local_client, "h", [0, 1, 2], threshold=0.2)
    assert isinstance(got.counts, cluster.PartCounts) and len(got.counts) == h5.n_tokens
    cuts = zs.backend.root.row_starts()
    for a, b in [(0, 1), (int(cuts[1]) - 3, int(cuts[3]) + 2), (int(cuts[-2]), h5.n_tokens), (5, 5)]:
        np.testing.assert_array_equal(got.counts[a:b], want.counts[a:b])
    assert got.counts[-1] == want.counts[-1] and got.counts.dtype == want.counts.dtype
    for level, size in [(3, 37), (1, 600), (2, 1)]:
        full = np.zeros(-(-h5.n_tokens // size) * size, dtype=np.int64)
        full[:h5.n_tokens] = want.counts >= level
        np.testing.assert_array_equal(got.counts.count_at_least(level, size), full.reshape(-1, size).sum(axis=1))
    work = ("n_candidates", "n_verified", "levels")  # how much each part scanned: the answer is the rest
    assert {k: v for k, v in got.to_dict(counts=True).items() if k not in work} == \
        {k: v for k, v in want.to_dict(counts=True).items() if k not in work}


def test_pearson_spearman_and_auroc_on_a_cluster_equal_one_process(local_client, tmp_path):  # noqa: F811
    h5, zs = _stores(tmp_path, str(tmp_path / "r.zarr"), seed=3)
    rng = np.random.default_rng(3)
    scalar = np.round(rng.standard_normal(h5.n_tokens) + h5.states("h")[:, 4].astype(float), 1)  # ties in y too
    binary = (np.arange(h5.n_tokens) % 5 < 2).astype(float)
    cuts = zs.backend.root.row_starts()
    for hypothesis, method, start, stop in [(scalar, "pearson", None, None), (scalar, "spearman", None, None),
                                            (scalar, None, int(cuts[1]) + 7, int(cuts[4]) - 3),
                                            (binary, "spearman", None, None),
                                            (binary, "auroc", int(cuts[2]) - 11, None), ("tokens:w1,w3", None, 3, 900)]:
        want = rank_cells(h5, "h", hypothesis, method=method, start=start, stop=stop)
        got = cluster.rank_cells(zs, local_client, "h", hypothesis, method=method, start=start, stop=stop)
        assert (got.metric, got.kind, got.n_tokens, got.positive_rate) == \
            (want.metric, want.kind, want.n_tokens, want.positive_rate)
        if want.metric == "auroc":
            assert got.scores.tolist() == want.scores.tolist()  # bit for bit
        else:
            np.testing.assert_allclose(got.pearson, want.pearson, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(got.spearman, want.spearman, rtol=1e-12, atol=1e-14)
        assert got.order.tolist() == want.order.tolist()
    with pytest.raises(ValueError, match="not binary"):
        cluster.rank_cells(zs, local_client, "h", scalar, method="auroc")
    with pytest.raises(ValueError, match="constant"):
        cluster.rank_cells(zs, local_client, "h", np.ones(h5.n_tokens))


def test_part_indexes_on_s3_are_uploaded_reused_and_rebuilt_when_their_part_changes(tmp_path, request,
                                                                                     monkeypatch):
    """Built by the workers, stored beside the parts on S3; a worker without a local copy fetches them
    (not rebuilt: the same files); a changed part's index alone is rebuilt."""
    import s3fs

    request.getfixturevalue("s3_server")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the workers' caches (inherited)
    client = request.getfixturevalue("s3_client")
    address = f"s3://lstmvis-test/ix-{tmp_path.name}/s.zarr"
    h5, zs = _stores(tmp_path, address, seed=4)
    n_parts = len(zs.backend.root.attrs["parts"])
    cluster.build_part_indexes(zs, client, "h")
    fs = s3fs.S3FileSystem()
    root = address[len("s3://"):]

    def remote_metas():
        return [json.loads(fs.cat_file(f"{root}/parts/{k:05d}.index/h.json")) for k in range(n_parts)]

    first = remote_metas()
    assert all(m["fingerprint"]["part"] == k for k, m in enumerate(first))
    StateStore.open(address).close()  # the index folders do not upset the store's checks
    client.run(lambda: __import__("lstmvis.index").index.forget_indexes())
    shutil.rmtree(tmp_path / "cache")  # no local copy left on any worker
    q = QUERIES[0]
    _same_match(cluster.match(zs, client, "h", **q), match(h5, "h", **q))
    assert remote_metas() == first  # fetched, not rebuilt

    manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))  # part 1 rewritten: a new id for it
    manifest["part_ids"][1], manifest["id"] = "0" * 32, "1" * 32
    fs.pipe_file(f"{root}/manifest.json", json.dumps(manifest).encode())
    zs = StateStore.open(address)
    _same_match(cluster.match(zs, client, "h", **q), match(h5, "h", **q))
    again = remote_metas()
    assert [a == b for a, b in zip(again, first)] == [k != 1 for k in range(n_parts)]
    assert again[1]["fingerprint"]["part_id"] == "0" * 32
    names = fs.ls(f"{root}/parts/00001.index")
    assert sorted(n.rsplit("/", 1)[1] for n in names) == sorted(["h.json", *(again[1][k] for k in FILE_KINDS)])
