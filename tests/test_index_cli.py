"""``hashlearn index ...`` and ``hashlearn search`` through hashlearn.cli.main."""

import json
from pathlib import Path

import numpy as np
import pytest

from hashlearn.cli import main
from hashlearn.codes import save_codes
from hashlearn.index.collection import Collection


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2, (50, 32)).astype(np.int8)
    np.save(tmp_path / "codes.npy", codes)
    np.save(tmp_path / "ids.npy", np.arange(100, 150))
    (tmp_path / "paths.txt").write_text("\n".join(f"img{i}.jpg" for i in range(50)))
    np.save(tmp_path / "q.npy", codes[:2])
    return tmp_path, codes


def test_build_info_search_add_remove_export(files, capsys):
    tmp, codes = files
    coll = str(tmp / "coll")
    assert (
        main(
            [
                "index",
                "build",
                "--codes",
                str(tmp / "codes.npy"),
                "--ids",
                str(tmp / "ids.npy"),
                "--paths",
                str(tmp / "paths.txt"),
                "--out",
                coll,
            ]
        )
        == 0
    )
    assert main(["index", "info", coll, "--json"]) == 0
    info = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert info["count"] == 50 and info["bits"] == 32
    assert main(["search", "--collection", coll, "--query-codes", str(tmp / "q.npy"), "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # relative paths are recorded against the folder of --paths, and shown as they open from here
    img0 = str(tmp / "img0.jpg")
    assert out[0]["results"][0] == {"rank": 1, "id": 100, "distance": 0, "path": img0, "label": None}
    assert main(["search", "--collection", coll, "--query-codes", str(tmp / "q.npy"), "--radius", "0"]) == 0
    text = capsys.readouterr().out
    assert f"id=100  distance=0  path={img0}" in text and "id=101  distance=0" in text
    np.save(tmp / "more.npy", codes[:3])
    np.save(tmp / "more_ids.npy", np.array([7, 8, 9]))
    assert main(["index", "add", coll, "--codes", str(tmp / "more.npy"), "--ids", str(tmp / "more_ids.npy")]) == 0
    assert main(["index", "remove", coll, "--ids", "7,100"]) == 0
    assert "now 51" in capsys.readouterr().out
    assert main(["index", "export", coll, "--faiss", str(tmp / "x.index")]) == 0
    from hashlearn.index.adapters import read_faiss

    assert len(read_faiss(tmp / "x.index")) == 51


def test_search_a_codes_file(files, capsys):
    tmp, codes = files
    save_codes(tmp / "db.npz", codes, 32, ids=np.arange(50) * 2)
    assert main(["search", "--codes", str(tmp / "db.npz"), "--query-codes", str(tmp / "q.npy"), "-k", "60"]) == 0
    out = capsys.readouterr().out
    assert "query 0:" in out and "id=0  distance=0" in out and "  50  id=" in out


def test_bad_input_is_one_line_exit_2(files, capsys):
    tmp, codes = files
    coll = str(tmp / "coll")
    assert main(["index", "build", "--codes", str(tmp / "codes.npy"), "--out", coll]) == 0
    capsys.readouterr()
    np.save(tmp / "bad.npy", np.full((2, 32), 0.5))
    np.save(tmp / "short.npy", np.zeros((2, 31)))
    np.save(tmp / "dup.npy", np.array([1, 1]))
    cases = [
        (["index", "add", coll, "--codes", str(tmp / "bad.npy")], "binary"),
        (["index", "add", coll, "--codes", str(tmp / "short.npy")], "width 31"),
        (["index", "add", coll, "--codes", str(tmp / "q.npy"), "--ids", str(tmp / "dup.npy")], "duplicate"),
        (["index", "add", coll, "--codes", str(tmp / "q.npy"), "--ids", str(tmp / "ids.npy")], "ids for 2 codes"),
        (["index", "info", str(tmp / "missing")], "no hashlearn collection"),
        (["search", "--collection", coll, "--query-codes", str(tmp / "short.npy")], "width 31"),
        (["search", "--collection", coll, "--image", "x.jpg"], "--run"),
        (["index", "build", "--codes", str(tmp / "nope.npy"), "--out", str(tmp / "c2")], "not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    assert main(["index", "info", coll, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 50  # unchanged


def test_image_query_without_the_encoder_says_so(files, capsys, monkeypatch):
    import hashlearn.train as train

    tmp, _ = files
    monkeypatch.delattr(train, "encode_images", raising=False)
    coll = str(tmp / "coll")
    main(["index", "build", "--codes", str(tmp / "codes.npy"), "--out", coll])
    capsys.readouterr()
    rc = main(["search", "--collection", coll, "--image", "x.jpg", "--run", str(tmp)])
    err = capsys.readouterr().err
    if rc == 2 and "encode_images" in err:
        return
    assert rc == 2  # encode_images exists: it reports its own error (no run there)


def write_images(folder, n, size=8):
    """``n`` small PNG files ``folder/<i>.png`` (and ``folder/sub/<i>.png`` for odd ``i``): relative names."""
    from PIL import Image

    names = []
    for i in range(n):
        name = f"sub/{i}.png" if i % 2 else f"{i}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size, size, 3), 40 * i, dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def test_build_from_a_codes_file_with_image_paths_as_ids(tmp_path, capsys, monkeypatch):
    """`hashlearn encode --images my_photos` writes string ids (paths relative to my_photos): the
    collection numbers the codes itself, keeps the strings as paths and records the folder they are
    relative to (--root), so that search shows paths that open from wherever it runs."""
    names = write_images(tmp_path / "my_photos", 5)
    codes = np.random.default_rng(1).integers(0, 2, (5, 16))
    save_codes(tmp_path / "photos.npz", codes, bits=16, ids=np.array(names))
    np.save(tmp_path / "q.npy", codes[3:4])
    monkeypatch.chdir(tmp_path)
    # without --root: neither the codes file's folder nor the current one holds them; it says so
    assert main(["index", "build", "--codes", "photos.npz", "--out", "guess.collection"]) == 0
    printed = capsys.readouterr()
    assert "5 of the first 5 relative image paths are not found" in printed.err and "--root" in printed.err
    assert main(["index", "build", "--codes", "photos.npz", "--root", "my_photos", "--out", "photos.collection"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and f"image paths relative to {tmp_path / 'my_photos'}" in printed.out
    assert main(["search", "--collection", "photos.collection", "--query-codes", "q.npy", "-k", "1", "--json"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)["results"]
    assert hit["distance"] == 0 and hit["id"] == 3 and hit["path"] == "my_photos/sub/3.png"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    coll, q = str(tmp_path / "photos.collection"), str(tmp_path / "q.npy")
    assert main(["search", "--collection", coll, "--query-codes", q, "-k", "1", "--json"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)["results"]
    assert hit["path"] == str(tmp_path / "my_photos/sub/3.png") and (elsewhere / hit["path"]).is_file()
    # the default finds the folder of --paths when the files are there, and index add stores paths that
    # are relative to another folder as absolute ones
    (tmp_path / "my_photos" / "list.txt").write_text("\n".join(names))
    monkeypatch.chdir(tmp_path)
    assert main(["index", "build", "--codes", "photos.npz", "--paths", "my_photos/list.txt", "--out", "c2"]) == 0
    assert f"relative to {tmp_path / 'my_photos'}" in capsys.readouterr().out
    more = write_images(tmp_path / "more", 2)
    (tmp_path / "more.txt").write_text("\n".join(f"more/{name}" for name in more))
    np.save(tmp_path / "more.npy", codes[:2])
    assert main(["index", "add", "c2", "--codes", "more.npy", "--paths", "more.txt"]) == 0
    with Collection.open(tmp_path / "c2") as c:
        meta = c.metadata([0, 5, 6])
        assert c.root == str(tmp_path / "my_photos") and meta[0]["path"] == "0.png"
        assert meta[6]["path"] == str(tmp_path / "more/sub/1.png")
        assert all(Path(c.resolve_path(m["path"])).is_file() for m in meta.values())


# -- index build never deletes what it did not create ------------------------------------------


def run_one_line(capsys, argv, *fragments):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_a_failed_build_keeps_the_out_folder_and_its_files(files, capsys, monkeypatch):
    tmp, _ = files
    (tmp / "labels.txt").write_text("\n".join(["x"] * 49))  # 49 labels for 50 codes
    np.save(tmp / "dup.npy", np.zeros(50, dtype=np.int64))
    proj = tmp / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("keep")
    codes = str(tmp / "codes.npy")
    run_one_line(capsys, ["index", "build", "--codes", codes, "--labels", str(tmp / "labels.txt"), "--out", str(proj)])
    run_one_line(capsys, ["index", "build", "--codes", codes, "--ids", str(tmp / "dup.npy"), "--out", str(proj)])
    assert (proj / "notes.txt").read_text() == "keep" and len(list(proj.iterdir())) == 1
    monkeypatch.chdir(proj)
    run_one_line(capsys, ["index", "build", "--codes", codes, "--out", "."], "not empty")
    assert (proj / "notes.txt").read_text() == "keep"
    # into a new folder: a failure leaves nothing behind, not even a temporary folder
    before = sorted(p.name for p in tmp.iterdir())
    for extra in (["--labels", str(tmp / "labels.txt")], ["--ids", str(tmp / "dup.npy")]):
        run_one_line(capsys, ["index", "build", "--codes", codes, *extra, "--out", str(tmp / "new" / "deep")])
        assert sorted(p.name for p in tmp.iterdir()) == before
    # an existing collection is refused, and kept
    coll = str(tmp / "coll")
    assert main(["index", "build", "--codes", codes, "--out", coll]) == 0
    run_one_line(capsys, ["index", "build", "--codes", codes, "--out", coll], "a collection already exists")
    assert main(["index", "info", coll, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["count"] == 50


def test_build_into_an_empty_folder_and_not_into_the_current_one(files, capsys, monkeypatch):
    tmp, _ = files
    (tmp / "empty").mkdir()
    assert main(["index", "build", "--codes", str(tmp / "codes.npy"), "--out", str(tmp / "empty")]) == 0
    assert (tmp / "empty" / "collection.sqlite").exists()
    (tmp / "here").mkdir()
    monkeypatch.chdir(tmp / "here")
    run_one_line(capsys, ["index", "build", "--codes", str(tmp / "codes.npy"), "--out", "."], "current folder")
    assert main(["index", "build", "--codes", str(tmp / "codes.npy"), "--out", "sub"]) == 0
    assert not [p for p in (tmp / "here").iterdir() if p.name.startswith(".")]


def test_a_dead_builds_temporary_folder_is_removed_and_nothing_else(files, capsys):
    import subprocess
    import sys

    tmp, _ = files
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp / f".out.building-{dead.pid}"  # what a build killed by kill -9 leaves
        stale.mkdir()
        (stale / ".hashlearn-building").write_text(f"{dead.pid}\n")
        (stale / "collection.sqlite").write_bytes(b"partial")
        (stale / "seg-000000.codes").write_bytes(b"partial")
        running = tmp / f".out.building-{alive.pid}"  # a build in progress
        running.mkdir()
        (running / ".hashlearn-building").write_text(f"{alive.pid}\n")
        foreign = tmp / ".out.building-999999999"  # that name, no such process, but not provably a build's
        foreign.mkdir()
        (foreign / "thesis.tex").write_text("mine")
        unwritten = tmp / ".out.building-999999998"  # killed while writing its marker
        unwritten.mkdir()
        (unwritten / ".hashlearn-building").write_text("")
        other = tmp / f".other.building-{dead.pid}"  # another collection's name
        other.mkdir()
        (other / ".hashlearn-building").write_text(f"{dead.pid}\n")
        assert main(["index", "build", "--codes", str(tmp / "codes.npy"), "--out", str(tmp / "out")]) == 0
        assert not stale.exists() and not unwritten.exists()
        assert running.exists() and (foreign / "thesis.tex").exists() and other.exists()
        assert not (tmp / "out" / ".hashlearn-building").exists()
    finally:
        alive.kill()
        alive.wait()


# -- search and index: every bad file is one line ---------------------------------------------


def test_search_takes_npz_query_codes_as_train_and_encode_write_them(files, capsys):
    tmp, codes = files
    coll = str(tmp / "coll")
    assert main(["index", "build", "--codes", str(tmp / "codes.npy"), "--out", coll]) == 0
    save_codes(tmp / "q.npz", codes[5:7], 32, ids=np.array(["a.jpg", "b.jpg"]))
    capsys.readouterr()
    assert main(["search", "--collection", coll, "--query-codes", str(tmp / "q.npz"), "-k", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["results"][0]["id"] for r in out] == [5, 6]
    save_codes(tmp / "db.npz", codes, 32)
    assert main(["search", "--codes", str(tmp / "db.npz"), "--query-codes", str(tmp / "q.npz"), "-k", "1"]) == 0
    assert "id=5  distance=0" in capsys.readouterr().out


def test_search_k_larger_than_the_database_returns_all_of_it(files, capsys):
    tmp, codes = files
    save_codes(tmp / "db.npz", codes, 32)
    assert main(["search", "--codes", str(tmp / "db.npz"), "--query-codes", str(tmp / "q.npy"), "-k", "1000"]) == 0
    out = capsys.readouterr().out
    assert "  50  id=" in out and "  51  id=" not in out
    # past 2^31-1 it is a typo, not a request
    huge = ["-k", "100000000000"]
    assert main(["search", "--codes", str(tmp / "db.npz"), "--query-codes", str(tmp / "q.npy"), *huge]) == 2
    assert "-k must be between 1 and 2,147,483,647" in capsys.readouterr().err


def test_bad_files_are_one_line_exit_2(files, capsys):
    tmp, codes = files
    coll = str(tmp / "coll")
    assert main(["index", "build", "--codes", str(tmp / "codes.npy"), "--out", coll]) == 0
    save_codes(tmp / "db.npz", codes, 32)
    save_codes(tmp / "q16.npz", codes[:2, :16], 16)
    np.save(tmp / "empty.npy", np.zeros((0, 32), dtype=np.int8))
    np.save(tmp / "three.npy", np.zeros((2, 2, 32), dtype=np.int8))
    np.save(tmp / "strings.npy", np.array([["a"] * 32]))
    np.save(tmp / "complex.npy", np.zeros((2, 32), dtype=np.complex64))
    np.save(tmp / "ids2d.npy", np.zeros((2, 2), dtype=np.int64))
    np.save(tmp / "fids.npy", np.array([0.5, 1.5]))
    np.save(tmp / "two.npy", codes[:2])
    (tmp / "latin1.txt").write_bytes(b"caf\xe9\nb\n")
    (tmp / "text.npy").write_text("not an array")
    (tmp / "broken.npz").write_bytes(b"PK\x03\x04 broken zip")
    (tmp / "adir").mkdir()
    q, db, two = str(tmp / "q.npy"), str(tmp / "db.npz"), str(tmp / "two.npy")
    cases = [
        (["search", "--codes", str(tmp / "codes.npy"), "--query-codes", q], "not a hashlearn codes file"),
        (["search", "--codes", db, "--query-codes", str(tmp / "empty.npy")], "holds no codes"),
        (["search", "--codes", db, "--query-codes", str(tmp / "q16.npz")], "16-bit"),
        (["search", "--collection", coll, "--query-codes", str(tmp / "q16.npz")], "16-bit"),
        (["search", "--codes", db, "--query-codes", str(tmp / "three.npy")], "2-D"),
        (["search", "--codes", db, "--query-codes", str(tmp / "strings.npy")], "dtype"),
        (["search", "--codes", db, "--query-codes", str(tmp / "complex.npy")], "dtype"),
        (["search", "--codes", db, "--query-codes", str(tmp / "text.npy")], "text.npy"),
        (["search", "--codes", db, "--query-codes", str(tmp / "broken.npz")], "broken.npz"),
        (["search", "--codes", db, "--query-codes", str(tmp / "adir")], "folder"),
        (["search", "--codes", str(tmp / "adir"), "--query-codes", q], "folder"),
        (["search", "--codes", str(tmp / "broken.npz"), "--query-codes", q], "broken.npz"),
        (["search", "--codes", str(tmp / "missing.npz"), "--query-codes", q], "not found"),
        (["search", "--codes", db, "--query-codes", q, "--radius", "-1"], "radius"),
        (["index", "add", coll, "--codes", two, "--labels", str(tmp / "latin1.txt")], "not UTF-8"),
        (["index", "add", coll, "--codes", two, "--paths", str(tmp / "adir")], "folder"),
        (["index", "add", coll, "--codes", two, "--paths", str(tmp / "paths.txt")], "50 values for 2 codes"),
        (["index", "add", coll, "--codes", two, "--ids", str(tmp / "ids2d.npy")], "1-D"),
        (["index", "add", coll, "--codes", two, "--ids", str(tmp / "fids.npy")], "integers"),
        (["index", "add", coll, "--codes", two, "--ids", db], ".npz"),
        (["index", "add", coll, "--codes", two, "--ids", str(tmp / "text.npy")], "text.npy"),
        (["index", "add", coll, "--codes", str(tmp / "q16.npz")], "16-bit"),
        (["index", "add", coll, "--codes", str(tmp / "three.npy")], "2-D"),
        (["index", "add", coll, "--codes", str(tmp / "paths.txt")], "neither"),
        (["index", "add", str(tmp / "codes.npy"), "--codes", two], "not a hashlearn collection"),
        (["index", "build", "--codes", str(tmp / "three.npy"), "--out", str(tmp / "x")], "2-D"),
        (["index", "build", "--codes", str(tmp / "strings.npy"), "--out", str(tmp / "x")], "dtype"),
        (["index", "build", "--codes", str(tmp / "complex.npy"), "--out", str(tmp / "x")], "dtype"),
        (["index", "build", "--codes", db, "--bits", "16", "--out", str(tmp / "x")], "--bits 16"),
        (["index", "build", "--codes", db, "--out", str(tmp / "paths.txt")], "not a folder"),
        (["index", "remove", coll, "--ids", "99999999999999999999999"], "out of range"),
        (["index", "remove", coll, "--ids", "-4"], "out of range"),
        (["index", "remove", coll, "--ids", "1,x"], "comma-separated"),
    ]
    for argv, message in cases:
        run_one_line(capsys, argv, message)
    assert not (tmp / "x").exists()
    assert main(["index", "verify", coll]) == 0
    assert "sound (50 codes" in capsys.readouterr().out


def test_the_format_of_a_npy_comes_from_dtype_shape_and_bits_never_values(tmp_path, capsys):
    """Packed 64-bit codes whose bytes happen to be all 0/1 were read as 8-bit unpacked codes."""
    packed = np.random.default_rng(3).integers(0, 2, (20, 8)).astype(np.uint8)  # packed bytes, all 0/1
    np.save(tmp_path / "packed.npy", packed)
    assert main(["index", "build", "--codes", str(tmp_path / "packed.npy"), "--out", str(tmp_path / "a")]) == 0
    assert "of 64 bits" in capsys.readouterr().out
    # the same array with --bits 8 (its width): one 0/1 value per bit
    assert (
        main(["index", "build", "--codes", str(tmp_path / "packed.npy"), "--bits", "8", "--out", str(tmp_path / "b")])
        == 0
    )
    assert "of 8 bits" in capsys.readouterr().out
    # bool / int8: one value per bit; --bits must then equal the width
    np.save(tmp_path / "pm1.npy", np.where(packed > 0, 1, -1).astype(np.int8))
    assert main(["index", "build", "--codes", str(tmp_path / "pm1.npy"), "--out", str(tmp_path / "c")]) == 0
    assert "of 8 bits" in capsys.readouterr().out
    run_one_line(
        capsys, ["index", "build", "--codes", str(tmp_path / "pm1.npy"), "--bits", "64", "--out", str(tmp_path / "d")]
    )
    np.save(tmp_path / "wide.npy", np.zeros((2, 200), dtype=np.uint8))
    run_one_line(
        capsys, ["index", "build", "--codes", str(tmp_path / "wide.npy"), "--out", str(tmp_path / "e")], "--bits"
    )
    with Collection.open(tmp_path / "a") as coll:
        np.testing.assert_array_equal(coll.read()[0], packed)


def test_info_verify_compact_repair_on_a_sound_collection(files, capsys):
    tmp, _ = files
    coll = str(tmp / "coll")
    assert main(["index", "build", "--codes", str(tmp / "codes.npy"), "--out", coll]) == 0
    assert main(["index", "remove", coll, "--ids", "1,2,3"]) == 0
    assert main(["index", "compact", coll]) == 0
    assert "compacted" in capsys.readouterr().out
    assert main(["index", "repair", coll]) == 0
    assert "no damage found" in capsys.readouterr().out
    assert main(["index", "verify", coll, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sound"] and report["codes"] == 47
    assert main(["index", "info", coll, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 47 and info["removed_rows"] == 0 and info["damage"] == []


def test_build_uses_the_image_root_recorded_in_the_codes_file(tmp_path, capsys, monkeypatch):
    """`encode --images DIR` records DIR in the codes file: `index build` needs no --root then."""
    names = write_images(tmp_path / "my_photos", 4)
    codes = np.random.default_rng(2).integers(0, 2, (4, 16))
    save_codes(tmp_path / "photos.npz", codes, bits=16, ids=np.array(names),
               meta={"image_root": str(tmp_path / "my_photos")})
    monkeypatch.chdir(tmp_path)
    assert main(["index", "build", "--codes", "photos.npz", "--out", "c"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and f"image paths relative to {tmp_path / 'my_photos'}" in printed.out
