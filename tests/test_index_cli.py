"""``hashlearn index ...`` and ``hashlearn search`` through hashlearn.cli.main."""

import json

import numpy as np
import pytest

from hashlearn.cli import main
from hashlearn.codes import save_codes


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
    assert out[0]["results"][0] == {"rank": 1, "id": 100, "distance": 0, "path": "img0.jpg", "label": None}
    assert main(["search", "--collection", coll, "--query-codes", str(tmp / "q.npy"), "--radius", "0"]) == 0
    text = capsys.readouterr().out
    assert "id=100  distance=0  path=img0.jpg" in text and "id=101  distance=0" in text
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
        (["index", "add", coll, "--codes", str(tmp / "short.npy")], "matches neither"),
        (["index", "add", coll, "--codes", str(tmp / "q.npy"), "--ids", str(tmp / "dup.npy")], "duplicate"),
        (["index", "add", coll, "--codes", str(tmp / "q.npy"), "--ids", str(tmp / "ids.npy")], "ids for 2 codes"),
        (["index", "info", str(tmp / "missing")], "no hashlearn collection"),
        (["search", "--collection", coll, "--query-codes", str(tmp / "short.npy")], "matches neither"),
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


def test_build_from_a_codes_file_with_image_paths_as_ids(tmp_path, capsys):
    """`hashlearn encode --images` writes string ids (image paths): the collection numbers
    the codes itself and keeps those strings as paths, which search reports."""
    codes = np.random.default_rng(1).integers(0, 2, (5, 16))
    names = np.array([f"photos/{i}.jpg" for i in range(5)])
    save_codes(tmp_path / "photos.npz", codes, bits=16, ids=names)
    np.save(tmp_path / "q.npy", codes[3:4])
    coll = str(tmp_path / "photos.collection")
    assert main(["index", "build", "--codes", str(tmp_path / "photos.npz"), "--out", coll]) == 0
    capsys.readouterr()
    assert main(["search", "--collection", coll, "--query-codes", str(tmp_path / "q.npy"), "-k", "1", "--json"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)["results"]
    assert hit["distance"] == 0 and hit["path"] == "photos/3.jpg" and hit["id"] == 3
