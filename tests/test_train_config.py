"""Typed settings: one place for every default (the dataclasses of hashlearn.train.config),
``configs/default.yaml`` generated from it, and every bad setting one line."""

import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from hashlearn.cli import main
from hashlearn.errors import InputError
from hashlearn.train.config import RunConfig, load_config, render_default_yaml, setting_names

TRAIN_DIR = Path(__file__).parents[1] / "src" / "hashlearn" / "train"


def test_default_yaml_is_the_dataclasses_defaults():
    text = (resources.files("hashlearn") / "configs" / "default.yaml").read_text()
    assert text == render_default_yaml(), "regenerate: python -m hashlearn.train.config > configs/default.yaml"
    assert RunConfig.from_dict(yaml.safe_load(text)) == RunConfig()
    for name in setting_names():  # every setting is documented in the file
        assert re.search(rf"^\s*{re.escape(name.split('.')[-1])}:", text, re.M), name


def test_settings_are_typed_objects():
    cfg = load_config(overrides=["train.epochs=3", "optim.lr=1e-4", "bits=[12,24]", "eval.topk=[10, all]"])
    assert isinstance(cfg, RunConfig)
    assert cfg.train.epochs == 3 and cfg.optim.lr == 1e-4 and cfg.bits == [12, 24] and cfg.eval.topk == [10, "all"]
    assert cfg.train.feature_batch_size == 256 and cfg.eval.ties == "expected"  # defaults
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_no_default_is_repeated_in_the_training_code():
    """Settings are read from the typed config, never ``config.get("key", default)``."""
    leaves = {name.split(".")[-1] for name in setting_names()}
    for path in TRAIN_DIR.glob("*.py"):
        if path.name == "config.py":
            continue
        for key in re.findall(r"""\.get\(\s*["'](\w+)["']\s*,""", path.read_text()):
            assert key not in leaves, f"{path.name} defaults setting {key!r} again"


def cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return rc, err


@pytest.mark.parametrize("override, valid", [
    ("train.epoch=3", ["train.epochs", "train.batch_size", "train.feature_batch_size"]),
    ("epochs=3", ["method", "bits", "finetune_from", "train", "optim"]),
    ("optim.learning_rate=0.1", ["optim.lr", "optim.backbone_lr"]),
])
def test_an_unknown_setting_is_one_line_listing_the_valid_ones(override, valid, tmp_path, capsys):
    rc, err = cli(["train", "--method", "dpsh", "--set", override, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "unknown setting" in err
    assert all(v in err for v in valid), err


def test_an_unknown_setting_in_a_config_file_names_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epoch: 3\n")
    with pytest.raises(InputError, match=r"c.yaml: unknown setting train.epoch; valid: train.epochs"):
        load_config(f)


@pytest.mark.parametrize("args, names", [
    (["--bits", "abc"], "--bits"),
    (["--set", "bits=abc"], "bits"),
    (["--set", "bits=[12, abc]"], "bits"),
    (["--set", "bits=[12, 12]"], "bits"),
    (["--set", "bits={a: 1}"], "bits"),
    (["--set", "finetune_bn=maybe"], "finetune_bn"),
    (["--set", "activation_dtype=int8"], "activation_dtype"),
    (["--set", "finetune_from=[1]"], "finetune_from"),
    (["--set", "train.progress=3"], "train.progress"),
    (["--set", "optim.schedule=linear"], "optim.schedule"),
    (["--set", "eval.radius=-1"], "eval.radius"),
    (["--set", "optim=3"], "optim"),
    (["--set", "train.epochs.x=1"], "train.epochs"),
])
def test_every_bad_value_is_one_line(args, names, tmp_path, capsys):
    rc, err = cli(["train", "--method", "dpsh", *args, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and names in err
    assert not (tmp_path / "o").exists()


def test_a_list_of_code_lengths_by_set_is_accepted():
    assert load_config(overrides=["bits=[12,24]"]).bits == [12, 24]
    assert load_config(overrides=["bits=12,24"]).bits == [12, 24]


def test_a_method_is_required(tmp_path, capsys):
    rc, err = cli(["train", "--dataset", "digits", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "--method" in err
