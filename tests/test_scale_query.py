"""Match and AUROC cell ranking over a Zarr store as Dask tasks per part (a LocalCluster of 2
worker processes; and a Zarr store on a moto S3 server): exactly the single-process result on the
same data in HDF5, ties included."""
import numpy as np
import pytest

from lstmvis import StateStore, cluster, match, rank_cells

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
    from lstmvis.convert import convert

    return h5, convert(tmp_path / "s.h5", zarr_address, part_tokens=500)


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
        assert [h.to_dict() for h in got.hits] == [h.to_dict() for h in want.hits], q
        np.testing.assert_array_equal(got.counts, want.counts)
        np.testing.assert_array_equal(got.length_histogram, want.length_histogram)
    hypothesis = (np.arange(h5.n_tokens) % 3 == 0).astype(float)
    want = rank_cells(h5, "h", hypothesis, method="auroc")
    got = cluster.rank_cells(zs, local_client, "h", hypothesis)
    assert got.scores.tolist() == want.scores.tolist()  # bit for bit
    assert got.order.tolist() == want.order.tolist()


def test_part_indexes_are_built_by_the_workers_beside_the_parts(local_client, tmp_path):  # noqa: F811
    h5, zs = _stores(tmp_path, str(tmp_path / "b.zarr"), seed=1)
    cluster.build_part_indexes(zs, local_client, "h")
    n_parts = len(zs.backend.root.attrs["parts"])
    assert sorted(p.name for p in (tmp_path / "b.zarr" / "parts").glob("*.index")) == \
        [f"{k:05d}.index" for k in range(n_parts)]
    StateStore.open(tmp_path / "b.zarr").close()  # the index folders do not upset the store's checks
    with pytest.raises(ValueError, match="Zarr"):
        cluster.match(h5, local_client, "h", [0])
