"""A method's named loss parts and memories through the real training command (tiny data, two epochs)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from hashlearn.train import train

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config, tiny_dataset, tiny_split  # noqa: E402


def test_log_has_each_part_and_dpsh_keeps_u_of_every_training_image(tmp_path, capsys):
    ds = tiny_dataset()
    split = tiny_split(ds)
    train(tiny_config(**{"train.progress": "true"}), dataset=ds, split=split, out=tmp_path)  # dpsh, pairs="all"
    run = tmp_path / "8bits"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    for record in log:  # each term's epoch mean, and the loss is their sum
        assert list(record["parts"]) == ["likelihood", "quantization"]
        assert record["loss"] == pytest.approx(sum(record["parts"].values()), rel=1e-5)
    assert "likelihood" in capsys.readouterr().err  # the per-epoch line shows the parts
    state = torch.load(run / "checkpoint.pt", weights_only=True)["method_state"]
    n_train = len(split.train)  # 48: three batches of 16, so every image was in a batch
    assert state["images.codes"].shape == (n_train, 8) and bool(state["images.filled"].all())
    assert torch.equal(state["images.labels"], torch.as_tensor(ds.labels[split.train]))
