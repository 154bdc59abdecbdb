"""Near-duplicate benchmark: find the original of an edited copy, learned codes vs perceptual hashes.

    python bench/near_duplicates.py                                  # default model, pHash, dHash, wHash, PDQ
    python bench/near_duplicates.py --run bcdh=runs/bcdh/64bits --run dsah=runs/dsah/64bits   # + learned runs

Databases of real images no method was trained on: a seeded sample of the CIFAR-10 *test* set (32 px upscaled to
128 px, bicubic) and of the brain-MRI *Testing* folder (224 px; exact pixel copies dropped). Each query is a seeded
random edit of one database image (:func:`make_query`): with the probabilities of :data:`EDITS`, a crop keeping
70-95 % of each side, a rotation of up to ±10°, a rescale by 0.5-1.5, brightness and contrast ±30 %, a Gaussian blur,
a small text overlay and a horizontal flip, always followed by JPEG compression at quality 20-90. The original is
the one relevant database item. The default model was fitted on CIFAR-10 *train* and brain-MRI *Training* images
(``bench/default_model.py``); no method saw a query transform.

Every method's codes go through the one evaluator (``hashlearn.eval.evaluate``, ties by exact expectation, each
database image its own class so that a query's only relevant item is its original): Recall@1 and Recall@10 (= the
chance that the original is among the first 1 / 10 of the Hamming ranking), mAP (= mean 1/rank of the original),
and precision/recall within the Hamming radius that maximises the query-averaged F1 (per-query precision is the
share of the images within the radius that are the original; 0 when none is). Encoding images/s is wall-clock over
database and queries (the decoded arrays in; perceptual hashes in one Python thread, the CNN on 2 torch threads).

Writes ``docs/results/near-duplicates.{md,json}`` and the benchmark section of the default model's card.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_model import (  # noqa: E402
    BENCH_END,
    BENCH_START,
    CARD,
    MODEL_DIR,
    cifar10_images,
    mri_images,
    mri_tree,
    to_size,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "results"
NAME = "near-duplicates"
SEED = 12
CIFAR_SIDE = 128
DATASETS = {"cifar10-test": (1500, 750), "brain-mri-testing": (500, 250)}  # database images, queries

#: each edit's probability (JPEG always comes last)
EDITS = {"crop": 0.5, "rotate": 0.4, "scale": 0.5, "brightness-contrast": 0.5, "blur": 0.3, "text": 0.3,
         "hflip": 0.25}
WORDS = ("sample", "2024", "copy", "hashlearn", "photo", "(c) me", "draft", "IMG_0042")


# -- the queries ------------------------------------------------------------------------------------------------

def make_query(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """A seeded random edit of ``image`` (uint8 RGB) and the names of the edits applied, JPEG last."""
    import io

    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

    img = Image.fromarray(image)
    done = []
    if rng.random() < EDITS["crop"]:
        keep = rng.uniform(0.70, 0.95)
        w, h = img.size
        cw, ch = max(8, round(w * keep)), max(8, round(h * keep))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
        done.append("crop")
    if rng.random() < EDITS["rotate"]:
        img = img.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        done.append("rotate")
    if rng.random() < EDITS["scale"]:
        s = rng.uniform(0.5, 1.5)
        img = img.resize((max(8, round(img.width * s)), max(8, round(img.height * s))), Image.Resampling.BILINEAR)
        done.append("scale")
    if rng.random() < EDITS["brightness-contrast"]:
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.7, 1.3)))
        img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.7, 1.3)))
        done.append("brightness-contrast")
    if rng.random() < EDITS["blur"]:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
        done.append("blur")
    if rng.random() < EDITS["text"]:
        draw = ImageDraw.Draw(img)
        size = max(6, round(img.height * rng.uniform(0.06, 0.12)))
        font = ImageFont.load_default(size=size)
        word = WORDS[int(rng.integers(len(WORDS)))]
        x, y = int(rng.integers(0, max(1, img.width // 2))), int(rng.integers(0, max(1, img.height - size)))
        draw.text((x, y), word, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), font=font)
        done.append("text")
    if rng.random() < EDITS["hflip"]:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        done.append("hflip")
    quality = int(rng.integers(20, 91))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    done.append("jpeg")
    from hashlearn.data.images import decode_image

    return decode_image(buf.getvalue(), name="query"), done


def build_sets(sizes: dict[str, tuple[int, int]]) -> dict[str, dict]:
    """``{dataset: {"database": [uint8 RGB], "queries": [...], "truth": original index per query, "edits"}}``."""
    from PIL import Image

    out = {}
    for name, (n_db, n_q) in sizes.items():
        if name == "cifar10-test":
            small, _ = cifar10_images("test", n_db, SEED)
            database = [np.asarray(Image.fromarray(im).resize((CIFAR_SIDE, CIFAR_SIDE), Image.Resampling.BICUBIC))
                        for im in small]
        else:
            database, _ = mri_images("Testing", n_db, SEED, tree=mri_tree())
        rng = np.random.default_rng([SEED, len(out)])
        truth = np.sort(rng.choice(len(database), size=min(n_q, len(database)), replace=False))
        queries, edits = [], []
        for i, t in enumerate(truth):
            q, done = make_query(database[t], np.random.default_rng([SEED, len(out), i]))
            queries.append(q)
            edits.append(done)
        out[name] = {"database": database, "queries": queries, "truth": truth, "edits": edits}
    return out


# -- the methods: images in, packed codes out --------------------------------------------------------------------

def imagehash_encoder(kind: str):
    import imagehash
    from PIL import Image

    fn = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash}[kind]

    def encode(images: list[np.ndarray]) -> np.ndarray:
        bits = [np.asarray(fn(Image.fromarray(im), hash_size=8).hash, dtype=bool).ravel() for im in images]
        return np.packbits(np.stack(bits), axis=1, bitorder="big")

    return encode


def pdq_encode(images: list[np.ndarray]) -> np.ndarray:
    import pdqhash

    bits = [pdqhash.compute(np.ascontiguousarray(im))[0].astype(bool) for im in images]
    return np.packbits(np.stack(bits), axis=1, bitorder="big")


def hasher_encoder(hasher):
    def encode(images: list[np.ndarray]) -> np.ndarray:
        # the rule `hashlearn duplicates` applies to a file: shorter side -> image size, central crop
        parts = [hasher.encode(to_size(images[i:i + 256], hasher.image_size)) for i in range(0, len(images), 256)]
        return np.concatenate(parts)

    return encode


def methods(runs: dict[str, str]) -> list[dict]:
    from hashlearn.models import load_model
    from hashlearn.train import load_run

    default = load_model("default")
    trained = default.info.get("feature_seconds", 0) + default.info.get("fit_seconds", 0)
    out = [{"method": "default model", "detail": f"{default.method} on Lite0 {default.image_size} px",
            "bits": default.bits, "encode": hasher_encoder(default), "fingerprint": default.fingerprint,
            "train_seconds": round(trained, 1) if trained else None}]
    for label, path in runs.items():
        h = load_run(path)
        out.append({"method": label, "detail": f"{h.method} run {path}, {h.config.backbone} {h.image_size} px",
                    "bits": h.bits, "encode": hasher_encoder(h), "fingerprint": h.fingerprint})
    for kind in ("phash", "dhash", "whash"):
        out.append({"method": kind, "detail": "imagehash 8x8", "bits": 64, "encode": imagehash_encoder(kind)})
    out.append({"method": "pdq", "detail": "pdqhash", "bits": 256, "encode": pdq_encode})
    return out


# -- measuring --------------------------------------------------------------------------------------------------

def measure(method: dict, data: dict) -> dict:
    from hashlearn.eval import evaluate

    t0 = time.perf_counter()
    db = method["encode"](data["database"])
    q = method["encode"](data["queries"])
    seconds = time.perf_counter() - t0
    bits = method["bits"]
    n_db = len(db)
    # each database image is its own class: a query's one relevant item is its original
    res = evaluate(q, db, data["truth"], np.arange(n_db), topk=(1000, "all"), bits=bits, curve_n=(1, 10), radius=2)
    at = dict(zip(res.curve_n.tolist(), res.recall_at_n.tolist(), strict=True))
    best = int(np.argmax(res.pr_f1))
    per_edit = {}
    hits1 = _recall1_per_query(q, db, data["truth"], bits)
    for edit in EDITS:
        mask = np.array([edit in e for e in data["edits"]])
        if mask.any():
            per_edit[edit] = float(hits1[mask].mean())
    return {
        "mAP@all": round(float(res.map["all"]), 4), "mAP@1000": round(float(res.map[1000]), 4),
        "P@r2": round(float(res.precision_radius), 4),
        "Recall@1": round(float(at[1]), 4), "Recall@10": round(float(at[10]), 4), "best_radius": best,
        "precision@best": round(float(res.pr_precision[best]), 4), "recall@best": round(float(res.pr_recall[best]), 4),
        "F1@best": round(float(res.pr_f1[best]), 4),
        "images_per_second": round((len(db) + len(q)) / seconds, 1), "per_edit_recall@1": per_edit,
    }


def _recall1_per_query(q, db, truth, bits) -> np.ndarray:
    """Per query, the chance (ties by expectation) that the original is ranked first."""
    from hashlearn.codes import hamming_distances

    d = hamming_distances(q, db)
    own = d[np.arange(len(q)), truth]
    closer = (d < own[:, None]).sum(1)
    tied = (d == own[:, None]).sum(1)
    return np.where(closer == 0, 1.0 / tied, 0.0)


def machine_line() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"2 CPU cores shared with other concurrent work (load average {load} at the end), no GPU; images/s are "
            "wall-clock on that shared machine and only comparable within this file")


def update_card(rows: list[dict], command: str) -> None:
    card = MODEL_DIR / CARD
    if not card.exists():
        return
    text = card.read_text()
    if BENCH_START not in text:
        return
    mine = [r for r in rows if r["method"] == "default model"]
    body = [BENCH_START, f"Generated by `{command}` (see `docs/results/{NAME}.md` for every method and the setup).", "",
            "| dataset | bits | Recall@1 | Recall@10 | mAP@all | best radius | P / R there | pHash R@1 | PDQ R@1 |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in mine:
        other = {o["method"]: o for o in rows if o["dataset"] == r["dataset"]}
        body.append(f"| {r['dataset']} | {r['bits']} | {r['Recall@1']:.3f} | {r['Recall@10']:.3f} | "
                    f"{r['mAP@all']:.3f} | {r['best_radius']} | {r['precision@best']:.3f} / {r['recall@best']:.3f} | "
                    f"{other['phash']['Recall@1']:.3f} | {other['pdq']['Recall@1']:.3f} |")
    body += ["", *[line for line in verdict(rows) if "default model" in line], BENCH_END]
    start, end = text.index(BENCH_START), text.index(BENCH_END) + len(BENCH_END)
    from hashlearn._atomic import atomic_write_text

    atomic_write_text(card, text[:start] + "\n".join(body) + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN",
                        help="also measure a run folder (e.g. bcdh=runs/bcdh/64bits); repeatable")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every database and query count")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--no-card", action="store_true", help="leave the default model's card as it is")
    parser.add_argument("--card-only", action="store_true",
                        help="measure nothing: rewrite the card's benchmark section from the results JSON")
    args = parser.parse_args(argv)
    if args.card_only:
        import json

        doc = json.loads((args.out / f"{NAME}.json").read_text())
        update_card(doc["rows"], doc["command"])
        return 0
    os.environ.setdefault("HASHLEARN_DATA", str(ROOT.parent / "shared" / "data"))
    import torch

    torch.set_num_threads(2)
    runs = {}
    for item in args.run:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--run {item!r}: expected NAME=RUN_FOLDER")
        runs[label] = path
    sizes = {k: (max(2, round(d * args.scale)), max(1, round(q * args.scale))) for k, (d, q) in DATASETS.items()}
    t0 = time.perf_counter()
    sets = build_sets(sizes)
    print(f"built the sets in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rows = []
    for m in methods(runs):
        for dname, data in sets.items():
            r = measure(m, data)
            rows.append({"method": m["method"], "bits": m["bits"], "train_seconds": m.get("train_seconds"),
                         "dataset": dname, "database": len(data["database"]),
                         "queries": len(data["queries"]), **{k: v for k, v in r.items() if k != "per_edit_recall@1"},
                         "detail": m["detail"], "per_edit_recall@1": r["per_edit_recall@1"]})
            print(f"{m['method']:14s} {dname:18s} R@1 {r['Recall@1']:.3f} R@10 {r['Recall@10']:.3f} "
                  f"mAP {r['mAP@all']:.3f} {r['images_per_second']} img/s", file=sys.stderr)
    command = "python bench/near_duplicates.py" + "".join(f" --run {x}" for x in args.run) + (
        f" --scale {args.scale}" if args.scale != 1.0 else "")
    write(rows, sets, runs, command, args.out)
    if not args.no_card:
        update_card(rows, command)
    return 0


def verdict(rows: list[dict]) -> list[str]:
    """Plain sentences: where the default model beats pHash and PDQ on Recall@1, and where not."""
    lines = []
    for dname in dict.fromkeys(r["dataset"] for r in rows):
        by = {r["method"]: r for r in rows if r["dataset"] == dname}
        mine = by["default model"]
        for other in ("phash", "pdq"):
            o = by[other]
            word = "beats" if mine["Recall@1"] > o["Recall@1"] else "does NOT beat"
            lines.append(f"* {dname}: the default model ({mine['bits']} bits) {word} {other} ({o['bits']} bits) on "
                         f"Recall@1: {mine['Recall@1']:.3f} vs {o['Recall@1']:.3f}.")
        above = [f"{m} ({r['Recall@1']:.3f})" for m, r in by.items()
                 if m != "default model" and r["Recall@1"] >= mine["Recall@1"]]
        lines.append(f"* {dname}: methods at or above the default model on Recall@1: {', '.join(above) or 'none'}.")
    return lines


def write(rows, sets, runs, command, out: Path) -> None:
    from hashlearn.eval.results import write_results

    table = [{k: v for k, v in r.items() if k not in ("per_edit_recall@1", "detail")} for r in rows]
    edits = list(EDITS)
    per_edit = ["| dataset | method | " + " | ".join(edits) + " |", "|---|---|" + "---|" * len(edits)]
    for r in rows:
        per_edit.append(f"| {r['dataset']} | {r['method']} | "
                        + " | ".join(f"{r['per_edit_recall@1'].get(e, float('nan')):.3f}" for e in edits) + " |")
    counts = {d: {e: sum(e in q for q in s["edits"]) for e in edits} for d, s in sets.items()}
    slots = [f"* {m}: {'measured, run ' + runs[m] if m in runs else 'no run given (add --run ' + m + '=RUN)'}"
             for m in ("bcdh", "dsah")]
    notes = [
        "Databases: CIFAR-10 *test* (seeded sample, 32 px upscaled to 128 px bicubic) and brain-MRI *Testing* "
        "(224 px, exact pixel copies dropped); the default model was fitted on CIFAR-10 *train* and brain-MRI "
        "*Training* images, never on these.",
        "Queries: one seeded random edit per query of one database image (crop keeping 70-95 % of each side, "
        "rotation ±10°, rescale 0.5-1.5, brightness/contrast ±30 %, Gaussian blur, a small text overlay, horizontal "
        "flip, each with its own probability; JPEG quality 20-90 always); the original is the one relevant item.",
        "Recall@k and mAP by the one evaluator (hashlearn.eval.evaluate, ties by exact expectation); precision / "
        "recall / F1 are query-averaged within the Hamming radius of best F1 (best_radius); P@r2 the same precision at "
        "radius 2; mAP@all is mean 1/rank of the original, mAP@1000 the same with ranks past 1000 scoring 0; train s: "
        "the default model's feature extraction + ITQ fit (its run.json).",
        "default model: 64-bit ITQ with a learned whitening (from image / synthetic-view pairs of training images) "
        "on EfficientNet-Lite0 (ImageNet) pooled features at 96 px (src/hashlearn/models/default, "
        "bench/default_model.py; its card). Rows named by --run are run folders measured the same way (itq: plain "
        "ITQ on the same features, `python bench/default_model.py --no-whiten --cifar 1600 --mri 800 --out "
        "runs/itq-lite0-96`). pHash/dHash/wHash: imagehash 4.3.2, 8x8 = 64 bits; PDQ: pdqhash 0.2.8, 256 bits.",
        f"Edits drawn per dataset: {counts}.",
    ]
    sections = [("Is the default model better than pHash and PDQ on Recall@1?", verdict(rows)),
                ("Learned label-free models (slots)", slots),
                ("Recall@1 by edit (queries that include the edit, among others)", per_edit)]
    write_results(out, NAME, title="Near-duplicate search: learned codes vs perceptual hashes", protocol=
                  "near-duplicates (seeded edits, one relevant item)", dataset="cifar10 test + brain-mri Testing",
                  backbone="EfficientNet-Lite0 (ImageNet) at 96 px for the default model; none for the perceptual "
                  "hashes", command=command, machine=machine_line(), rows=table, notes=notes, sections=sections)


if __name__ == "__main__":
    sys.exit(main())
