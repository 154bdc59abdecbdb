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
BITS = 48  # the code length of every variant; the main methods also run at each set's ``bits``
EPOCHS = 15
LR = "1e-3"
#: the imbalanced runs of each set: this class keeps 10 % of its training images (queries and database unchanged)
MINORITY = {"brain-mri": "meningioma", "cifar10": "cat"}

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
                   "--image-size", "96", "--seed", "0", "--finetune-from", "stage5", "--set", "train.threads=1"],
        "bits": [48, 12, 24, 36],
        "epochs": EPOCHS,
        # the 12/24/36-bit runs and the 48-bit ablations: two at a time, one thread each (--jobs 2); the 48-bit
        # ath/dtsh runs and the baselines ran in earlier sessions beside other jobs (their train s is inflated)
        "load": "2–3 for the 12/24/36-bit runs and the 48-bit ablations (train s ≈ 250–360); 15–21 for the "
                "48-bit ath and dtsh runs and the dpsh/dmsh baselines, which ran beside other jobs",
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
                   "--set", "train.threads=1"],  # two runs at once on the 2 cores (--jobs 2)
        "bits": [48, 12, 24, 36],
        "epochs": 10,
        "load": "2–4 (two training runs at a time, one thread each, plus tests)",
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
                    "ablation: ATH without the triplet term (triplet_weight=0); the class head reads the pooled "
                    "feature (the spec's default), so only the |u|→1 term reaches the hash layer"),
    "ath-ce-only-code": ("ath", ["method_args.attention_at=stage5", "method_args.triplet_weight=0",
                                 "method_args.class_from=code"],
                         "ablation: cross-entropy only, the class head reading the codes u (class_from=code: the "
                         "spec's option), so the classification does train the codes"),
    "ath-triplet-only-hamming": ("ath", ["method_args.attention_at=stage5", "method_args.mu=0",
                                         "method_args.distance=hamming"],
                                 "ablation: triplet only with the relaxed Hamming distance ½(k − u_a·u_b) (whose "
                                 "gradient does not vanish when the codes coincide)"),
}
MRI_VARIANTS = {
    "dpsh": ("dpsh", ["method_args.pairs=batch"],
             "DPSH with the pairs of the batch (as published, against U of all training images, it stayed at chance "
             "on cifar10-1), one linear layer"),
    "dmsh": ("dmsh", ["method_args.taps=[stage5,stage7,head]", "method_args.deep_supervision=0.3"],
             "DMSH, the spec's conv scale heads on the stage5/stage7/head maps"),
}
#: the variant each imbalanced run is compared with (trained on all images): on cifar10 the DPSH with the pairs of
#: the batch is bench/finetune_cifar10.py's ``dpsh-batch``
FULL = {"brain-mri": {}, "cifar10": {"dpsh": "dpsh-batch"}}


def imbalanced_variants(which: str) -> dict:
    """ATH, DTSH and DPSH (pairs of the batch) trained with the set's minority class cut to 10 %."""
    minority = MINORITY[which]
    cut = f"protocol_args={{train_class_fraction: {{{minority}: 0.1}}}}"
    return {
        "ath-imbalanced": ("ath", ["method_args.attention_at=stage5", cut],
                           f"ATH trained with {minority} cut to 10 % of its training images"),
        "dtsh-imbalanced": ("dtsh", [cut], f"DTSH trained with {minority} cut to 10 % of its training images"),
        "dpsh-imbalanced": ("dpsh", ["method_args.pairs=batch", cut],
                            f"DPSH (pairs of the batch) trained with {minority} cut to 10 % of its training images"),
    }
#: the variants run at every code length of a set (the others at BITS only)
ALL_BITS = ("ath", "dtsh", "dpsh", "dmsh")


def variants(which: str) -> dict:
    return {**VARIANTS, **(MRI_VARIANTS if which == "brain-mri" else {}), **imbalanced_variants(which)}


def variant_bits(which: str, v: str) -> list[int]:
    return SETS[which]["bits"] if v in ALL_BITS else [BITS]


def commands(which: str, only=None, skip_done: bool = False) -> list[tuple[str, list[str]]]:
    """One ``hashlearn train`` per (variant, code length), BITS first (the comparisons all have it);
    ``skip_done``: leave out the runs that have finished (their ``metrics.json`` exists)."""
    s = SETS[which]
    out = []
    for bits in s["bits"]:
        for v, (m, over, _) in variants(which).items():
            if skip_done and (s["folder"](v) / f"{bits}bits" / "metrics.json").exists():
                print(f"done already: {v} at {bits} bits ({s['folder'](v)})")
                continue
            if (not only or v in only) and bits in variant_bits(which, v):
                out.append((v, train_cmd(m, s["common"], bits, s["folder"](v), epochs=s["epochs"], lr=LR,
                                         overrides=over)))
    return out


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
    rows, per_class, pending, curves, missing = [], {}, [], [], []
    for bits in sorted(s["bits"]):
        for v in known:
            if v in variants(which) and bits not in variant_bits(which, v):
                continue  # (baselines run by another script: every code length of the set they have)
            folder = s["folder"](v)
            finished = [m for m in read_metrics(folder) if m["bits"] == bits]
            if not finished:
                logged = folder / f"{bits}bits" / "log.jsonl"
                if not logged.exists():
                    if v in variants(which):  # (baselines are another script's runs)
                        missing.append(f"{v} at {bits} bits")
                else:
                    epochs = len(logged.read_text().splitlines())
                    pending.append(f"`{v}` at {bits} bits: still training when this file was generated ({epochs} of "
                                   f"{s['epochs']} epochs logged in {folder.relative_to(RUNS.parent)})")
                continue
            m = finished[0]
            extra = code_metrics(Path(m["run_dir"]) if Path(m["run_dir"]).is_absolute()
                                 else RUNS.parent / m["run_dir"], ds, where)
            minority = MINORITY[which]
            rows.append(row_from_metrics(m, variant=v, cut=s["cut"], epochs=m.get("epochs_run"),
                                         sampler=_sampler(m), **{"mAP@100": extra["mAP@100"], "P@10": extra["P@10"],
                                                                 f"{minority} P@10": _p10(extra, minority)}))
            if bits == BITS:
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
    compare = _compare([r for r in rows if r["bits"] == BITS]) + _compare_bits(rows, s["bits"]) \
        + _compare_minority(per_class, which)
    try:
        picture = _attention_picture(which, ds, per_class)
    except Exception as exc:  # noqa: BLE001 - the picture is an extra; the results file must still be written
        print(f"note: no attention picture ({type(exc).__name__}: {exc})", file=sys.stderr)
        picture = None
    ran = {(r["variant"], r["bits"]) for r in rows}
    cmds = [cmd_text(c) for v, c in commands(which)
            if (v, int(c[c.index("--bits") + 1])) in ran or any(f"`{v}`" in p for p in pending)]
    bits_text = "/".join(str(b) for b in sorted(s["bits"]))
    if s["baselines"]:
        cmds.append("baselines " + ", ".join(s["baselines"]) + ": `python bench/finetune_cifar10.py run` (12/24/32/48 "
                    "bits) and `python bench/finetune_cifar10.py run --only dpsh-batch,dmsh --bits 36`")
    write_results(
        DOCS, s["name"],
        title=f"ATH vs DTSH, DPSH, DMSH — {s['dataset']} {s['protocol']}, EfficientNet-Lite0 fine-tuned above "
              f"{s['cut']}, {s['size']} px, {bits_text} bits, {s['epochs']} epochs",
        protocol=s["protocol"], dataset=s["dataset"],
        backbone=f"EfficientNet-Lite0 (ImageNet weights; the papers' ResNet-50 is not available here), {s['size']} "
                 f"px, layers above the cached cut {s['cut']} trained, {s['epochs']} epochs, {bits_text} bits",
        command=f"python bench/ath.py report --set {which}",
        machine=machine_line(s.get("load", "15–21")).removeprefix("Machine: "),
        rows=rows,
        notes=[
            "every row: the same backbone, image size, cut, code length, epochs, optimiser (Adam, heads lr 1e-3, "
            "layers above the cut lr/10, cosine, batch 64) and model selection (validation mAP each epoch)",
            "variants (column `variant`): " + "; ".join(f"`{v}`: {d}" for v, d in known.items()),
            "P@10 and mAP@100: from the saved codes by the evaluator (ties: expected over tie orders); "
            "per-class P@10 below: the evaluator on each class's queries",
            *pending,
            *([f"not run yet (`python bench/ath.py run --set {which}` runs what is missing): " + ", ".join(missing)]
              if missing else []),
            *([f"attention map of the `ath` run over the first query image: `{picture.name}` "
               "(`hashlearn attention`)"] if picture else []),
        ],
        sections=[(f"Per-class precision@10 ({BITS} bits)", table or ["(no finished run)"]),
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
    for base in ("dtsh", "dpsh", "dpsh-batch", "dpsh-mlp", "dmsh", "dmsh-mlp", "ath-triplet-only", "ath-ce-only",
                 "ath-ce-only-code", "ath-triplet-only-hamming"):
        if base in by:
            a, b = ath["mAP@all"], by[base]["mAP@all"]
            out.append(f"* ATH mAP@all {a:.4f} vs {base} {b:.4f}: ATH {'beats' if a > b else 'does NOT beat'} {base}")
    for r in rows:
        chance = r.get("chance_mAP@all")
        if chance and r["mAP@all"] < 1.05 * chance:
            out.append(f"* `{r['variant']}` stayed at chance (mAP@all {r['mAP@all']:.4f}, chance {chance:.4f}): its "
                       "codes did not separate the classes (see its loss parts in the run's log.jsonl)")
    return out


def _p10(extra: dict, cls: str) -> float | None:
    return next((c["P@10"] for c in extra["per_class"] if c["class"] == cls), None)


def _compare_bits(rows: list[dict], bits: list[int]) -> list[str]:
    """At every code length: does ATH beat each baseline run there?"""
    if len(bits) < 2:
        return []
    out = []
    for base in ("dtsh", "dpsh", "dmsh", "dpsh-batch", "dpsh-mlp", "dmsh-mlp"):
        pairs = [(b, a["mAP@all"], c["mAP@all"]) for b in sorted(bits)
                 for a in rows if a["variant"] == "ath" and a["bits"] == b
                 for c in rows if c["variant"] == base and c["bits"] == b]
        if pairs:
            wins = sum(a > c for _, a, c in pairs)
            out.append(f"* ATH vs {base} by code length (mAP@all): " + ", ".join(
                f"{b} bits {a:.4f} vs {c:.4f} ({a / c:.2f}×)" for b, a, c in pairs)
                + f" — ATH ahead at {wins} of {len(pairs)}")
    return out


def _compare_minority(per_class: dict, which: str) -> list[str]:
    """The seed's claim that triplet sampling helps small classes: the minority class's P@10 when its training
    images are cut to 10 %, against the same method trained on all of them."""
    out, kept, minority = [], {}, MINORITY[which]
    for m in ("ath", "dtsh", "dpsh"):
        full, cut = per_class.get(FULL[which].get(m, m)), per_class.get(f"{m}-imbalanced")
        if full and cut:
            a = next(c["P@10"] for c in full if c["class"] == minority)
            b = next(c["P@10"] for c in cut if c["class"] == minority)
            kept[m] = b / a
            mean = sum(c["P@10"] for c in cut) / len(cut)
            out.append(f"* {minority} cut to 10 % of its training images: {m} P@10 on {minority} queries {b:.3f} "
                       f"(all images: {a:.3f}, kept {b / a:.2f}×); mean over classes {mean:.3f}")
    if len(kept) > 1:
        order = sorted(kept, key=kept.get, reverse=True)
        out.append(f"* share of the {minority} precision kept when the class is cut, best first: "
                   + ", ".join(f"{m} {kept[m]:.2f}×" for m in order)
                   + (" — ATH keeps the most, consistent with the seed's claim that triplet sampling helps minority "
                      "classes" if order[0] == "ath" else
                      f" — {order[0]} keeps more than ATH, so the seed's minority-class claim does not hold here"))
        if "ath" in kept and "dtsh" in kept and "dpsh" in kept:
            out.append(f"* the two triplet methods (ATH {kept['ath']:.2f}×, DTSH {kept['dtsh']:.2f}×) against the "
                       f"pairwise DPSH ({kept['dpsh']:.2f}×): triplet sampling "
                       + ("does" if min(kept["ath"], kept["dtsh"]) > kept["dpsh"] else "does not")
                       + " keep more of the minority class here (one seed)")
    return out


def run_all(cmds: list[tuple[str, list[str]]], jobs: int, dry: bool) -> None:
    """Run the commands, ``jobs`` at a time (each run sets its own thread count), in order; a failure stops
    new starts and is raised once the running ones end."""
    import subprocess
    import time

    if dry or jobs <= 1:
        for _, cmd in cmds:
            run(cmd, dry)
        return
    waiting, running, failed = list(cmds), [], []
    while waiting or running:
        while waiting and len(running) < jobs and not failed:
            v, cmd = waiting.pop(0)
            print("$ " + cmd_text(cmd), flush=True)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            running.append((v, cmd, subprocess.Popen(cmd, cwd=RUNS.parent, env=env)))
        time.sleep(2)
        for job in list(running):
            if job[2].poll() is not None:
                running.remove(job)
                if job[2].returncode:
                    failed.append(cmd_text(job[1]))
        if failed and not running:
            break
    if failed:
        raise SystemExit("failed: " + "; ".join(failed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["run", "report"])
    ap.add_argument("--set", dest="which", choices=sorted(SETS), default="cifar10")
    ap.add_argument("--only", help="comma-separated variants to run (default: all)")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (brain-mri runs use 1 thread each: --jobs 2)")
    args = ap.parse_args()
    if args.step == "run":
        only = args.only.split(",") if args.only else None
        run_all(commands(args.which, only, skip_done=True), args.jobs, args.dry_run)
    else:
        report(args.which)


if __name__ == "__main__":
    main()
