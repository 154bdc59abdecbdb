"""Results files of an experiment: ``NAME.md`` for people and ``NAME.json`` for tools.

Both are generated from run folders (their ``metrics.json``), never typed. The JSON is::

    {"name": ..., "title": ..., "protocol": ..., "dataset": ..., "backbone": ..., "command": ...,
     "machine": ..., "generated": ISO time, "notes": [...],
     "rows": [{"method", "bits", "mAP@all", "mAP@1000", "P@r2", "train_seconds",
               "images_per_second", ...}]}

Rows may carry more keys (``cut``, ``val_mAP``, ``best_epoch``, ``source``…); the Markdown
table shows the standard columns first, then every other key that some row has.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hashlearn._atomic import atomic_write_text
from hashlearn.errors import InputError

#: the columns every results row has (None where a run does not measure it)
ROW_KEYS = ("method", "bits", "mAP@all", "mAP@1000", "P@r2", "train_seconds", "images_per_second")
_HEADERS = {"train_seconds": "train s", "images_per_second": "img/s"}


def row_from_metrics(metrics: dict, **extra: Any) -> dict:
    """One results row from a run's ``metrics.json`` dict, plus ``extra`` keys."""
    row = {
        "method": metrics.get("method"),
        "bits": metrics.get("bits"),
        "mAP@all": metrics.get("mAP@all"),
        "mAP@1000": metrics.get("mAP@1000"),
        "P@r2": metrics.get("P@r2"),
        "train_seconds": metrics.get("training_seconds"),
        "images_per_second": metrics.get("images_per_second"),
    }
    for key in ("chance_mAP@all", "val_mAP", "best_epoch"):
        if metrics.get(key) is not None:
            row[key] = metrics[key]
    row.update(extra)
    return row


def read_run_rows(folder: str | Path, **extra: Any) -> list[dict]:
    """Rows of every ``<bits>bits/metrics.json`` under a ``hashlearn train --out`` folder, by code length."""
    folder = Path(folder)
    files = sorted(folder.glob("*bits/metrics.json"), key=lambda p: int(p.parent.name[:-4]))
    return [row_from_metrics(json.loads(f.read_text()), **extra) for f in files]


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[dict]) -> list[str]:
    """The rows as a Markdown table: the standard columns, then the other keys in first-seen order."""
    keys = list(ROW_KEYS)
    for row in rows:
        keys += [k for k in row if k not in keys]
    lines = ["| " + " | ".join(_HEADERS.get(k, k) for k in keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows]
    return lines


def write_results(
    out_dir: str | Path,
    name: str,
    *,
    title: str,
    protocol: str,
    dataset: str,
    backbone: str,
    command: str,
    machine: str,
    rows: Sequence[dict],
    notes: Iterable[str] = (),
    sections: Iterable[tuple[str, Sequence[str]]] = (),
) -> tuple[Path, Path]:
    """Write ``out_dir/name.md`` and ``out_dir/name.json`` (atomically); return their paths.

    ``notes`` are bullet lines under the title; ``sections`` are ``(heading, lines)`` after the table.
    """
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"results name must be a plain file name, got {name!r}")
    for row in rows:
        missing = [k for k in ("method", "bits") if row.get(k) is None]
        if missing:
            raise InputError(f"results row {row} lacks {', '.join(missing)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = list(notes)
    sections = [(h, list(body)) for h, body in sections]
    doc = {
        "name": name, "title": title, "protocol": protocol, "dataset": dataset, "backbone": backbone,
        "command": command, "machine": machine,
        "generated": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        "notes": notes, "rows": [dict(r) for r in rows],
    }
    md = [f"# {title}", "", f"Generated from run folders by `{command}` (no hand-typed numbers); "
          f"machine-readable twin: `{name}.json`.", "",
          f"* dataset `{dataset}`, protocol `{protocol}`, backbone: {backbone}", f"* machine: {machine}"]
    md += [f"* {n}" for n in notes]
    md += ["", "## Results", "", *markdown_table(rows)]
    for heading, body in sections:
        md += ["", f"## {heading}", "", *body]
    md_path, json_path = out_dir / f"{name}.md", out_dir / f"{name}.json"
    atomic_write_text(json_path, json.dumps(doc, indent=2, default=str) + "\n")
    atomic_write_text(md_path, "\n".join(md) + "\n")
    return md_path, json_path
