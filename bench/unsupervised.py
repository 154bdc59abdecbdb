"""CIFAR-10 cifar10-1 without labels for training: DSAH, BCDH and the unsupervised deep baselines.

Every run goes through ``hashlearn train`` with a label-free method (``supervised = False``: the
loss never sees a label; the validation split's labels select the epoch, the query/database labels
evaluate). EfficientNet-Lite0 at 96 px, fine-tuned above the cached ``stage5`` cut (the cut chosen
on validation in ``cifar10-1-lite0-finetune``): the pooled frozen-feature cache of the whole
dataset is not on this machine (44 min to rebuild on the shared CPU), the stage5 maps are. This
script prints and runs the commands, then writes ``docs/results/cifar10-1-unsupervised.{md,json}``
from the run folders::

    python bench/unsupervised.py run [--bits 32] [--only dsah,bcdh]   # missing runs, one after another
    python bench/unsupervised.py report                               # the results files

``--dry-run`` prints the commands only. Run folders: ``runs/cifar10-1-unsup-*`` (git-ignored).
DSAH's similarity memory and positives are read from its ``dsah_similarity.jsonl`` (written by the
method's hooks).
"""

from __future__ import annotations

import argparse
import json
import os

from train_cifar10 import DOCS, ROOT, RUNS, cmd_text, machine_line, read_metrics, run, train_cmd

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
NAME = "cifar10-1-unsupervised"
SIZE = 96
CUT = "stage5"
EPOCHS = 5
LR = "1e-3"  # heads; the layers above the cut train at lr/10 (optim.backbone_lr default for pretrained weights)
COMMON = [
    "--dataset", "cifar10", "--protocol", "cifar10-1", "--backbone", "efficientnet_lite0",
    "--image-size", str(SIZE), "--seed", "0", "--finetune-from", CUT, "--set", "train.threads=1",
]

# variant: (method, overrides, what it is)
VARIANTS = {
    "dsah": ("dsah", ["method_args.round_epochs=3"],
             "intended ANC rule (intersection, K1 = K2 = 500), PIC 1, one AND update after epoch 3 (γ = 0)"),
    "dsah-no-and": ("dsah", ["method_args.and_update=false"], "AND ablation: the initial similarity only"),
    "dsah-pic0": ("dsah", ["method_args.round_epochs=3", "method_args.pic=0"], "PIC ablation: A = 1"),
    "bcdh": ("bcdh", ["method_args.views=2"],
             "synthetic views (2 per training image, stage5 maps cached), closed-form B-step, 5 hard negatives"),
    "ssdh-u": ("ssdh-u", [], "thresholds μ ± σ of the pretrained cosine distances"),
    "greedyhash-u": ("greedyhash-u", [], "sign with straight-through gradient, cosine targets, α = 0.1"),
    "bihalf": ("bihalf", [], "bi-half layer (γ = 3), cosine targets"),
}
ORDER = ["dsah", "ssdh-u", "greedyhash-u", "bihalf", "bcdh", "dsah-no-and", "dsah-pic0"]


def run_dir(variant: str):
    return RUNS / f"cifar10-1-unsup-{variant}"


def command(variant: str, bits: str) -> list[str]:
    method, overrides, _ = VARIANTS[variant]
    return train_cmd(method, COMMON, bits, run_dir(variant), epochs=EPOCHS, lr=LR, overrides=overrides)


def dsah_similarity(folder) -> dict:
    """The initial similarity's record and the last AND update's (positives, bytes) of a DSAH run."""
    path = folder / "dsah_similarity.jsonl"
    if not path.exists():
        return {}
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    initial = next((x for x in reversed(lines) if x.get("event") == "initial"), {})
    last = lines[-1] if lines else {}
    return {"similarity_bytes": initial.get("similarity_nbytes"), "positives_initial": initial.get("positives"),
            "positives_final": last.get("positives"), "anc_seconds": initial.get("seconds"),
            "n_train": initial.get("n"), "and_thresholds": [round(x["threshold"], 3) for x in lines
                                                            if x.get("event") == "and_update"],
            "and_updates": sum(x.get("event") == "and_update" for x in lines)}


def report() -> None:
    from hashlearn.eval.results import row_from_metrics, write_results

    rows, commands, sims = [], [], []
    for v in VARIANTS:
        found = read_metrics(run_dir(v))
        for m in found:
            extra = {}
            if VARIANTS[v][0] == "dsah":
                extra = dsah_similarity(run_dir(v) / f"{m['bits']}bits")
                if extra.get("similarity_bytes") is not None:
                    n = int(extra["n_train"])
                    sims.append(f"* {v} {m['bits']} bits: W over {n} training images, bit-packed "
                                f"{extra['similarity_bytes'] / 2**20:.2f} MiB (a dense float32 W: "
                                f"{n * n * 4 / 2**20:.0f} MiB); positives {extra['positives_initial']} initially, "
                                f"{extra['positives_final']} after {extra['and_updates']} AND update(s) "
                                f"(thresholds μ + γσ on H Hᵀ: {extra['and_thresholds']}), i.e. "
                                f"{extra['positives_initial'] / n / n:.2%} → {extra['positives_final'] / n / n:.2%} "
                                f"of all pairs (same-class pairs in CIFAR-10: about 10%); ANC took "
                                f"{extra['anc_seconds']} s")
            rows.append(row_from_metrics(m, variant=v, cut=CUT, epochs=m.get("epochs_run"), **extra))
        if found:
            bits = ",".join(str(m["bits"]) for m in found)
            commands.append(f"* `{cmd_text(command(v, bits))}`")
    if not rows:
        raise SystemExit("no runs yet; run: python bench/unsupervised.py run")
    n50k = 50_000
    sims.append(f"* at 50,000 training images the bit-packed W takes {n50k * ((n50k + 7) // 8) / 2**30:.2f} GiB "
                f"(dense float32: {n50k * n50k * 4 / 2**30:.1f} GiB), whatever the number of positives")
    write_results(
        DOCS, NAME,
        title=f"CIFAR-10 cifar10-1 without labels for training: DSAH, BCDH and unsupervised baselines, "
              f"EfficientNet-Lite0 above {CUT}, {SIZE} px",
        protocol="cifar10-1", dataset="cifar10",
        backbone=f"EfficientNet-Lite0 (ImageNet weights), {SIZE} px, layers above the cached {CUT} cut and the head "
                 f"trained on cached activations, {EPOCHS} epochs",
        command="python bench/unsupervised.py report", machine=machine_line("20–23").removeprefix("Machine: "),
        rows=rows,
        notes=[
            "label-free training: the methods set `supervised = False`; the trainer passes their loss "
            "`Batch.labels = None` and their hooks `train_labels = None`; labels serve only to pick the epoch "
            "(validation mAP against training codes) and to evaluate the 1,000 queries against the 59,000-image "
            "database (mAP@1000, mAP@all, relevance = same class)",
            f"training: Adam, heads lr {LR}, layers above the cut at lr/10, cosine schedule, batch 64, "
            f"{EPOCHS} epochs, seed 0",
            "pretrained features (DSAH's similarity, SSDH-U's thresholds, GreedyHash-U's/Bi-half's cosine targets) "
            f"= the pooled output of the ImageNet network above {CUT} before any step",
            "shallow LSH/ITQ rows are missing: they need the pooled frozen-feature cache of all 60,000 images "
            "(not on this machine; 44 min to rebuild on the shared CPU) — see cifar10-1-frozen-lite0.md for them "
            "on the same backbone and image size",
            "variants (column `variant`): " + "; ".join(f"`{v}`: {d[2]}" for v, d in VARIANTS.items()),
        ],
        sections=[("DSAH similarity memory", sims), ("Commands", commands)],
    )
    print(f"wrote {DOCS / NAME}.md and .json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["run", "report"])
    ap.add_argument("--bits", default="32")
    ap.add_argument("--only", default="", help="comma-separated variants (default: all, in the script's order)")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    if args.step == "report":
        report()
        return
    only = [v for v in args.only.split(",") if v] or ORDER
    for v in only:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
        have = {m["bits"] for m in read_metrics(run_dir(v))}
        if all(int(b) in have for b in args.bits.split(",")):
            continue
        run(command(v, args.bits), args.dry_run)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
