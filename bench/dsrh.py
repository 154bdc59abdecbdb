"""cifar10-mosaic-synthetic (SYNTHETIC 2×2 mosaics of CIFAR-10, multi-hot): DSRH against DPSH and DTSH.

Issue 10, DSRH part. Every run goes through ``hashlearn train``; this script builds, prints and runs
the commands, then writes ``docs/results/mosaic-dsrh.{md,json}`` from the run folders::

    python bench/dsrh.py run [--methods dsrh,dpsh,dtsh] [--bits 32,64]   # one run folder per method and bits
    python bench/dsrh.py report                                         # the results files

The file in docs/results came from (two at a time, one torch thread each)::

    python bench/dsrh.py run --bits 32,16            # and, beside it: run --bits 64,48
    python bench/dsrh.py run --methods dsrh-mean,dsrh-stage7-pool --bits 32   # and --bits 64
    python bench/dsrh.py run --methods dsrh-seed1,dpsh-seed1,dtsh-seed1 --bits 32   # and --bits 64
    python bench/dsrh.py report

Setup (the same for every method): EfficientNet-Lite0 with ImageNet weights, frozen (``--frozen``: the
heads train on cached globally pooled features of the backbone's taps — DSRH's two skip taps
``stage5`` and ``stage7``, DPSH's and DTSH's last pooled feature ``pool``), 96 px, Adam lr 1e-3 with
the cosine schedule, batch 128, the same epochs, seed 0, each method's default settings (DTSH's
default batch sampler is class-balanced, the others' random); model chosen by validation mAP. Fine-tuning
above a cut was not affordable on this shared 2-core CPU (pooled features of the 15,000 mosaics
took about a quarter of an hour). ``--dry-run`` prints the commands only. Run folders:
``runs/mosaic-dsrh/METHOD-BITS`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cifar10 import DOCS, RUNS, cmd_text, machine_line, read_metrics, run, train_cmd  # noqa: E402

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
NAME = "mosaic-dsrh"
DATASET = "cifar10-mosaic-synthetic"
SIZE = 96
EPOCHS = 30
BATCH = 128
LR = "1e-3"
BITS = [16, 32, 48, 64]
METHODS = ["dsrh", "dpsh", "dtsh"]
# every run kind: name → (method, --set overrides); the claim compares the three methods' defaults only
RUNS_OF = {"dsrh": ("dsrh", []), "dpsh": ("dpsh", []), "dtsh": ("dtsh", []),
           "dsrh-mean": ("dsrh", ["method_args.reduction=mean"]),
           "dsrh-stage7-pool": ("dsrh", ["method_args.taps=[stage7,pool]"]),
           # a second seed (the per-label split of the same mosaics, initialisation, batch order): the spread
           "dsrh-seed1": ("dsrh", [], 1), "dpsh-seed1": ("dpsh", [], 1), "dtsh-seed1": ("dtsh", [], 1)}
VARIANT_NOTES = {"dsrh-mean": "DSRH with the ranking part divided by the batch's 128 queries (reduction=mean), so "
                              "the bit-balance term (α = 1) weighs 128 times more against the ranking than in the "
                              "spec's sum (see the loss parts below)",
                 "dsrh-stage7-pool": "DSRH whose skip connection reads stage7 and pool, so its input includes the "
                                     "pooled feature DPSH and DTSH read (a check that the taps alone do not make the "
                                     "difference)",
                 "seed1": "the same run with seed 1 (another per-label split of the same mosaics, another "
                          "initialisation and batch order), for the spread between seeds"}


def common(seed: int = 0) -> list[str]:
    return ["--dataset", DATASET, "--backbone", "efficientnet_lite0", "--image-size", str(SIZE), "--seed", str(seed),
            "--frozen", "--batch-size", str(BATCH), "--set", "train.threads=1"]


# the figures: graded ranking (NDCG/ACG at 100), weighted mAP and mAP (relevant = a shared label)
COLUMNS = ["NDCG@100", "ACG@100", "wmAP@all", "mAP@all", "mAP@100", "NDCG@1000", "ACG@1000", "ACG@all"]


def registered() -> set[str]:
    from hashlearn.methods import load_all

    return set(load_all().names())


def run_dir(method: str, bits: int) -> Path:
    return RUNS / NAME / f"{method}-{bits}"


def command(name: str, bits: int) -> list[str]:
    method, overrides, *seed = RUNS_OF[name]
    return train_cmd(method, common(seed[0] if seed else 0), bits, run_dir(name, bits), epochs=EPOCHS, lr=LR,
                     overrides=overrides)


def collect() -> dict:
    """``{method: {bits: metrics}}`` of every finished run."""
    out: dict = {}
    for method in RUNS_OF:
        for bits in BITS:
            for m in read_metrics(run_dir(method, bits)):
                out.setdefault(method, {})[m["bits"]] = m
    return out


def claim(metrics: dict) -> list[str]:
    """Whether DSRH's claim (a better graded ranking: NDCG and ACG) holds, per code length and overall."""
    lines, wins, total = [], {"NDCG@100": 0, "ACG@100": 0}, 0
    for bits in sorted(metrics.get("dsrh", {})):
        base = {m: metrics[m][bits] for m in METHODS if m != "dsrh" and bits in metrics.get(m, {})}
        if not base:
            continue
        total += 1
        ours = metrics["dsrh"][bits]
        parts = []
        for key in wins:
            best_name, best = max(((m, r[key]) for m, r in base.items()), key=lambda t: t[1])
            better = ours[key] > best
            wins[key] += better
            parts.append(f"{key} {ours[key]:.4f} vs {best:.4f} ({best_name}, the better baseline): "
                         f"{'higher' if better else 'NOT higher'}")
        lines.append(f"* {bits} bits: " + "; ".join(parts))
    if not total:
        return ["* no code length has both DSRH and a baseline yet"], "not measured yet"
    both = min(wins.values())
    if both == total:
        verdict = f"holds here: DSRH ranks higher on both NDCG@100 and ACG@100 at all {total} code lengths measured"
    elif max(wins.values()) == 0:
        verdict = f"does not hold here: DSRH is below the better baseline on NDCG@100 and ACG@100 at every one of " \
                  f"the {total} code lengths measured"
    else:
        verdict = (f"holds only in part here: DSRH is higher on NDCG@100 at {wins['NDCG@100']} and on ACG@100 at "
                   f"{wins['ACG@100']} of the {total} code lengths measured")
    return lines + checks(metrics), verdict + caveat(metrics)


def checks(metrics: dict) -> list[str]:
    """The two checks beside the claim: DSRH on the baselines' pooled feature, and a second seed."""
    out = []
    for bits, r in sorted(metrics.get("dsrh-stage7-pool", {}).items()):
        base = {m: metrics[m][bits] for m in ("dpsh", "dtsh") if bits in metrics.get(m, {})}
        if base:
            best = max(base.items(), key=lambda t: t[1]["NDCG@100"])
            out.append(f"* taps stage7 + pool (the baselines' feature included), {bits} bits: NDCG@100 "
                       f"{r['NDCG@100']:.4f}, ACG@100 {r['ACG@100']:.4f} vs {best[0]} {best[1]['NDCG@100']:.4f}, "
                       f"{best[1]['ACG@100']:.4f}; default taps (stage5 + stage7): "
                       f"{metrics.get('dsrh', {}).get(bits, {}).get('NDCG@100', float('nan')):.4f}, "
                       f"{metrics.get('dsrh', {}).get(bits, {}).get('ACG@100', float('nan')):.4f}")
    for bits in sorted(metrics.get("dsrh-seed1", {})):
        cells = []
        for m in METHODS:
            a, b = metrics.get(m, {}).get(bits), metrics.get(f"{m}-seed1", {}).get(bits)
            if a and b:
                cells.append(f"{m} NDCG@100 {a['NDCG@100']:.4f} / {b['NDCG@100']:.4f}, ACG@100 "
                             f"{a['ACG@100']:.4f} / {b['ACG@100']:.4f}")
        if cells:
            out.append(f"* seeds 0 / 1, {bits} bits: " + "; ".join(cells))
    return out


def caveat(metrics: dict) -> str:
    """Whether the seed-1 runs keep DSRH's order (the margin against the seed spread)."""
    kept, seen = 0, 0
    for bits, r in metrics.get("dsrh-seed1", {}).items():
        base = [metrics[f"{m}-seed1"][bits] for m in ("dpsh", "dtsh") if bits in metrics.get(f"{m}-seed1", {})]
        if base:
            seen += 1
            kept += all(r[k] > max(b[k] for b in base) for k in ("NDCG@100", "ACG@100"))
    text = " (one seed)" if not seen else \
        f" (with seed 1 the order is {'kept' if kept == seen else 'NOT kept'} at {seen} code length(s) checked)"
    margins = []
    for bits, r in sorted(metrics.get("dsrh-stage7-pool", {}).items()):
        base = [metrics[m][bits]["NDCG@100"] for m in ("dpsh", "dtsh") if bits in metrics.get(m, {})]
        if base and bits in metrics.get("dsrh", {}):
            margins.append((bits, metrics["dsrh"][bits]["NDCG@100"] - max(base), r["NDCG@100"] - max(base)))
    if margins:
        share = "most" if all(p < d / 2 for _, d, p in margins) else "part"
        text += (f"; but {share} of the margin comes from the input, not the loss: with the baselines' pooled "
                 "feature in DSRH's skip connection (taps stage7 + pool) the NDCG@100 margin over the better baseline "
                 "is " + ", ".join(f"{p:+.4f} instead of {d:+.4f} at {b} bits" for b, d, p in margins))
        spread = [abs(metrics["dsrh"][b]["NDCG@100"] - r["NDCG@100"]) for b, r in metrics.get("dsrh-seed1", {}).items()
                  if b in metrics.get("dsrh", {})]
        if spread:
            small = all(p <= max(spread) for _, _, p in margins)
            text += (f", {'no more than' if small else 'more than'} the seed-to-seed change of DSRH's own NDCG@100 "
                     f"({max(spread):.4f})")
    return text


def report() -> None:
    from hashlearn.eval.results import row_from_metrics, write_results

    metrics = collect()
    if not metrics:
        raise SystemExit("no runs yet; run: python bench/dsrh.py run")
    rows = []
    for name in RUNS_OF:
        for _, m in sorted(metrics.get(name, {}).items()):
            extra = {k: m.get(k) for k in COLUMNS}
            rows.append(row_from_metrics(m, **extra, variant=name, epochs=m.get("epochs_run", EPOCHS),
                                         taps=",".join(m.get("taps") or []) or None))
    detail, verdict = claim(metrics)
    any_run = next(iter(next(iter(metrics.values())).values()))
    sizes = any_run.get("sizes") or {}
    missing = [m for m in METHODS if m not in registered()]
    absent = [f"{m} {b}" for m in METHODS for b in BITS if b not in metrics.get(m, {})]
    curves = []
    for method in RUNS_OF:
        for bits, m in sorted(metrics.get(method, {}).items()):
            hist = m.get("val_history") or []
            if hist:
                curves.append(f"* {method} {bits} bits: " + ", ".join(
                    f"e{h['epoch']} {h['val_mAP']:.3f}" for h in hist[:: max(1, len(hist) // 10)]))
    parts = []
    for method in RUNS_OF:
        for bits in sorted(metrics.get(method, {})):
            log = run_dir(method, bits) / f"{bits}bits" / "log.jsonl"
            records = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
            records = [r for r in records if "parts" in r]
            if records:
                first, last = records[0], records[-1]
                ratio = ""
                if last["parts"].get("balance"):
                    ratio = f" (ranking / balance = {last['parts']['ranking'] / last['parts']['balance']:.0f})"
                parts.append(f"* {method} {bits} bits: epoch {first['epoch']} " + ", ".join(
                    f"{k} {v:.4g}" for k, v in first["parts"].items()) + f"; epoch {last['epoch']} " + ", ".join(
                    f"{k} {v:.4g}" for k, v in last["parts"].items()) + ratio)
    write_results(
        DOCS, NAME,
        title=f"{DATASET} (SYNTHETIC 2×2 CIFAR-10 mosaics, multi-hot): DSRH vs DPSH and DTSH, "
              f"EfficientNet-Lite0 frozen, {SIZE} px",
        protocol=str(any_run.get("protocol")), dataset=DATASET,
        backbone=f"EfficientNet-Lite0 (ImageNet weights), frozen, {SIZE} px; heads on cached pooled features "
                 f"(DSRH: taps stage5 + stage7, the skip connection; DPSH, DTSH: pool); {EPOCHS} epochs",
        command="python bench/dsrh.py report", machine=machine_line("6–8").removeprefix("Machine: "),
        rows=rows,
        notes=[
            f"DSRH's claim (a better graded ranking, NDCG/ACG) {verdict}.",
            "SYNTHETIC data: each image is a 2×2 mosaic of four real CIFAR-10 test or training images, its "
            "multi-hot label the union of the tiles' classes (1–4 labels); not a real multi-label benchmark",
            f"protocol `{any_run.get('protocol')}`: sizes {json.dumps(sizes)}; relevance for mAP: at least one "
            "shared label; graded relevance for NDCG/ACG/wmAP: the number of shared labels; ties: "
            f"{any_run.get('ties')} (exact expectation over the orders of equal-distance items)",
            "metrics: NDCG@100 (gain 2^r − 1, discount log2(1 + n)), ACG@100 (mean shared labels in the top "
            "100), wmAP@all (AP with P@n replaced by ACG@n, over the whole database), mAP@all and mAP@100; "
            "chance levels: `chance_mAP@all` (a random ranking's expected mAP@all) and ACG@all (the mean number of "
            "shared labels over the whole database, which is also a random ranking's expected ACG@100) — a shared "
            "label is common in 2×2 mosaics of 10 classes, so mAP@all sits close to chance and the graded "
            "figures say more",
            f"training: Adam lr {LR}, cosine schedule, batch {BATCH}, {EPOCHS} epochs, seed 0, model chosen by "
            "validation mAP@all (validation split against training codes); each method's default settings "
            "(DSRH: margin 1, alpha 1, Z = ideal DCG of the batch ranking, sum over triples; DPSH: pairs "
            "against the codes U of all training images; DTSH: all triplets of the batch, class-balanced "
            "batches); weight decay 1e-5 for all (the spec's DSRH β = 5e-4 [INFER] not used, to keep one "
            "optimiser setting)",
            *([f"not registered when this file was generated: {', '.join(missing)}"] if missing else []),
            *([f"not run (time): {', '.join(absent)}"] if absent else []),
            *[f"variant `{v}`: {text}" for v, text in VARIANT_NOTES.items()
              if any(name == v or name.endswith("-" + v) for name in metrics)],
        ],
        sections=[
            ("Does DSRH's claim hold here?", [f"DSRH's claim (better graded ranking: NDCG/ACG) {verdict}.", "",
                                              *detail]),
            ("Validation curves (val mAP@all, every few epochs)", curves or ["(not recorded)"]),
            ("Loss parts (epoch means from log.jsonl, first and last epoch)",
             ["DSRH's ranking part is the spec's sum over the batch's queries and triples (default) and its "
              "balance part (α/2)‖mean h̃‖² is at most k/2, so with α = 1 the ratio of the two (given per run) "
              "says how little the balance term acts.", "",
              *parts] if parts else ["(not recorded)"]),
            ("Commands", ["```", *[cmd_text(command(m, b)) for m in RUNS_OF for b in sorted(metrics.get(m, {}))],
                          "python bench/dsrh.py report", "```"]),
        ],
    )
    print(f"wrote {DOCS / NAME}.md and .json")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["run", "report"])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--bits", default=",".join(map(str, BITS)))
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    if args.step == "report":
        report()
        return
    unknown = sorted(set(args.methods.split(",")) - set(RUNS_OF))
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; known: {', '.join(RUNS_OF)}")
    known = registered()
    for bits in [int(b) for b in args.bits.split(",")]:
        for method in args.methods.split(","):
            if RUNS_OF[method][0] not in known:
                print(f"# {method} is not registered; skipped", flush=True)
                continue
            if (run_dir(method, bits) / f"{bits}bits" / "metrics.json").exists() and not args.dry_run:
                print(f"# done already: {method} {bits}", flush=True)
                continue
            run(command(method, bits), args.dry_run)


if __name__ == "__main__":
    main()
