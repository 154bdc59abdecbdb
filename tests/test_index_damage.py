"""Damaged collections: never an answer from damaged bytes, one clear error, verify and repair."""

import os
import sqlite3

import numpy as np
import pytest

from hashlearn.cli import main
from hashlearn.errors import HashlearnError
from hashlearn.index.collection import DB_NAME, Collection, DamagedCollectionError

BITS = 64


def codes_for(ids):
    ids = np.asarray(ids, dtype=np.int64)[:, None]
    bits = ((ids * 2654435761 + np.arange(BITS) * 40503) >> 7) & 1
    return np.packbits(bits.astype(np.uint8), axis=1)


def three_batches(path, n=1000):
    """A collection of three adds of ``n`` codes (three checksummed batches in one segment)."""
    coll = Collection.create(path, BITS)
    for b in range(3):
        ids = np.arange(b * n, (b + 1) * n)
        coll.add(codes_for(ids), ids=ids, labels=[f"l{i}" for i in ids])
    coll.close()
    return path / "seg-000000.codes"


def one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2, argv
    out, err = capsys.readouterr()
    err = err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return out


def test_truncated_segment_is_refused_and_add_does_not_zero_fill(tmp_path, capsys):
    path = tmp_path / "c"
    seg = three_batches(path)
    os.truncate(seg, 1500 * 8)  # half of the codes
    with pytest.raises(DamagedCollectionError, match="seg-000000.codes.*truncated: the file holds 1500 of 3000"):
        Collection.open(path)
    c = str(path)
    np.save(tmp_path / "q.npy", codes_for(np.arange(3)))
    one_line_error(capsys, ["index", "info", c], "truncated")
    one_line_error(capsys, ["search", "--collection", c, "--query-codes", str(tmp_path / "q.npy")], "truncated")
    one_line_error(capsys, ["index", "add", c, "--codes", str(tmp_path / "q.npy")], "truncated")
    one_line_error(capsys, ["index", "remove", c, "--ids", "1"], "truncated")
    one_line_error(capsys, ["index", "compact", c], "truncated")
    assert os.path.getsize(seg) == 1500 * 8  # add wrote nothing (it used to zero-fill the missing rows)
    one_line_error(capsys, ["index", "verify", c], "damaged", "2000 codes affected")
    assert main(["index", "repair", c]) == 0
    out = capsys.readouterr().out
    assert "dropped 2000 codes, 1000 codes remain" in out  # batches 2 and 3 reach past the cut
    coll = Collection.open(path)
    packed, ids = coll.read()
    np.testing.assert_array_equal(ids, np.arange(1000))
    np.testing.assert_array_equal(packed, codes_for(ids))
    assert coll.metadata([5])[5]["label"] == "l5"
    assert coll.verify()["sound"]
    coll.add(codes_for([5000]), ids=[5000])  # writable again
    assert len(coll) == 1001
    coll.close()


def test_deleted_segment_is_refused(tmp_path, capsys):
    path = tmp_path / "c"
    seg = three_batches(path)
    seg.unlink()
    with pytest.raises(DamagedCollectionError, match="seg-000000.codes.*file missing"):
        Collection.open(path)
    np.save(tmp_path / "q.npy", codes_for(np.arange(3)))
    one_line_error(capsys, ["index", "add", str(path), "--codes", str(tmp_path / "q.npy")], "file missing")
    assert not seg.exists()
    coll = Collection.open(path, check=False)
    assert coll.repair()["dropped"] == 3000
    assert len(coll) == 0 and coll.verify()["sound"]
    coll.close()


def test_flipped_byte_is_never_an_answer(tmp_path, capsys):
    path = tmp_path / "c"
    seg = three_batches(path)
    with open(seg, "r+b") as f:  # one bit of code 1234 (batch 2)
        f.seek(1234 * 8 + 3)
        b = f.read(1)
        f.seek(1234 * 8 + 3)
        f.write(bytes([b[0] ^ 0x10]))
    coll = Collection.open(path)  # lengths are fine: opening is cheap
    with pytest.raises(DamagedCollectionError, match="rows 1000-1999: checksum mismatch"):
        coll.read()
    with pytest.raises(DamagedCollectionError, match="checksum mismatch"):
        coll.add(codes_for([9999]), ids=[9999])
    with pytest.raises(DamagedCollectionError, match="repair"):
        coll.compact()
    report = coll.verify()
    assert not report["sound"] and report["affected_codes"] == 1000
    coll.close()
    np.save(tmp_path / "q.npy", codes_for(np.arange(1234, 1235)))
    one_line_error(capsys, ["search", "--collection", str(path), "--query-codes", str(tmp_path / "q.npy")], "checksum")
    one_line_error(capsys, ["index", "info", str(path)], "checksum mismatch")
    out = one_line_error(capsys, ["index", "verify", str(path)], "checksum mismatch", "1000 codes affected")
    assert "damaged: seg-000000.codes rows 1000-1999" in out
    assert main(["index", "repair", str(path)]) == 0
    assert "dropped 1000 codes, 2000 codes remain" in capsys.readouterr().out
    coll = Collection.open(path)
    packed, ids = coll.read()
    np.testing.assert_array_equal(ids, np.r_[0:1000, 2000:3000])
    np.testing.assert_array_equal(packed, codes_for(ids))
    assert coll.metadata([2500])[2500]["label"] == "l2500"
    assert coll.repair()["rewritten"] is False  # sound now: nothing to do
    coll.close()


def test_torn_tail_is_not_damage(tmp_path):
    """Bytes past the committed rows (a killed add) are ignored by every check."""
    path = tmp_path / "c"
    seg = three_batches(path)
    with open(seg, "ab") as f:
        f.write(b"\xff" * 77)
    coll = Collection.open(path)
    assert coll.verify()["sound"]
    assert coll.info()["damage"] == []
    coll.add(codes_for([7777]), ids=[7777])
    packed, ids = coll.read()
    np.testing.assert_array_equal(packed, codes_for(ids))
    coll.close()


def _damage_sqlite(db, how):
    if how == "header":
        with open(db, "r+b") as f:
            f.write(b"this is no sqlite")
    elif how == "page":
        with open(db, "r+b") as f:
            f.seek(4096)
            f.write(np.random.default_rng(0).integers(0, 256, 4096 * 3, dtype=np.uint8).tobytes())
    else:
        os.truncate(db, os.path.getsize(db) // 3)


@pytest.mark.parametrize("how", ["header", "page", "truncate"])
def test_damaged_sqlite_is_one_clear_line(tmp_path, capsys, how):
    path = tmp_path / "c"
    three_batches(path)
    assert not (path / (DB_NAME + "-wal")).exists()  # closed cleanly: everything is in the main file
    _damage_sqlite(path / DB_NAME, how)
    np.save(tmp_path / "q.npy", codes_for(np.arange(3)))
    c = str(path)
    runs = [
        ["index", "info", c],
        ["index", "verify", c],
        ["search", "--collection", c, "--query-codes", str(tmp_path / "q.npy")],
        ["index", "add", c, "--codes", str(tmp_path / "q.npy"), "--ids", str(tmp_path / "ids.npy")],
        ["index", "remove", c, "--ids", "1"],
        ["index", "compact", c],
        ["index", "repair", c],
        ["index", "export", c, "--faiss", str(tmp_path / "x.index")],
    ]
    np.save(tmp_path / "ids.npy", np.arange(10**6, 10**6 + 3))
    for argv in runs:
        rc = main(argv)  # a sqlite3.DatabaseError traceback would escape here and fail the test
        err = capsys.readouterr().err.strip()
        assert rc in (0, 2), argv
        if rc == 2:
            assert len(err.splitlines()) == 1, err
    # whatever a damaged page allowed, verify never calls it sound
    assert main(["index", "verify", c]) == 2
    err = capsys.readouterr().err
    assert "damaged" in err and len(err.strip().splitlines()) == 1


def test_repair_refuses_a_damaged_database(tmp_path):
    path = tmp_path / "c"
    three_batches(path)
    _damage_sqlite(path / DB_NAME, "page")
    try:
        coll = Collection.open(path, check=False)
    except HashlearnError:
        return  # refused at once: fine
    with pytest.raises(HashlearnError, match="damaged"):
        coll.repair()
    coll.close()


def test_items_pointing_past_the_segment_are_damage(tmp_path):
    path = tmp_path / "c"
    three_batches(path)
    db = sqlite3.connect(path / DB_NAME)
    db.execute("UPDATE items SET row = 5000 WHERE id = 7")
    db.commit()
    db.close()
    coll = Collection.open(path)
    with pytest.raises(DamagedCollectionError, match="point at rows no segment holds"):
        coll.read()
    report = coll.verify()
    assert not report["sound"] and report["affected_codes"] == 1
    assert coll.repair()["dropped"] == 1
    packed, ids = coll.read()
    assert len(ids) == 2999 and 7 not in ids
    np.testing.assert_array_equal(packed, codes_for(ids))
    coll.close()
