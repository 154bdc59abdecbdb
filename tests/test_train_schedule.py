"""The learning-rate schedule of an extended run, and what training prints to a log."""

import json
import math
import sys
from pathlib import Path

import pytest

from hashlearn.train import train
from hashlearn.train.trainer import lr_factor

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config, tiny_dataset, tiny_split  # noqa: E402


@pytest.fixture(scope="module")
def data():
    ds = tiny_dataset()
    return ds, tiny_split(ds)


def _lrs(run: Path) -> list[float]:
    return [json.loads(line)["lr"][0] for line in (run / "log.jsonl").read_text().splitlines()]


def test_the_schedule_is_a_function_of_the_epoch_and_the_run_length():
    assert [lr_factor("cosine", e, 4) for e in (1, 2, 3, 4)] == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))])
    assert [lr_factor("step", e, 30, step_size=10, gamma=0.1) for e in (1, 10, 11, 21)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.01])
    assert lr_factor("none", 7, 9) == 1.0


def test_extending_a_finished_run_continues_the_schedule_of_the_new_length(data, tmp_path):
    """`train --epochs 4` on a finished 2-epoch run: epochs 3 and 4 get the learning rates of a
    4-epoch cosine schedule (falling), not a restart of the 2-epoch one."""
    ds, split = data
    train(tiny_config(), dataset=ds, split=split, out=tmp_path / "run")
    run = tmp_path / "run" / "8bits"
    assert _lrs(run) == pytest.approx([0.01, 0.005])
    train(tiny_config(**{"train.epochs": 4}), dataset=ds, split=split, out=tmp_path / "run")
    lrs = _lrs(run)
    assert len(lrs) == 4 and lrs[:2] == pytest.approx([0.01, 0.005])
    assert lrs[2:] == pytest.approx([0.01 * lr_factor("cosine", e, 4) for e in (3, 4)])
    assert lrs[3] < lrs[2] <= lrs[1]  # it keeps falling


def test_a_log_gets_one_line_per_epoch_and_no_bars(data, tmp_path, capsys):
    """stderr is not a terminal here (captured), as when training writes to a log file."""
    ds, split = data
    assert not sys.stderr.isatty()
    train(tiny_config(**{"train.epochs": 3, "train.progress": "true"}), dataset=ds, split=split, out=tmp_path)
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err and "batch/s" not in err
    epoch_lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/3", "2/3", "3/3"]


def test_bars_only_on_a_terminal(monkeypatch):
    from hashlearn.train.progress import bars_enabled, progress_bar

    items = range(3)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not bars_enabled(True) and progress_bar(items, True, "x") is items
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert bars_enabled(True) and not bars_enabled(False)
    bar = progress_bar(items, True, "x")
    assert bar is not items and list(bar) == [0, 1, 2]
