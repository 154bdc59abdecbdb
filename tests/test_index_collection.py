"""Collections on disk: atomic add/remove, crash safety under kill -9, bad input."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from hashlearn.errors import InputError, NotFoundError
from hashlearn.index.collection import Collection

BITS = 40


def code_for(ids):
    """Deterministic 40-bit codes from ids, so a reader can check every code it finds."""
    ids = np.asarray(ids, dtype=np.int64)[:, None]
    bits = ((ids * 2654435761 + np.arange(BITS) * 40503) >> 7) & 1
    return np.packbits(bits.astype(np.uint8), axis=1)


def test_add_read_remove_and_metadata(tmp_path):
    coll = Collection.create(tmp_path / "c", BITS)
    ids = coll.add(code_for(np.arange(5)), paths=[f"img{i}.jpg" for i in range(5)], labels=list("abcde"))
    np.testing.assert_array_equal(ids, np.arange(5))
    more = coll.add(code_for(np.array([10, 7])), ids=[10, 7])
    np.testing.assert_array_equal(more, [10, 7])
    assert coll.remove([1, 99]) == 1
    packed, got = coll.read()
    np.testing.assert_array_equal(got, [0, 2, 3, 4, 7, 10])
    np.testing.assert_array_equal(packed, code_for(got))
    assert coll.metadata([2])[2]["path"] == "img2.jpg" and coll.metadata([2])[2]["label"] == "c"
    index = coll.to_index()
    _, nn = index.search(code_for(np.array([7])), 1)
    assert nn[0, 0] == 7
    assert coll.info()["count"] == 6
    coll.close()
    reopened = Collection.open(tmp_path / "c")
    assert len(reopened) == 6 and reopened.bits == BITS


@pytest.mark.parametrize(
    "codes, ids, message",
    [
        (np.zeros((2, 3), dtype=np.uint8), None, "matches neither"),  # wrong code length
        (np.zeros((2, BITS)), [1, 1], "duplicate"),
        (np.zeros((1, BITS)), [3], "already in the collection"),
        (np.full((1, BITS), np.nan), None, "NaN"),
        (np.full((1, BITS), 2), None, "binary"),
        (np.zeros((1, 5), dtype=np.int16), None, "uint8"),  # packed width, wrong dtype
        (np.array([["x"] * BITS]), None, "dtype"),
    ],
)
def test_bad_input_leaves_the_collection_unchanged(tmp_path, codes, ids, message):
    coll = Collection.create(tmp_path / "c", BITS)
    coll.add(code_for(np.arange(4)))
    before = coll.read()
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "c").glob("seg-*")}
    with pytest.raises(InputError, match=message):
        coll.add(codes, ids=ids)
    after = coll.read()
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert sizes == {p.name: p.stat().st_size for p in (tmp_path / "c").glob("seg-*")}


def test_open_missing_and_newer_format(tmp_path):
    with pytest.raises(NotFoundError):
        Collection.open(tmp_path / "nope")
    coll = Collection.create(tmp_path / "c", BITS)
    coll._conn.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    with pytest.raises(InputError, match="newer"):
        Collection.open(tmp_path / "c")


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_index_collection import code_for
    from hashlearn.index.collection import Collection
    coll = Collection.create(sys.argv[1], {bits}, exist_ok=True)
    rng = np.random.default_rng(int(sys.argv[2]))
    nxt = int(sys.argv[3])
    while True:
        n = int(rng.integers(1, 400))
        ids = np.arange(nxt, nxt + n)
        coll.add(code_for(ids), ids=ids)
        print(nxt, n, flush=True)  # acknowledged
        nxt += n
        if rng.random() < 0.2:
            coll.remove(ids[:1])
            print("rm", nxt - n, flush=True)
    """
)


def test_kill_minus_9_at_random_points_keeps_every_acknowledged_code(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=os.path.dirname(__file__), bits=BITS))
    path = tmp_path / "coll"
    rng = np.random.default_rng(0)
    acked, removed, nxt = set(), set(), 0
    deadline = time.monotonic() + 40
    rounds = 0
    while rounds < 25 and time.monotonic() < deadline:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), str(rounds), str(nxt)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(float(rng.uniform(0.3, 0.9)))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        last_start = None
        for line in out.splitlines():
            parts = line.split()
            if parts[0] == "rm":
                removed.add(int(parts[1]))
            else:
                start, n = int(parts[0]), int(parts[1])
                acked.update(range(start, start + n))
                last_start = start
        coll = Collection.open(path)
        packed, ids = coll.read()
        coll.close()
        present = set(ids.tolist())
        lost = acked - removed - present
        # the only code allowed to vanish: a remove of the last batch's first id that committed
        # just before the kill, before it could be acknowledged
        assert lost <= {last_start}, f"acknowledged codes lost: {sorted(lost)[:5]}"
        removed |= lost
        np.testing.assert_array_equal(packed, code_for(ids))  # no torn code
        # anything beyond the acknowledged set is one whole batch that committed just before the kill
        extra = sorted(present - acked)
        if extra:
            assert extra == list(range(extra[0], extra[-1] + 1)) and extra[0] == max(acked | {-1}) + 1
            acked.update(extra)
        nxt = max(acked | {-1}) + 1
        rounds += 1
    assert rounds >= 10 and len(acked) > 0
