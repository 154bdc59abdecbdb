"""A grid's leaderboard: ``leaderboard-NAME.md`` / ``.json`` (:func:`hashlearn.eval.results.write_results`, the
project's one results format) from the finished run folders, the precision–recall and precision@N curves of each
method's best run, the table for the terminal, and a README section generated from the JSON.

A row is one method entry at one code length (per dataset and backbone entry when the grid has several): the
mean over the seeds with a finished run (``seeds``) of mAP@all, mAP@1000, P@r2 (and the config's ``metrics``),
their sample standard deviation (n − 1; None with one seed) as ``<metric>_std``, and the mean training seconds.
A method the config's ``compare`` pairs with a baseline also gets ``baseline`` (its label) and
``mAP@all_vs_baseline`` (its mAP@all ÷ the baseline's at the same code length, dataset and backbone), and the
leaderboard says in words where it beats the baseline and where it does not (:func:`comparison_lines`).
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hashlearn.benchmark.grid import Grid, bits_status
from hashlearn.errors import InputError

#: the figures every row has, each with its standard deviation over seeds
STATS = ("mAP@all", "mAP@1000", "P@r2")
#: log of the calls that trained something: one JSON line each (their wall-clock time, see :func:`log_call`)
CALLS_LOG = "benchmark-calls.jsonl"


def leaderboard_paths(name: str, results_dir: str | Path) -> tuple[Path, Path]:
    """``(NAME.md, NAME.json)`` paths of grid ``name``'s leaderboard in ``results_dir``."""
    stem = Path(results_dir) / f"leaderboard-{name}"
    return stem.with_suffix(".md"), stem.with_suffix(".json")


def finished_runs(grid: Grid) -> dict[tuple[str, str, str], dict[int, list[tuple[int, dict]]]]:
    """``{(dataset label, backbone label, method label): {bits: [(seed, metrics), ...]}}`` of every finished run."""
    from hashlearn.train.runfolder import read_json_mapping

    found: dict = {}
    for cell in grid.cells:
        key = (cell.dataset.label, cell.backbone.label, cell.method.label)
        by_bits = found.setdefault(key, {})
        for bits in cell.config.bits:
            if bits_status(cell, bits) == "done":
                by_bits.setdefault(bits, []).append((cell.seed, read_json_mapping(cell.run_dir(bits) / "metrics.json")))
    return found


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def mean_std(values: list[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1) of the numbers among ``values``; std None below two."""
    xs = [x for x in (_number(v) for v in values) if x is not None]
    if not xs:
        return None, None
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def leaderboard_rows(grid: Grid, found: dict) -> list[dict]:
    several_datasets, several_backbones = len(grid.datasets) > 1, len(grid.backbones) > 1
    rows = []
    for d in grid.datasets:
        for b in grid.backbones:
            for m in grid.methods:
                by_bits = found.get((d.label, b.label, m.label), {})
                for bits in sorted(by_bits):
                    runs = [metrics for _, metrics in by_bits[bits]]
                    row: dict[str, Any] = {"method": m.label, "bits": bits}
                    stds = {}
                    for key in (*STATS, *grid.metrics):
                        row[key], stds[f"{key}_std"] = mean_std([r.get(key) for r in runs])
                    row["train_seconds"] = mean_std([r.get("training_seconds") for r in runs])[0]
                    row["images_per_second"] = mean_std([r.get("images_per_second") for r in runs])[0]
                    row["seeds"] = len(runs)
                    row.update(stds)
                    row["chance_mAP@all"] = mean_std([r.get("chance_mAP@all") for r in runs])[0]
                    if several_datasets:
                        row["dataset"] = d.label
                    if several_backbones:
                        row["backbone"] = b.label
                    rows.append(row)
    add_baselines(rows, grid.compare)
    return rows


def add_baselines(rows: list[dict], compare: dict[str, str]) -> None:
    """Give each row of a method in ``compare`` its ``baseline`` and ``mAP@all_vs_baseline`` (None where the
    baseline has no finished run or a zero mAP@all at that code length)."""
    at = {(r.get("dataset"), r.get("backbone"), r["method"], r["bits"]): r for r in rows}
    for row in rows:
        baseline = compare.get(row["method"])
        if baseline is None:
            continue
        other = at.get((row.get("dataset"), row.get("backbone"), baseline, row["bits"]))
        mine, theirs = _number(row.get("mAP@all")), _number(other.get("mAP@all")) if other else None
        row["baseline"] = baseline
        row["mAP@all_vs_baseline"] = mine / theirs if mine is not None and theirs else None


def comparison_lines(rows: list[dict]) -> list[str]:
    """One sentence per compared method (and dataset/backbone entry): its mAP@all ÷ its baseline's at each code
    length, and plainly whether it beats the baseline at all of them, some, or none."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("baseline") is not None:
            groups.setdefault((row.get("dataset"), row.get("backbone"), row["method"], row["baseline"]), []).append(row)
    lines = []
    for (dataset, backbone, method, baseline), group in groups.items():
        ratios_at = [(r["bits"], _number(r.get("mAP@all_vs_baseline"))) for r in group]
        measured = [(bits, ratio) for bits, ratio in ratios_at if ratio is not None]
        where = "".join(f" ({x})" for x in (dataset, backbone) if x)
        if not measured:
            lines.append(f"`{method}` against its baseline `{baseline}`{where}: no code length where both finished")
            continue
        ratios = ", ".join(f"{ratio:.2f}× at {bits} bits" for bits, ratio in measured)
        wins = [bits for bits, ratio in measured if ratio > 1]
        if len(wins) == len(measured):
            verdict = f"beats `{baseline}` at every code length"
        elif not wins:
            verdict = f"does not beat `{baseline}` at any code length"
        else:
            verdict = f"beats `{baseline}` only at {', '.join(map(str, wins))} bits"
        lines.append(f"`{method}` against its baseline `{baseline}`{where}, mAP@all ratio: {ratios}: {verdict}")
    return lines


def plot_best_runs(grid: Grid, found: dict, results_dir: Path) -> list[tuple[str, Path]]:
    """One figure (precision–recall over Hamming radii, precision@N) per dataset × backbone entry: each
    method's run of highest mAP@all at its largest finished code length. Returns ``(what, path)`` pairs."""
    from hashlearn.eval.plots import plot_curves

    figures = []
    for d in grid.datasets:
        for b in grid.backbones:
            curves = {}
            for m in grid.methods:
                by_bits = found.get((d.label, b.label, m.label), {})
                if not by_bits:
                    continue
                bits = max(by_bits)
                seed, best = max(by_bits[bits], key=lambda run: _number(run[1].get("mAP@all")) or -1.0)
                c = best.get("curves")
                if not isinstance(c, dict):
                    continue
                curves[f"{m.label} seed {seed}"] = SimpleNamespace(
                    bits=bits,
                    pr_recall=c["pr_recall"],
                    pr_precision=c["pr_precision"],
                    curve_n=c["n"],
                    precision_at_n=c["precision_at_n"],
                )
            if not curves:
                continue
            several = len(grid.datasets) > 1 or len(grid.backbones) > 1
            stem = f"leaderboard-{grid.name}" + (f"-{d.label}-{b.label}" if several else "")
            path = plot_curves(curves, results_dir / f"{stem}-pr.png")
            figures.append((f"{d.label}, {b.label}", path))
    return figures


def machine_description() -> str:
    """CPU cores, memory, GPU (if any) and the load average now: the context of the training seconds."""
    parts = [f"{os.cpu_count()} CPU cores ({platform.machine()})"]
    try:
        with open("/proc/meminfo") as f:
            total = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        parts.append(f"{total / 2**20:.0f} GiB memory")
    except (OSError, StopIteration, ValueError):
        pass
    try:
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA is "no GPU" here
        gpus = []
    parts.append(", ".join(gpus) if gpus else "no GPU")
    try:
        parts.append(f"load average {os.getloadavg()[0]:.1f} when the leaderboard was written")
    except OSError:
        pass
    return ", ".join(parts)


def _backbone_text(settings: dict) -> str:
    text = f"{settings['backbone']}"
    weights = settings.get("weights")
    if weights not in (None, "default"):
        text += f" (weights {weights})"
    if settings.get("backbone_args"):
        text += f" {json.dumps(settings['backbone_args'])}"
    if settings.get("image_size"):
        text += f", {settings['image_size']} px"
    if settings.get("finetune_from"):
        text += f", fine-tuned above the cached cut {settings['finetune_from']}"
    elif settings.get("frozen"):
        text += ", frozen (heads on cached features)"
    else:
        text += ", trained end to end"
    return text


def _calls(grid: Grid) -> list[dict]:
    path = grid.out / CALLS_LOG
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and _number(record.get("wall_seconds")) is not None:
            out.append(record)
    return out


def call_text(record: dict) -> str:
    """One call of the calls log in words: when, runs trained, wall seconds, cells at a time, the machine's load."""
    text = f"{record.get('started', '?')}: {record.get('runs_trained', '?')} run(s) in {record['wall_seconds']:.0f} s"
    # records written before --jobs existed come from calls that trained one cell at a time
    text += f", --jobs {record.get('jobs', 1)}"
    if _number(record.get("cpu_count")) is not None:
        text += f" on {record['cpu_count']} CPU cores"
    loads = [record.get(k) for k in ("load_average_start", "load_average_end")]
    if all(isinstance(x, list) and x and _number(x[0]) is not None for x in loads):
        text += f", load average {loads[0][0]:.1f} at the start, {loads[1][0]:.1f} at the end"
    if record.get("cells_failed"):
        text += f", {record['cells_failed']} cell(s) failed"
    if record.get("stopped"):
        text += f", {record['stopped']}"
    return text


def log_call(grid: Grid, record: dict) -> None:
    """Append one call's record to ``OUT/benchmark-calls.jsonl``: when it started, its wall-clock seconds, the
    runs it trained and skipped, ``nproc``, ``jobs``, the CPU cores, the load average at its start and end, and
    ``cells_failed`` / ``stopped`` (interrupted, failed) when it did not finish every cell."""
    grid.out.mkdir(parents=True, exist_ok=True)
    with open(grid.out / CALLS_LOG, "a") as f:
        f.write(json.dumps(record) + "\n")


def write_leaderboard(grid: Grid, results_dir: str | Path, command: str) -> dict:
    """Write ``leaderboard-NAME.{md,json}`` and the curves into ``results_dir``; return the JSON document."""
    from hashlearn.eval.results import write_results

    results_dir = Path(results_dir)
    found = finished_runs(grid)
    rows = leaderboard_rows(grid, found)
    figures = plot_best_runs(grid, found, results_dir)
    total = len(grid.cells) * len(grid.bits)
    finished = sum(len(v) for by_bits in found.values() for v in by_bits.values())
    missing = [
        f"{c.method.label} {b} bits seed {c.seed}"
        + (f" ({c.dataset.label}, {c.backbone.label})" if len(grid.datasets) + len(grid.backbones) > 2 else "")
        for c in grid.cells
        for b in c.config.bits
        if bits_status(c, b) != "done"
    ]
    notes = list(grid.notes) + comparison_lines(rows)
    notes.append(
        f"grid: {len(grid.methods)} methods × {len(grid.bits)} code lengths ({', '.join(map(str, grid.bits))})"
        f" × {len(grid.datasets)} dataset(s) × {len(grid.backbones)} backbone(s) × {len(grid.seeds)} seed(s)"
        f" ({', '.join(map(str, grid.seeds))}) = {total} runs; {finished} finished"
        + (f"; not yet run: {', '.join(missing[:12])}{' …' if len(missing) > 12 else ''}" if missing else "")
    )
    notes.append(
        "figures: the mean over the seeds with a finished run (`seeds`); `<metric>_std`: their sample standard "
        "deviation (n − 1), – with one seed. mAP@all: over the whole database; mAP@1000: the top 1,000; P@r2: "
        "precision within Hamming radius 2; train s: training seconds of one run (mean); chance_mAP@all: the "
        "expected mAP@all of a random ranking"
    )
    notes.append(
        "settings of every run: "
        + (", ".join(f"`{s}`" for s in grid.common) or "hashlearn train's defaults")
        + "; model selection on the validation split (hashlearn train)"
    )
    for m in grid.methods:
        if m.method_args or m.set or m.label != m.method:
            what = [f"method `{m.method}`"]
            if m.method_args:
                what.append(f"method_args `{json.dumps(m.method_args)}`")
            if m.set:
                what.append("set " + ", ".join(f"`{s}`" for s in m.set))
            notes.append(f"`{m.label}`: " + ", ".join(what))
    seconds = [
        _number(metrics.get("training_seconds"))
        for by_bits in found.values()
        for runs in by_bits.values()
        for _, metrics in runs
    ]
    seconds = [s for s in seconds if s is not None]
    if seconds:
        notes.append(
            f"training time summed over the {len(seconds)} finished runs: {math.fsum(seconds):.0f} s "
            f"({math.fsum(seconds) / 3600:.2f} h)"
        )
    calls = _calls(grid)
    if calls:
        wall = math.fsum(c["wall_seconds"] for c in calls)
        notes.append(
            f"wall-clock time of the grid: {wall:.0f} s ({wall / 3600:.2f} h), the sum of the wall seconds of the "
            f"{len(calls)} `hashlearn benchmark` call(s) that trained, cached activations and datasets included "
            f"(`{grid.out / CALLS_LOG}`): " + "; ".join(call_text(c) for c in calls)
        )
    sections = []
    if figures:
        body = [
            "Each method's run of highest mAP@all (over seeds) at its largest finished code length: "
            "precision–recall over Hamming radii (left) and precision@N (right)."
        ]
        body += [f"* {what}: ![curves]({path.name})" for what, path in figures]
        sections.append(("Curves", body))
    protocols = "; ".join(
        d.dataset
        + ": "
        + (d.protocol or "the dataset's default protocol")
        + (f" {json.dumps(d.protocol_args)}" if d.protocol_args else "")
        for d in grid.datasets
    )
    backbones = "; ".join(_backbone_text(b.settings) for b in grid.backbones)
    md_path, json_path = write_results(
        results_dir,
        f"leaderboard-{grid.name}",
        title=grid.title + (f" (partial: {finished} of {total} runs finished)" if finished < total else ""),
        protocol=protocols,
        dataset=", ".join(d.dataset for d in grid.datasets),
        backbone=backbones,
        command=command,
        machine=machine_description(),
        rows=rows,
        notes=notes,
        sections=sections,
    )
    return json.loads(json_path.read_text())


# -- tables: the terminal and the README ----------------------------------------------------------------------


def _mean_pm(row: dict, key: str) -> str:
    mean, std = _number(row.get(key)), _number(row.get(f"{key}_std"))
    if mean is None:
        return "–"
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def compact_table(doc: dict) -> list[str]:
    """The leaderboard JSON's rows as a Markdown table, each figure as mean ± std over seeds."""
    rows = doc.get("rows") or []
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"leaderboard {doc.get('name')!r}: rows must be a list of objects")
    metrics = list(STATS)
    for row in rows:
        metrics += [k.removesuffix("_std") for k in row if k.endswith("_std") and k.removesuffix("_std") not in metrics]
    lead = [k for k in ("dataset", "backbone") if any(k in r for r in rows)]
    versus = any(r.get("baseline") is not None for r in rows)
    head = [*lead, "method", "bits", *metrics, *(["÷ baseline"] if versus else []), "train s", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        seconds = _number(r.get("train_seconds"))
        cells = [str(r.get(k, "")) for k in lead] + [str(r.get("method")), str(r.get("bits"))]
        cells += [_mean_pm(r, k) for k in metrics]
        if versus:
            ratio = _number(r.get("mAP@all_vs_baseline"))
            cells.append("" if r.get("baseline") is None else "–" if ratio is None else f"{ratio:.2f}× {r['baseline']}")
        cells += [
            "–" if seconds is None else f"{seconds:.1f}" if seconds < 100 else f"{seconds:.0f}",
            str(r.get("seeds", "–")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markers(name: str) -> tuple[str, str]:
    return f"<!-- leaderboard:{name} start -->", f"<!-- leaderboard:{name} end -->"


def readme_section(name: str, config: str, json_path: Path, readme: Path) -> str:
    """The README's ``leaderboard:NAME`` section (markers included), generated from the leaderboard JSON, or a
    sentence saying the grid has not been run when the JSON does not exist."""
    start, end = markers(name)
    json_path, readme = Path(json_path), Path(readme)
    rel = Path(os.path.relpath(json_path.resolve(), readme.resolve().parent))
    results = rel.parent.as_posix()
    command = f"hashlearn benchmark {config}" + (f" --results {results}" if results != "." else "")
    lines = [start, f"<!-- generated by `{command} --readme {readme.name}` from {rel.as_posix()}; do not edit -->"]
    if not json_path.is_file():
        lines.append(
            f"The `{name}` grid has not been run yet, so there is no leaderboard here: `{command}` runs it "
            f"and writes `{rel.as_posix()}`; `{command} --readme {readme.name}` then puts its table here."
        )
    else:
        from hashlearn.train.runfolder import read_json_mapping

        doc = read_json_mapping(json_path)
        md = rel.with_suffix(".md").as_posix()
        lines += [
            f"**{doc.get('title')}**: {doc.get('dataset')}, protocol {doc.get('protocol')}; "
            f"{doc.get('backbone')}. Mean ± sample std over seeds; training seconds on {doc.get('machine')}. "
            f"Notes and curves: [`{md}`]({md}).",
            "",
            *compact_table(doc),
            "",
        ]
        verdicts = comparison_lines(doc.get("rows") or [])
        if verdicts:
            lines += ["Against the baselines the config compares them with (`÷ baseline`: the ratio of mAP@all):", ""]
            lines += [f"* {v}" for v in verdicts] + [""]
    lines.append(end)
    return "\n".join(lines)


def update_readme(readme: str | Path, name: str, config: str, json_path: Path) -> bool:
    """Rewrite the ``leaderboard:NAME`` section of ``readme`` (between its markers); True when it changed."""
    from hashlearn._atomic import atomic_write_text

    readme = Path(readme)
    if not readme.is_file():
        raise InputError(f"--readme {readme}: no such file")
    text = readme.read_text()
    start, end = markers(name)
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise InputError(
            f"--readme {readme}: needs one line {start} and, after it, one line {end} around the place of the table"
        )
    a, b = text.index(start), text.index(end) + len(end)
    new = text[:a] + readme_section(name, config, json_path, readme) + text[b:]
    if new == text:
        return False
    atomic_write_text(readme, new)
    return True
