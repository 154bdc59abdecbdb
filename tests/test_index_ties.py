"""Ties at the k-th distance: exact counts (``count_within``, ``search_ties``), the seeded random
draw from the whole tie group, and what ``hashlearn search`` says and draws about them."""

import json

import numpy as np
import pytest
from scipy.stats import chi2

from hashlearn.cli import main
from hashlearn.index import HammingIndex

PNG = b"\x89PNG\r\n\x1a\n"


def brute(q, db):
    """Hamming distances of 0/1 codes, (nq, n)."""
    return (q[:, None, :] != db[None, :, :]).sum(-1)


def clustered(rng, n, bits, dup=400):
    """0/1 codes with a block of ``dup`` identical codes (a big tie group) and near copies."""
    db = rng.integers(0, 2, (n, bits)).astype(np.int8)
    db[:dup] = db[0]
    flip = rng.random((dup, bits)) < 2 / bits
    db[dup : 2 * dup] = db[0] ^ flip
    return db


@pytest.mark.parametrize("bits,method", [(16, "flat"), (16, "mih"), (64, "flat"), (64, "mih"), (200, "flat")])
def test_count_within_equals_brute_force(bits, method):
    rng = np.random.default_rng(bits)
    db = clustered(rng, 2500, bits)
    q = np.concatenate([db[rng.integers(0, 2500, 40)], rng.integers(0, 2, (10, bits)).astype(np.int8)])
    index = HammingIndex(bits, method=method)
    index.add(db, rng.permutation(2500) * 7)
    d = brute(q, db)
    for r in (0, 1, 2, bits // 3, bits // 2, bits - 1, bits, bits + 5):
        np.testing.assert_array_equal(index.count_within(q, r), (d <= r).sum(1), err_msg=f"radius {r}")
    radii = rng.integers(-1, bits + 2, len(q))  # one radius per query; -1 counts nothing
    np.testing.assert_array_equal(index.count_within(q, radii), (d <= radii[:, None]).sum(1))
    # codes at distance exactly r: the difference of two counts
    at = index.count_within(q, radii) - index.count_within(q, radii - 1)
    np.testing.assert_array_equal(at, (d == radii[:, None]).sum(1))


def test_count_within_edge_cases():
    index = HammingIndex(32)
    q = np.zeros((3, 32), dtype=np.int8)
    np.testing.assert_array_equal(index.count_within(q, 5), [0, 0, 0])  # empty index
    index.add(np.zeros((4, 32), dtype=np.int8))
    np.testing.assert_array_equal(index.count_within(q, [0, -1, 32]), [4, 0, 4])
    from hashlearn.errors import InputError

    with pytest.raises(InputError, match="radius: 2 values for 3 queries"):
        index.count_within(q, [1, 2])
    with pytest.raises(InputError, match="radius"):
        index.count_within(q, 1.5)


@pytest.mark.parametrize("method", ["flat", "mih"])
def test_search_ties_index_is_search_and_counts_the_whole_tie_group(method):
    rng = np.random.default_rng(5)
    bits = 48
    db = clustered(rng, 3000, bits)
    ids = rng.permutation(3000).astype(np.int64) * 3
    q = np.concatenate([db[:5], db[rng.integers(0, 3000, 30)], rng.integers(0, 2, (5, bits)).astype(np.int8)])
    index = HammingIndex(bits, method=method)
    index.add(db, ids)
    d = brute(q, db)
    for k in (1, 10, 450, 3000):
        dist, got, info = index.search_ties(q, k)
        ref_d, ref_i = index.search(q, k)
        np.testing.assert_array_equal(dist, ref_d)
        np.testing.assert_array_equal(got, ref_i)  # 'index': today's order, unchanged
        kth = ref_d[:, -1]
        np.testing.assert_array_equal(info["kth_distance"], kth)
        np.testing.assert_array_equal(info["tied_at_kth"], (d == kth[:, None]).sum(1))
        np.testing.assert_array_equal(info["tied_in_results"], (ref_d == kth[:, None]).sum(1))
    _, _, info = index.search_ties(q[:5], 10)  # the user's case: top 10 all at distance 0 out of 400
    assert info["kth_distance"].tolist() == [0] * 5 and (info["tied_at_kth"] == (d[:5] == 0).sum(1)).all()
    assert (info["tied_at_kth"] >= 400).all()
    assert info["tied_in_results"].tolist() == [10] * 5
    # k past the number of codes: every code, padded with -1
    dist, got, info = index.search_ties(q[:2], 3005)
    assert (got[:, -5:] == -1).all() and info["tied_in_results"].tolist() == info["tied_at_kth"].tolist()


def tie_database(rng, bits=32):
    """Three codes at distance 0 from the query, twenty at distance 2, ten at distance 5; ids
    scattered so that the lowest ids of a group are not the first codes added."""
    q = rng.integers(0, 2, bits).astype(np.int8)
    rows = []
    for dist, count in ((0, 3), (2, 20), (5, 10)):
        for _ in range(count):
            c = q.copy()
            c[rng.choice(bits, dist, replace=False)] ^= 1
            rows.append(c)
    ids = rng.permutation(1000)[: len(rows)].astype(np.int64)
    return q, np.array(rows), ids


@pytest.mark.parametrize("method", ["flat", "mih"])
def test_random_ties_draw_every_member_of_the_tie_group_equally_often(method):
    """With --ties random each of the 20 codes at the k-th distance is shown equally often (a
    chi-square test at p = 0.001, fixed seed: a draw from the first k of the group, or any bias,
    fails it), and the order inside the closer group is uniform too."""
    rng = np.random.default_rng(0)
    q, db, ids = tie_database(rng)
    index = HammingIndex(32, method=method)
    index.add(db, ids)
    nq, k = 4000, 8
    queries = np.repeat(q[None, :], nq, axis=0)
    dist, got, info = index.search_ties(queries, k, ties="random", seed=0)
    assert (dist == [0, 0, 0, 2, 2, 2, 2, 2]).all()
    assert info["tied_at_kth"].tolist() == [20] * nq and info["tied_in_results"].tolist() == [5] * nq
    zero, two = ids[:3], ids[3:23]
    assert all(set(row[:3]) == set(zero) for row in got.tolist())  # the closer codes are always all shown
    assert all(len(set(row)) == k and set(row[3:]) <= set(two) for row in got.tolist())

    def uniform(counts, expected):
        stat = float(((counts - expected) ** 2 / expected).sum())
        return chi2.sf(stat, len(counts) - 1) > 1e-3

    shown = np.array([(got[:, 3:] == i).sum() for i in two])
    assert shown.sum() == nq * 5 and uniform(shown, nq * 5 / 20), shown
    first_of_tie = np.array([(got[:, 3] == i).sum() for i in two])  # the order within the draw, too
    assert uniform(first_of_tie, nq / 20), first_of_tie
    first = np.array([(got[:, 0] == i).sum() for i in zero])
    assert uniform(first, nq / 3), first
    # 'index' shows the 5 lowest ids of the tie, every time
    _, by_id, _ = index.search_ties(queries[:3], k, ties="index")
    assert (by_id[:, 3:] == np.sort(two)[:5]).all()


def test_random_ties_are_reproducible_per_query_and_seed():
    rng = np.random.default_rng(1)
    q, db, ids = tie_database(rng)
    index = HammingIndex(32)
    index.add(db, ids)
    queries = np.repeat(q[None, :], 3, axis=0)
    a = index.search_ties(queries, 8, ties="random", seed=7)[1]
    b = index.search_ties(queries, 8, ties="random", seed=7)[1]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(index.search_ties(queries[:1], 8, ties="random", seed=7)[1][0], a[0])
    assert not (a == index.search_ties(queries, 8, ties="random", seed=8)[1]).all()
    assert not (a[0] == a[1]).all()  # each query draws its own order
    from hashlearn.errors import InputError

    with pytest.raises(InputError, match="ties"):
        index.search_ties(queries, 8, ties="expected")
    with pytest.raises(InputError, match="seed"):
        index.search_ties(queries, 8, ties="random", seed=-1)


# -- hashlearn search ------------------------------------------------------------------------------


@pytest.fixture
def tied_collection(tmp_path, capsys):
    """A collection where the query's top 10 are all at distance 0 out of 30 tied images, with
    labels; images exist for the first 20 ids only."""
    from PIL import Image

    rng = np.random.default_rng(3)
    q = rng.integers(0, 2, 32).astype(np.int8)
    far = rng.integers(0, 2, (10, 32)).astype(np.int8)
    far[:, :12] = 1 - q[:12]  # at least 12 bits away
    codes = np.concatenate([np.repeat(q[None, :], 30, axis=0), far])
    images = tmp_path / "images"
    images.mkdir()
    names = [f"img{i:02d}.png" for i in range(40)]
    for i, name in enumerate(names[:20]):
        Image.fromarray(np.full((12, 12, 3), 6 * i, dtype=np.uint8)).save(images / name)
    (images / "paths.txt").write_text("\n".join(names))
    (tmp_path / "labels.txt").write_text("\n".join(["cat"] * 30 + ["dog"] * 10))
    np.save(tmp_path / "codes.npy", codes)
    np.save(tmp_path / "q.npy", q[None, :])
    coll = str(tmp_path / "coll")
    argv = ["index", "build", "--codes", str(tmp_path / "codes.npy"), "--out", coll]
    argv += ["--paths", str(images / "paths.txt"), "--labels", str(tmp_path / "labels.txt")]
    assert main(argv) == 0
    capsys.readouterr()
    return tmp_path, coll


def test_search_says_how_many_share_the_kth_distance(tied_collection, capsys):
    tmp, coll = tied_collection
    base = ["search", "--collection", coll, "--query-codes", str(tmp / "q.npy"), "-k", "10"]
    assert main(base) == 0
    text = capsys.readouterr().out
    assert "10 of 30 at distance 0" in text and "--ties random" in text
    assert f"id=0  distance=0  path={tmp / 'images/img00.png'}  label=cat" in text
    assert main([*base, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["kth_distance"], out["tied_at_kth"], out["tied_in_results"]) == (0, 30, 10)
    assert [h["id"] for h in out["results"]] == list(range(10))  # --ties index: by id, as before
    assert main([*base, "-k", "35", "--json"]) == 0  # past the tie: 5 of the 10 far codes
    out = json.loads(capsys.readouterr().out)
    assert out["tied_in_results"] <= out["tied_at_kth"] and out["kth_distance"] >= 12
    assert sum(h["distance"] == out["kth_distance"] for h in out["results"]) == out["tied_in_results"]
    assert main([*base, "-k", "30"]) == 0
    text = capsys.readouterr().out
    assert "30 of 30 at distance 0" in text and "--ties random" not in text


def test_search_ties_random_draws_from_the_whole_group(tied_collection, capsys):
    tmp, coll = tied_collection
    base = ["search", "--collection", coll, "--query-codes", str(tmp / "q.npy"), "-k", "10", "--json"]
    seen = set()
    for seed in range(20):
        assert main([*base, "--ties", "random", "--seed", str(seed)]) == 0
        out = json.loads(capsys.readouterr().out)
        ids = [h["id"] for h in out["results"]]
        assert len(set(ids)) == 10 and max(ids) < 30 and out["tied_at_kth"] == 30
        seen.update(ids)
    assert seen == set(range(30))  # not only the 10 lowest ids
    assert main([*base, "--ties", "random", "--seed", "3"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert main([*base, "--ties", "random", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == again
    assert main([*base[:-1], "--ties", "random"]) == 0
    assert "drawn at random" in capsys.readouterr().out
    # a range search keeps its set and shuffles within each distance
    assert main(["search", "--collection", coll, "--query-codes", str(tmp / "q.npy"), "--radius", "0",
                 "--ties", "random", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    ids = [h["id"] for h in out["results"]]
    assert sorted(ids) == list(range(30)) and ids != list(range(30))
    assert main([*base, "--seed", "-1"]) == 2
    assert "--seed" in capsys.readouterr().err


def test_search_plot_draws_results_and_missing_files(tied_collection, capsys):
    tmp, coll = tied_collection
    base = ["search", "--collection", coll, "--query-codes", str(tmp / "q.npy")]
    # ids 10..29 in the top 10 of a random draw: some with images, some without (grey tiles)
    assert main([*base, "-k", "40", "--plot", str(tmp / "out.png")]) == 0
    text = capsys.readouterr()
    assert f"plot: {tmp / 'out.png'}" in text.out and "top 20" in text.err
    assert (tmp / "out.png").read_bytes()[:8] == PNG
    assert main([*base, "--plot", str(tmp / "noext"), "--json"]) == 0
    json.loads(capsys.readouterr().out)  # --json prints only JSON
    assert (tmp / "noext.png").read_bytes()[:8] == PNG
    # the extension is checked before anything is read (the missing query file is never reached)
    assert main(["search", "--collection", coll, "--query-codes", str(tmp / "nope.npy"), "--plot", "x.bmpx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--plot x.bmpx" in err and "unknown image format" in err


def test_search_plot_draws_the_query_image(tied_collection, capsys, monkeypatch):
    """With --image the query's own picture is drawn (the encoder is replaced by one that returns
    the query code, so no training is needed)."""
    from PIL import Image

    import hashlearn.train as train

    tmp, coll = tied_collection
    q = np.load(tmp / "q.npy")
    seen = []

    def fake_encode_images(run, paths):
        from hashlearn.codes import pack_bits

        seen.append(list(paths))
        return pack_bits(q), 32

    monkeypatch.setattr(train, "encode_images", fake_encode_images)
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp / "query.png")
    drawn = {}
    import hashlearn.eval.plots as plots

    real = plots.plot_query_results

    def spy(query_images, result_images, correct, path, **kw):
        drawn.update(queries=query_images, results=result_images, **kw)
        return real(query_images, result_images, correct, path, **kw)

    monkeypatch.setattr(plots, "plot_query_results", spy)
    argv = ["search", "--collection", coll, "--image", str(tmp / "query.png"), "--run", str(tmp), "-k", "30"]
    assert main([*argv, "--ties", "random", "--plot", str(tmp / "q.svg")]) == 0
    assert seen == [[str(tmp / "query.png")]] and (tmp / "q.svg").read_text().lstrip().startswith("<?xml")
    assert drawn["queries"][0].shape == (96, 96, 3)  # the query image, not a placeholder
    row = drawn["results"][0]
    missing = [isinstance(r, str) and r == "missing" for r in row]
    assert len(row) == 20
    assert all(m or getattr(r, "shape", None) == (96, 96, 3) for m, r in zip(missing, row, strict=True))
    assert 0 < sum(missing) < 20  # ids 20..29 have no image file: grey tiles, not an error
    assert drawn["titles"][0] == ["cat"] * 20 and drawn["distances"][0] == [0] * 20
