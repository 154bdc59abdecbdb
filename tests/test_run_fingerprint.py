"""Code files record the fingerprint of the run that made them; codes of another run are refused."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from hashlearn.cli import main
from hashlearn.codes import load_codes, save_codes
from hashlearn.errors import InputError
from hashlearn.train import check_codes_match_run, load_run, train
from hashlearn.train.encode import codes_fingerprint

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config, tiny_dataset, tiny_split  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fingerprint")
    ds = tiny_dataset()
    split = tiny_split(ds)
    for name, cfg in (("a", tiny_config(**{"train.epochs": 1})), ("b", tiny_config(seed=1, **{"train.epochs": 1})),
                      ("itq", tiny_config(method="itq"))):
        train(cfg, dataset=ds, split=split, out=root / name)
    return root


def test_train_writes_the_fingerprint_into_codes_and_metrics(runs):
    import json

    for name in ("a", "b", "itq"):
        run = runs / name / "8bits"
        hasher = load_run(run)
        assert len(hasher.fingerprint) == 64
        for codes in ("query_codes.npz", "database_codes.npz"):
            assert codes_fingerprint(run / codes) == hasher.fingerprint
            assert load_codes(run / codes).bits == 8  # still an ordinary code file
        assert json.loads((run / "metrics.json").read_text())["fingerprint"] == hasher.fingerprint
    assert load_run(runs / "a/8bits").fingerprint != load_run(runs / "b/8bits").fingerprint


def test_codes_of_another_run_are_one_line(runs):
    a, b = runs / "a/8bits", runs / "b/8bits"
    check_codes_match_run(a / "database_codes.npz", a)  # its own codes
    check_codes_match_run(a / "database_codes.npz", load_run(a))
    with pytest.raises(InputError, match="another run") as info:
        check_codes_match_run(b / "database_codes.npz", a)
    assert "\n" not in str(info.value) and "database_codes.npz" in str(info.value)
    with pytest.raises(InputError, match="another run"):
        check_codes_match_run(runs / "itq/8bits/query_codes.npz", b)


def test_codes_without_a_fingerprint_are_not_refused(runs, tmp_path):
    plain = save_codes(tmp_path / "plain.npz", np.zeros((3, 8), np.int8), 8)
    np.save(tmp_path / "plain.npy", np.zeros((3, 1), np.uint8))
    for path in (plain, tmp_path / "plain.npy"):
        assert codes_fingerprint(path) is None
        check_codes_match_run(path, runs / "a/8bits")


def test_encode_writes_the_fingerprint_and_a_resume_without_training_keeps_it(runs, tmp_path, capsys):
    from PIL import Image

    run = runs / "a/8bits"
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(tiny_dataset().images[:3]):
        Image.fromarray(image[:, :, 0]).save(folder / f"{i}.png")
    assert main(["encode", "--run", str(run), "--images", str(folder), "--out", str(tmp_path / "c.npz")]) == 0
    assert codes_fingerprint(tmp_path / "c.npz") == load_run(run).fingerprint
    # the settings that change no weight (epochs, patience, progress, threads) are not part of it
    copy = tmp_path / "copy"
    shutil.copytree(runs / "a", copy)
    before = load_run(copy / "8bits").fingerprint
    ds = tiny_dataset()
    train(tiny_config(**{"train.epochs": 1, "train.patience": 3}), dataset=ds, split=tiny_split(ds), out=copy)
    assert load_run(copy / "8bits").fingerprint == before


def test_search_by_image_with_codes_of_another_run_is_one_line(runs, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "q.png"
    Image.fromarray(tiny_dataset().images[0, :, :, 0]).save(image)
    ok = ["search", "--run", str(runs / "a/8bits"), "--image", str(image), "-k", "3"]
    assert main([*ok, "--codes", str(runs / "a/8bits/database_codes.npz")]) == 0
    capsys.readouterr()
    assert main([*ok, "--codes", str(runs / "b/8bits/database_codes.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another run" in err
