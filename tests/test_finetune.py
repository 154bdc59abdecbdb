"""Fine-tuning above a cut (``train --finetune-from TAP``) and frozen heads on cached maps.

EfficientNet-Lite0 (ImageNet weights) at 32 px on the tiny 8×8 set: the part below ``stage6`` runs
once (cached maps, float32 here so codes can be compared exactly), ``stage6`` → head trains."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hashlearn.cli import main
from hashlearn.codes import load_codes
from hashlearn.methods import get_method
from hashlearn.train import load_run, train

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config, tiny_dataset, tiny_split  # noqa: E402

LITE = {"backbone": "efficientnet_lite0", "image_size": 32, "backbone_args": "{}", "activation_dtype": "float32"}


@pytest.fixture(scope="module")
def data():
    ds = tiny_dataset()
    return ds, tiny_split(ds)


@pytest.fixture(scope="module")
def cut_run(data, tmp_path_factory):
    ds, split = data
    out = tmp_path_factory.mktemp("cut")
    result = train(tiny_config(finetune_from="stage6", **LITE), dataset=ds, split=split, out=out)[0]
    return out / "8bits", result


def _rows(ds, ids) -> list[int]:
    where = {str(i): n for n, i in enumerate(ds.ids)}
    return [where[str(i)] for i in ids]


def test_saved_codes_equal_codes_of_the_images_through_load_run(cut_run, data):
    """Training encoded the database from cached maps (forward_from); load_run encodes the images
    with the whole backbone and the saved upper weights: the same codes."""
    run, result = cut_run
    ds, _ = data
    db = load_codes(run / "database_codes.npz")
    assert len(np.unique(db.packed, axis=0)) > 1  # real codes, not one code for every image
    hasher = load_run(run)
    assert np.array_equal(hasher.encode(ds.images[_rows(ds, db.ids)]), db.packed)
    assert result["finetune_from"] == "stage6" and result["finetune_bn"] == "frozen"
    cache = result["activation_cache"]  # what bench/finetune_cifar10.py reports
    assert cache["tap"] == "stage6" and cache["shape"][:2] == [len(ds), 2] and cache["nbytes"] > 0
    assert [h["epoch"] for h in result["val_history"]] == [1, 2]


def test_checkpoints_hold_the_head_and_the_part_above_the_cut(cut_run):
    run, _ = cut_run
    backbone = load_run(run).model.backbone
    above = {f"backbone.{k}" for k in backbone.state_names_above("stage6")}
    for name in ("best.pt", "checkpoint.pt"):
        state = torch.load(run / name, weights_only=True)["model"]
        assert {k for k in state if not k.startswith("head.")} == above, name
        assert any(k.startswith("head.") for k in state)
    info = json.loads((run / "run.json").read_text())
    cut = info["cut"]
    assert cut["tap"] == "stage6" and cut["bn"] == "frozen" and cut["key"]["tap"] == "stage6"
    assert Path(cut["path"]).is_dir() and cut["key"]["image_size"] == 32
    assert cut["weights_below_sha256"] == backbone.state_digest_below("stage6")  # the lower part never trains


def test_batchnorm_above_the_cut_keeps_its_statistics_when_frozen(cut_run):
    from hashlearn.nn import create_backbone

    run, _ = cut_run
    trained = torch.load(run / "best.pt", weights_only=True)["model"]
    fresh = create_backbone("efficientnet_lite0").state_dict()
    stats = [k for k in trained if k.startswith("backbone.") and k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(trained[k], fresh[k.removeprefix("backbone.")]) for k in stats)
    weights = [k for k in trained if k.startswith("backbone.") and k.endswith(".weight")]
    assert any(not torch.equal(trained[k], fresh[k.removeprefix("backbone.")]) for k in weights)  # it trained


def test_another_method_on_the_same_cut_reuses_the_cache_and_says_what_it_ignores(cut_run, data, tmp_path, capsys):
    run, _ = cut_run
    ds, split = data
    cfg = tiny_config(method="dmsh", method_args="{mid_channels: 8, taps: [stage6, stage7]}", finetune_from="stage6",
                      **{"train.epochs": 1, "train.progress": "true"}, **LITE)
    train(cfg, dataset=ds, split=split, out=tmp_path)
    err = capsys.readouterr().err
    assert "crop_padding" in err and "ignored" in err  # translations cannot apply to cached maps
    assert "finetune_bn: frozen" in err  # the BatchNorm setting is said
    a = json.loads((run / "run.json").read_text())["cut"]
    b = json.loads((tmp_path / "8bits" / "run.json").read_text())["cut"]
    assert a["path"] == b["path"] and a["key"] == b["key"]
    assert "activations" not in err.split("hashlearn train:")[1]  # no extraction: opened, not recomputed


@pytest.mark.parametrize("args, names", [
    (["--finetune-from", "block3", "--method", "dmsh", "--set", "method_args.taps=[block2, block4]"], "block2"),
    (["--finetune-from", "nope", "--method", "dpsh"], "nope"),
    (["--finetune-from", "block3", "--method", "dpsh", "--frozen"], "frozen"),
])
def test_a_cut_that_does_not_fit_is_one_line_before_any_work(args, names, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", *args, "--dataset", "not-prepared-anywhere", "--bits", "8", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and names in err, err
    assert not out.exists()  # checked before the dataset is looked for, and before any folder is made


def test_frozen_gives_maps_to_a_method_that_asks_for_them(data, tmp_path, monkeypatch):
    """``frozen`` still trains nothing in the backbone; a method whose ``spatial`` is true gets
    the cached maps at its taps (a conv head), not pooled vectors."""
    ds, split = data
    monkeypatch.setattr(get_method("dmsh"), "spatial", True, raising=False)
    cfg = tiny_config(method="dmsh", frozen="true", method_args="{mid_channels: 8}", **{"train.epochs": 1})
    train(cfg, dataset=ds, split=split, out=tmp_path)
    run = tmp_path / "8bits"
    info = json.loads((run / "run.json").read_text())
    assert [m["tap"] for m in info["maps"]] == ["block2", "block3", "block4"]
    state = torch.load(run / "best.pt", weights_only=True)["model"]
    assert state and all(k.startswith("head.") for k in state)
    hasher = load_run(run)
    assert all(scale.kind == "conv" for scale in hasher.model.head.scales.values())
    db = load_codes(run / "database_codes.npz")
    assert hasher.encode(ds.images[_rows(ds, db.ids)]).shape == db.packed.shape
