"""The ``train``, ``encode`` and ``methods`` commands end to end on scikit-learn's digits."""

import json

import numpy as np
import pytest

from hashlearn.cli import main
from hashlearn.codes import load_codes


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    import os

    old = os.environ.get("HASHLEARN_CACHE")
    os.environ["HASHLEARN_CACHE"] = str(root / "cache")
    out = root / "run"
    rc = main(["train", "--method", "dmsh", "--dataset", "digits", "--protocol", "per-class",
               "--set", "protocol_args={query_per_class: 10, train_per_class: 30}", "--bits", "8,16",
               "--epochs", "1", "--set", "backbone_args={width: 4}", "--set", "method_args.mid_channels=8",
               "--out", str(out), "--quiet", "--seed", "3"])
    yield rc, out, root
    if old is None:
        os.environ.pop("HASHLEARN_CACHE", None)
    else:
        os.environ["HASHLEARN_CACHE"] = old


def test_train_writes_a_run_per_code_length(digits_run, capsys):
    from conftest import reevaluated_map
    from hashlearn.train.run import load_data

    rc, out, _ = digits_run
    assert rc == 0
    for bits in (8, 16):
        metrics = json.loads((out / f"{bits}bits/metrics.json").read_text())
        assert metrics["bits"] == bits and metrics["seed"] == 3 and metrics["protocol"] == "per-class"
        assert metrics["sizes"]["query"] == 100 and metrics["n_db"] == metrics["sizes"]["database"]
        assert abs(metrics["mAP@all"] - reevaluated_map(out / f"{bits}bits", load_data("digits"))) < 1e-9
    assert "| dmsh | digits | 16 |" in (out / "summary.md").read_text()


def test_encode_dataset_and_image_folder_agree(digits_run, tmp_path):
    _, out, _ = digits_run
    run = out / "16bits"
    assert main(["encode", "--run", str(run), "--dataset", "digits", "--out", str(tmp_path / "all.npz")]) == 0
    codes = load_codes(tmp_path / "all.npz")
    assert codes.packed.shape == (1797, 2) and codes.bits == 16
    db = load_codes(run / "database_codes.npz")
    pos = {i: n for n, i in enumerate(codes.ids)}
    assert np.array_equal(codes.packed[[pos[i] for i in db.ids]], db.packed)  # same codes as the run's

    from PIL import Image

    from hashlearn.data import load_dataset
    from hashlearn.train import encode_images

    ds = load_dataset("digits")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(ds.images[i, :, :, 0]).save(folder / f"{i}.png")
    assert main(["encode", "--run", str(run), "--images", str(folder), "--out", str(tmp_path / "f.npz")]) == 0
    f = load_codes(tmp_path / "f.npz")
    assert list(f.ids) == [f"{i}.png" for i in range(5)]
    assert np.array_equal(f.packed, codes.packed[[pos[ds.ids[i]] for i in range(5)]])
    packed, bits = encode_images(run, [folder / "0.png"])
    assert bits == 16 and np.array_equal(packed, f.packed[:1])


def test_encode_errors_are_one_line(digits_run, tmp_path, capsys):
    _, out, _ = digits_run
    assert main(["encode", "--run", str(out), "--dataset", "digits", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a hashlearn run folder" in err and "16bits" in err and "\n" not in err


def test_shallow_method_goes_through_train(digits_run, tmp_path):
    out = tmp_path / "itq"
    assert main(["train", "--method", "itq", "--dataset", "digits", "--protocol", "per-class",
                 "--set", "protocol_args={query_per_class: 10, train_per_class: 30}", "--bits", "8",
                 "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "8bits/metrics.json").read_text())
    assert metrics["kind"] == "shallow" and metrics["features"] == "pixels" and metrics["mAP@all"] > 0.2
    assert load_codes(out / "8bits/query_codes.npz").packed.shape == (100, 1)


def test_methods_lists_deep_and_shallow_with_papers(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "deep methods:" in text and "shallow methods:" in text
    for name, paper in (("dmsh", "Redaoui"), ("dpsh", "IJCAI 2016"), ("itq", "Gong")):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(name + " "))
        assert paper in line


def test_bad_override_is_a_one_line_error(capsys):
    assert main(["train", "--set", "optim.nope=1", "--quiet"]) == 2
    assert "unknown setting 'optim.nope'" in capsys.readouterr().err


def test_search_by_image_finds_the_image_itself(digits_run, tmp_path, capsys):
    """`hashlearn search --run RUN --codes DB --image q.png`: the model encodes the image and
    the database copy of that very image comes back at Hamming distance 0."""
    from PIL import Image

    from hashlearn.data import load_dataset

    _, out, _ = digits_run
    run = out / "16bits"
    db = run / "database_codes.npz"
    ds = load_dataset("digits")
    db_ids = list(load_codes(db).ids)
    target = db_ids[7]
    image = tmp_path / "query.png"
    Image.fromarray(ds.images[list(ds.ids).index(target), :, :, 0]).save(image)
    capsys.readouterr()
    assert main(["search", "--run", str(run), "--codes", str(db), "--image", str(image), "-k", "10", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 10
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    assert all(isinstance(h["id"], str) for h in hits)
    # range search at radius 0: every database code equal to the query's; the image's own is among them
    assert main(["search", "--run", str(run), "--codes", str(db), "--image", str(image), "--radius", "0",
                 "--json"]) == 0
    exact = json.loads(capsys.readouterr().out)["results"]
    assert target in [h["id"] for h in exact]
    assert all(h["distance"] == 0 for h in exact)


def test_train_uses_a_split_file_from_data_split(tmp_path, capsys):
    """`data split` → `train --split FILE`: the run trains on exactly that split and records its protocol."""
    split_file = tmp_path / "split.json"
    assert main(["data", "prepare", "digits"]) == 0
    assert main(["data", "split", "digits", "--protocol", "per-class", "--set", "query_per_class=4",
                 "--set", "train_per_class=12", "--seed", "5", "--out", str(split_file)]) == 0
    out = tmp_path / "run"
    assert main(["train", "--method", "itq", "--dataset", "digits", "--split", str(split_file), "--bits", "8",
                 "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "8bits" / "metrics.json").read_text())
    assert metrics["protocol"] == "per-class" and metrics["sizes"]["query"] == 40
    assert metrics["protocol_description"]["checksum"] == json.loads(split_file.read_text())["checksum"]
    # a split and a protocol at once is ambiguous
    capsys.readouterr()
    assert main(["train", "--method", "itq", "--dataset", "digits", "--split", str(split_file),
                 "--protocol", "per-class", "--bits", "8", "--out", str(tmp_path / "r2"), "--quiet"]) == 2
    assert "not both" in capsys.readouterr().err


def test_train_without_protocol_uses_and_says_the_datasets_default(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "lsh", "--dataset", "digits", "--bits", "8", "--out", str(out)]) == 0
    err_out = capsys.readouterr()
    assert "protocol per-class (the default for digits" in err_out.out + err_out.err
    assert json.loads((out / "8bits" / "metrics.json").read_text())["protocol"] == "per-class"


def test_every_run_writes_its_pr_plot_and_reports_the_chance_level(digits_run, capsys):
    rc, out, _ = digits_run
    metrics = json.loads((out / "16bits/metrics.json").read_text())
    assert (out / "16bits/pr_curves.png").read_bytes()[:4] == b"\x89PNG"
    # digits, 10 balanced classes, 100 queries against the rest: a random ranking scores about 0.1
    assert 0.09 < metrics["chance_mAP@all"] < 0.12
    from hashlearn.eval import chance_map, evaluate
    from hashlearn.train.run import load_data

    ds = load_data("digits")
    where = {str(i): n for n, i in enumerate(ds.ids)}
    q = ds.labels[[where[str(i)] for i in load_codes(out / "16bits/query_codes.npz").ids]]
    d = ds.labels[[where[str(i)] for i in load_codes(out / "16bits/database_codes.npz").ids]]
    tied = evaluate(np.zeros((len(q), 16), np.int8), np.zeros((len(d), 16), np.int8), q, d, ties="expected")
    assert chance_map(q, d) == pytest.approx(tied["mAP@all"], abs=1e-9) == metrics["chance_mAP@all"]
    table = (out / "summary.md").read_text()
    assert "chance mAP@all" in table.splitlines()[0] and f"{metrics['chance_mAP@all']:.4f}" in table


def test_chance_level_of_multi_label_queries():
    from hashlearn.eval import chance_map

    db = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], np.uint8)
    q = np.array([[1, 0, 0], [0, 0, 0]], np.uint8)  # 2 of 4 relevant; none relevant scores 0
    expected = (1 / 3 + (1 + 1 / 2 + 1 / 3 + 1 / 4) * (2 / 3) / 4) / 2
    assert chance_map(q, db) == pytest.approx(expected)


def test_methods_prints_plain_text(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert not any(mark in text for mark in ("``", "|", "+--", "─", "│", ":math:"))
    from hashlearn.methods import load_all

    names = load_all().names()
    lines = [ln.split()[0] for ln in text.splitlines() if ln.startswith("  ")]
    assert sorted(lines) == names  # one line per method


def test_no_code_outside_methods_names_a_method():
    """Adding a method is one module in methods/: the demo's list is data (configs/demo.yaml)."""
    import re
    from pathlib import Path

    from hashlearn.methods import load_all

    src = Path(__file__).parents[1] / "src" / "hashlearn"
    names = load_all().names()
    for path in src.rglob("*.py"):
        if "methods" in path.relative_to(src).parts or path.name == "registry.py":
            continue
        text = path.read_text()
        for name in names:
            assert not re.search(rf"""["']{re.escape(name)}["']""", text), f"{path} names the method {name!r}"
