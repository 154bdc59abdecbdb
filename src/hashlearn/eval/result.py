"""What :func:`hashlearn.eval.evaluate` returns, and its JSON / Markdown forms."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _key(t) -> str:
    return str(t)


@dataclass
class EvalResult:
    """Every metric of one evaluation plus the settings that produced it.

    ``map``, ``wmap``, ``ndcg``, ``acg`` and ``per_query_ap`` are keyed by the requested R
    (an ``int`` or ``"all"``); ``cutoffs`` gives the R actually used (clipped to N).
    """

    bits: int
    n_query: int
    n_db: int
    ties: str
    skip_empty: bool
    relevance: str
    multi_label: bool
    graded: bool
    topk: list
    cutoffs: dict
    radius: int
    map: dict
    queries_scored: dict
    wmap: dict
    ndcg: dict
    acg: dict
    precision_radius: float
    recall_radius: float
    f1_radius: float
    pr_radii: np.ndarray
    pr_precision: np.ndarray
    pr_recall: np.ndarray
    pr_f1: np.ndarray
    curve_n: np.ndarray
    precision_at_n: np.ndarray
    recall_at_n: np.ndarray
    per_query_ap: dict = field(repr=False, default_factory=dict)
    queries_without_relevant: int = 0

    def __getitem__(self, key: str) -> float:
        """Flat access by JSON key, e.g. ``result["mAP@1000"]``."""
        return self.metrics()[key]

    def metrics(self) -> dict:
        """The scalar metrics as a flat ``{name: value}`` dict (the JSON keys)."""
        out: dict[str, float] = {}
        for t in self.topk:
            out[f"mAP@{_key(t)}"] = self.map[t]
        r = self.radius
        out[f"P@r{r}"] = self.precision_radius
        out[f"R@r{r}"] = self.recall_radius
        out[f"F1@r{r}"] = self.f1_radius
        for t in self.topk:
            if t in self.ndcg:
                out[f"NDCG@{_key(t)}"] = self.ndcg[t]
                out[f"ACG@{_key(t)}"] = self.acg[t]
                out[f"wmAP@{_key(t)}"] = self.wmap[t]
        for n, p in zip(self.curve_n.tolist(), self.precision_at_n.tolist(), strict=True):
            if n in self.cutoffs.values() or n in (10, 100):
                out[f"P@{n}"] = p
        return out

    def settings(self) -> dict:
        return {
            "bits": self.bits,
            "n_query": self.n_query,
            "n_db": self.n_db,
            "ties": self.ties,
            "relevance": self.relevance,
            "multi_label": self.multi_label,
            "topk": [_key(t) for t in self.topk],
            "R": {_key(t): int(v) for t, v in self.cutoffs.items()},
            "radius": self.radius,
            "empty_queries": "skipped" if self.skip_empty else "scored 0",
            "queries_scored": {_key(t): v for t, v in self.queries_scored.items()},
            "queries_without_relevant": self.queries_without_relevant,
        }

    def to_dict(self, curves: bool = True) -> dict:
        """JSON-ready: the flat metrics, the settings, and (optionally) the curves."""
        out: dict = dict(self.metrics())
        out.update(self.settings())
        if curves:
            out["curves"] = {
                "pr_radius": self.pr_radii.tolist(),
                "pr_precision": self.pr_precision.tolist(),
                "pr_recall": self.pr_recall.tolist(),
                "n": self.curve_n.tolist(),
                "precision_at_n": self.precision_at_n.tolist(),
                "recall_at_n": self.recall_at_n.tolist(),
            }
        return out

    def to_json(self, curves: bool = True, **kwargs) -> str:
        return json.dumps(self.to_dict(curves=curves), **kwargs)

    def to_markdown(self, title: str | None = None) -> str:
        lines = [f"## {title}", ""] if title else []
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in self.metrics().items()]
        s = self.settings()
        lines += [
            "",
            f"{s['n_query']} queries × {s['n_db']} database items, {s['bits']} bits; relevance: {s['relevance']}; "
            f"ties: {s['ties']}; R: {s['R']}; queries with no relevant item in the top R: {s['empty_queries']}.",
        ]
        return "\n".join(lines) + "\n"

    def to_table(self) -> str:
        """A small readable table for the terminal."""
        metrics = self.metrics()
        width = max(len(k) for k in metrics)
        s = self.settings()
        head = (
            f"{s['n_query']} queries x {s['n_db']} database, {s['bits']} bits, relevance: {s['relevance']}, "
            f"ties: {s['ties']}, empty queries: {s['empty_queries']}"
        )
        return "\n".join([head] + [f"  {k:<{width}}  {v:.4f}" for k, v in metrics.items()]) + "\n"


def compare_markdown(results: dict, title: str | None = None) -> str:
    """One Markdown table comparing several methods: ``{method name: EvalResult}``."""
    names = list(results)
    keys: list[str] = []
    for res in results.values():
        keys += [k for k in res.metrics() if k not in keys]
    lines = [f"## {title}", ""] if title else []
    lines.append("| method | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for name in names:
        m = results[name].metrics()
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" if k in m else "" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_report(results, path) -> tuple[Path, Path]:
    """Write ``path.md`` and ``path.json`` for one ``EvalResult`` or ``{method: EvalResult}``."""
    from hashlearn.errors import InputError

    md_path, json_path = report_paths(path)
    if isinstance(results, EvalResult):
        md = results.to_markdown()
        data = results.to_dict()
    else:
        md = compare_markdown(results)
        data = {name: res.to_dict() for name, res in results.items()}
    try:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(md)
        json_path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise InputError(f"report {path}: cannot write it ({exc.strerror or exc})") from None
    return md_path, json_path


def report_paths(path) -> tuple[Path, Path]:
    """``(OUT.md, OUT.json)`` for a report named ``OUT`` (or ``OUT.md`` / ``OUT.json``)."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".md", ".json") else path
    return base.with_name(base.name + ".md"), base.with_name(base.name + ".json")
