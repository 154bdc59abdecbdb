"""CIFAR-10 results of issue "Training core" §6: DPSH vs DMSH (and shallow baselines).

Every run goes through the ``hashlearn train`` CLI; this script only builds, prints and runs
the commands, then writes the results files from the run folders' ``metrics.json``::

    python bench/train_cifar10.py tune-a            # validation-split grid, frozen Lite0 features
    python bench/train_cifar10.py run-a             # A: best validation setting per method + shallow
    python bench/train_cifar10.py tune-b            # B: DMSH variants vs DPSH on the validation split
    python bench/train_cifar10.py run-b             # B: DPSH and DMSH in parallel (1 thread each)
    python bench/train_cifar10.py report            # docs/results/cifar10-*.md + PR plots (32 bits)

``--dry-run`` prints the commands without running them. Run folders: ``runs/cifar10-*``
(git-ignored). Model choices use only ``val_mAP`` (validation split vs training codes);
query-split figures are never read by ``tune-a``/``run-a``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"
DOCS = ROOT / "docs" / "results"
HASHLEARN = str(ROOT / ".venv" / "bin" / "hashlearn")
# 1 thread for torch (--set train.threads=1) and numba: on the 2 shared cores, 2 threads made the
# tiny frozen-head epochs 10-50x slower (0.2 s vs up to 12 s) through oversubscription.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
BITS = "12,24,32,48"
SEED = 0

# --- A: protocol cifar10-1, EfficientNet-Lite0 (ImageNet) frozen, cached pooled features at 96 px
A_COMMON = [
    "--dataset",
    "cifar10",
    "--protocol",
    "cifar10-1",
    "--backbone",
    "efficientnet_lite0",
    "--frozen",
    "--image-size",
    "96",
    "--seed",
    str(SEED),
    "--set",
    "train.threads=1",
]
A_EPOCHS = 40  # same budget (epochs, cosine schedule, Adam, batch 64) for DPSH and DMSH
A_LRS = ["1e-3", "3e-3", "1e-2"]  # the same small learning-rate grid for both methods
# 3e-4 was run first for dpsh, dmsh-spec and dmsh-spec+pool (worst lr for both methods), then dropped
# from the grid to leave the CPU to part B; those runs are still listed in the report
A_LRS_REPORTED = ["3e-4", *A_LRS]
A_TUNE_BITS = "12,48"  # tuning code lengths (validation mAP averaged over them)
TAPS4 = "[stage3,stage5,stage7,pool]"
# method variants tried on validation (name -> --set overrides); every one also at each lr of A_LRS
A_VARIANTS = {
    "dpsh": {
        "dpsh": [],
    },
    "dmsh": {
        # the spec's choices (frozen mode: MLP scale heads on pooled taps, concat-FC fusion, λ_s = 1)
        "dmsh-spec": [],
        "dmsh-spec+pool": [f"method_args.taps={TAPS4}"],
        # ablation: one scale only (the pool tap, as DPSH) with DMSH's MLP head, no deep supervision
        "dmsh-pool-only": ["method_args.taps=[pool]", "method_args.deep_supervision=0"],
        "dmsh-concat-pool-ds0.3": [f"method_args.taps={TAPS4}", "method_args.deep_supervision=0.3"],
        "dmsh-feature-bn": [
            f"method_args.taps={TAPS4}",
            "method_args.fusion=feature",
            "method_args.normalize=bn",
            "method_args.deep_supervision=0.3",
        ],
        "dmsh-feature-l2": [
            f"method_args.taps={TAPS4}",
            "method_args.fusion=feature",
            "method_args.normalize=l2",
            "method_args.deep_supervision=0.3",
        ],
        "dmsh-linear-feature-bn": [
            f"method_args.taps={TAPS4}",
            "method_args.fusion=feature",
            "method_args.normalize=bn",
            "method_args.scale_head=linear",
            "method_args.activation=none",
            "method_args.deep_supervision=0.3",
        ],
    },
}
ABLATIONS = {"dmsh-pool-only"}  # reported, never selected (not multi-scale)
SHALLOW = ["lsh", "pcah", "itq", "sh"]

# --- B: protocol cifar10-II, smallcnn from scratch at 32 px
B_COMMON = [
    "--dataset",
    "cifar10",
    "--protocol",
    "cifar10-II",
    "--backbone",
    "smallcnn",
    "--image-size",
    "32",
    "--seed",
    str(SEED),
    "--set",
    "train.threads=1",
    "--set",
    "train.progress=false",
    # width 16 (16-32-64-128 channels): ~580 train img/s on one core against ~180 at width 32,
    # which buys 8 epochs instead of 1 within the CPU budget
    "--set",
    "backbone_args.width=16",
    "--set",
    "train.eval_every=2",
]
B_EPOCHS = 8
B_SETTINGS = {
    "dpsh": [],
    # MLP scale heads + λ_s = 0.3, the spec's concat-FC fusion: the best of `tune-b` (validation
    # split only). The spec's choices (conv scale heads) stay the method's defaults.
    "dmsh": ["method_args.scale_head=mlp", "method_args.deep_supervision=0.3"],
}
# `tune-b`: 3 epochs on an 8,000-image training subset (data.limit), 32 bits, validation mAP only
B_TUNE = {
    "dpsh": ("dpsh", []),
    "dmsh-spec": ("dmsh", []),
    "dmsh-mlp-ds0": ("dmsh", ["method_args.scale_head=mlp", "method_args.deep_supervision=0.0"]),
    "dmsh-mlp-ds03": ("dmsh", ["method_args.scale_head=mlp", "method_args.deep_supervision=0.3"]),
    # added after the 12-bit B runs (DMSH behind DPSH): linear (untanh'd) codes as DPSH's
    "dmsh-mlp-ds03-lin": (
        "dmsh",
        ["method_args.scale_head=mlp", "method_args.deep_supervision=0.3", "method_args.activation=none"],
    ),
    # DPSH's linear hash layer on the concatenated (BN-normalised) pooled taps, linear codes: the
    # smallest multi-scale step from DPSH
    "dmsh-linear-feature-bn": (
        "dmsh",
        [
            "method_args.scale_head=linear",
            "method_args.fusion=feature",
            "method_args.normalize=bn",
            "method_args.activation=none",
            "method_args.deep_supervision=0.3",
        ],
    ),
}
B_TUNE_BITS = (32, 12)  # 32 chose the B setting before B started; 12 was added to diagnose B's 12 bits


def b_tune_dir(name: str, bits: int) -> Path:
    return RUNS / "cifar10-II-tune" / (name if bits == 32 else f"{name}-{bits}b")


def sets(overrides: list[str]) -> list[str]:
    out = []
    for o in overrides:
        out += ["--set", o]
    return out


def cmd_text(cmd: list[str]) -> str:
    text = " ".join(shlex.quote(c) for c in cmd).replace(shlex.quote(HASHLEARN), "hashlearn")
    return text.replace(str(ROOT) + "/", "")


def run(cmd: list[str], dry: bool) -> None:
    print("$ " + cmd_text(cmd), flush=True)
    if not dry:
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def train_cmd(
    method: str,
    common: list[str],
    bits: str | int,
    out: Path,
    *,
    epochs: str | int | None = None,
    lr: str | None = None,
    overrides: list[str] = (),
    quiet: bool = True,
) -> list[str]:
    """The ``hashlearn train`` command line of one run (every part builds its runs with this)."""
    cmd = [HASHLEARN, "train", "--method", method, *common, "--bits", str(bits)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    if lr is not None:
        cmd += ["--lr", lr]
    cmd += [*sets(overrides), "--out", str(out)]
    return cmd + ["--quiet"] if quiet else cmd


def tune_cmd(method: str, variant: str, overrides: list[str], lr: str) -> list[str]:
    out = RUNS / "cifar10-1-tune" / f"{variant}-lr{lr}"
    return train_cmd(method, A_COMMON, A_TUNE_BITS, out, epochs=A_EPOCHS, lr=lr, overrides=overrides)


def read_metrics(folder: Path) -> list[dict]:
    rows = []
    for f in sorted(folder.glob("*bits/metrics.json"), key=lambda p: int(p.parent.name[:-4])):
        rows.append(json.loads(f.read_text()))
    return rows


def tune_table() -> list[dict]:
    """Validation mAP of every tuning run (val_mAP only)."""
    rows = []
    for method, variants in A_VARIANTS.items():
        for variant, overrides in variants.items():
            for lr in A_LRS_REPORTED:
                ms = read_metrics(RUNS / "cifar10-1-tune" / f"{variant}-lr{lr}")
                if not ms:
                    continue
                vals = {m["bits"]: m["val_mAP"] for m in ms}
                rows.append(
                    {
                        "method": method,
                        "variant": variant,
                        "lr": lr,
                        "overrides": overrides,
                        "val": vals,
                        "mean_val": sum(vals.values()) / len(vals),
                    }
                )
    return rows


def best_setting(method: str) -> dict:
    rows = [r for r in tune_table() if r["method"] == method and r["variant"] not in ABLATIONS]
    if not rows:
        raise SystemExit(f"no tuning runs for {method}; run: python bench/train_cifar10.py tune-a")
    return max(rows, key=lambda r: r["mean_val"])


def a_commands() -> list[tuple[str, list[str]]]:
    cmds = []
    for method in ("dpsh", "dmsh"):
        best = best_setting(method)
        out = RUNS / f"cifar10-1-lite0-{method}"
        cmd = train_cmd(method, A_COMMON, BITS, out, epochs=A_EPOCHS, lr=best["lr"], overrides=best["overrides"])
        cmds.append((method, cmd))
    return cmds + shallow_commands()


def shallow_commands() -> list[tuple[str, list[str]]]:
    common = [*A_COMMON, "--set", "shallow.features=backbone"]
    return [(m, train_cmd(m, common, BITS, RUNS / f"cifar10-1-lite0-{m}")) for m in SHALLOW]


def b_tune_commands() -> list[tuple[str, list[str]]]:
    return [
        (
            name,
            train_cmd(
                method,
                B_COMMON,
                bits,
                b_tune_dir(name, bits),
                epochs=3,
                overrides=["data.limit=8000", "train.eval_every=1", *o],
            ),
        )
        for bits in B_TUNE_BITS
        for name, (method, o) in B_TUNE.items()
    ]


def b_commands(epochs: int) -> list[tuple[str, list[str]]]:
    return [
        (m, train_cmd(m, B_COMMON, BITS, RUNS / f"cifar10-II-smallcnn-{m}", epochs=epochs, overrides=o, quiet=False))
        for m, o in B_SETTINGS.items()
    ]


# --- report ------------------------------------------------------------------------------
def _fmt(x, nd=4):
    return "–" if x is None else f"{x:.{nd}f}"


def results_table(folders: dict[str, Path]) -> tuple[list[str], dict]:
    metrics = {m: {r["bits"]: r for r in read_metrics(f)} for m, f in folders.items()}
    head = [
        "method",
        "bits",
        "mAP@all",
        "mAP@1000",
        "P@r2",
        "best epoch",
        "val mAP",
        "train s",
        "img/s",
        "DMSH/DPSH (mAP@all)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, by_bits in metrics.items():
        for bits, r in sorted(by_bits.items()):
            ratio = ""
            if m == "dmsh" and bits in metrics.get("dpsh", {}):
                ratio = f"{r['mAP@all'] / metrics['dpsh'][bits]['mAP@all']:.3f}"
            lines.append(
                "| "
                + " | ".join(
                    [
                        m,
                        str(bits),
                        _fmt(r.get("mAP@all")),
                        _fmt(r.get("mAP@1000")),
                        _fmt(r.get("P@r2")),
                        str(r.get("best_epoch", "–")),
                        _fmt(r.get("val_mAP")),
                        f"{r.get('training_seconds', 0):.1f}",
                        f"{r.get('images_per_second', 0):.0f}",
                        ratio,
                    ]
                )
                + " |"
            )
    return lines, metrics


def pr_plot(metrics: dict, bits: int, path: Path) -> bool:
    from hashlearn.eval.plots import plot_curves

    res = {}
    for m, by_bits in metrics.items():
        r = by_bits.get(bits)
        if r is None or "curves" not in r:
            continue
        c = r["curves"]
        res[m] = SimpleNamespace(
            pr_recall=c["pr_recall"],
            pr_precision=c["pr_precision"],
            bits=bits,
            curve_n=c["n"],
            precision_at_n=c["precision_at_n"],
        )
    if not res:
        return False
    plot_curves(res, path)
    return True


def protocol_lines(metrics: dict) -> list[str]:
    for by_bits in metrics.values():
        for r in by_bits.values():
            return [
                f"* protocol `{r['protocol']}`: sizes {r['sizes']} (query / train / val / database), "
                f"seed {r['seed']}, relevance: {r.get('relevance')}, tie rule `{r.get('tie_rule')}`, "
                f"mAP@all = mAP over the whole database, P@r2 = precision within Hamming radius 2 "
                f"(empty queries {r.get('empty_queries')}).",
                f"* protocol description: `{json.dumps(r.get('protocol_description'))}`",
            ]
    return []


def dmsh_vs_dpsh(metrics: dict) -> list[str]:
    d, p = metrics.get("dmsh", {}), metrics.get("dpsh", {})
    out = []
    for bits in sorted(set(d) & set(p)):
        a, b = d[bits]["mAP@all"], p[bits]["mAP@all"]
        word = "beats" if a > b else "does NOT beat"
        out.append(f"* {bits} bits: DMSH {a:.4f} vs DPSH {b:.4f} (Δ {a - b:+.4f}): DMSH {word} DPSH.")
    return out


def hparams_lines(metrics: dict) -> list[str]:
    out = []
    for m in ("dpsh", "dmsh"):
        r = next(iter(metrics.get(m, {}).values()), None)
        if r:
            out.append(f"* {m} hyper-parameters: `{json.dumps(r.get('method_hparams'))}`")
    return out


def machine_line(load: str) -> str:
    return (
        f"Machine: 2 CPU cores shared with other concurrent work (load average ≈ {load} during the runs), "
        "24 GiB, no GPU; training seconds and images/s are wall-clock on that shared machine and "
        "only comparable within this file."
    )


def report_a() -> None:
    folders = {m: RUNS / f"cifar10-1-lite0-{m}" for m in ("dpsh", "dmsh", *SHALLOW)}
    table, metrics = results_table(folders)
    ok = pr_plot(metrics, 32, DOCS / "cifar10-1-frozen-lite0-pr32.png")
    tune = tune_table()
    lines = [
        "# CIFAR-10 protocol cifar10-1, EfficientNet-Lite0 (ImageNet) frozen, 96 px",
        "",
        "Generated by `python bench/train_cifar10.py report` from the run folders' `metrics.json` "
        "(no hand-typed numbers).",
        "",
        "Backbone: EfficientNet-Lite0 with ImageNet weights, frozen; the heads are trained on cached "
        "globally average-pooled tap features (stage3, stage5, stage7, pool) of 96×96 inputs "
        "(CIFAR images upsampled from 32 px). 96 px instead of the backbone's 224 px is a CPU "
        "compromise (feature extraction of 60,000 images took 44 min at 96 px). DPSH and the shallow "
        "methods (LSH, PCAH, ITQ, SH) use the `pool` feature (1280-d); DMSH uses its taps.",
        "",
        *protocol_lines(metrics),
        f"* model selection: best validation mAP@all epoch (validation codes vs training codes); "
        f"{A_EPOCHS} epochs, Adam, cosine schedule, batch 64 for both deep methods.",
        *hparams_lines(metrics),
        "* in frozen mode DMSH's `scale_head=conv` (the spec's conv heads) becomes the MLP head on the pooled "
        "tap (FC→BN→ReLU→FC→ReLU→FC→tanh, 256 wide); DPSH is the paper's single linear hash layer on `pool`.",
        "* `val mAP` is validation queries against the *training* codes (what the trainer selects on); "
        "it is optimistic compared with the query split against the 59,000-image database.",
        f"* {machine_line('3–4')} Torch and numba used 1 thread (`train.threads=1`, `NUMBA_NUM_THREADS=1`).",
        "",
        "## Results",
        "",
        *table,
        "",
        "Shallow methods: `train s` is the fitting time; img/s = training images / fitting time. "
        "`best epoch`/`val mAP` do not apply.",
        "",
        "## DMSH vs DPSH",
        "",
        *dmsh_vs_dpsh(metrics),
        "",
        "What the validation grid below shows about where DMSH's gain comes from: the single-scale "
        "ablation (`dmsh-pool-only`: DMSH's MLP head on `pool` only) is well above DPSH's linear layer, so part "
        "of the gain is head capacity on frozen features; the multi-scale variants are clearly above that "
        "ablation, and even a linear hash layer on the concatenated normalised taps "
        "(`dmsh-linear-feature-bn`) is above DPSH — the earlier stages add information the pooled last "
        "layer lacks. Feature-level fusion (`feature`, BN or L2 per scale) was on par with the spec's "
        "concat-FC fusion, not better; λ_s = 0.3 was better than the spec's 1; lr 1e-2 breaks every tanh "
        "variant.",
        "",
    ]
    if ok:
        lines += ["## Precision–recall at 32 bits", "", "![PR 32 bits](cifar10-1-frozen-lite0-pr32.png)", ""]
    lines += [
        "## Validation tuning (validation split only)",
        "",
        f"Same grid of learning rates {A_LRS} for both methods (3e-4 was also run for the first three "
        "variants, worst for both methods, then dropped to leave the CPU to part B), "
        f"{A_EPOCHS} epochs, code lengths "
        f"{A_TUNE_BITS}; the setting with the best mean validation mAP@all is used for the reported "
        "runs (`dmsh-pool-only` is an ablation, never selected).",
        "",
        "| method | variant | lr | val mAP per bits | mean |",
        "|---|---|---|---|---|",
    ]
    for r in tune:
        vals = ", ".join(f"{b}: {v:.4f}" for b, v in sorted(r["val"].items()))
        lines.append(f"| {r['method']} | {r['variant']} | {r['lr']} | {vals} | {r['mean_val']:.4f} |")
    lines += ["", "Variants (`--set` overrides):", ""]
    for variants in A_VARIANTS.values():
        for v, o in variants.items():
            lines.append(f"* `{v}`: `{' '.join(o) or '(defaults)'}`")
    lines += [
        "",
        "## Commands",
        "",
        "```",
        "python bench/train_cifar10.py tune-a   # the grid above",
        "python bench/train_cifar10.py run-a",
        "python bench/train_cifar10.py report",
        "# which run:",
    ]
    try:
        lines += [cmd_text(c) for _, c in a_commands()]
    except SystemExit:
        pass
    lines += ["```", ""]
    (DOCS / "cifar10-1-frozen-lite0.md").write_text("\n".join(lines))
    print(f"wrote {DOCS / 'cifar10-1-frozen-lite0.md'}")


def b_tune_lines() -> list[str]:
    """The `tune-b` table: validation mAP@all of each variant (validation split only)."""
    lines = [
        "| variant | overrides | " + " | ".join(f"val mAP@all ({b} bits)" for b in B_TUNE_BITS) + " | train img/s |",
        "|---|---|" + "---|" * len(B_TUNE_BITS) + "---|",
    ]
    for name, (_method, overrides) in B_TUNE.items():
        cells, speed = [], ""
        for bits in B_TUNE_BITS:
            ms = read_metrics(b_tune_dir(name, bits))
            cells.append(f"{ms[0]['val_mAP']:.4f}" if ms else "not run")
            speed = speed or (f"{ms[0].get('images_per_second', 0):.0f}" if ms else "")
        lines.append(f"| {name} | `{' '.join(overrides) or '-'}` | " + " | ".join(cells) + f" | {speed} |")
    return lines


def val_curves(folder: Path) -> dict[int, dict[int, float]]:
    """``{bits: {epoch: val mAP}}`` from each code length's ``log.jsonl``."""
    out: dict[int, dict[int, float]] = {}
    for log in sorted(folder.glob("*bits/log.jsonl")):
        bits = int(log.parent.name.removesuffix("bits"))
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("val_map") is not None:
                out.setdefault(bits, {})[rec["epoch"]] = rec["val_map"]
    return out


def b_analysis(metrics: dict) -> list[str]:
    """Learning curves and the agreement of validation and query order, computed from the runs."""
    curves = {m: val_curves(RUNS / f"cifar10-II-smallcnn-{m}") for m in B_SETTINGS}
    epochs = sorted({e for by in curves.values() for c in by.values() for e in c})
    lines = [
        "### Validation mAP by epoch (the selection metric)",
        "",
        "| method | bits | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
        "|---|---|" + "---|" * len(epochs),
    ]
    for m, by in curves.items():
        for bits, c in sorted(by.items()):
            lines.append(f"| {m} | {bits} | " + " | ".join(_fmt(c.get(e)) for e in epochs) + " |")
    d, p = metrics.get("dmsh", {}), metrics.get("dpsh", {})
    common = sorted(set(d) & set(p))
    wins = [b for b in common if d[b]["mAP@all"] > p[b]["mAP@all"]]
    agree = [b for b in common if (d[b]["val_mAP"] > p[b]["val_mAP"]) == (b in wins)]
    lines += [
        "",
        f"DMSH beats DPSH at {len(wins)} of {len(common)} code lengths on the query split; the validation "
        f"split orders the two methods the same way at {len(agree)} of {len(common)}.",
        "",
    ]
    grid = []  # best DMSH variant of tune-b vs DPSH, per code length (validation only)
    for bits in B_TUNE_BITS:
        vals = {n: read_metrics(b_tune_dir(n, bits)) for n in B_TUNE}
        vals = {n: ms[0]["val_mAP"] for n, ms in vals.items() if ms}
        dm = {n: v for n, v in vals.items() if B_TUNE[n][0] == "dmsh"}
        if dm and "dpsh" in vals:
            best = max(dm, key=dm.get)
            grid.append(f"{bits} bits: best DMSH variant `{best}` {dm[best]:.4f} vs DPSH {vals['dpsh']:.4f}")
    if grid:
        lines += ["`tune-b` (short subset runs, validation): " + "; ".join(grid) + ".", ""]
    if len(wins) < len(common):
        lines += [
            "**Why DMSH does not beat DPSH here.** What the runs above show: (1) it is not a selection "
            "artefact — the validation split ranks the methods as the query split does; (2) it is not the "
            "spec's conv heads alone — the `tune-b` grid replaced them with MLP heads, tried linear codes "
            "instead of tanh, no per-scale losses, and even the smallest multi-scale step from DPSH (DPSH's "
            "own linear hash layer on the BN-normalised concatenation of the pooled block2–block4 maps, "
            "`dmsh-linear-feature-bn`), with the best of each code length just above; (3) where a DMSH "
            "variant led on the short subset runs, the full training set and 8 epochs reversed it: DPSH's "
            "validation curve rises faster (table above). Our reading: from "
            "scratch, the whole trunk adapts to the hashing loss, so DPSH's last block already carries what "
            "block2/block3 add, while DMSH's extra heads and fusion layer are more parameters to fit from "
            "the same pairs; the multi-scale gain of part A comes from *frozen* ImageNet features, whose "
            "earlier stages hold information the frozen last stage lacks. Not tested here for lack of CPU "
            "time: longer schedules (the spec's 100–150 epochs), a per-method learning rate, and DMSH on a "
            "fine-tuned pretrained backbone.",
            "",
        ]
    return lines


def report_b(epochs: int) -> None:
    folders = {m: RUNS / f"cifar10-II-smallcnn-{m}" for m in B_SETTINGS}
    table, metrics = results_table(folders)
    ok = pr_plot(metrics, 32, DOCS / "cifar10-II-smallcnn-pr32.png")
    missing = [f"{m} {b} bits" for m in B_SETTINGS for b in BITS.split(",") if int(b) not in metrics.get(m, {})]
    epochs_seen = sorted({r.get("epochs_run") for by in metrics.values() for r in by.values()})
    lines = [
        "# CIFAR-10 protocol cifar10-II, smallcnn from scratch, 32 px",
        "",
        "Generated by `python bench/train_cifar10.py report` from the run folders' `metrics.json` "
        "(no hand-typed numbers).",
        "",
        "Backbone: `smallcnn` (4 conv blocks, trained from scratch) on 32×32 images, hflip + 2 px "
        "translation augmentation. DPSH: linear hash layer on the pooled last block; DMSH: taps "
        "block2–block4.",
        "",
        *protocol_lines(metrics),
        f"* epochs: {epochs_seen} (flag `--epochs` of `run-b`; a CPU budget, far below the spec's "
        "100–150 epochs, so absolute numbers are low), Adam lr 1e-3, cosine schedule, batch 64, "
        "validation mAP every 2 epochs (model selection), both methods the same budget; the two methods "
        "run in parallel, 1 torch thread each.",
        "* backbone width 16 (channels 16-32-64-128): ~3x the images/s of width 32 on this CPU, which "
        "buys 8 epochs instead of 1 in the time available.",
        *hparams_lines(metrics),
        f"* {machine_line('2–3')}",
        "* DMSH settings for B were chosen on the validation split before B started (`tune-b`: 3 epochs "
        "on an 8,000-image training subset, 32 bits, same lr for all): the spec's conv scale heads against "
        "MLP scale heads, with and without per-scale losses λ_s; DPSH measured the same way. The 12-bit "
        "column and the last two variants were added after B's 12-bit result, to look for a DMSH setting "
        "that beats DPSH there (none did):",
        "",
        *b_tune_lines(),
        "",
    ]
    if missing:
        lines += [
            f"**Missing runs (not finished in the time available):** {', '.join(missing)}. "
            "Complete them with the `run-b` command below (finished code lengths resume from their last "
            "checkpoint and are only re-encoded and re-evaluated), then re-run `report`.",
            "",
        ]
    lines += ["## Results", "", *table, "", "## DMSH vs DPSH", "", *dmsh_vs_dpsh(metrics), ""]
    lines += b_analysis(metrics)
    if ok:
        lines += ["## Precision–recall at 32 bits", "", "![PR 32 bits](cifar10-II-smallcnn-pr32.png)", ""]
    lines += [
        "## Commands",
        "",
        "```",
        "python bench/train_cifar10.py tune-b",
        f"python bench/train_cifar10.py run-b --epochs {epochs}",
        "python bench/train_cifar10.py report",
        "# which run (in parallel):",
        *[cmd_text(c) for _, c in b_commands(epochs)],
        "```",
        "",
    ]
    (DOCS / "cifar10-II-smallcnn.md").write_text("\n".join(lines))
    print(f"wrote {DOCS / 'cifar10-II-smallcnn.md'}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["tune-a", "run-a", "tune-b", "run-b", "report", "all"])
    ap.add_argument("--epochs", type=int, default=B_EPOCHS, help="epochs of the B runs (CPU budget)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--only", default="", help="run-a: comma-separated methods to run (default: all)")
    args = ap.parse_args(argv)
    if args.step in ("tune-a", "all"):
        for method, variants in A_VARIANTS.items():
            for variant, overrides in variants.items():
                for lr in A_LRS:
                    done = RUNS / "cifar10-1-tune" / f"{variant}-lr{lr}" / "summary.json"
                    if done.exists() and not args.dry_run:
                        print(f"# done already: {done.parent.name}")
                        continue
                    run(tune_cmd(method, variant, overrides, lr), args.dry_run)
    if args.step in ("run-a", "all"):
        only = set(args.only.split(",")) if args.only else None
        cmds = [(m, c) for m, c in (shallow_commands() if only and not only & {"dpsh", "dmsh"} else a_commands())]
        for m, c in cmds:
            if only and m not in only:
                continue
            if (RUNS / f"cifar10-1-lite0-{m}" / "summary.json").exists() and not args.dry_run:
                print(f"# done already: {m}")
                continue
            run(c, args.dry_run)
    if args.step in ("tune-b", "all"):
        for _name, c in b_tune_commands():
            out = Path(c[c.index("--out") + 1])
            if (out / "summary.json").exists() and not args.dry_run:
                print(f"# done already: {out.name}")
                continue
            run(c, args.dry_run)
    if args.step in ("run-b", "all"):
        procs = []
        for m, c in b_commands(args.epochs):
            print("$ " + cmd_text(c), flush=True)
            if not args.dry_run:
                RUNS.mkdir(exist_ok=True)
                log = open(RUNS / f"cifar10-II-smallcnn-{m}.log", "a")
                procs.append(subprocess.Popen(["nice", "-n", "5", *c], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        rc = [p.wait() for p in procs]
        if any(rc):
            sys.exit(f"B runs failed: exit codes {rc}")
    if args.step in ("report", "all"):
        DOCS.mkdir(parents=True, exist_ok=True)
        report_a()
        report_b(args.epochs)


if __name__ == "__main__":
    main()
