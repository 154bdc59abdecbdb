"""`hashlearn data ...` through hashlearn.cli.main, as a user would type it."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from hashlearn.cli import main


@pytest.fixture
def flowers(tmp_path: Path) -> Path:
    for rel, color in {"train/rose/1.png": (200, 0, 0), "train/tulip/1.png": (0, 200, 0),
                       "test/rose/2.png": (190, 0, 0)}.items():  # fmt: skip
        (tmp_path / "flowers" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), color).save(tmp_path / "flowers" / rel)
    return tmp_path / "flowers"


def test_list_names_datasets_and_protocols(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "cifar10-mosaic-synthetic" in out and "fashion-mnist" in out and "cifar10-ii" in out
    assert main(["data", "protocols"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("cifar10-1        Query 100/class from all images")


def test_prepare_and_info_print_counts_per_split_and_class(flowers: Path, tmp_path: Path, capsys):
    cache = str(tmp_path / "cache")
    assert main(["data", "prepare", "folder", "--source", str(flowers), "--as", "flowers", "--cache", cache]) == 0
    assert "prepared flowers: 3 images 4x4x3, 2 classes, splits {'train': 2, 'test': 1}" in capsys.readouterr().out
    assert main(["data", "info", "flowers", "--cache", cache, "--verify"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "flowers: 3 images 4x4x3, 2 classes, single-label"
    assert lines[-4:] == [
        "  class      train     test    total",
        "  rose           1        1        2",
        "  tulip          1        0        1",
        "  total          2        1        3",
    ]


def test_missing_source_is_one_line_naming_it(tmp_path: Path, capsys):
    assert main(["data", "prepare", "folder", "--source", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err == f"hashlearn data: error: source {tmp_path / 'nowhere'} for dataset 'folder' does not exist\n"


def test_corrupt_image_fails_or_is_skipped_with_a_count(flowers: Path, tmp_path: Path, capsys):
    (flowers / "train/rose/bad.jpg").write_bytes(b"garbage")
    args = ["data", "prepare", "folder", "--source", str(flowers), "--cache", str(tmp_path / "c")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hashlearn data: error: cannot read image {flowers / 'train/rose/bad.jpg'}: ")
    assert err.count("\n") == 1
    assert main([*args, "--skip-bad"]) == 0
    assert f"skipped 1 unreadable image(s): {flowers / 'train/rose/bad.jpg'}" in capsys.readouterr().out


def test_info_of_an_unprepared_dataset_says_how_to_prepare(tmp_path: Path, capsys):
    assert main(["data", "info", "mnist", "--cache", str(tmp_path)]) == 2
    assert "run: hashlearn data prepare mnist" in capsys.readouterr().err


def test_split_command_writes_a_loadable_split(flowers: Path, tmp_path: Path, capsys):
    from hashlearn.data import Split

    cache = str(tmp_path / "cache")
    main(["data", "prepare", "folder", "--source", str(flowers), "--as", "flowers", "--cache", cache])
    out = tmp_path / "split.json"
    args = ["data", "split", "flowers", "--protocol", "official-split", "--cache", cache, "--out", str(out)]
    assert main(args) == 0
    assert Split.load(out).sizes == {"query": 1, "train": 2, "val": 0, "database": 2}


def one_line(capsys, args, *needles) -> str:
    """Run ``hashlearn args``: exit 2 with one stderr line holding every needle, no traceback."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_flat_folder_without_class_folders_is_one_line(tmp_path: Path, capsys):
    for name in ("a.png", "b.png"):
        (tmp_path / "flat").mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "flat" / name)
    one_line(capsys, ["data", "prepare", "folder", "--source", str(tmp_path / "flat"), "--cache", str(tmp_path / "c")],
             "flat", "a.png", "not inside a class folder")


@pytest.mark.parametrize("as_name", ["../../x", "/tmp/x", ".hidden", "a/b", ""])
def test_as_must_be_a_plain_name(flowers: Path, tmp_path: Path, capsys, as_name: str):
    cache = tmp_path / "c"
    one_line(capsys, ["data", "prepare", "folder", "--source", str(flowers), "--as", as_name, "--cache", str(cache)],
             "--as", repr(as_name), "plain name")
    assert not cache.exists()


def test_bad_cifar_pickles_are_one_line(tmp_path: Path, capsys):
    import pickle

    import numpy as np

    for folder, batch in {"c99": {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 99]},
                          "nolabels": {b"data": np.zeros((2, 3072), np.uint8)}}.items():  # fmt: skip
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    args = ["data", "prepare", "cifar10", "--cache", str(tmp_path / "c"), "--source"]
    one_line(capsys, [*args, str(tmp_path / "c99")], "c99/data_batch_1", "label 99", "0..9")
    one_line(capsys, [*args, str(tmp_path / "nolabels")], "nolabels/data_batch_1", "'labels'")
    one_line(capsys, [*args, str(tmp_path / "c99"), "--mode", "L"], "cifar10", "mode")


def test_read_only_cache_and_split_out_are_one_line(flowers: Path, tmp_path: Path, capsys, make_readonly):
    cache = tmp_path / "cache"
    assert main(["data", "prepare", "folder", "--source", str(flowers), "--as", "flowers", "--cache", str(cache)]) == 0
    capsys.readouterr()
    ro = tmp_path / "ro"
    ro.mkdir()
    make_readonly(ro)
    one_line(capsys, ["data", "prepare", "folder", "--source", str(flowers), "--cache", str(ro)],
             f"cache folder {ro} cannot be written")
    split = ["data", "split", "flowers", "--protocol", "official-split", "--cache", str(cache), "--out"]
    one_line(capsys, [*split, str(ro / "split.json")], "split.json")
    one_line(capsys, [*split, str(tmp_path / "split.txt")], "split.txt", ".json or .npz")
    assert list(ro.iterdir()) == []


def test_bad_files_in_data_commands_are_one_line(flowers: Path, tmp_path: Path, capsys):
    cache = tmp_path / "cache"
    assert main(["data", "prepare", "folder", "--source", str(flowers), "--as", "flowers", "--cache", str(cache)]) == 0
    capsys.readouterr()
    manifest = cache / "flowers" / "manifest.json"
    manifest.write_bytes(b"\xff\xfe not utf-8")
    one_line(capsys, ["data", "info", "flowers", "--cache", str(cache)], "manifest.json", "prepare it again")
    manifest.write_text("[1, 2]")
    one_line(capsys, ["data", "split", "flowers", "--protocol", "per-class", "--cache", str(cache), "--out",
                      str(tmp_path / "s.json")], "manifest.json")
    csv_set = tmp_path / "csvset"
    csv_set.mkdir()
    Image.new("RGB", (4, 4)).save(csv_set / "a.png")
    (csv_set / "labels.csv").write_bytes(b"a.png,caf\xe9\n")  # latin-1, not UTF-8
    one_line(capsys, ["data", "prepare", "csv", "--source", str(csv_set), "--cache", str(cache)], "labels.csv", "UTF-8")
    (tmp_path / "bad.tar.gz").write_bytes(b"not an archive")
    one_line(capsys, ["data", "prepare", "folder", "--source", str(tmp_path / "bad.tar.gz"), "--cache", str(cache)],
             "bad.tar.gz")
    one_line(capsys, ["data", "prepare", "folder", "--source", str(flowers), "--size", "0", "--cache", str(cache)],
             "--size")


def test_a_bomb_is_skipped_and_counted_with_skip_bad(flowers: Path, tmp_path: Path, capsys):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)  # the header is all it takes
    bomb = flowers / "train/rose/bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0")) +
                     chunk(b"IEND", b""))
    args = ["data", "prepare", "folder", "--source", str(flowers), "--cache", str(tmp_path / "c")]
    one_line(capsys, args, str(bomb), "30000x30000")
    assert main([*args, "--skip-bad"]) == 0
    assert f"skipped 1 unreadable image(s): {bomb}" in capsys.readouterr().out


def test_prepare_folder_without_as_is_named_after_its_source_and_says_so(flowers: Path, tmp_path: Path, capsys):
    cache = str(tmp_path / "cache")
    assert main(["data", "prepare", "folder", "--source", str(flowers), "--cache", cache]) == 0
    out = capsys.readouterr().out
    assert out.startswith("prepared flowers: 3 images 4x4x3")
    assert "named 'flowers' after the source; use it as --dataset flowers (choose another name with --as NAME)" in out
    pets = tmp_path / "pets"
    for rel in ("cat/1.png", "dog/1.png"):
        (pets / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (9, 9, 9)).save(pets / rel)
    assert main(["data", "prepare", "folder", "--source", str(pets), "--cache", cache]) == 0
    assert main(["data", "prepare", "folder", "--source", str(flowers), "--cache", cache]) == 0  # same source again
    capsys.readouterr()
    assert main(["data", "list", "--cache", cache]) == 0
    out = capsys.readouterr().out
    assert "  flowers                    folder, 3 images  [official-split]" in out
    assert "  pets                       folder, 2 images  [per-class]" in out
    err = one_line(capsys, ["data", "prepare", "folder", "--source", str(pets), "--as", "flowers", "--cache", cache],
                   "'flowers'", str(flowers), str(pets), "--force")  # fmt: skip
    assert "would replace it" in err
    assert main(["data", "info", "flowers", "--cache", cache]) == 0 and "3 images" in capsys.readouterr().out
    assert main(["data", "prepare", "folder", "--source", str(pets), "--as", "flowers", "--cache", cache,
                 "--force"]) == 0  # fmt: skip
    assert "prepared flowers: 2 images" in capsys.readouterr().out


def test_prepare_stores_a_grey_folder_as_one_channel_and_says_so(tmp_path: Path, capsys):
    for rel, shade in (("a/1.png", 10), ("b/1.png", 20)):
        (tmp_path / "scans" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4), shade).save(tmp_path / "scans" / rel)
    args = ["data", "prepare", "folder", "--source", str(tmp_path / "scans"), "--cache", str(tmp_path / "c")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "prepared scans: 2 images 4x4x1" in out
    assert "every image is single-channel (grey): stored as 1 channel (--mode RGB stores 3)" in out
    assert main([*args, "--mode", "RGB"]) == 0
    out = capsys.readouterr().out
    assert "prepared scans: 2 images 4x4x3" in out and "single-channel" not in out


def test_split_takes_protocol_parameters_with_set(flowers: Path, tmp_path: Path, capsys):
    from hashlearn.data import Split

    cache = str(tmp_path / "cache")
    main(["data", "prepare", "folder", "--source", str(flowers), "--cache", cache])
    out = tmp_path / "split.json"
    base = ["data", "split", "flowers", "--cache", cache, "--out", str(out), "--protocol", "per-class"]
    assert main([*base, "--set", "query_per_class=1", "--set", "val_fraction=0"]) == 0
    split = Split.load(out)
    assert split.params["query_per_class"] == 1 and split.params["val_fraction"] == 0
    assert split.sizes == {"query": 2, "train": 1, "val": 0, "database": 1}
    out.unlink()
    one_line(capsys, [*base, "--set", "query_per_klass=1"], "'query_per_klass'",
             "its parameters are query_per_class, query_fraction, query_split, train_per_class")  # fmt: skip
    one_line(capsys, [*base, "--set", "query_per_class"], "--set 'query_per_class'", "KEY=VALUE")
    one_line(capsys, [*base, "--set", "query_per_class=ten"], "query_per_class must be a whole number", "'ten'")
    assert not out.exists()


def test_split_without_protocol_uses_the_datasets_default(tmp_path: Path, capsys):
    root = tmp_path / "leaves"
    for rel, shade in {"train/oak/1.png": 1, "train/oak/2.png": 2, "train/elm/1.png": 3, "valid/oak/3.png": 4,
                       "valid/elm/3.png": 5, "test/oak/4.png": 6, "test/elm/4.png": 7}.items():  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (shade, 0, 0)).save(root / rel)
    cache = str(tmp_path / "cache")
    assert main(["data", "prepare", "folder", "--source", str(root), "--cache", cache]) == 0
    capsys.readouterr()
    out = tmp_path / "split.json"
    assert main(["data", "split", "leaves", "--cache", cache, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("protocol official-split (the default for leaves; choose another with --protocol)")
    assert "query 2, train 3, val 2, database 5" in printed  # the valid/ folder is the validation split


def test_list_shows_each_datasets_default_protocol(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    datasets = out.split("protocols:")[0].splitlines()[1:]
    lines = {line.split()[0]: line for line in datasets}
    assert lines["cifar10"].endswith("[cifar10-1]") or "[cifar10-1]  [source:" in lines["cifar10"]
    assert "[nus-wide]" in lines["nus-wide"] and "[by content]" in lines["folder"]
    assert "default protocol (train without --protocol): the dataset's own protocol" in out
