"""Results files (NAME.md + NAME.json) are generated from run folders' metrics.json."""

import json

import pytest

from hashlearn.errors import InputError
from hashlearn.eval.results import markdown_table, read_run_rows, write_results


def _run_folder(root, method, rows):
    for bits, m_all in rows:
        d = root / f"{bits}bits"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({
            "method": method, "bits": bits, "mAP@all": m_all, "mAP@1000": m_all + 0.1, "P@r2": 0.5,
            "training_seconds": 12.5, "images_per_second": 360.0, "val_mAP": 0.7, "best_epoch": 3}))


def test_rows_come_from_metrics_in_code_length_order(tmp_path):
    _run_folder(tmp_path / "dpsh", "dpsh", [(48, 0.6), (12, 0.4)])
    rows = read_run_rows(tmp_path / "dpsh", cut="stage5")
    assert [r["bits"] for r in rows] == [12, 48]
    assert rows[0] == {"method": "dpsh", "bits": 12, "mAP@all": 0.4, "mAP@1000": 0.5, "P@r2": 0.5,
                       "train_seconds": 12.5, "images_per_second": 360.0, "val_mAP": 0.7, "best_epoch": 3,
                       "cut": "stage5"}


def test_markdown_and_json_twins(tmp_path):
    _run_folder(tmp_path / "r", "dmsh", [(12, 0.55)])
    rows = read_run_rows(tmp_path / "r") + [{"method": "itq", "bits": 12, "mAP@all": 0.2, "source": "old"}]
    md, js = write_results(tmp_path / "out", "exp", title="An experiment", protocol="cifar10-1", dataset="cifar10",
                           backbone="lite0", command="python bench/x.py report", machine="2 cores",
                           rows=rows, notes=["note one"], sections=[("Why", ["because"])])
    doc = json.loads(js.read_text())
    assert doc["protocol"] == "cifar10-1" and doc["command"] == "python bench/x.py report"
    assert doc["rows"][1] == {"method": "itq", "bits": 12, "mAP@all": 0.2, "source": "old"}
    text = md.read_text()
    assert "| method | bits | mAP@all | mAP@1000 | P@r2 | train s | img/s | val_mAP | best_epoch | source |" in text
    assert "| dmsh | 12 | 0.5500 | 0.6500 | 0.5000 | 12.5 | 360.0 | 0.7000 | 3 | – |" in text
    assert "| itq | 12 | 0.2000 | – | – | – | – | – | – | old |" in text
    assert "* note one" in text and "## Why\n\nbecause" in text


def test_bad_rows_and_names_are_refused(tmp_path):
    kw = dict(title="t", protocol="p", dataset="d", backbone="b", command="c", machine="m")
    with pytest.raises(InputError, match="lacks bits"):
        write_results(tmp_path, "x", rows=[{"method": "a"}], **kw)
    with pytest.raises(InputError, match="plain file name"):
        write_results(tmp_path, "../x", rows=[], **kw)
    assert markdown_table([])[0].startswith("| method | bits |")
