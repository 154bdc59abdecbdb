"""The trainer: determinism, selection on validation only, hooks, early stopping, frozen mode, resume."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import reevaluated_map
from hashlearn.codes import load_codes
from hashlearn.errors import InputError
from hashlearn.methods import get_method
from hashlearn.nn import create_backbone
from hashlearn.train import Trainer, load_config, train

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config, tiny_dataset, tiny_split  # noqa: E402


@pytest.fixture(scope="module")
def data():
    ds = tiny_dataset()
    return ds, tiny_split(ds)


def test_same_seed_gives_identical_codes(data, tmp_path):
    ds, split = data
    cfg = tiny_config()
    a = train(cfg, dataset=ds, split=split, out=tmp_path / "a")[0]
    b = train(cfg, dataset=ds, split=split, out=tmp_path / "b")[0]
    for name in ("query_codes.npz", "database_codes.npz"):
        ca, cb = load_codes(tmp_path / "a/8bits" / name), load_codes(tmp_path / "b/8bits" / name)
        assert np.array_equal(ca.packed, cb.packed) and np.array_equal(ca.ids, cb.ids)
    assert a["mAP@all"] == b["mAP@all"]
    c = train(tiny_config(seed=1), dataset=ds, split=split, out=tmp_path / "c")[0]
    assert not np.array_equal(load_codes(tmp_path / "c/8bits/query_codes.npz").packed,
                              load_codes(tmp_path / "a/8bits/query_codes.npz").packed)
    assert c["seed"] == 1


def test_run_folder_contents_and_saved_config(data, tmp_path):
    ds, split = data
    cfg = tiny_config(**{"method": "dmsh", "bits": "[8,16]", "method_args": "{mid_channels: 8, focal_gamma: 2}"})
    results = train(cfg, dataset=ds, split=split, out=tmp_path)
    assert [r["bits"] for r in results] == [8, 16]
    run = tmp_path / "16bits"
    for f in ("config.yaml", "run.json", "checkpoint.pt", "best.pt", "log.jsonl", "query_codes.npz",
              "database_codes.npz", "metrics.json"):
        assert (run / f).exists(), f
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["bits"] == 16 and saved["method"] == "dmsh" and saved["method_args"]["focal_gamma"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("mAP@all", "protocol", "sizes", "R", "relevance", "ties", "seed", "bits", "training_seconds",
                "images_per_second", "best_epoch", "val_mAP"):
        assert key in metrics, key
    assert metrics["sizes"] == {"query": 20, "train": 48, "val": 12, "database": 100}
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all("val_map" in r and "loss" in r for r in log)
    assert load_codes(run / "database_codes.npz").packed.shape == (100, 2)
    assert (tmp_path / "summary.md").read_text().count("| dmsh |") == 2


def test_model_selection_never_sees_the_queries(data, tmp_path):
    ds, split = data
    calls = []

    def spy(q_codes, db_codes, q_labels, db_labels):
        calls.append((len(q_codes), len(db_codes)))
        return 0.5

    train(tiny_config(), dataset=ds, split=split, out=tmp_path, evaluator=spy)
    assert calls == [(len(split.val), len(split.train))] * 2  # once per epoch: val against train
    assert all(q != len(split.query) for q, _ in calls)


def test_best_epoch_is_chosen_by_validation_and_early_stopping(data, tmp_path):
    ds, split = data
    scores = iter([0.9, 0.5, 0.4, 0.3, 0.2])
    res = train(tiny_config(**{"train.epochs": 5, "train.patience": 2}), dataset=ds, split=split, out=tmp_path,
                evaluator=lambda *a: next(scores))[0]
    assert res["best_epoch"] == 1 and res["val_mAP"] == 0.9
    assert res["epochs_run"] == 3 and res["stopped_early"]
    best = torch.load(tmp_path / "8bits/best.pt", weights_only=True)
    assert best["epoch"] == 1


class RecordingDPSH(get_method("dpsh")):
    """DPSH that records every hook call (a stand-in for ADSH-style alternating methods)."""

    def __init__(self, bits):
        super().__init__(bits)
        self.calls = []
        self.codes_v = None

    def on_train_start(self, state):
        self.calls.append(("train_start", state.epoch))
        self.codes_v = torch.zeros(len(state.train_labels), self.bits)

    def on_epoch_start(self, state):
        self.calls.append(("epoch_start", state.epoch))

    def on_batch_end(self, state, batch, out):
        self.calls.append(("batch_end", state.epoch, batch.index.tolist()))
        self.codes_v[batch.index] = out.codes.detach().sign()

    def on_epoch_end(self, state):
        self.calls.append(("epoch_end", state.epoch, tuple(state.encode_train().shape)))

    def state_dict(self):
        return {"V": self.codes_v}


def test_hooks_are_called_with_batch_indices(data, tmp_path):
    ds, split = data
    cfg = tiny_config()
    method = RecordingDPSH(bits=8)
    backbone = create_backbone("smallcnn", weights="none", seed=0, width=4, in_channels=1)
    part = lambda idx: {"images": ds.images[idx], "labels": ds.labels[idx]}  # noqa: E731
    trainer = Trainer(method, backbone, cfg, tmp_path, train=part(split.train), val=part(split.val), image_size=8)
    trainer.fit()
    kinds = [c[0] for c in method.calls]
    n_batches = len(split.train) // 16
    assert kinds == (["train_start"] + (["epoch_start"] + ["batch_end"] * n_batches + ["epoch_end"]) * 2)
    seen = sorted(i for c in method.calls if c[0] == "batch_end" and c[1] == 1 for i in c[2])
    assert set(seen) <= set(range(len(split.train)))  # positions in the training split
    assert len(set(seen)) == n_batches * 16  # each training image at most once per epoch
    assert ("epoch_end", 2, (len(split.train), 8)) in method.calls
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert torch.equal(ckpt["method_state"]["V"], method.codes_v)  # the method's state is checkpointed


def test_frozen_mode_trains_heads_on_cached_features(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HASHLEARN_CACHE", str(tmp_path / "cache"))
    ds, split = data
    res = train(tiny_config(**{"frozen": "true", "method": "dmsh", "method_args": "{mid_channels: 8}"}),
                dataset=ds, split=split, out=tmp_path / "run")[0]
    assert res["frozen"] and abs(res["mAP@all"] - reevaluated_map(tmp_path / "run/8bits", ds)) < 1e-9
    state = torch.load(tmp_path / "run/8bits/best.pt", weights_only=True)["model"]
    assert state and all(k.startswith("head.") for k in state)  # the backbone is not trained or saved


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(overrides=["optim.lr=1e-4", "bits=[12,24]", "method_args.focal_gamma=2", "frozen=true"])
    assert cfg.optim.lr == 1e-4 and cfg.bits == [12, 24] and cfg.frozen is True
    assert cfg.method_args == {"focal_gamma": 2}
    with pytest.raises(InputError, match="unknown setting 'optim.lrr'"):
        load_config(overrides=["optim.lrr=1"])
    with pytest.raises(InputError, match="KEY=VALUE"):
        load_config(overrides=["optim.lr"])
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\noptim:\n  name: sgd\n")
    cfg = load_config(f, ["train.epochs=4"])
    assert cfg.train.epochs == 4 and cfg.optim.name == "sgd" and cfg.optim.lr == 1e-3
    f.write_text("nonsense: 1\n")
    with pytest.raises(InputError, match="unknown setting"):
        load_config(f)


RESUME_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_train_tiny import tiny_config, tiny_dataset, tiny_split
from hashlearn.train import train
ds = tiny_dataset()
cfg = tiny_config(**{{"train.epochs": 4, "method": "dmsh", "method_args": "{{mid_channels: 8}}", "memory": 0}})
train(cfg, dataset=ds, split=tiny_split(ds), out=sys.argv[1])
"""


def test_resume_after_kill_gives_the_same_weights(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT.format(tests=str(Path(__file__).parent)).replace(', "memory": 0', ""))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, str(script), str(full)], check=True, env=env, timeout=300)

    proc = subprocess.Popen([sys.executable, str(script), str(killed)], env=env)
    ckpt = killed / "8bits" / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    stopped_at = torch.load(ckpt, weights_only=True)["epoch"]
    assert stopped_at < 4, "the run finished before it could be killed"
    subprocess.run([sys.executable, str(script), str(killed)], check=True, env=env, timeout=300)

    a = torch.load(full / "8bits/checkpoint.pt", weights_only=True)
    b = torch.load(killed / "8bits/checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert np.array_equal(load_codes(full / "8bits/database_codes.npz").packed,
                          load_codes(killed / "8bits/database_codes.npz").packed)
    log = [json.loads(x) for x in (killed / "8bits/log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]


def test_validate_config_checks_and_normalises():
    from hashlearn.train.config import parse_bits, validate_config

    defaults = load_config().to_dict()
    cfg = validate_config({**defaults, "bits": "12,24", "optim": {**defaults["optim"], "lr": "1e-3"}})
    assert cfg.bits == [12, 24] and cfg.optim.lr == 1e-3
    assert parse_bits(32) == [32] and parse_bits([8, 1024]) == [8, 1024]
    for bad, message in ((7, "out of range"), (True, "whole number"), ("1.5", "whole number"), ([], "no code length"),
                         ([16, 16], "twice")):
        with pytest.raises(InputError, match=message):
            parse_bits(bad)
    with pytest.raises(InputError, match=r"train.epochs: expected an integer from 1"):
        load_config(overrides=["train.epochs=0"])
    with pytest.raises(InputError, match="c.yaml: optim.lr"):
        validate_config({**defaults, "optim": {"lr": float("inf")}}, where="c.yaml")


def test_checkpoints_hold_only_what_weights_only_reads():
    from hashlearn.train.trainer import _check_plain

    _check_plain({"a": [torch.zeros(2), 1, 2.0, "x", None, (True,)], "b": {"c": torch.ones(1)}}, "checkpoint.pt")
    with pytest.raises(TypeError, match=r"checkpoint.pt\['method_state'\].*ndarray.*torch.from_numpy"):
        _check_plain({"method_state": np.zeros(3)}, "checkpoint.pt")
