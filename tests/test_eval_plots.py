"""Figures and reports: files are written and are valid PNG / Markdown / JSON."""

from __future__ import annotations

import json

import numpy as np

from hashlearn.eval import (
    compare_markdown,
    evaluate,
    plot_curves,
    plot_pr_curves,
    plot_precision_at_n,
    plot_query_results,
    write_report,
)

PNG = b"\x89PNG\r\n\x1a\n"


def two_methods():
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 2, (4, 16))
    ql, dl = rng.integers(0, 4, 30), rng.integers(0, 4, 200)
    out = {}
    for name, noise in (("good", 0.05), ("noisy", 0.3)):
        q = centres[ql] ^ (rng.random((30, 16)) < noise)
        d = centres[dl] ^ (rng.random((200, 16)) < noise)
        out[name] = evaluate(q, d, ql, dl, topk=(50, "all"))
    assert out["good"].map["all"] > out["noisy"].map["all"]
    return out


def test_curves_with_several_methods(tmp_path):
    results = two_methods()
    for fn, name in ((plot_curves, "both.png"), (plot_pr_curves, "pr.png"), (plot_precision_at_n, "pn.png")):
        path = fn(results, tmp_path / name)
        assert path.read_bytes()[:8] == PNG


def test_reports_markdown_and_json(tmp_path):
    results = two_methods()
    md = compare_markdown(results, title="demo")
    assert "| good |" in md and "| noisy |" in md and "mAP@all" in md
    md_path, json_path = write_report(results, tmp_path / "cmp")
    assert md_path.read_text() == md.replace("## demo\n\n", "")
    data = json.loads(json_path.read_text())
    assert set(data) == {"good", "noisy"} and "curves" in data["good"]


def test_plot_query_results_marks_right_and_wrong(tmp_path):
    rng = np.random.default_rng(1)
    queries = rng.random((2, 8, 8, 3))
    results = rng.random((2, 4, 3, 8, 8))  # CHW results are accepted too
    correct = np.array([[True, False, True, True], [False, False, True, False]])
    path = plot_query_results(queries, results, correct, tmp_path / "q.png", distances=np.arange(8).reshape(2, 4))
    assert path.read_bytes()[:8] == PNG
    gray = plot_query_results(rng.random((1, 8, 8)), rng.random((1, 2, 8, 8)), [[True, False]], tmp_path / "g.png")
    assert gray.exists()
