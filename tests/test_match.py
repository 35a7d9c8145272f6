"""Select and match against a brute-force reference that enumerates every interval of every sequence."""
import dataclasses
import json
import os
import threading

import numpy as np
import pytest

from lstmvis import index as index_module
from lstmvis import query as query_module
from lstmvis.index import MatchIndex, build_index, float_keys, forget_indexes, threshold_keys
from lstmvis.query import SIGNS, MatchQuery, match, n_virtual_cells, select, set_threads
from lstmvis.store import StateStore

LEVELS = np.round(np.linspace(-1, 1, 21), 2)  # few distinct values: many ties at the threshold


def _store(tmp_path, n=160, d=6, n_seq=5, seed=0, dtype=np.float16, name="s.h5"):
    rng = np.random.default_rng(seed)
    # smooth-ish values on a coarse grid, so cells stay on for a while and thresholds hit stored values
    walk = np.cumsum(rng.choice([-2, -1, 0, 0, 1, 2], size=(n, d)), axis=0)
    values = LEVELS[np.clip(10 + walk % 21 - 10, 0, 20)].astype(dtype)
    cuts = np.sort(rng.choice(np.arange(1, n), size=n_seq - 1, replace=False))
    offsets = np.concatenate([[0], cuts, [n]])
    tokens = [f"t{i % 7}" for i in range(n)]
    store = StateStore.from_arrays(tmp_path / name, {"rnn.l0.h": values}, tokens=tokens, offsets=offsets)
    return store, values.astype(np.float64), offsets


def _on(x, threshold, sign):
    pos, neg = x >= threshold, x <= -threshold
    return {"positive": pos, "negative": neg, "both": np.concatenate([pos, neg], axis=-1)}[sign]


def _bounds(offsets, pos):
    seq = int(np.searchsorted(offsets, pos, side="right") - 1)
    return seq, int(offsets[seq]), int(offsets[seq + 1])


def brute_select(x, offsets, start, stop, threshold, pad_left, pad_right, sign):
    _, a, b = _bounds(offsets, start)
    on = _on(x, threshold, sign)
    keep = on[start:stop].all(axis=0)
    for t in list(range(max(a, start - pad_left), start)) + list(range(stop, min(b, stop + pad_right))):
        keep &= ~on[t]
    return np.flatnonzero(keep)


def brute_match(x, offsets, cells, threshold, pad_left, pad_right, sign, top, min_length=2, phrase_length=None):
    on = _on(x, threshold, sign)
    cells = np.unique(cells)
    count = on[:, cells].sum(axis=1)
    found = []
    for seq in range(len(offsets) - 1):
        a, b = int(offsets[seq]), int(offsets[seq + 1])
        for s in range(a, b):
            for e in range(s + 1, b + 1):
                length = e - s
                if (length != phrase_length) if phrase_length is not None else (length < min_length):
                    continue
                inside = count[s:e].min()
                neighbours = max(count[s - 1] if s > a else -1, count[e] if e < b else -1)
                if inside < 1 or inside <= neighbours:  # not a maximal run at any level
                    continue
                cprime = brute_select(x, offsets, s, e, threshold, pad_left, pad_right, sign)
                inter = len(np.intersect1d(cells, cprime))
                if inter:
                    found.append((-inter, len(np.union1d(cells, cprime)), -length, s, e, cprime))
    found.sort(key=lambda r: r[:4])
    # LSTMVis's strict histogram: maximal runs with all selected cells on that keep every one of them in C'
    strict_lengths = []
    for seq in range(len(offsets) - 1):
        a, b = int(offsets[seq]), int(offsets[seq + 1])
        for s in range(a, b):
            for e in range(s + 1, b + 1):
                length = e - s
                if (length != phrase_length) if phrase_length is not None else (length < min_length):
                    continue
                maximal = (s == a or count[s - 1] < len(cells)) and (e == b or count[e] < len(cells))
                if maximal and (count[s:e] == len(cells)).all() and np.isin(
                        cells, brute_select(x, offsets, s, e, threshold, pad_left, pad_right, sign)).all():
                    strict_lengths.append(length)
    return found[:top], count, np.bincount(np.array(strict_lengths, dtype=int), minlength=1)


@pytest.fixture
def use_threads():
    """``use_threads(n)``: queries cut the store into ``n`` parts, one thread each, until the test ends."""
    previous = set_threads()
    yield set_threads
    set_threads(previous)


def _check_same(result, expected, count, histogram):
    got = [(-h.intersection, h.union, -h.length, h.start, h.stop) for h in result.hits]
    assert got == [r[:5] for r in expected]
    for h, r in zip(result.hits, expected):
        np.testing.assert_array_equal(h.cells, r[5])
    np.testing.assert_array_equal(result.counts, count)
    np.testing.assert_array_equal(result.length_histogram, histogram)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("seed", range(6))
def test_select_and_match_equal_brute_force(tmp_path, use_threads, seed, threads):
    # threads: the store is cut into that many parts (steps and whole sequences), one per thread
    use_threads(threads)
    rng = np.random.default_rng(100 + seed)
    sign = ["positive", "negative", "both"][seed % 3]
    dtype = np.float16 if seed < 4 else np.float32
    store, x, offsets = _store(tmp_path, seed=seed, dtype=dtype, d=12 + seed)
    with store:
        n_queries = 0
        for _ in range(60):
            start = int(rng.integers(0, store.n_tokens))
            _, a, b = _bounds(offsets, start)
            stop = int(rng.integers(start + 1, min(b, start + 4) + 1))
            threshold = float(rng.choice([0.3, 0.2, 0.5, 0.25, 0.0, 0.7, -0.1]))
            pad_left, pad_right = int(rng.integers(0, 3)), int(rng.integers(0, 2))
            cells = select(store, "rnn.l0.h", start, stop, threshold, pad_left, pad_right, sign)
            np.testing.assert_array_equal(cells, brute_select(x, offsets, start, stop, threshold, pad_left,
                                                              pad_right, sign))
            if len(cells) == 0:
                continue
            top = int(rng.choice([1, 3, 50]))
            phrase = int(rng.choice([0, 0, 2, 3])) or None
            result = match(store, "rnn.l0.h", cells, threshold, pad_left, pad_right, sign, top=top,
                           phrase_length=phrase)
            _check_same(result, *brute_match(x, offsets, cells, threshold, pad_left, pad_right, sign, top,
                                             phrase_length=phrase))
            n_queries += 1
        assert n_queries >= 10


def test_arbitrary_cell_sets_and_min_length(tmp_path):
    store, x, offsets = _store(tmp_path, seed=7, d=8)
    rng = np.random.default_rng(7)
    with store:
        for _ in range(12):
            cells = rng.choice(8, size=int(rng.integers(1, 9)), replace=False)
            min_length = int(rng.integers(1, 4))
            result = match(store, "rnn.l0.h", cells, 0.3, 1, 1, top=20, min_length=min_length)
            _check_same(result, *brute_match(x, offsets, cells, 0.3, 1, 1, "positive", 20, min_length))


@pytest.mark.parametrize("threads", [1, 2])
def test_more_than_64_selected_cells(tmp_path, use_threads, threads):
    # 40 cells on both signs: 80 virtual cells, two 64-bit words per step
    use_threads(threads)
    store, x, offsets = _store(tmp_path, seed=11, d=40, n=200)
    rng = np.random.default_rng(11)
    with store:
        for size in (80, 70, 65):
            cells = np.sort(rng.choice(80, size=size, replace=False))
            for threshold in (0.1, 0.3):
                result = match(store, "rnn.l0.h", cells, threshold, 1, 1, "both", top=30)
                _check_same(result, *brute_match(x, offsets, cells, threshold, 1, 1, "both", 30))


def test_every_cell_selected(tmp_path):
    store, x, offsets = _store(tmp_path, seed=3, d=4)
    with store:
        cells = np.arange(4)
        result = match(store, "rnn.l0.h", cells, 0.1, top=100)
        _check_same(result, *brute_match(x, offsets, cells, 0.1, 1, 0, "positive", 100))
        assert all(h.union == 4 for h in result.hits)


def test_selection_at_sequence_start_and_end(tmp_path):
    store, x, offsets = _store(tmp_path, seed=4, d=6)
    with store:
        for seq in range(store.n_sequences):
            a, b = store.sequence_bounds(seq)
            for start, stop in ((a, min(a + 2, b)), (max(a, b - 2), b)):
                got = select(store, "rnn.l0.h", start, stop, 0.3, pad_left=2, pad_right=2)
                np.testing.assert_array_equal(got, brute_select(x, offsets, start, stop, 0.3, 2, 2, "positive"))
        # padding at a sequence start is dropped, not read from the previous sequence
        a = int(offsets[1])
        values = np.asarray(store.states("rnn.l0.h", a - 1, a + 1))
        alone = np.flatnonzero(values[1] >= 0.3)
        np.testing.assert_array_equal(select(store, "rnn.l0.h", a, a + 1, 0.3, pad_left=1), alone)


def test_no_match_crosses_a_sequence_boundary(tmp_path):
    n = 40
    values = np.full((n, 2), 0.9, dtype=np.float16)  # every cell on everywhere
    offsets = [0, 10, 10, 25, 40]  # with an empty sequence
    with StateStore.from_arrays(tmp_path / "b.h5", {"a.h": values}, tokens=["x"] * n, offsets=offsets) as store:
        result = match(store, "a.h", [0, 1], top=10)
        assert [(h.start, h.stop, h.sequence) for h in result.hits] == [(10, 25, 2), (25, 40, 3), (0, 10, 0)]
        assert result.length_histogram[10] == 1 and result.length_histogram[15] == 2


def test_length_histogram_is_lstmvis_strict_histogram(tmp_path):
    """Counted: maximal runs with both cells on, both off just before (or at the sequence start), length >= 2."""
    on = np.array([[1, 1], [1, 1], [0, 0], [1, 1], [0, 0],            # seq 0: length 2 (start) and 1 (too short)
                   [1, 0], [1, 1], [1, 1], [1, 1], [0, 0],            # seq 1: cell 0 on before the run: not strict
                   [0, 1], [0, 0], [1, 1], [1, 1], [1, 1], [0, 1]])   # seq 2: length 3, off before; the right is free
    values = np.where(on, 0.9, -0.9).astype(np.float16)
    with StateStore.from_arrays(tmp_path / "h.h5", {"a.h": values}, tokens=["x"] * len(on), offsets=[0, 5, 10, 16]) \
            as store:
        result = match(store, "a.h", [0, 1])
        np.testing.assert_array_equal(result.length_histogram, [0, 0, 1, 1])
        np.testing.assert_array_equal(match(store, "a.h", [0, 1], pad_right=1).length_histogram, [0, 0, 1])
        np.testing.assert_array_equal(match(store, "a.h", [0, 1], pad_left=0).length_histogram, [0, 0, 1, 2])


def test_threshold_outside_the_data_range(tmp_path):
    store, x, offsets = _store(tmp_path, seed=5)
    with store:
        assert select(store, "rnn.l0.h", 3, 5, threshold=2.0).size == 0
        result = match(store, "rnn.l0.h", [0, 1], threshold=2.0)
        assert result.hits == [] and not result.counts.any()
        low = match(store, "rnn.l0.h", [0, 1], threshold=-2.0, top=100)  # every cell on everywhere
        assert sorted((h.start, h.stop) for h in low.hits) == [(int(offsets[i]), int(offsets[i + 1]))
                                                               for i in range(5) if offsets[i + 1] - offsets[i] >= 2]
        assert (low.counts == 2).all()


def test_clear_errors(tmp_path):
    store, _, offsets = _store(tmp_path, seed=6)
    b = int(offsets[1])
    with store:
        with pytest.raises(ValueError, match="no cells selected"):
            match(store, "rnn.l0.h", [])
        with pytest.raises(ValueError, match="crosses the end of sequence"):
            select(store, "rnn.l0.h", b - 1, b + 1)
        with pytest.raises(ValueError, match="non-empty"):
            select(store, "rnn.l0.h", 5, 5)
        with pytest.raises(ValueError, match="sign"):
            select(store, "rnn.l0.h", 1, 3, sign="abs")
        with pytest.raises(ValueError, match="finite"):
            match(store, "rnn.l0.h", [1], threshold=float("nan"))
        with pytest.raises(ValueError, match=r"0\.\.5"):
            match(store, "rnn.l0.h", [6])
        with pytest.raises(ValueError, match=r"2 x cells"):
            match(store, "rnn.l0.h", [12], sign="both")
        with pytest.raises(KeyError, match="unknown source"):
            match(store, "rnn.l9.h", [1])
        with pytest.raises(ValueError, match="pad_left"):
            select(store, "rnn.l0.h", 1, 3, pad_left=-1)
        with pytest.raises(TypeError, match="integer"):
            match(store, "rnn.l0.h", [0.5])
    values = np.zeros((5, 2), dtype=np.float32)
    values[3, 1] = np.nan
    with StateStore.from_arrays(tmp_path / "nan.h5", {"a.h": values}, tokens=["x"] * 5) as bad:
        with pytest.raises(ValueError, match="NaN"):
            match(bad, "a.h", [0])


def test_store_methods_delegate(tmp_path):
    store, _, _ = _store(tmp_path, seed=1)
    with store:
        cells = store.select("rnn.l0.h", 10, 12, threshold=0.2)
        assert cells.tolist() == select(store, "rnn.l0.h", 10, 12, threshold=0.2).tolist()
        if len(cells):
            assert store.match("rnn.l0.h", cells, threshold=0.2).to_dict() == \
                match(store, "rnn.l0.h", cells, threshold=0.2).to_dict()


def test_a_match_query_is_checked_when_built_and_runs_like_match(tmp_path):
    query = MatchQuery("rnn.l0.h", [3, 1, 1], threshold=0.2, pad_right=1, context=2)
    assert query.cells.tolist() == [1, 3] and query.context == (2, 2) and not query.cells.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        query.top = 3
    for bad, message in (({"top": 0}, "top"), ({"threshold": float("inf")}, "finite"), ({"sign": "abs"}, "sign"),
                         ({"context": (1, -1)}, "context"), ({"phrase_length": 0}, "phrase_length")):
        with pytest.raises(ValueError, match=message):
            MatchQuery("rnn.l0.h", [1], **bad)
    store, x, offsets = _store(tmp_path, seed=1)
    with store:
        result = query.run(store)
        assert result.to_dict() == match(store, "rnn.l0.h", [1, 3], 0.2, pad_right=1, context=(2, 2)).to_dict()
        _check_same(result, *brute_match(x, offsets, [1, 3], 0.2, 1, 1, "positive", 50))
        with pytest.raises(ValueError, match=r"0\.\.5"):
            MatchQuery("rnn.l0.h", [1, 6]).run(store)  # the store decides which ids exist


def test_index_is_persisted_reused_and_rebuilt_when_the_store_changes(tmp_path):
    store, _, _ = _store(tmp_path, seed=2)
    folder = tmp_path / "s.h5.index"
    with store:
        first = build_index(store)["rnn.l0.h"]
        assert folder.is_dir()
        files = sorted(p.name for p in folder.iterdir())
        mtimes = {p: os.stat(folder / p).st_mtime_ns for p in files}
        assert MatchIndex.load(store, "rnn.l0.h") is first
        # per value: keys twice (2 B each), a code (1 B), its rank in key order (4 B); per cell: 256
        # bucket bounds (2 B) and 257 bucket starts (8 B); per token: its id (4 B)
        d = store.n_cells("rnn.l0.h")
        assert first.nbytes == store.dataset("rnn.l0.h").size * (2 * 2 + 1 + 4) + d * (256 * 2 + 257 * 8) \
            + 4 * store.n_tokens
    forget_indexes()  # a new process: reads the files, does not rebuild
    with StateStore.open(tmp_path / "s.h5") as again:
        MatchIndex.load(again, "rnn.l0.h")
        assert {p: os.stat(folder / p).st_mtime_ns for p in files} == mtimes
    # a different store written at the same path: the index is rebuilt, stale files removed
    store2, x2, offsets2 = _store(tmp_path, seed=9)
    with store2:
        result = match(store2, "rnn.l0.h", [0, 1], top=5)
        _check_same(result, *brute_match(x2, offsets2, [0, 1], 0.3, 1, 0, "positive", 5))
        assert len([p for p in folder.iterdir() if p.suffix == ".npy"]) == 7


@pytest.mark.parametrize("damage", ["meta without an entry", "truncated array"])
def test_a_damaged_index_is_rebuilt_not_an_error(tmp_path, damage):
    store, x, offsets = _store(tmp_path, seed=4)
    folder = tmp_path / "s.h5.index"
    with store:
        build_index(store)
    forget_indexes()
    meta_path = folder / "rnn.l0.h.json"
    meta = json.loads(meta_path.read_text())
    if damage == "meta without an entry":
        del meta["order"]
        meta_path.write_text(json.dumps(meta))
    else:
        path = folder / meta["codes"]
        path.write_bytes(path.read_bytes()[:-100])
    with StateStore.open(tmp_path / "s.h5") as again:
        result = match(again, "rnn.l0.h", [0, 1], top=5)
        _check_same(result, *brute_match(x, offsets, [0, 1], 0.3, 1, 0, "positive", 5))


def test_float_keys_sort_like_the_floats():
    rng = np.random.default_rng(0)
    for dtype in (np.float16, np.float32, np.float64):
        x = np.concatenate([rng.standard_normal(2000) * 10, [0.0, -0.0, np.inf, -np.inf, 1e-8, -1e-8]]).astype(dtype)
        keys = float_keys(x)
        assert keys.dtype.itemsize == np.dtype(dtype).itemsize
        i, j = rng.integers(0, len(x), (2, 20000))
        np.testing.assert_array_equal(keys[i] < keys[j], x[i] < x[j])
        np.testing.assert_array_equal(keys[i] == keys[j], x[i] == x[j])
        for threshold in [0.3, -0.3, 0.0, *x[:50].astype(np.float64), 1e6, -1e6, 0.1 + 1e-12]:
            k_pos, k_neg = threshold_keys(float(threshold), np.dtype(dtype))
            exact = x.astype(np.float64)  # numpy would compare float16 with a float16-rounded threshold
            np.testing.assert_array_equal(keys >= k_pos, exact >= threshold)
            np.testing.assert_array_equal(keys <= k_neg, exact <= -threshold)


def test_concurrent_first_queries_build_the_index_once(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    n_threads, builds, real_write = 4, [], index_module.write_index
    arrived = threading.Semaphore(0)

    def counted_write(*args, **kwargs):
        builds.append(1)
        for _ in range(n_threads):  # build only once every thread has asked for the index
            assert arrived.acquire(timeout=10)
        return real_write(*args, **kwargs)

    def first_query(_):
        arrived.release()
        return match(store, "rnn.l0.h", [0, 1], top=5)

    monkeypatch.setattr(index_module, "write_index", counted_write)
    store, x, offsets = _store(tmp_path, seed=8)
    with store:
        with ThreadPoolExecutor(n_threads) as pool:
            results = list(pool.map(first_query, range(n_threads)))
        assert len({repr(r.to_dict()) for r in results}) == 1 and len(builds) == 1
        _check_same(results[0], *brute_match(x, offsets, [0, 1], 0.3, 1, 0, "positive", 5))


def _smooth_store(tmp_path, n, d, n_seq, seed, dtype=np.float16):
    """Many distinct values (buckets of several values each), cells switching on and off in runs."""
    rng = np.random.default_rng(seed)
    values = np.tanh(np.cumsum(rng.normal(0, 0.35, size=(n, d)), axis=0) * 0.5 + rng.uniform(-0.5, 0.5, d))
    values = values.astype(dtype)
    cuts = np.sort(rng.choice(np.arange(1, n), size=n_seq - 1, replace=False))
    offsets = np.concatenate([[0], cuts, [n]])
    store = StateStore.from_arrays(tmp_path / "smooth.h5", {"rnn.l0.h": values}, tokens=["t"] * n, offsets=offsets)
    return store, values.astype(np.float64), offsets


def test_round_thresholds_are_bucket_edges_and_others_read_keys(tmp_path):
    # thresholds on the explorer's 0.05 grid are decided by the codes alone (no bucket to read);
    # any other threshold (between stored values, or equal to one) reads the keys of its own bucket
    store, x, offsets = _smooth_store(tmp_path, n=600, d=10, n_seq=8, seed=21)
    rng = np.random.default_rng(21)
    with store:
        index = MatchIndex.load(store, "rnn.l0.h")
        cells = np.arange(20)
        for threshold in (0.3, 0.05, 0.0, 0.95):
            k_pos, k_neg = threshold_keys(threshold, index.dtype)
            assert (index.cell_tests(cells, "both", k_pos, k_neg)[3] == -1).all()
        stored = x[rng.integers(0, 600, 3), rng.integers(0, 10, 3)]
        checked = 0
        for threshold in (0.33, 0.171, -0.07, *np.abs(stored)):
            k_pos, k_neg = threshold_keys(float(threshold), index.dtype)
            checked += int((index.cell_tests(cells, "both", k_pos, k_neg)[3] >= 0).sum())
            for sign in SIGNS:
                for top in (1, 50):
                    chosen = np.sort(rng.choice(n_virtual_cells(10, sign), size=int(rng.integers(1, 8)),
                                                replace=False))
                    result = match(store, "rnn.l0.h", chosen, float(threshold), 1, int(rng.integers(0, 2)), sign,
                                   top=top)
                    _check_same(result, *brute_match(x, offsets, chosen, float(threshold), 1, result.pad_right,
                                                     sign, top))
        assert checked > 0


@pytest.mark.parametrize("threads", [1, 2])
def test_floor_rising_during_the_scan(tmp_path, use_threads, threads):
    # many levels, small ``top``: the scan's level rises while runs of lower levels are open, which
    # drops them; more than 64 selected cells (two bit words) and padding at sequence edges
    use_threads(threads)
    store, x, offsets = _smooth_store(tmp_path, n=500, d=40, n_seq=6, seed=22)
    rng = np.random.default_rng(22)
    with store:
        for size, sign, threshold in ((12, "positive", 0.2), (70, "both", 0.25), (80, "both", 0.13),
                                      (30, "negative", 0.3)):
            cells = np.sort(rng.choice(n_virtual_cells(40, sign), size=size, replace=False))
            for top in (1, 3, 20):
                for pad_left, pad_right in ((1, 0), (2, 1)):
                    result = match(store, "rnn.l0.h", cells, threshold, pad_left, pad_right, sign, top=top)
                    _check_same(result, *brute_match(x, offsets, cells, threshold, pad_left, pad_right, sign, top))


@pytest.mark.parametrize("threads", [1, 3])
def test_chunk_summaries_bound_the_steps(tmp_path, use_threads, threads):
    # the scan skips 64 steps at a time by ``chunk_max`` (largest count) and ``chunk_rise`` (an upper
    # bound of the cells switching on at a step): exact bits and counts, and bounds that hold, also
    # for thresholds inside a bucket (their steps are added after the code comparison) and at the
    # boundaries between the threads' parts
    use_threads(threads)
    rng = np.random.default_rng(23)
    n, d = 5000, 24
    shared = np.cumsum(rng.normal(0, 0.6, size=(n, 4)), axis=0)  # groups of cells switch on together
    values = np.tanh(0.3 * shared[:, np.arange(d) % 4] + rng.normal(0, 0.4, size=(n, d))).astype(np.float16)
    with StateStore.from_arrays(tmp_path / "c.h5", {"a.h": values}, tokens=["t"] * n, offsets=[0, 1300, n]) as store:
        index = MatchIndex.load(store, "a.h")
        x = values.astype(np.float64)
        for threshold, sign in ((0.3, "positive"), (0.137, "positive"), (0.211, "negative"), (0.0713, "both")):
            cells = np.sort(rng.choice(n_virtual_cells(d, sign), size=20, replace=False))
            k_pos, k_neg = threshold_keys(threshold, index.dtype)
            assert threshold == 0.3 or (index.cell_tests(cells, sign, k_pos, k_neg)[3] >= 0).all()
            planes, count, chunk_max, chunk_rise = query_module._selected_on(index, cells, sign, k_pos, k_neg)
            on = _on(x, threshold, sign)[:, cells]
            bits = np.unpackbits(planes, axis=0, bitorder="little")[:len(cells)].T.astype(bool)
            np.testing.assert_array_equal(bits, on)
            np.testing.assert_array_equal(count, on.sum(axis=1))
            padded = np.zeros(-(-n // 64) * 64, dtype=np.int64)
            padded[:n] = count
            np.testing.assert_array_equal(chunk_max, padded.reshape(-1, 64).max(axis=1))
            rise = on.sum(axis=1)
            rise[1:] = (on[1:] & ~on[:-1]).sum(axis=1)
            padded[:n] = rise
            assert (chunk_rise >= padded.reshape(-1, 64).max(axis=1)).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_skipping_by_chunk_at_sequence_starts_and_without_padding(tmp_path, use_threads, threads):
    # a match is found first (top=1 sets the floor to 3), then the best one starts in a chunk of 64
    # steps where no cell switches on (a sequence start: no padding to be off) or where fewer than
    # 3 cells switch on (pad_left=0: the count bounds |C & C'|, not the cells switching on)
    use_threads(threads)
    values = np.full((400, 4), -0.5, dtype=np.float16)
    values[40:100, :3] = 0.5  # across the sequence start at 64
    values[200:203, :3] = 0.5  # a short match, then a long one starting where 2 cells switch on
    values[260:330, :2] = 0.5
    values[250:300, 2] = 0.5
    offsets = [0, 64, 190, 400]
    x = values.astype(np.float64)
    with StateStore.from_arrays(tmp_path / "k.h5", {"a.h": values}, tokens=["t"] * 400, offsets=offsets) as store:
        result = match(store, "a.h", [0, 1, 2], top=1)
        assert [(h.start, h.stop, h.intersection) for h in result.hits] == [(64, 100, 3)]
        _check_same(result, *brute_match(x, np.array(offsets), [0, 1, 2], 0.3, 1, 0, "positive", 1))
        result = match(store, "a.h", [0, 1, 2], pad_left=0, top=1)
        assert [(h.start, h.stop, h.intersection) for h in result.hits] == [(260, 300, 3)]
        _check_same(result, *brute_match(x, np.array(offsets), [0, 1, 2], 0.3, 0, 0, "positive", 1))


def test_a_run_open_when_the_floor_reaches_its_bound_is_kept(tmp_path):
    # cells 0 and 1 switch on at 10 (bound 2) and stay on to 60; inside, cells 2 and 3 are on at
    # 20..23: that match (|C & C'| = 2) sets the floor to 2 while the run from 10 is still open.
    # It can still tie (2) and wins on length: it must not be dropped as dead
    values = np.full((100, 4), -0.5, dtype=np.float16)
    values[10:60, :2] = 0.5
    values[20:23, 2:] = 0.5
    x = values.astype(np.float64)
    with StateStore.from_arrays(tmp_path / "f.h5", {"a.h": values}, tokens=["t"] * 100, offsets=[0, 100]) as store:
        result = match(store, "a.h", [0, 1, 2, 3], top=1)
        assert [(h.start, h.stop, h.intersection) for h in result.hits] == [(10, 60, 2)]
        _check_same(result, *brute_match(x, np.array([0, 100]), [0, 1, 2, 3], 0.3, 1, 0, "positive", 1))


def test_concurrent_queries_of_different_sizes_share_no_buffers(tmp_path):
    # bit-plane buffers are reused between queries: queries running at once each get their own
    from concurrent.futures import ThreadPoolExecutor

    store, x, offsets = _smooth_store(tmp_path, n=400, d=40, n_seq=4, seed=24)
    rng = np.random.default_rng(24)
    queries = [np.sort(rng.choice(80, size=size, replace=False)) for size in (3, 70, 9, 40, 1, 17, 66, 5) * 2]
    with store:
        match(store, "rnn.l0.h", [0], sign="both")  # the index, built once
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda cells: match(store, "rnn.l0.h", cells, 0.2, sign="both", top=10), queries))
        for cells, result in zip(queries, results):
            _check_same(result, *brute_match(x, offsets, cells, 0.2, 1, 0, "both", 10))


@pytest.mark.parametrize("threads", [1, 2])
def test_candidate_arrays_grow_when_full(tmp_path, monkeypatch, use_threads, threads):
    # one cell: every run of it is a candidate with |C & C'| = 1, none can be dropped before the end
    use_threads(threads)
    monkeypatch.setattr(query_module, "_CANDIDATES", 2)
    store, x, offsets = _smooth_store(tmp_path, n=600, d=6, n_seq=5, seed=25)
    with store:
        for cells, top in (([2], 50), ([0, 3, 4], 20), ([1, 5], 3)):
            result = match(store, "rnn.l0.h", cells, 0.2, top=top)
            _check_same(result, *brute_match(x, offsets, cells, 0.2, 1, 0, "positive", top))
        assert result.n_candidates > 8


def _stale_index_naming(folder, names):
    """Make the index in ``folder`` stale (another fingerprint) and its json name ``names``."""
    meta_path = folder / "rnn.l0.h.json"
    meta = json.loads(meta_path.read_text())
    meta["fingerprint"] = {**meta["fingerprint"], "size": -1}
    meta.update(names)
    meta_path.write_text(json.dumps(meta))


def test_a_crafted_stale_index_deletes_nothing_outside_its_folder(tmp_path):
    # issue 24, finding 1: rebuilding a stale index deletes the files its json names; a crafted
    # json names files outside the index folder (absolute, ``..``, a separator inside): they survive
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir(), outside.mkdir()
    precious = {name: outside / name for name in ("precious.txt", "x", "y.npy")}
    for path in precious.values():
        path.write_text("keep me")
    (data / "sub").mkdir()
    inner = data / "sub" / "inner.npy"
    inner.write_text("keep me too")
    store, x, offsets = _store(data, seed=2)
    folder = data / "s.h5.index"
    with store:
        build_index(store)
        forget_indexes()
        stale = folder / json.loads((folder / "rnn.l0.h.json").read_text())["bucket_start"]
        _stale_index_naming(folder, {"cell_major": str(precious["precious.txt"]), "row_major": "../../outside/x",
                                     "codes": "../outside/y.npy", "order": "../sub/inner.npy",
                                     "bounds": "sub/inner.npy", "token_ids": str(inner)})
        result = match(store, "rnn.l0.h", [0, 1], top=5)
        _check_same(result, *brute_match(x, offsets, [0, 1], 0.3, 1, 0, "positive", 5))
    assert all(path.read_text() == "keep me" for path in precious.values())
    assert inner.read_text() == "keep me too"
    assert not stale.exists()  # the one stale file the json names as this code does is deleted
    assert len([p for p in folder.iterdir() if p.suffix == ".npy"]) == 7 + 6  # the others are left alone
    meta = json.loads((folder / "rnn.l0.h.json").read_text())
    assert all((folder / meta[kind]).is_file() for kind in index_module.FILE_KINDS)


def test_an_index_json_naming_files_elsewhere_is_not_opened(tmp_path):
    # a json that names files outside its folder (with the right fingerprint) is not read: rebuilt
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    store, x, offsets = _store(tmp_path / "a", seed=3)
    other, _, _ = _store(tmp_path / "b", seed=4)
    with store, other:
        build_index(store)
        build_index(other)
        forget_indexes()
        meta_path = tmp_path / "a" / "s.h5.index" / "rnn.l0.h.json"
        meta = json.loads(meta_path.read_text())
        theirs = json.loads((tmp_path / "b" / "s.h5.index" / "rnn.l0.h.json").read_text())
        meta.update({kind: f"../../b/s.h5.index/{theirs[kind]}" for kind in index_module.FILE_KINDS})
        meta_path.write_text(json.dumps(meta))
        result = match(store, "rnn.l0.h", [0, 1], top=5)
        _check_same(result, *brute_match(x, offsets, [0, 1], 0.3, 1, 0, "positive", 5))
        assert MatchIndex.load(store, "rnn.l0.h").folder == tmp_path / "a" / "s.h5.index"


def test_an_index_folder_that_is_a_symlink_out_of_the_store_folder_receives_nothing(tmp_path, monkeypatch):
    # issue 24, finding 2: ``<store>.h5.index`` leading out of the store's folder is not written to:
    # the index goes to the user cache instead
    data, elsewhere, cache = tmp_path / "data", tmp_path / "elsewhere", tmp_path / "cache"
    for folder in (data, elsewhere):
        folder.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    (data / "s.h5.index").symlink_to(elsewhere, target_is_directory=True)
    store, x, offsets = _store(data, seed=5)
    with store:
        index = build_index(store)["rnn.l0.h"]
        result = match(store, "rnn.l0.h", [0, 1], top=5)
        _check_same(result, *brute_match(x, offsets, [0, 1], 0.3, 1, 0, "positive", 5))
    assert list(elsewhere.iterdir()) == []
    assert index.folder.resolve().is_relative_to(cache.resolve()) and (index.folder / "rnn.l0.h.json").is_file()
    # a symlink to a folder inside the store's folder is followed
    inside = data / "indexes"
    inside.mkdir()
    (data / "s.h5.index").unlink()
    (data / "s.h5.index").symlink_to(inside, target_is_directory=True)
    forget_indexes()
    with StateStore.open(data / "s.h5") as again:
        assert MatchIndex.load(again, "rnn.l0.h").folder == data / "s.h5.index"
    assert (inside / "rnn.l0.h.json").is_file()
