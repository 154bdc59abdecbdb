"""ATH (spec §2) against DTSH, DPSH and DMSH on one backbone, cut and schedule; per-class precision@10.

Every run goes through ``hashlearn train``; this script builds, prints and runs the commands, then
writes the results files from the run folders (their ``metrics.json`` and saved codes)::

    python bench/ath.py run [--only ath,dtsh] [--dry-run]     # CIFAR-10 cifar10-1 (runs/cifar10-1-ft-stage5-*)
    python bench/ath.py report                                # docs/results/cifar10-1-ath.{md,json}
    hashlearn data prepare brain-mri --size 160               # once: the MRI set under $HASHLEARN_DATA
    python bench/ath.py run --set brain-mri                   # brain MRI (runs/brain-mri-ft-*)
    python bench/ath.py report --set brain-mri                # docs/results/brain-mri-ath.{md,json}

CIFAR-10: EfficientNet-Lite0 (ImageNet weights) at 96 px, fine-tuned above ``stage5`` (the cut chosen on
validation by ``bench/finetune_cifar10.py``; its activations are cached and shared), 48 bits, 15 epochs,
Adam lr 1e-3 (layers above the cut at lr/10), cosine schedule, batch 64. The DPSH and DMSH rows are the
48-bit runs of ``bench/finetune_cifar10.py`` (same backbone, cut, size, epochs and optimiser). ATH inserts its
attention after the cut (``method_args.attention_at=stage5``: the spec's placement inside the backbone, the
rest of the network runs on the attended map); ATH and DTSH use the class-balanced batch sampler they
prefer (``train.sampler: auto``). Ablations: ``ath-triplet-only`` (``mu=0``), ``ath-ce-only``
(``triplet_weight=0``).

Per-class precision@10 and mAP@100 are computed from each run's saved query and database codes by the one
evaluator (:func:`hashlearn.eval.metrics.evaluate_per_class`, :func:`hashlearn.eval.evaluate`), labels
looked up by id in the prepared dataset. A run folder without ``metrics.json`` (still training) is listed
as such, never estimated.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from train_cifar10 import DOCS, RUNS, cmd_text, machine_line, read_metrics, run, train_cmd  # noqa: E402

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
BITS = 48
EPOCHS = 15
LR = "1e-3"

#: what each experiment set is: its runs (variant → method, --set overrides, description) and how they train
SETS = {
    "cifar10": {
        "name": "cifar10-1-ath",
        "dataset": "cifar10",
        "protocol": "cifar10-1",
        "size": 96,
        "cut": "stage5",
        "folder": lambda v: RUNS / f"cifar10-1-ft-stage5-{v}",
        "common": ["--dataset", "cifar10", "--protocol", "cifar10-1", "--backbone", "efficientnet_lite0",
                   "--image-size", "96", "--seed", "0", "--finetune-from", "stage5", "--set", "train.threads=2"],
        "baselines": {"dpsh": "DPSH as published (pairs against U of all training images), one linear layer; "
                              "run by bench/finetune_cifar10.py",
                      "dpsh-batch": "DPSH with the pairs of the batch, one linear layer; run by "
                                    "bench/finetune_cifar10.py",
                      "dpsh-mlp": "DPSH with the pairs of the batch and DMSH's MLP scale head; run by "
                                  "bench/finetune_cifar10.py",
                      "dmsh": "DMSH, conv scale heads on stage5/stage7/head maps; run by bench/finetune_cifar10.py",
                      "dmsh-mlp": "DMSH, MLP scale heads on the pooled stage5/stage7/head taps; run by "
                                  "bench/finetune_cifar10.py"},
    },
    "brain-mri": {
        "name": "brain-mri-ath",
        "dataset": "brain-mri",
        "protocol": "official-split",
        "size": 160,
        "cut": "stage5",
        "folder": lambda v: RUNS / f"brain-mri-ft-stage5-{v}",
        "common": ["--dataset", "brain-mri", "--protocol", "official-split", "--backbone",
                   "efficientnet_lite0", "--image-size", "160", "--seed", "0", "--finetune-from", "stage5",
                   "--set", "train.threads=2"],
        "baselines": {},
    },
}

VARIANTS = {
    "ath": ("ath", ["method_args.attention_at=stage5"],
            "ATH: attention inserted after stage5, triplet + cross-entropy (3 images) + |u|→1, random triplets"),
    "dtsh": ("dtsh", [], "DTSH triplet likelihood, all triplets of the batch, one linear layer"),
    "ath-triplet-only": ("ath", ["method_args.attention_at=stage5", "method_args.mu=0"],
                         "ablation: ATH without the cross-entropy (mu=0)"),
    "ath-ce-only": ("ath", ["method_args.attention_at=stage5", "method_args.triplet_weight=0"],
                    "ablation: ATH without the triplet term (triplet_weight=0)"),
}
MRI_VARIANTS = {"dpsh": ("dpsh", [], "DPSH as published (pairs against U of all training images)")}


def variants(which: str) -> dict:
    return {**VARIANTS, **(MRI_VARIANTS if which == "brain-mri" else {})}


def commands(which: str, only=None) -> list[tuple[str, list[str]]]:
    s = SETS[which]
    return [(v, train_cmd(m, s["common"], BITS, s["folder"](v), epochs=EPOCHS, lr=LR, overrides=over))
            for v, (m, over, _) in variants(which).items() if not only or v in only]


def labels_by_id(dataset: str):
    from hashlearn.train.run import load_data

    ds = load_data(dataset, progress=False)
    where = {str(i): n for n, i in enumerate(ds.ids)}
    return ds, where


def code_metrics(run_dir: Path, ds, where: dict) -> dict:
    """mAP@100 and per-class P@10 / mAP@all of a finished run, from its saved codes, by the evaluator."""
    from hashlearn.codes import load_codes
    from hashlearn.eval import evaluate
    from hashlearn.eval.metrics import evaluate_per_class

    q = load_codes(run_dir / "query_codes.npz")
    db = load_codes(run_dir / "database_codes.npz")
    q_lab = np.asarray(ds.labels)[[where[str(i)] for i in q.ids]]
    db_lab = np.asarray(ds.labels)[[where[str(i)] for i in db.ids]]
    res = evaluate(q.packed, db.packed, q_lab, db_lab, topk=(100,), bits=q.bits, curve_n=[10])
    per_class = evaluate_per_class(q.packed, db.packed, q_lab, db_lab, n=(10,), topk=("all",), bits=q.bits,
                                   class_names=list(ds.class_names))
    return {"mAP@100": float(res.map[100]), "P@10": float(res.precision_at_n[0]), "per_class": per_class}


def report(which: str) -> None:
    from hashlearn.eval.results import row_from_metrics, write_results

    s = SETS[which]
    ds, where = labels_by_id(s["dataset"])
    known = {**{v: d[2] for v, d in variants(which).items()}, **s["baselines"]}
    rows, per_class, pending, curves = [], {}, [], []
    for v in known:
        folder = s["folder"](v)
        finished = [m for m in read_metrics(folder) if m["bits"] == BITS]
        if not finished:
            if folder.exists():
                logged = (folder / f"{BITS}bits" / "log.jsonl")
                epochs = len(logged.read_text().splitlines()) if logged.exists() else 0
                pending.append(f"`{v}`: still training when this file was generated ({epochs} of {EPOCHS} epochs "
                               f"logged in {folder.relative_to(RUNS.parent)})")
            continue
        m = finished[0]
        extra = code_metrics(Path(m["run_dir"]) if Path(m["run_dir"]).is_absolute()
                             else RUNS.parent / m["run_dir"], ds, where)
        rows.append(row_from_metrics(m, variant=v, cut=s["cut"], epochs=m.get("epochs_run"),
                                     sampler=_sampler(m), **{"mAP@100": extra["mAP@100"], "P@10": extra["P@10"]}))
        per_class[v] = extra["per_class"]
        hist = m.get("val_history") or []
        if hist:
            curves.append(f"* {v}: " + ", ".join(f"e{h['epoch']} {h['val_mAP']:.3f}" for h in hist))
    classes = [c["class"] for c in next(iter(per_class.values()), [])]
    table = []
    if per_class:
        head = ["class", "queries", *[f"{v} P@10" for v in per_class]]
        table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i, c in enumerate(classes):
            cells = [str(c), str(per_class[next(iter(per_class))][i]["queries"]),
                     *[f"{per_class[v][i]['P@10']:.3f}" for v in per_class]]
            table.append("| " + " | ".join(cells) + " |")
    compare = _compare(rows)
    try:
        picture = _attention_picture(which, ds, per_class)
    except Exception as exc:  # noqa: BLE001 - the picture is an extra; the results file must still be written
        print(f"note: no attention picture ({type(exc).__name__}: {exc})", file=sys.stderr)
        picture = None
    cmds = [cmd_text(c) for v, c in commands(which) if v in per_class or any(f"`{v}`" in p for p in pending)]
    if s["baselines"]:
        cmds.append("baselines " + ", ".join(s["baselines"]) + ": `python bench/finetune_cifar10.py run` (48 bits)")
    write_results(
        DOCS, s["name"],
        title=f"ATH vs DTSH, DPSH, DMSH — {s['dataset']} {s['protocol']}, EfficientNet-Lite0 fine-tuned above "
              f"{s['cut']}, {s['size']} px, {BITS} bits, {EPOCHS} epochs",
        protocol=s["protocol"], dataset=s["dataset"],
        backbone=f"EfficientNet-Lite0 (ImageNet weights; the papers' ResNet-50 is not available here), {s['size']} "
                 f"px, layers above the cached cut {s['cut']} trained, {EPOCHS} epochs, {BITS} bits",
        command=f"python bench/ath.py report --set {which}",
        machine=machine_line("15–21").removeprefix("Machine: "),
        rows=rows,
        notes=[
            "every row: the same backbone, image size, cut, code length, epochs, optimiser (Adam, heads lr 1e-3, "
            "layers above the cut lr/10, cosine, batch 64) and model selection (validation mAP each epoch)",
            "variants (column `variant`): " + "; ".join(f"`{v}`: {d}" for v, d in known.items()),
            "P@10 and mAP@100: from the saved codes by the evaluator (ties: expected over tie orders); "
            "per-class P@10 below: the evaluator on each class's queries",
            *pending,
            *([f"attention map of the `ath` run over the first query image: `{picture.name}` "
               "(`hashlearn attention`)"] if picture else []),
        ],
        sections=[("Per-class precision@10", table or ["(no finished run)"]),
                  ("How this compares with the seed's claim", compare),
                  ("Validation mAP per epoch", curves or ["(none)"]),
                  ("Commands", [f"* `{c}`" for c in cmds] or ["(none)"])],
    )
    print(f"wrote {DOCS / s['name']}.md and .json ({len(rows)} rows; {len(pending)} still training)")


def _attention_picture(which: str, ds, per_class: dict) -> Path | None:
    """``hashlearn attention`` of the finished ``ath`` run on the first query image (written as a PNG first)."""
    if "ath" not in per_class:
        return None
    import tempfile

    from PIL import Image

    from hashlearn.codes import load_codes
    from hashlearn.train.attention_map import draw_attention

    s = SETS[which]
    run_dir = s["folder"]("ath") / f"{BITS}bits"
    first = str(load_codes(run_dir / "query_codes.npz").ids[0])
    image = np.asarray(ds.images[[str(i) for i in ds.ids].index(first)])
    out = DOCS / f"{s['name']}-attention.png"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"query-{first.replace('/', '_')}.png"
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
        draw_attention(run_dir, path, out)
    return out


def _sampler(metrics: dict) -> str:
    path = Path(metrics["run_dir"])
    path = path if path.is_absolute() else RUNS.parent / path
    from hashlearn.train.config import read_config

    saved = read_config(path / "config.yaml").get("train", {}).get("sampler", "random (before the setting)")
    return str(saved)


def _compare(rows: list[dict]) -> list[str]:
    """ATH's claim (spec §2): triplet sampling + cross-entropy on all three images gives better codes than
    other deep hashing losses, and helps small classes. Said for the rows that exist."""
    by = {r["variant"]: r for r in rows}
    ath = by.get("ath")
    if ath is None:
        return ["ATH has not finished here, so the claim is not tested yet."]
    out = []
    for base in ("dtsh", "dpsh", "dpsh-batch", "dpsh-mlp", "dmsh", "dmsh-mlp", "ath-triplet-only", "ath-ce-only"):
        if base in by:
            a, b = ath["mAP@all"], by[base]["mAP@all"]
            out.append(f"* ATH mAP@all {a:.4f} vs {base} {b:.4f}: ATH {'beats' if a > b else 'does NOT beat'} {base}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["run", "report"])
    ap.add_argument("--set", dest="which", choices=sorted(SETS), default="cifar10")
    ap.add_argument("--only", help="comma-separated variants to run (default: all)")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    if args.step == "run":
        only = args.only.split(",") if args.only else None
        for _, cmd in commands(args.which, only):
            run(cmd, args.dry_run)
    else:
        report(args.which)


if __name__ == "__main__":
    main()
