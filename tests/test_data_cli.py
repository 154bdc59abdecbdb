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
