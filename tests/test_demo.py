"""The demo's offline path, shortened: digits (bundled with scikit-learn), one epoch."""

import json

from hashlearn.cli import main


def test_quick_demo_on_digits_writes_table_and_pictures(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HASHLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HASHLEARN_DATA", raising=False)
    out = tmp_path / "demo"
    assert main(["demo", "--dataset", "digits", "--quick", "--limit", "120", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "| dmsh | digits | 32 |" in printed.out and "| dpsh | digits | 32 |" in printed.out
    assert "dataset digits" in printed.err and "backbone smallcnn" in printed.err  # says what it uses
    for f in ("pr_curves.png", "queries.png", "summary.md", "demo.json"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "queries.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "demo.json").read_text())
    assert summary["dataset"] == "digits" and set(summary["results"]) == {"dmsh", "dpsh"}
    assert 0 <= summary["results"]["dmsh"]["mAP@all"] <= 1
    assert (out / "dmsh/32bits/metrics.json").exists() and (out / "dpsh/32bits/database_codes.npz").exists()
