"""ExchNet and its baseline ADSH (spec §6) beside DPSH, on the closest real sets there are here, at 12/24/32/48 bits.

No fine-grained image set exists on this machine (CUB-200-2011 and FGVC-Aircraft have loaders,
tested on generated copies). Two stand-ins, each at 12, 24, 32 and 48 bits:

* Fashion-MNIST restricted to its five upper-body classes (``protocol_args.classes``; small
  differences between classes): small CNN, end to end, 28 px; dpsh, adsh and exchnet.
* CIFAR-10 with EfficientNet-Lite0 at 96 px, fine-tuned above the cached ``stage5`` cut (the cut
  chosen on validation by ``bench/finetune_cifar10.py``), under the fine-grained protocol's shape:
  the cifar10-1 queries (1,000), training images (4,500 + 500 validation) and a database that *is*
  the training set (train + val = 5,000; ``cifar10-1-traindb``), so ADSH/ExchNet's learned codes V
  cover 90 % of the database (the 500 validation images are coded by the network). exchnet, plain
  adsh and the best ADSH variant at 48 bits (adsh-rebalanced-stage7) at every code length; the
  ablations (adsh-mlp, adsh-rebalanced, exchnet-noexchange) at 48 bits only.

::

    python bench/exchnet.py split                   # runs/splits/cifar10-1-traindb.npz from cifar10-1 (seed 0)
    python bench/exchnet.py run --jobs 2            # the missing runs: Fashion first (cheap), then CIFAR-10
    python bench/exchnet.py run --set cifar10 --only exchnet,adsh
    python bench/exchnet.py report                  # docs/results/fine-grained-exchnet.{md,json}

``run`` skips the runs whose ``<N>bits/metrics.json`` exists; ``--dry-run`` prints the commands;
``--jobs 2`` runs two at once (each with ``train.threads=1``). DPSH is not retrained on CIFAR-10:
the saved codes of the cifar10-1 runs of ``bench/finetune_cifar10.py`` (same queries, 59,000-image
database, which holds the 5,000 images of this one) are re-evaluated on the 5,000-image database —
``runs/cifar10-1-ft-stage5-dpsh`` (DPSH as published, 48 bits only) and
``runs/cifar10-1-ft-stage5-dpsh-batch`` (DPSH with the pairs of the batch, 12/24/32/48 bits) — and
their own 59,000-image figures are listed beside.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ath import run_all  # noqa: E402
from train_cifar10 import DOCS, ROOT, RUNS, cmd_text, machine_line, read_metrics, train_cmd  # noqa: E402

NAME = "fine-grained-exchnet"
SPLIT = RUNS / "splits" / "cifar10-1-traindb.npz"
BITS = 48  # the code length of every variant; the main ones also run at each set's ``bits``
COMMON = [
    "--dataset", "cifar10", "--split", str(SPLIT), "--backbone", "efficientnet_lite0", "--image-size", "96",
    "--seed", "0", "--finetune-from", "stage5", "--set", "train.threads=1",
]  # fmt: skip
LR = "1e-3"
# (method, method_args, epochs): epochs = outer iterations × inner_epochs; one validation at the end only, so the
# weights kept are those of the last epoch, the epoch V was last updated for
VARIANTS = {
    "adsh": ("adsh", "{num_samples: 1000, inner_epochs: 2, gamma: 200}", 8),
    "exchnet": ("exchnet", "{num_samples: 1000, inner_epochs: 2, gamma: 200, align_start: 2}", 8),
    # what the ExchNet/ADSH gap comes from: ADSH at more head capacity, ExchNet without the exchange and alignment
    "adsh-mlp": ("adsh", "{num_samples: 1000, inner_epochs: 2, gamma: 200, head: mlp}", 8),
    "exchnet-noexchange": ("exchnet", "{num_samples: 1000, inner_epochs: 2, gamma: 200, align_start: null}", 8),
    # ADSH with ExchNet's rebalanced similarity, on the pooled output and on ExchNet's tap
    "adsh-rebalanced": ("adsh", "{num_samples: 1000, inner_epochs: 2, gamma: 200, similarity: rebalanced}", 8),
    "adsh-rebalanced-stage7": ("adsh", "{num_samples: 1000, inner_epochs: 2, gamma: 200, similarity: rebalanced, "
                                       "tap: stage7, head: mlp}", 8),
}
#: (variant, against): the comparisons the sentence on the seed's claim is made of (those measured at a length)
PAIRS = [("exchnet", "adsh"), ("exchnet", "adsh-mlp"), ("exchnet", "adsh-rebalanced"),
         ("exchnet", "adsh-rebalanced-stage7"), ("exchnet", "exchnet-noexchange")]
#: DPSH on CIFAR-10: cifar10-1 runs of bench/finetune_cifar10.py whose saved codes are re-evaluated here
DPSH_RUNS = {
    "dpsh": (RUNS / "cifar10-1-ft-stage5-dpsh", "DPSH as published (pairs against U of all training images), "
                                                "one linear layer, 15 epochs; 48 bits only"),
    "dpsh-batch": (RUNS / "cifar10-1-ft-stage5-dpsh-batch", "DPSH with the pairs of the batch, one linear "
                                                            "layer, 15 epochs; every code length"),
}
UPPER = "[T-shirt/top, Pullover, Dress, Coat, Shirt]"
FASHION_COMMON = [
    "--dataset", "fashion-mnist", "--protocol", "cifar10-1", "--set", f"protocol_args.classes={UPPER}",
    "--backbone", "smallcnn", "--seed", "0", "--set", "train.threads=1",
]  # fmt: skip
FASHION = {
    "dpsh": ("dpsh", "{}", 8),
    "adsh": ("adsh", "{num_samples: 1000, inner_epochs: 2}", 8),
    "exchnet": ("exchnet", "{num_samples: 1000, inner_epochs: 2, align_start: 2, width: 64}", 8),
}


def run_dir(variant: str) -> Path:
    return RUNS / f"traindb-ft-stage5-{variant}"


def fashion_dir(variant: str) -> Path:
    return RUNS / f"fashion-upper5-{variant}"


#: the experiment sets, in the order ``run`` makes them (Fashion first: its runs are the cheap ones);
#: ``all_bits``: the variants run at every code length of ``bits`` (the others at BITS only)
SETS = {
    "fashion": {"dataset": "fashion-mnist-upper5", "label": "Fashion-MNIST upper-body", "common": FASHION_COMMON,
                "folder": fashion_dir, "variants": FASHION, "bits": [48, 12, 24, 32], "all_bits": tuple(FASHION)},
    "cifar10": {"dataset": "cifar10", "label": "CIFAR-10", "common": COMMON, "folder": run_dir,
                "variants": VARIANTS, "bits": [48, 12, 24, 32],
                "all_bits": ("exchnet", "adsh-rebalanced-stage7", "adsh")},
}


def variant_bits(which: str, v: str) -> list[int]:
    s = SETS[which]
    return s["bits"] if v in s["all_bits"] else [BITS]


def command(which: str, v: str, bits: int) -> list[str]:
    s = SETS[which]
    m, args, ep = s["variants"][v]
    return train_cmd(m, s["common"], bits, s["folder"](v), epochs=ep, lr=LR,
                     overrides=[f"method_args={args}", f"train.eval_every={ep}"])


def commands(which: str, only=None, skip_done: bool = False) -> list[tuple[str, list[str]]]:
    """One ``hashlearn train`` per (variant, code length) of a set, BITS first (the comparisons all have it);
    ``skip_done``: leave out the runs that have finished (their ``metrics.json`` exists)."""
    s = SETS[which]
    out = []
    for bits in s["bits"]:
        for v in s["variants"]:
            if (only and v not in only) or bits not in variant_bits(which, v):
                continue
            if skip_done and (s["folder"](v) / f"{bits}bits" / "metrics.json").exists():
                print(f"done already: {v} at {bits} bits ({s['folder'](v).relative_to(ROOT)})")
                continue
            out.append((v, command(which, v, bits)))
    return out


def make_split() -> None:
    """cifar10-1 (seed 0) with database = train ∪ val: the fine-grained protocol's training set = database."""
    from hashlearn.data import Split, open_prepared
    from hashlearn.train.run import make_split as protocol_split

    ds = open_prepared("cifar10")
    s = protocol_split(ds, "cifar10-1", 0)
    out = Split(query=s.query, train=s.train, val=s.val, database=np.union1d(s.train, s.val),
                protocol="cifar10-1-traindb", params={"from": "cifar10-1", "database": "train + val"}, seed=0,
                n_images=s.n_images, dataset=s.dataset, ids_sha256=s.ids_sha256)
    SPLIT.parent.mkdir(parents=True, exist_ok=True)
    out.save(SPLIT)
    print(f"{SPLIT}: {out.sizes}")


def _signs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from hashlearn.codes import load_codes

    codes = load_codes(path)
    return codes.unpacked().astype(np.int8) * 2 - 1, np.asarray(codes.ids).astype(str)


def dpsh_rows(variant: str, bits: int, cifar: tuple) -> list[dict]:
    """A cifar10-1 DPSH run's saved codes evaluated with the 5,000-image database of the split, then that run's
    own 59,000-image figures; none when the run has no finished ``bits`` folder. ``cifar``: (dataset, split)."""
    from hashlearn.eval import evaluate

    run = DPSH_RUNS[variant][0]
    folder = run / f"{bits}bits"
    if not (folder / "metrics.json").exists():
        return []
    ds, split = cifar
    metrics = json.loads((folder / "metrics.json").read_text())
    ids = np.asarray(ds.ids).astype(str)
    q, q_ids = _signs(folder / "query_codes.npz")
    db, db_ids = _signs(folder / "database_codes.npz")
    if not np.array_equal(q_ids, ids[split.query]):
        raise SystemExit(f"{folder}: its queries are not those of {SPLIT}")
    where = {d: i for i, d in enumerate(db_ids)}
    rows = np.array([where[d] for d in ids[split.database]])
    result = evaluate(q, db[rows], np.asarray(ds.labels[split.query]), np.asarray(ds.labels[split.database]),
                      topk=(1000, "all"), radius=2, ties=metrics.get("ties", "expected")).metrics()
    common = {"method": "dpsh", "bits": bits, "train_seconds": metrics.get("training_seconds"),
              "images_per_second": metrics.get("images_per_second"), "retrieval": "symmetric",
              "epochs": metrics.get("epochs_run"), "variant": variant}
    return [{**common, "mAP@all": result["mAP@all"], "mAP@1000": result["mAP@1000"], "P@r2": result["P@r2"],
             "database": len(split.database), "source": f"{run.name} codes, re-evaluated"},
            {**common, "mAP@all": metrics["mAP@all"], "mAP@1000": metrics.get("mAP@1000"),
             "P@r2": metrics.get("P@r2"), "database": metrics["sizes"]["database"],
             "source": f"{run.name} (cifar10-1, its own database)"}]


def head_parameters(run_dir: Path) -> int | None:
    """Weights of the method's head (what sits on the backbone's taps), counted from the saved model."""
    from hashlearn.train.runfolder import load_checkpoint

    path = run_dir / "best.pt"
    if not path.exists():
        return None
    model = load_checkpoint(path)["model"]
    return int(sum(v.numel() for k, v in model.items() if k.startswith("head.") and v.is_floating_point()
                   and "running_" not in k))


def method_rows(folder: Path, m: dict, epochs: int, variant: str) -> list[dict]:
    """The rows of one finished run (``m``: its ``metrics.json``): its default retrieval, then symmetric."""
    hp = m.get("method_hparams") or {}
    common = {"train_seconds": m.get("training_seconds"), "images_per_second": m.get("images_per_second"),
              "database": m["sizes"]["database"], "epochs": m.get("epochs_run", epochs),
              "Ω size": hp.get("num_samples"), "T_in": hp.get("inner_epochs"), "variant": variant,
              "head params": head_parameters(folder / f"{m['bits']}bits"), "taps": ",".join(m.get("taps") or []),
              "source": folder.name}
    if hp.get("align_start") is not None:
        common["exchange from epoch"] = hp["align_start"] * hp["inner_epochs"] + 1
    rows = [{"method": m["method"], "bits": m["bits"], "mAP@all": m["mAP@all"], "mAP@1000": m.get("mAP@1000"),
             "P@r2": m.get("P@r2"), **common, "retrieval": m.get("retrieval"),
             "V rows in database": m.get("database_learned_codes")}]
    if "symmetric" in m:
        s = m["symmetric"]
        rows.append({"method": m["method"], "bits": m["bits"], "mAP@all": s["mAP@all"],
                     "mAP@1000": s.get("mAP@1000"), "P@r2": s.get("P@r2"), **common, "retrieval": "symmetric",
                     "V rows in database": 0})
    return rows


def set_rows(which: str, cifar: tuple | None = None) -> tuple[list[dict], list[str], list[str]]:
    """A set's rows, by code length (CIFAR-10: DPSH's re-evaluated rows after each length's runs), the commands
    of its finished or running runs, and one line per run that is missing (still training, or not run yet)."""
    s = SETS[which]
    rows, cmds, missing, not_run = [], [], [], {}
    for bits in sorted(s["bits"]):
        for v, (_, _, ep) in s["variants"].items():
            if bits not in variant_bits(which, v):
                continue
            folder = s["folder"](v)
            found = [m for m in read_metrics(folder) if m["bits"] == bits]
            logged = folder / f"{bits}bits" / "log.jsonl"
            if found:
                rows += method_rows(folder, found[0], ep, v)
            elif logged.exists():
                epochs = len(logged.read_text().splitlines())
                missing.append(f"{s['label']} `{v}` at {bits} bits: still training when this file was generated "
                               f"({epochs} of {ep} epochs logged in {folder.relative_to(ROOT)})")
            else:
                not_run.setdefault(v, []).append(str(bits))
                continue
            cmds.append(cmd_text(command(which, v, bits)))
        if which == "cifar10" and cifar is not None:
            for v in DPSH_RUNS:
                rows += dpsh_rows(v, bits, cifar)
    if not_run:
        missing.append(f"{s['label']}, not run yet (`python bench/exchnet.py run`): "
                       + "; ".join(f"`{v}` at {'/'.join(b)} bits" for v, b in not_run.items()))
    return rows, cmds, missing


CAVEAT = "one seed, short CPU schedules, no real fine-grained set: not evidence about CUB or Aircraft"


def claim_sentence(rows: list[dict], where: str, bits: int) -> str:
    """One sentence on the seed's claim at one code length, from the asymmetric mAP@all of the :data:`PAIRS`
    measured there."""
    asym = {r["variant"]: r["mAP@all"] for r in rows
            if r["bits"] == bits and r.get("retrieval") == "asymmetric" and "variant" in r}
    found = [(a, b, asym[a], asym[b]) for a, b in PAIRS if a in asym and b in asym]
    adsh = [(y, b) for _, b, _, y in found if b.startswith("adsh")]
    if not adsh:
        return f"{where}, {bits} bits: no ExchNet/ADSH pair measured yet."
    text = "; ".join(f"{a} {x:.4f} vs {b} {y:.4f}" for a, b, x, y in found)
    best = max(adsh)
    verdict = "holds" if asym["exchnet"] > best[0] else "does not hold"
    out = (f"{where}, {bits} bits: the seed claims ExchNet (part features + feature exchange, ADSH codes) beats "
           f"ADSH; asymmetric mAP@all: {text}. Against the best ADSH variant measured at {bits} bits ({best[1]}) "
           f"the claim {verdict} here")
    if "exchnet-noexchange" in asym:
        d = asym["exchnet"] - asym["exchnet-noexchange"]
        out += (f"; the exchange and alignment themselves change ExchNet's mAP@all by {d:+.4f}, so "
                + ("they are not what makes the difference" if d <= 0 else "they account for part of it"))
    return out + "."


def claim_lines(rows: list[dict], where: str, bits: list[int]) -> list[str]:
    """The claim at every code length, how many lengths ExchNet wins, and ExchNet against DPSH (same database)."""
    out = [f"* {claim_sentence(rows, where, b)}" for b in sorted(bits)]
    verdicts = [(b, "holds" in s) for b in sorted(bits)
                if "no ExchNet/ADSH pair" not in (s := claim_sentence(rows, where, b))]
    if verdicts:
        wins = [b for b, ok in verdicts if ok]
        out.append(f"* {where}: ExchNet ahead of the best ADSH variant at {len(wins)} of the {len(verdicts)} code "
                   f"lengths measured{' (' + '/'.join(map(str, wins)) + ' bits)' if wins else ''} ({CAVEAT}).")
    pairs = []
    for b in sorted(bits):
        ex = [r for r in rows if r["bits"] == b and r.get("variant") == "exchnet"
              and r.get("retrieval") == "asymmetric"]
        for r in rows:
            if ex and r["bits"] == b and r["method"] == "dpsh" and r["database"] == ex[0]["database"]:
                pairs.append(f"{b} bits {ex[0]['mAP@all']:.4f} vs {r['variant']} {r['mAP@all']:.4f}")
    if pairs:
        out.append(f"* {where}: ExchNet (asymmetric) against DPSH (symmetric) on the same database, mAP@all: "
                   + "; ".join(pairs) + ".")
    return out


def report() -> None:
    from hashlearn.data import Split, open_prepared
    from hashlearn.eval.results import write_results

    cifar = (open_prepared("cifar10"), Split.load(SPLIT)) if SPLIT.exists() else None
    rows, cmds, missing = set_rows("cifar10", cifar)
    fashion, fashion_cmds, fashion_missing = set_rows("fashion")
    if not rows and not fashion:
        raise SystemExit("no runs yet: python bench/exchnet.py run")
    bits_text = "/".join(str(b) for b in sorted(SETS["cifar10"]["bits"]))
    notes = [
        f"CIFAR-10 rows: EfficientNet-Lite0, 96 px, fine-tuned above the cached `stage5` cut (chosen on validation "
        f"by bench/finetune_cifar10.py), {bits_text} bits ({', '.join(SETS['cifar10']['all_bits'])} at every "
        f"length; the other variants at {BITS} bits only); ADSH/ExchNet epochs = outer iterations × inner epochs "
        "(the `epochs` and `T_in` columns; each epoch steps over the |Ω| sampled images only), γ = 200, Adam "
        "lr 1e-3 (cosine); DPSH: 15 epochs over all 4,500 training images (its runs' commands are in "
        "bench/finetune_cifar10.py).",
        "Protocol `cifar10-1-traindb` (`python bench/exchnet.py split`): the cifar10-1 queries (1,000), training "
        "(4,500) and validation (500) images of seed 0, database = training + validation (5,000) — the "
        "fine-grained protocol's shape (training set = database). Asymmetric rows rank the database by the learned "
        "codes V for the 4,500 training images and by the network's codes for the 500 validation images; "
        "symmetric rows re-encode the whole database with the network (same run, same weights).",
        "CIFAR-10 DPSH rows (column `variant`): " + "; ".join(f"`{v}` ({d[0].name}): {d[1]}"
                                                              for v, d in DPSH_RUNS.items())
        + ". The rows whose source says 're-evaluated' are that run's saved codes restricted to this 5,000-image "
        "database (same queries); the row below each is that run's own figure on its 59,000 images.",
        "Training seconds and img/s: the 48-bit ADSH/ExchNet runs ran at once with several other jobs on the 2 "
        "shared cores, the other code lengths two at a time (`run --jobs 2`, one thread each); the DPSH runs "
        "were made earlier by another script, so their times are not comparable with these.",
        "Default retrieval (`eval.retrieval: auto`): asymmetric for methods that learn database codes (adsh, "
        "exchnet), symmetric otherwise.",
    ]
    if fashion:
        notes.append("Fashion-MNIST rows (dataset fashion-mnist-upper5): the five upper-body classes, small CNN "
                     "end to end at 28 px, cifar10-1 protocol restricted to those classes (500 queries, 2,250 + 250 "
                     f"training, 34,500 database), {'/'.join(str(b) for b in sorted(SETS['fashion']['bits']))} bits.")
    else:
        notes.append("Fashion-MNIST five-class subset: the protocol option exists (protocol_args.classes) but no "
                     "runs were made in this session (CPU time).")
    notes += missing + fashion_missing
    claim = claim_lines(rows, "CIFAR-10", SETS["cifar10"]["bits"])
    if fashion:
        claim += claim_lines(fashion, "Fashion-MNIST upper-body", SETS["fashion"]["bits"])
    sections = [("How this compares with the seed's claim", claim),
                ("Commands", ["```", *cmds, *fashion_cmds, "```"])]
    loads = os.getloadavg()[0]
    md, js = write_results(
        DOCS, NAME, title=f"ExchNet and ADSH (asymmetric and symmetric retrieval) beside DPSH, {bits_text} bits",
        protocol="cifar10-1-traindb (cifar10-1 queries; database = training set)", dataset="cifar10",
        backbone="efficientnet_lite0, 96 px, fine-tuned above stage5", command="python bench/exchnet.py report",
        machine=machine_line(f"{loads:.0f}").removeprefix("Machine: "),
        rows=[dict(r, dataset="cifar10") for r in rows] + [dict(r, dataset="fashion-mnist-upper5") for r in fashion],
        notes=notes, sections=sections)
    print(md, js, f"({len(rows) + len(fashion)} rows)", *missing, *fashion_missing, sep="\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["split", "run", "report"])
    p.add_argument("--set", dest="which", choices=sorted(SETS), help="run: this set only (default: all, Fashion first)")
    p.add_argument("--only", help="run: comma-separated variants (default: all of the set)")
    p.add_argument("--jobs", type=int, default=1, help="run: runs at once (each uses 1 thread: --jobs 2)")
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    os.chdir(ROOT)
    if a.what == "split":
        make_split()
    elif a.what == "run":
        only = a.only.split(",") if a.only else None
        known = {v for s in SETS.values() for v in s["variants"]}
        for v in only or []:
            if v not in known:
                raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(sorted(known))}")
        cmds = [c for which in ([a.which] if a.which else list(SETS)) for c in commands(which, only, skip_done=True)]
        if not SPLIT.exists() and any(str(SPLIT) in c for _, c in cmds):
            raise SystemExit(f"{SPLIT} is missing: python bench/exchnet.py split")
        run_all(cmds, a.jobs, a.dry_run)
    else:
        report()


if __name__ == "__main__":
    main()
