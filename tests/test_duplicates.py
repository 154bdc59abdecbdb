"""``hashlearn duplicates``: planted near-duplicate groups, the JSON and HTML reports, the shipped model,
read-only use of the user's folder, the code cache, and one-line errors for bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashlearn.cli import main
from hashlearn.train.model import Hasher

# -- helpers ----------------------------------------------------------------------------------------------------


def folder_state(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) → sha256 of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["duplicates", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


class AverageHash(Hasher):
    """A tiny stand-in model (the average hash of an 8 x 8 grey thumbnail) for fast tests of the plumbing."""

    kind, method, bits, image_size, channels = "stub", "ahash", 64, 8, 3

    def __init__(self):
        self.info, self.fingerprint, self.run_dir, self.calls = {}, "stub-average-hash", None, 0

    def signs(self, images, batch_size=None):
        self.calls += len(images)
        grey = np.asarray(images, dtype=np.float64).mean(-1).reshape(len(images), -1)
        return np.where(grey >= grey.mean(1, keepdims=True), 1, -1).astype(np.int8)


def pattern(kind: int, side: int = 64) -> np.ndarray:
    """Distinct synthetic pictures: stripes of different directions and frequencies."""
    y, x = np.mgrid[0:side, 0:side] / side
    angle, freq = [(0.0, 2), (np.pi / 2, 2), (np.pi / 4, 3), (3 * np.pi / 4, 1), (0.3, 5)][kind]
    wave = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)))
    grey = ((wave + 1) * 127.5).astype(np.uint8)
    return np.stack([grey, 255 - grey, grey // 2], axis=-1)


# -- the real model on real pictures ----------------------------------------------------------------------------

#: tests on the shipped model and real photographs (the module's first run encodes 12 files: ~10 s on an idle CPU)
REAL_MODEL = pytest.mark.slow
PLANTED = [{"astronaut.png", "astronaut_copy.png"}, {"coffee.jpg", "coffee_small.jpg"},
           {"rocket.png", "rocket_q30.jpg"}]
#: the planted copies lie within 7 bits of their originals and the distinct pictures at least 19 bits apart
#: (measured with the shipped model); the tests that count groups use a radius with a margin on both sides
MARGIN_RADIUS = 12
DISTINCT = {"chelsea.jpg", "immunohistochemistry.jpg", "hubble.jpg", "colorwheel.jpg", "camera.jpg"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of real photographs (scikit-image's bundled samples): three planted near-duplicate pairs (an
    exact copy, a copy at half size, a JPEG re-encoding at quality 30), five distinct pictures, one broken file
    and a hidden file."""
    data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    sources = {"astronaut.png": data.astronaut(), "coffee.jpg": data.coffee(), "rocket.png": data.rocket(),
               "chelsea.jpg": data.chelsea(), "immunohistochemistry.jpg": data.immunohistochemistry(),
               "hubble.jpg": data.hubble_deep_field(), "colorwheel.jpg": data.colorwheel(), "camera.jpg": data.camera()}
    for name, array in sources.items():
        img = Image.fromarray(array).convert("RGB")
        img.thumbnail((256, 256))
        img.save(folder / name, quality=92)
    shutil.copy(folder / "astronaut.png", folder / "astronaut_copy.png")
    coffee = Image.open(folder / "coffee.jpg")
    coffee.resize((coffee.width // 2, coffee.height // 2)).save(folder / "coffee_small.jpg", quality=90)
    Image.open(folder / "rocket.png").save(folder / "rocket_q30.jpg", quality=30)
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / ".hidden.jpg").write_bytes((folder / "chelsea.jpg").read_bytes())
    return folder


@pytest.fixture(scope="module")
def first_run(photos, tmp_path_factory):
    """One CLI run with --json and --html (socket connections refused: it must work offline)."""
    out_dir = tmp_path_factory.mktemp("reports")
    before = folder_state(photos)
    with pytest.MonkeyPatch.context() as mp:
        def no_network(*args, **kwargs):
            raise OSError("network disabled in this test")

        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        code = main(["duplicates", str(photos), "--json", "--html", str(out_dir / "report.html"), "--quiet",
                     "--threshold", str(MARGIN_RADIUS)])
    return code, before, out_dir


@REAL_MODEL
def test_finds_the_planted_groups_and_nothing_else(photos, first_run, capsys):
    code, _, _ = first_run
    assert code == 0
    code, out, _ = run_cli(capsys, photos, "--json", "--quiet", "--threshold", str(MARGIN_RADIUS))
    doc = json.loads(out)
    groups = [{f["path"] for f in g["files"]} for g in doc["groups"]]
    assert sorted(map(sorted, groups)) == sorted(map(sorted, PLANTED))
    assert not DISTINCT & set().union(*groups)
    assert doc["images"] == 11  # 8 pictures + 3 copies; broken.jpg skipped, .hidden.jpg never listed
    assert doc["skipped"] == [{"path": "broken.jpg", "reason": doc["skipped"][0]["reason"]}]
    assert "not an image" in doc["skipped"][0]["reason"]


@REAL_MODEL
def test_json_schema(photos, first_run, capsys):
    code, out, _ = run_cli(capsys, photos, "--json", "--quiet", "--threshold", "6")
    doc = json.loads(out)
    assert code == 0
    assert set(doc) == {"folder", "model", "method", "bits", "model_fingerprint", "threshold", "images", "encoded",
                        "cached", "skipped", "subfolders_not_searched", "groups"}
    assert (doc["model"], doc["method"], doc["bits"], doc["threshold"]) == ("default", "itq", 64, 6)
    assert len(doc["model_fingerprint"]) == 64
    for group in doc["groups"]:
        assert set(group) == {"size", "max_distance", "files"}
        assert group["size"] == len(group["files"]) >= 2
        assert [set(f) for f in group["files"]] == [{"path", "distance"}] * group["size"]
        assert group["files"][0]["distance"] == 0
        assert group["max_distance"] == max(f["distance"] for f in group["files"]) <= 6


@REAL_MODEL
def test_second_run_uses_the_cache_and_the_models_radius(photos, first_run, capsys):
    _, out, _ = run_cli(capsys, photos, "--json", "--quiet")
    doc = json.loads(out)
    assert (doc["encoded"], doc["cached"]) == (0, 11)
    assert doc["threshold"] == 8  # the shipped model's duplicate_radius (its run.json)
    found = {frozenset(f["path"] for f in g["files"]) for g in doc["groups"]}
    assert found <= {frozenset(p) for p in PLANTED} and len(found) >= 2  # no distinct picture joins a group


@REAL_MODEL
def test_html_report_is_self_contained(first_run):
    _, _, out_dir = first_run
    page = (out_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<h2>Group ") == 3
    assert page.count('src="data:image/jpeg;base64,') == 6
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "broken.jpg" in page  # the skipped file is named in the summary


@REAL_MODEL
def test_the_users_files_are_unchanged(photos, first_run, capsys):
    _, before, _ = first_run
    run_cli(capsys, photos, "--quiet", "--html", photos.parent / "again.html")
    assert folder_state(photos) == before  # same names, same bytes: nothing written, moved or deleted


@REAL_MODEL
def test_text_output_lists_each_group(photos, first_run, capsys):
    code, out, err = run_cli(capsys, photos, "-t", str(MARGIN_RADIUS))
    assert code == 0
    assert out.splitlines()[0] == f"3 groups of near-duplicates (6 of 11 images) within {MARGIN_RADIUS} bits:"
    assert "  astronaut_copy.png  (distance 0)" in out.splitlines()
    assert "skipped 1 unreadable file:" in err and "broken.jpg" in err


# -- the shipped model ------------------------------------------------------------------------------------------

def test_shipped_model_is_arrays_and_json_with_the_documented_bits():
    from hashlearn.models import CARD_FILE, load_model, model_dir, model_names

    folder = model_dir("default")
    assert "default" in model_names()
    with np.load(folder / "model.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    assert meta["method"] == "itq" and meta["params"]["bits"] == 64
    assert all(a.dtype.kind in "iuf" for a in arrays.values())
    assert arrays["rotation_"].shape == (64, 64) and arrays["components_"].shape == (1280, 64)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000
    hasher = load_model("default")
    assert (hasher.bits, hasher.method, hasher.image_size) == (64, "itq", 96)
    card = (folder / CARD_FILE).read_text()
    assert "64 bits" in card and "CIFAR-10 *training* set" in card and "brain-MRI *Training*" in card
    info = json.loads((folder / "run.json").read_text())
    assert info["trained_on"]["labels_used"] is False


def test_package_data_includes_the_models():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["hashlearn"]
    shipped = [p.relative_to(root / "src" / "hashlearn").as_posix()
               for p in (root / "src" / "hashlearn" / "models" / "default").iterdir()]
    import fnmatch

    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in shipped), (shipped, patterns)


# -- grouping, on hand-made codes -------------------------------------------------------------------------------

def test_groups_are_connected_components_of_one_range_search(monkeypatch):
    from hashlearn.duplicates.find import group_codes
    from hashlearn.index import HammingIndex

    calls = []
    original = HammingIndex.range_search

    def spy(self, queries, radius):
        calls.append((len(queries), radius))
        return original(self, queries, radius)

    monkeypatch.setattr(HammingIndex, "range_search", spy)
    bits = np.zeros((6, 16), dtype=np.uint8)
    bits[1, :2] = 1  # 2 from row 0
    bits[2, :4] = 1  # 2 from row 1, 4 from row 0: joined through row 1 (a chain)
    bits[3, 8:] = 1  # 8 from everything above
    bits[4, 8:] = 1
    bits[4, 0] = 1  # 1 from row 3
    bits[5] = 1  # 16 from row 0, far from all
    packed = np.packbits(bits, axis=1)
    assert group_codes(packed, 16, 2) == [[0, 1, 2], [3, 4]]
    assert calls == [(6, 2)]  # one range search of all codes, no pairwise loop
    assert group_codes(packed, 16, 1) == [[3, 4]]
    assert group_codes(packed, 16, 0) == []


def make_folder(folder: Path) -> Path:
    folder.mkdir()
    for k in range(5):
        Image.fromarray(pattern(k)).save(folder / f"p{k}.png")
    Image.fromarray(pattern(0)).resize((32, 32)).save(folder / "p0_small.png")
    return folder


def test_stub_model_groups_resized_copy_and_cache_sees_a_changed_file(tmp_path):
    from hashlearn.duplicates import find_duplicates

    folder = make_folder(tmp_path / "pics")
    hasher = AverageHash()
    report = find_duplicates(folder, threshold=4, hasher=hasher)
    assert [[report.files[m] for m in g.members] for g in report.groups] == [["p0.png", "p0_small.png"]]
    assert (report.encoded, report.cached, hasher.calls) == (6, 0, 6)
    Image.fromarray(pattern(3)).save(folder / "p4.png")  # p4 now a copy of p3 (new bytes, new size or mtime)
    again = find_duplicates(folder, threshold=4, hasher=hasher)
    assert (again.encoded, again.cached, hasher.calls) == (1, 5, 7)
    assert [[again.files[m] for m in g.members] for g in again.groups] == [["p0.png", "p0_small.png"],
                                                                            ["p3.png", "p4.png"]]


def test_subfolders_only_with_recursive(tmp_path):
    from hashlearn.duplicates import find_duplicates

    folder = make_folder(tmp_path / "pics")
    (folder / "sub").mkdir()
    shutil.copy(folder / "p2.png", folder / "sub" / "p2_copy.png")
    flat = find_duplicates(folder, threshold=0, hasher=AverageHash(), cache=False)
    assert flat.subfolders_not_searched == 1 and "sub/p2_copy.png" not in flat.files
    deep = find_duplicates(folder, threshold=0, hasher=AverageHash(), cache=False, recursive=True)
    assert [[deep.files[m] for m in g.members] for g in deep.groups][-1] == ["p2.png", "sub/p2_copy.png"]


def test_image_over_the_pixel_limit_is_skipped_and_named(tmp_path, monkeypatch):
    from hashlearn.duplicates import find_duplicates

    folder = make_folder(tmp_path / "pics")
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(folder / "huge.png")
    monkeypatch.setenv("HASHLEARN_MAX_IMAGE_PIXELS", str(64 * 64))
    report = find_duplicates(folder, threshold=4, hasher=AverageHash(), cache=False)
    assert [p for p, _ in report.skipped] == ["huge.png"]
    assert "100x100" in report.skipped[0][1] and "limit" in report.skipped[0][1]
    assert "huge.png" not in report.files


# -- bad input: one line, exit 2 --------------------------------------------------------------------------------

@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("empty", "no image files"),
    ("file", "is not a folder"),
    ("unreadable", "none of its 1 image files could be read"),
    ("negative", "--threshold must be 0 or more"),
    ("too-large", "--threshold 65 is outside 0..64"),
    ("html", "must end in .html"),
    ("model", "no shipped model named 'nosuch'"),
    ("run", "run folder not found"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case, expected):
    pics = make_folder(tmp_path / "pics")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"garbage")
    args = {"missing": [tmp_path / "nope"], "empty": [empty], "file": [pics / "p0.png"], "unreadable": [bad],
            "negative": [pics, "--threshold", "-1"], "too-large": [pics, "--threshold", "65"],
            "html": [pics, "--html", tmp_path / "report.txt"], "model": [pics, "--model", "nosuch"],
            "run": [pics, "--run", tmp_path / "no-run"]}[case]
    before = folder_state(tmp_path)
    code, out, err = run_cli(capsys, *args, "--quiet")
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert folder_state(tmp_path) == before
