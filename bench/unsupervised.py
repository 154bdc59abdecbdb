"""CIFAR-10 cifar10-1 without labels for training: DSAH, BCDH and the unsupervised deep baselines, 16/32/64 bits.

Every run goes through ``hashlearn train`` with a label-free method (``supervised = False``: the
loss never sees a label; the validation split's labels select the epoch, the query/database labels
evaluate). EfficientNet-Lite0 at 96 px, fine-tuned above the cached ``stage5`` cut (the cut chosen
on validation in ``cifar10-1-lite0-finetune``): the pooled frozen-feature cache of the whole
dataset is not on this machine (44 min to rebuild on the shared CPU), the stage5 maps are. The
methods (dsah, bcdh, ssdh-u, greedyhash-u, bihalf) run at 16, 32 and 64 bits, the DSAH ablations
(AND off, PIC 0, and the AND update with γ = 1 before the epochs model selection sees) at 32 bits.
The shallow baselines (LSH, PCAH, ITQ, SH) are fitted, without labels, on the 4,500 training images'
pooled pretrained features: the ImageNet layers above ``stage5`` in eval mode on the cached maps,
pooled (the ``pool`` tap, 1280-d: what the label-free methods' heads read before their first step),
computed once for every image into ``runs/cifar10-1-unsup-shallow/pool_features.npy``.
This script prints and runs the commands, then writes ``docs/results/cifar10-1-unsupervised.{md,json}``
from the run folders::

    python bench/unsupervised.py run --jobs 2 [--only dsah,bcdh] [--dry-run]   # the missing runs
    python bench/unsupervised.py shallow [--limit N --out DIR]                   # lsh, pcah, itq, sh
    python bench/unsupervised.py report                                          # the results files

``run`` skips the runs whose ``<N>bits/metrics.json`` exists, 32 bits first, then 16, then 64;
``--jobs 2`` runs two at once (each with ``train.threads=1``); ``--dry-run`` prints the commands
only. ``shallow`` fits every shallow method at every code length and writes
``runs/cifar10-1-unsup-shallow/<method>/<N>bits/metrics.json`` (what ``report`` reads of a deep run, fit
seconds as ``training_seconds``); ``--limit N`` (a test: at most N images per split part, the rule of
``hashlearn train --set data.limit=N``) needs ``--out`` elsewhere. Run folders: ``runs/cifar10-1-unsup-*``
(git-ignored). DSAH's similarity memory, positives and AND updates are read from its
``dsah_similarity.jsonl`` (written by the method's hooks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ath import run_all  # noqa: E402
from train_cifar10 import DOCS, ROOT, RUNS, cmd_text, machine_line, read_metrics, train_cmd  # noqa: E402

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
NAME = "cifar10-1-unsupervised"
SIZE = 96
CUT = "stage5"
EPOCHS = 5
LR = "1e-3"  # heads; the layers above the cut train at lr/10 (optim.backbone_lr default for pretrained weights)
#: the load average during the runs (their training seconds are only comparable within one group)
LOAD = ("20–23 for the first 32-bit runs of bcdh, bihalf, dsah, greedyhash-u and ssdh-u, beside other jobs; about 2 "
        "for the others, two at a time, one thread each")
BITS = 32  # the ablations' code length
ALL_BITS = [32, 16, 64]  # the methods' code lengths, in the order ``run`` makes them
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
    # At 32 bits `dsah` kept epoch 3, the weights from before its only AND update (after epoch 3), so its row
    # equals `dsah-no-and`'s. Here the update comes after epoch 2 (and 4) and validation after epochs 3 and 5
    # only: every epoch model selection can keep was trained on the updated similarity. γ = 1: from the `dsah`
    # run's epoch-3 codes, μ + 1σ adds about 20 % of all pairs with about 20 % of them same-class (the
    # initial ANC positives' rate), where γ = 0 added 46 % with 17 % same-class; above γ ≈ 1 the threshold
    # passes the largest inner product (32) and nothing is added.
    "dsah-gamma1": ("dsah", ["method_args.round_epochs=2", "method_args.gamma=1", "train.eval_every=3"],
                    "AND update after epochs 2 and 4 with γ = 1 (threshold μ + σ), validation after epochs 3 and 5 "
                    "only, so the kept weights always trained on the updated similarity"),
    "bcdh": ("bcdh", ["method_args.views=2"],
             "synthetic views (2 per training image, stage5 maps cached), closed-form B-step, 5 hard negatives"),
    "ssdh-u": ("ssdh-u", [], "thresholds μ ± σ of the pretrained cosine distances"),
    "greedyhash-u": ("greedyhash-u", [], "sign with straight-through gradient, cosine targets, α = 0.1"),
    "bihalf": ("bihalf", [], "bi-half layer (γ = 3), cosine targets"),
}
#: the methods, run at every code length of ALL_BITS and ranked per length; the other variants at BITS only
METHODS = ("dsah", "ssdh-u", "greedyhash-u", "bihalf", "bcdh")
ORDER = [*METHODS, "dsah-no-and", "dsah-pic0", "dsah-gamma1"]

# --- shallow baselines on the pooled pretrained features (step `shallow`)
SHALLOW = ("lsh", "pcah", "itq", "sh")  # registered shallow methods, variant = method name
SHALLOW_TEXT = ("shallow, on the pooled pretrained Lite0 features computed from the cached "
                f"{CUT} maps (ImageNet layers above the cut, eval mode)")
RANKED = (*METHODS, *SHALLOW)  # what the per-length comparison ranks
SHALLOW_DIR = RUNS / "cifar10-1-unsup-shallow"
BACKBONE, DATASET, PROTOCOL, SEED = "efficientnet_lite0", "cifar10", "cifar10-1", 0
TAP = "pool"  # the tap the label-free heads read (run.json "taps" of the deep runs)
FEATURES, FEATURE_ROWS, FEATURE_INFO = "pool_features.npy", "pool_rows.npy", "pool_features.json"
PARTS = ("query", "train", "val", "database")  # the trainer's order (data.limit salts its subsets by it)


def run_dir(variant: str) -> Path:
    return RUNS / f"cifar10-1-unsup-{variant}"


def variant_bits(v: str) -> list[int]:
    return ALL_BITS if v in METHODS else [BITS]


def command(variant: str, bits: int) -> list[str]:
    method, overrides, _ = VARIANTS[variant]
    return train_cmd(method, COMMON, bits, run_dir(variant), epochs=EPOCHS, lr=LR, overrides=overrides)


def commands(only=None, skip_done: bool = False) -> list[tuple[str, list[str]]]:
    """One ``hashlearn train`` per (variant, code length), by code length in ALL_BITS order, then ORDER;
    ``skip_done``: leave out the runs that have finished (their ``metrics.json`` exists)."""
    out = []
    for bits in ALL_BITS:
        for v in ORDER:
            if (only and v not in only) or bits not in variant_bits(v):
                continue
            if skip_done and (run_dir(v) / f"{bits}bits" / "metrics.json").exists():
                print(f"done already: {v} at {bits} bits ({run_dir(v).relative_to(ROOT)})")
                continue
            out.append((v, command(v, bits)))
    return out


def dsah_similarity(folder: Path) -> dict:
    """The initial similarity's record and the AND updates' (epochs, thresholds, positives) of a DSAH run."""
    path = folder / "dsah_similarity.jsonl"
    if not path.exists():
        return {}
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    initial = next((x for x in reversed(lines) if x.get("event") == "initial"), {})
    last = lines[-1] if lines else {}
    updates = [x for x in lines if x.get("event") == "and_update"]
    return {"similarity_bytes": initial.get("similarity_nbytes"), "positives_initial": initial.get("positives"),
            "positives_final": last.get("positives"), "anc_seconds": initial.get("seconds"),
            "n_train": initial.get("n"), "and_thresholds": [round(x["threshold"], 3) for x in updates],
            "and_updates": len(updates), "and_epochs": [x.get("epoch") for x in updates]}


def and_in_effect(row: dict) -> bool:
    """Whether the kept weights trained after an AND update (an update at epoch e changes epochs e + 1, …)."""
    return any(e < row.get("best_epoch", 0) for e in row.get("and_epochs") or [])


def _rank_lines(rows: list[dict]) -> list[str]:
    """Per code length: the methods by mAP@all, and where DSAH and BCDH stand (also by mAP@1000)."""
    out = []
    for bits in sorted(ALL_BITS):
        got = {r["variant"]: r for r in rows if r["bits"] == bits and r["variant"] in RANKED}
        if not got:
            out.append(f"* {bits} bits: no method measured yet.")
            continue
        by_all = sorted(got, key=lambda v: -got[v]["mAP@all"])
        by_1000 = sorted(got, key=lambda v: -got[v]["mAP@1000"])
        places = "; ".join(f"{v.upper()} {by_all.index(v) + 1} of {len(got)} by mAP@all and "
                           f"{by_1000.index(v) + 1} by mAP@1000" for v in ("dsah", "bcdh") if v in got)
        missing = [v for v in RANKED if v not in got]
        out.append(f"* {bits} bits, mAP@all: " + " > ".join(f"{v} {got[v]['mAP@all']:.4f}" for v in by_all)
                   + (f". {places}" if places else ". Neither DSAH nor BCDH measured")
                   + (f" (not measured: {', '.join(missing)})" if missing else "") + ".")
    out += _verdict_lines(rows) + _why_lines(rows)
    return out


def _why_lines(rows: list[dict]) -> list[str]:
    """Why DSAH and BCDH trail, from their runs: DSAH's positives before and after the AND update (and whether the
    kept weights saw it); BCDH's positives are views of one picture, never two pictures of one class."""
    out = []
    dsah = [r for r in rows if r["variant"] == "dsah" and r.get("positives_initial") is not None]
    if dsah:
        out.append("* why DSAH trails, from its runs: its initial ANC similarity marks "
                   + ", ".join(f"{r['positives_initial'] / r['n_train'] ** 2:.2%}" for r in dsah)
                   + " of all training pairs positive and its AND update raises that to "
                   + ", ".join(f"{r['positives_final'] / r['n_train'] ** 2:.2%}" for r in dsah)
                   + f" (at {', '.join(str(r['bits']) for r in dsah)} bits; same-class pairs are about 10%), so the "
                   "update floods the positives with other-class pairs; the kept weights "
                   + ("trained on the update at " + ", ".join(f"{r['bits']}" for r in dsah if and_in_effect(r))
                      + " bits" if any(and_in_effect(r) for r in dsah) else "never trained on the update")
                   + " (model selection by validation mAP)")
    if any(r["variant"] == "bcdh" for r in rows):
        out.append("* why BCDH trails here: its positives are synthetic views of one picture "
                   f"({VARIANTS['bcdh'][2]}), never two pictures of one class, so it learns invariance to edits — the "
                   "near-duplicate task, measured in near-duplicates.md — rather than the class retrieval scored here")
    return out


def _verdict_lines(rows: list[dict]) -> list[str]:
    """Said plainly: whether DSAH and BCDH beat the best baseline (deep or shallow) and ITQ, code length by code
    length, by mAP@all and by mAP@1000."""
    out = []
    for v in ("dsah", "bcdh"):
        parts = []
        for bits in sorted(ALL_BITS):
            got = {r["variant"]: r for r in rows if r["bits"] == bits and r["variant"] in RANKED}
            base = {b: r for b, r in got.items() if b not in ("dsah", "bcdh")}
            if v not in got or not base:
                continue
            for metric in ("mAP@all", "mAP@1000"):
                best = max(base, key=lambda b: base[b][metric])
                mine, top = got[v][metric], base[best][metric]
                text = (f"{bits} bits {metric} {mine:.4f} vs best baseline {best} {top:.4f} "
                        f"({mine / top:.2f}×, {'beats it' if mine > top else 'does NOT beat it'})")
                if "itq" in base and best != "itq":
                    itq = base["itq"][metric]
                    text += f", vs itq {itq:.4f} ({'ahead' if mine > itq else 'behind'})"
                parts.append(text)
        if parts:
            out.append(f"* {v.upper()} against its baselines: " + "; ".join(parts) + ".")
    return out


def _ablation_lines(rows: list[dict]) -> list[str]:
    """The DSAH ablations at BITS against `dsah-no-and`/`dsah`, saying whether the AND took part in the kept
    weights (an update after the kept epoch changes nothing that is evaluated)."""
    got = {r["variant"]: r for r in rows if r["bits"] == BITS and r["method"] == "dsah"}
    out = []
    for v, base, what in (("dsah", "dsah-no-and", "AND update"), ("dsah-gamma1", "dsah-no-and", "AND update, γ = 1"),
                          ("dsah-pic0", "dsah", "PIC off (A = 1)")):
        if v not in got or base not in got:
            continue
        a, b = got[v], got[base]
        line = (f"* {what} ({v} vs {base}, {BITS} bits): mAP@all {a['mAP@all']:.4f} vs {b['mAP@all']:.4f} "
                f"({a['mAP@all'] - b['mAP@all']:+.4f}), mAP@1000 {a['mAP@1000']:.4f} vs {b['mAP@1000']:.4f}; "
                f"{v} kept epoch {a.get('best_epoch')}")
        if a.get("and_epochs"):
            line += (f", AND updates after epoch(s) {a['and_epochs']} — "
                     + ("the kept weights trained on the updated similarity"
                        if and_in_effect(a) else "all after the kept epoch, so the update is not in this row"))
        if v == "dsah-gamma1":
            line += _control(a, b)
        out.append(line + ".")
    return out


def _control(row: dict, no_and: dict) -> str:
    """Which epoch `dsah-no-and` would keep were it validated only when ``row``'s run was (its val history)."""
    seen = [h["epoch"] for h in row.get("val_history") or []]
    hist = [h for h in no_and.get("val_history") or [] if h["epoch"] in seen]
    if not hist:
        return ""
    best = max(hist, key=lambda h: (h["val_mAP"], -h["epoch"]))
    same = best["epoch"] == no_and.get("best_epoch")
    return (f"; validated only after epochs {seen}, dsah-no-and would keep epoch {best['epoch']} "
            + ("(the epoch its row is from, so the comparison is matched)" if same
               else f"(its row is from epoch {no_and.get('best_epoch')}: the comparison is not matched)"))


def _bad(message: str) -> SystemExit:
    """Bad input: one line on stderr, exit status 2."""
    print(f"unsupervised.py: {message}", file=sys.stderr)
    return SystemExit(2)


def split_parts(limit: int | None = None):
    """The prepared CIFAR-10 and the split parts of cifar10-1 with seed 0, as ``hashlearn train`` makes
    them (``limit``: at most that many images per part, its ``data.limit`` rule)."""
    from hashlearn.train.run import _limit, load_data, make_split

    dataset = load_data(DATASET)
    split = make_split(dataset, PROTOCOL, SEED)
    return dataset, {k: _limit(getattr(split, k), limit, SEED, i) for i, k in enumerate(PARTS)}


def _rows_sha256(rows: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


def pretrained_features(backbone, cache, parts: dict, out: Path, batch_size: int = 256,
                        progress: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(rows, features, info)``: the pooled ``TAP`` features (float16) of the dataset images ``rows``
    (every image of the split parts, sorted) from their cached maps by the layers of ``backbone`` above
    the cache's cut (:func:`hashlearn.train.model.pooled_features_from_cache`), and what they came from.
    Computed once into ``out`` (``FEATURES``, ``FEATURE_ROWS``, ``FEATURE_INFO``); reused while the
    cache, the backbone's weights, the tap and the rows are the same."""
    from hashlearn._atomic import atomic_target
    from hashlearn.train.model import pooled_features_from_cache
    from hashlearn.train.runfolder import write_json_atomic

    rows = np.unique(np.concatenate([np.asarray(v, dtype=np.int64) for v in parts.values()]))
    source = {"cache_key": cache.key, "tap": TAP, "cut": cache.tap, "backbone": backbone.name,
              "weights": backbone.weights_id, "n": int(len(rows)), "rows_sha256": _rows_sha256(rows)}
    info_path = out / FEATURE_INFO
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if {k: info.get(k) for k in source} == source:
            features = np.load(out / FEATURES)
            if features.shape[0] == len(rows) and np.array_equal(np.load(out / FEATURE_ROWS), rows):
                print(f"pretrained features: {out / FEATURES} (made {info.get('created')})", file=sys.stderr)
                return rows, features, info
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    features = pooled_features_from_cache(backbone, cache, rows, [TAP], batch_size, progress=progress,
                                          desc=f"{TAP} above {cache.tap}")[TAP].astype(np.float16)
    seconds = time.perf_counter() - t0
    if not np.isfinite(features).all():
        raise SystemExit(f"the pooled {TAP} features overflow float16; nothing written")
    for name, array in ((FEATURES, features), (FEATURE_ROWS, rows)):
        with atomic_target(out / name) as tmp:
            np.save(tmp, array)
    info = {**source, "cache_path": str(cache.path), "file": FEATURES, "rows_file": FEATURE_ROWS,
            "shape": list(features.shape), "dtype": "float16", "bn": "frozen (eval mode)",
            "weights_above": f"the {backbone.name} ImageNet weights ({backbone.weights_id[:16]}…), untrained",
            "seconds": round(seconds, 1), "images_per_second": round(len(rows) / max(seconds, 1e-9), 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomic(info_path, info)  # last: its presence says the arrays are complete
    print(f"pretrained features: {len(rows)} images in {seconds:.1f} s → {out / FEATURES}", file=sys.stderr)
    return rows, features, info


def fit_shallow(dataset, parts: dict, rows: np.ndarray, features: np.ndarray, feature_info: dict, out: Path,
                methods=SHALLOW, all_bits=ALL_BITS, limit: int | None = None) -> list[dict]:
    """Each shallow method at each code length: fitted on the training images' features only (no
    labels, ``random_state`` = seed 0), query and database encoded, evaluated as the trainer's final
    evaluation does (:func:`hashlearn.eval.evaluate` with the default ``eval`` settings); writes
    ``out/<method>/<bits>bits/`` ``metrics.json`` (fit seconds as ``training_seconds``) and ``model.npz``."""
    from hashlearn.eval import chance_map, evaluate
    from hashlearn.methods import get_method
    from hashlearn.methods.shallow import save_hasher
    from hashlearn.train.config import RunConfig
    from hashlearn.train.runfolder import MODEL_FILE, write_json_atomic

    settings = RunConfig().eval  # topk, radius, ties: the defaults every deep run here used
    x = {k: features[np.searchsorted(rows, parts[k])].astype(np.float32) for k in ("train", "query", "database")}
    labels = {k: np.asarray(dataset.labels[parts[k]]) for k in ("query", "database")}
    chance = chance_map(labels["query"], labels["database"])
    source = {k: feature_info.get(k) for k in ("tap", "cut", "backbone", "cache_path", "seconds")}
    source["file"] = str(out / FEATURES)
    results = []
    for name in methods:
        for bits in sorted(all_bits):
            model = get_method(name)(bits=bits, random_state=SEED)
            t0 = time.perf_counter()
            model.fit(x["train"])
            fit_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            codes = {k: model.encode(x[k]) for k in ("query", "database")}
            encode_seconds = time.perf_counter() - t0
            if codes["query"].shape[1] != bits:  # e.g. PCA with fewer training images than bits
                raise SystemExit(f"{name} gave {codes['query'].shape[1]}-bit codes for {bits} bits; nothing written")
            result = evaluate(codes["query"], codes["database"], labels["query"], labels["database"],
                              topk=tuple(settings.topk), radius=settings.radius, ties=settings.ties)
            run_dir = out / name / f"{bits}bits"
            run_dir.mkdir(parents=True, exist_ok=True)
            save_hasher(model, run_dir / MODEL_FILE)
            metrics = {"method": name, "kind": "shallow", "variant": name, "dataset": DATASET, "protocol": PROTOCOL,
                       "bits": bits, "seed": SEED, "sizes": {k: int(len(v)) for k, v in parts.items()},
                       "data_limit": limit, "fitted_on": "train", "features": source,
                       "method_hparams": model.get_params(), "training_seconds": round(fit_seconds, 3),
                       "images_per_second": round(len(x["train"]) / max(fit_seconds, 1e-9), 1),
                       "encode_seconds": round(encode_seconds, 3), "run_dir": str(run_dir),
                       **result.to_dict(curves=True), "chance_mAP@all": chance}
            metrics["tie_rule"] = metrics.get("ties")
            metrics = json.loads(json.dumps(metrics, default=lambda o: o.item() if isinstance(o, np.generic)
                                            else o.tolist()))
            write_json_atomic(run_dir / "metrics.json", metrics)
            print(f"{name} {bits} bits: mAP@1000 {metrics['mAP@1000']:.4f}, mAP@all {metrics['mAP@all']:.4f} "
                  f"(fit {fit_seconds:.2f} s)", file=sys.stderr)
            results.append(metrics)
    return results


def shallow(limit: int | None = None, out: Path = SHALLOW_DIR) -> list[dict]:
    """The step ``shallow``: the pooled pretrained features of every cifar10-1 image (once), then
    :func:`fit_shallow`."""
    from hashlearn.nn import create_backbone, extract_activations
    from hashlearn.train.config import RunConfig

    config = RunConfig()  # the deep runs' settings of the cached maps (flip, dtype) and batch size
    dataset, parts = split_parts(limit)
    backbone = create_backbone(BACKBONE, weights=config.weights, taps=[TAP])
    # the deep runs' stage5 cache (same key: dataset, weights below the cut, size, flip, dtype, versions);
    # made here only if it is missing
    cache = extract_activations(backbone, dataset, CUT, SIZE, flip=config.augment.hflip,
                                dtype=config.activation_dtype, batch_size=config.train.feature_batch_size)
    print(f"{CUT} maps: {cache.path}", file=sys.stderr)
    rows, features, info = pretrained_features(backbone, cache, parts, out, config.train.feature_batch_size)
    return fit_shallow(dataset, parts, rows, features, info, out, limit=limit)


def shallow_metrics(root: Path | None = None) -> tuple[list[dict], list[str]]:
    """The ``metrics.json`` of the shallow runs under ``root`` (default ``SHALLOW_DIR``; by code length,
    then SHALLOW) and the runs not there, as ``"variant bits"`` texts; runs made with ``--limit`` are left out."""
    root = root or SHALLOW_DIR
    found, absent = [], []
    for bits in sorted(ALL_BITS):
        for v in SHALLOW:
            got = [m for m in read_metrics(root / v) if m["bits"] == bits and not m.get("data_limit")]
            if got:
                found.append(got[0])
            else:
                absent.append(f"{v} {bits}")
    return found, absent


def _shallow_note(found: list[dict], absent: list[str], root: Path | None = None) -> str:
    """The results note on the shallow rows: how they were made, or that they are missing."""
    if not found:
        return ("shallow LSH/PCAH/ITQ/SH rows are missing: not run yet (`python bench/unsupervised.py shallow`: "
                "fitted on the pooled pretrained Lite0 features computed from the cached "
                f"{CUT} maps) — see cifar10-1-frozen-lite0.md for them on the same backbone and image size")
    info_path = (root or SHALLOW_DIR) / FEATURE_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    made = (f"; computed once for the {info['n']:,} images in {info['seconds']} s ({info['images_per_second']} "
            f"images/s)" if info.get("seconds") is not None else "")
    width = f", {info['shape'][1]}-d" if info.get("shape") else ""
    return (f"shallow rows ({', '.join(f'`{v}`' for v in SHALLOW)}): fitted without labels (seed 0) on the "
            f"{found[0]['sizes']['train']:,} training images' pooled pretrained features — the ImageNet Lite0 "
            f"layers above {CUT} in eval mode (BatchNorm frozen) on the cached {CUT} maps, pooled (`{TAP}`{width}, "
            f"float16), the features "
            f"the label-free heads read before their first step{made}; query and database encoded by the fitted "
            f"model, evaluated as the deep runs; `train s` = fit seconds"
            + (f"; not measured: {', '.join(absent)} bits" if absent else ""))


def report() -> None:
    from hashlearn.eval.results import row_from_metrics, write_results

    rows, cmds, sims, missing, not_run = [], [], [], [], {}
    shallow_found, shallow_absent = shallow_metrics()
    for bits in sorted(ALL_BITS):
        for v in ORDER:
            if bits not in variant_bits(v):
                continue
            folder = run_dir(v)
            found = [m for m in read_metrics(folder) if m["bits"] == bits]
            logged = folder / f"{bits}bits" / "log.jsonl"
            if not found:
                if logged.exists():
                    epochs = len(logged.read_text().splitlines())
                    missing.append(f"`{v}` at {bits} bits: still training when this file was generated ({epochs} of "
                                   f"{EPOCHS} epochs logged in {folder.relative_to(ROOT)})")
                    cmds.append(f"* `{cmd_text(command(v, bits))}`")
                else:
                    not_run.setdefault(v, []).append(str(bits))
                continue
            m = found[0]
            extra = {}
            if VARIANTS[v][0] == "dsah":
                extra = dsah_similarity(folder / f"{bits}bits")
                if extra.get("similarity_bytes") is not None:
                    n = int(extra["n_train"])
                    sims.append(f"* {v} {bits} bits: W over {n} training images, bit-packed "
                                f"{extra['similarity_bytes'] / 2**20:.2f} MiB (a dense float32 W: "
                                f"{n * n * 4 / 2**20:.0f} MiB); positives {extra['positives_initial']} initially, "
                                f"{extra['positives_final']} after {extra['and_updates']} AND update(s) "
                                f"(thresholds μ + γσ on H Hᵀ: {extra['and_thresholds']}), i.e. "
                                f"{extra['positives_initial'] / n / n:.2%} → {extra['positives_final'] / n / n:.2%} "
                                f"of all pairs (same-class pairs in CIFAR-10: about 10%); ANC took "
                                f"{extra['anc_seconds']} s")
            rows.append(row_from_metrics(m, variant=v, cut=CUT, epochs=m.get("epochs_run"), **extra,
                                         val_history=m.get("val_history")))
            cmds.append(f"* `{cmd_text(command(v, bits))}`")
        rows += [row_from_metrics(m, variant=m["method"], cut=CUT) for m in shallow_found if m["bits"] == bits]
    if shallow_found:
        cmds.append("* `python bench/unsupervised.py shallow` (every shallow row)")
    if not rows:
        raise SystemExit("no runs yet; run: python bench/unsupervised.py run")
    if not_run:
        missing.append("not run yet (`python bench/unsupervised.py run`): "
                       + "; ".join(f"`{v}` at {'/'.join(b)} bits" for v, b in not_run.items()))
    compare = _rank_lines(rows) + _ablation_lines(rows)
    for r in rows:
        r.pop("val_history", None)
    n50k = 50_000
    sims.append(f"* at 50,000 training images the bit-packed W takes {n50k * ((n50k + 7) // 8) / 2**30:.2f} GiB "
                f"(dense float32: {n50k * n50k * 4 / 2**30:.1f} GiB), whatever the number of positives")
    bits_text = "/".join(str(b) for b in sorted(ALL_BITS))
    write_results(
        DOCS, NAME,
        title=f"CIFAR-10 cifar10-1 without labels for training: DSAH, BCDH and unsupervised baselines, "
              f"EfficientNet-Lite0 above {CUT}, {SIZE} px, {bits_text} bits",
        protocol="cifar10-1", dataset="cifar10",
        backbone=f"EfficientNet-Lite0 (ImageNet weights), {SIZE} px, layers above the cached {CUT} cut and the head "
                 f"trained on cached activations, {EPOCHS} epochs",
        command="python bench/unsupervised.py report", machine=machine_line(LOAD).removeprefix("Machine: "),
        rows=rows,
        notes=[
            "label-free training: the methods set `supervised = False`; the trainer passes their loss "
            "`Batch.labels = None` and their hooks `train_labels = None`; labels serve only to pick the epoch "
            "(validation mAP against training codes) and to evaluate the 1,000 queries against the 59,000-image "
            "database (mAP@1000, mAP@all, relevance = same class)",
            f"training: Adam, heads lr {LR}, layers above the cut at lr/10, cosine schedule, batch 64, "
            f"{EPOCHS} epochs, seed 0; {', '.join(METHODS)} at {bits_text} bits, the DSAH ablations at {BITS} bits; "
            "runs after the first 32-bit ones: two at a time (`run --jobs 2`, one thread each)",
            "pretrained features (DSAH's similarity, SSDH-U's thresholds, GreedyHash-U's/Bi-half's cosine targets) "
            f"= the pooled output of the ImageNet network above {CUT} before any step",
            _shallow_note(shallow_found, shallow_absent),
            "variants (column `variant`): " + "; ".join(f"`{v}`: {d[2]}" for v, d in VARIANTS.items())
            + "; " + ", ".join(f"`{v}`" for v in SHALLOW) + f": {SHALLOW_TEXT}",
            *missing,
        ],
        sections=[("How the methods compare, by code length", compare), ("DSAH similarity memory", sims),
                  ("Commands", cmds)],
    )
    print(f"wrote {DOCS / NAME}.md and .json ({len(rows)} rows)", *missing, sep="\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["run", "shallow", "report"])
    ap.add_argument("--only", default="", help="comma-separated variants (default: all, in the script's order)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each uses 1 thread: --jobs 2)")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--limit", type=int, default=None,
                    help="shallow, for tests: at most N images per split part (needs --out elsewhere)")
    ap.add_argument("--out", type=Path, default=SHALLOW_DIR, help=f"shallow: output folder (default {SHALLOW_DIR})")
    args = ap.parse_args()
    if args.step == "report":
        report()
        return
    if args.step == "shallow":
        if args.limit is not None and args.limit < 1:
            raise _bad(f"--limit must be a positive number of images, got {args.limit}")
        if args.limit is not None and args.out.resolve() == SHALLOW_DIR.resolve():
            raise _bad(f"--limit makes test runs: give --out DIR, not the report's folder {SHALLOW_DIR}")
        shallow(args.limit, args.out)
        return
    only = [v for v in args.only.split(",") if v]
    for v in only:
        if v not in VARIANTS:
            raise _bad(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    run_all(commands(only, skip_done=True), args.jobs, args.dry_run)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
