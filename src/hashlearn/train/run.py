"""``hashlearn train`` as a function: one run folder per code length, then a summary.

Run folder (``OUT/<bits>bits/``)::

    config.yaml           the resolved configuration (this code length)
    run.json              what encoding new images needs (kind, taps, image size, channels)
    checkpoint.pt         last epoch (deep methods; resumable)
    best.pt               weights selected by validation mAP (deep methods)
    model.npz             the fitted model (shallow methods): arrays + JSON parameters, never a pickle
    log.jsonl             one line per epoch
    query_codes.npz       packed query codes + ids      (hashlearn.codes.save_codes)
    database_codes.npz    packed database codes + ids
    metrics.json          every figure + protocol, sizes, R, relevance and tie rules, seed,
                          code length, training seconds and images/s

and ``OUT/summary.json`` / ``OUT/summary.md`` for the whole command. ``OUT`` must be new,
empty or an earlier training output (:func:`hashlearn.train.runfolder.check_out_root`); every
file is written to a temporary name and renamed. Nothing here ever deletes a file it did
not write.
"""

from __future__ import annotations

import copy
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn.codes import sign
from hashlearn.errors import HashlearnError, InputError, NotFoundError
from hashlearn.train.config import save_config, validate_config
from hashlearn.train.runfolder import (
    MODEL_FILE,
    check_out_root,
    check_run_dir_for_training,
    probe_writable,
    short_reason,
    write_json_atomic,
    write_text_atomic,
)


def _say(text: str, progress: bool = True) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def load_data(name: str, progress: bool = True):
    """The prepared (memory-mapped) dataset ``name``, preparing it first when needed."""
    from hashlearn.data import DATASETS, open_prepared, prepare

    try:
        return open_prepared(name)
    except HashlearnError as exc:
        if name not in DATASETS:  # neither prepared (e.g. with --as) nor a dataset hashlearn can prepare
            raise NotFoundError(f"unknown dataset {name!r} ({exc}); known: {', '.join(DATASETS.names())}") from None
        _say(f"preparing dataset {name} (once; cached for later runs)", progress)
        return prepare(name, progress=progress)


def make_split(dataset, protocol: str | None, seed: int, protocol_args: dict | None = None):
    from hashlearn.data import get_protocol

    if not protocol:
        raise InputError("no protocol given; pass --protocol NAME (see: hashlearn data protocols)")
    try:
        return get_protocol(protocol, **(protocol_args or {})).split(dataset, seed=seed)
    except (TypeError, ValueError) as exc:  # e.g. a count given as text
        if isinstance(exc, HashlearnError):
            raise
        raise InputError(f"protocol_args {protocol_args}: do not fit protocol {protocol!r} ({short_reason(exc)})") \
            from None


def build_method(cls, bits: int, args: dict | None, where: str = "method_args"):
    """``cls(bits=bits, **args)``, with arguments that do not fit the constructor as one-line errors."""
    args = dict(args or {})
    name = getattr(cls, "__name__", str(cls))
    if "bits" in args:
        raise InputError(f"{where}.bits: set the code length with bits (--bits), not in {where}")
    try:
        inspect.signature(cls).bind(bits=bits, **args)
    except TypeError as exc:
        raise InputError(f"{where} {args}: do not fit {name} ({exc})") from None
    try:
        return cls(bits=bits, **args)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, HashlearnError):
            raise
        raise InputError(f"{where} {args}: {name} refuses them ({short_reason(exc)})") from None


def _limit(idx: np.ndarray, limit: int | None, seed: int, salt: int) -> np.ndarray:
    """At most ``limit`` indices: a seeded random subset, kept in index order."""
    idx = np.asarray(idx, dtype=np.int64)
    if not limit or len(idx) <= int(limit):
        return idx
    rng = np.random.default_rng([seed, salt])
    return np.sort(rng.choice(idx, size=int(limit), replace=False))


class IndexedImages:
    """Lazy view ``images[base[idx]]`` (keeps memory-mapped datasets on disk)."""

    def __init__(self, images: np.ndarray, base: np.ndarray):
        self.images, self.base = images, np.asarray(base, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx) -> np.ndarray:
        rows = self.base[idx]
        order = np.argsort(rows, kind="stable")  # sorted reads are faster on a memmap
        out = np.empty((len(rows),) + self.images.shape[1:], dtype=self.images.dtype)
        out[order] = self.images[rows[order]]
        return out


def _evaluate(q_codes, db_codes, q_labels, db_labels, ecfg: dict):
    from hashlearn.eval import evaluate

    topk = tuple(ecfg.get("topk") or ("all",))
    return evaluate(q_codes, db_codes, q_labels, db_labels, topk=topk, radius=int(ecfg.get("radius", 2)),
                    ties=str(ecfg.get("ties", "expected")))


def image_size_for(config: dict, dataset, backbone_name: str) -> int | None:
    if config.get("image_size"):
        return int(config["image_size"])
    if backbone_name == "smallcnn":
        return int(dataset.images.shape[1])
    return None


def backbone_args_for(config: dict, dataset) -> dict:
    args = dict(config.get("backbone_args") or {})
    if config["backbone"] == "smallcnn" and not config.get("frozen") and "in_channels" not in args:
        args["in_channels"] = int(dataset.images.shape[-1])
    return args


def create_backbone_checked(config: dict, backbone_args: dict, where: str = "backbone_args"):
    """``create_backbone`` with constructor arguments that do not fit as one-line errors."""
    from hashlearn.nn import create_backbone

    try:
        return create_backbone(config["backbone"], weights=config.get("weights") or "default", taps=None,
                               seed=int(config.get("seed", 0)), **backbone_args)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, HashlearnError):
            raise
        raise InputError(f"{where} {backbone_args}: do not fit backbone {config['backbone']!r} "
                         f"({short_reason(exc)})") from None


def build_backbone(config: dict, method, backbone_args: dict):
    backbone = create_backbone_checked(config, backbone_args)
    try:
        taps = list(method.taps(list(backbone.default_taps)))
    except TypeError as exc:
        raise InputError(f"method_args: bad taps for {type(method).__name__} ({short_reason(exc)})") from None
    backbone.set_taps(taps)  # the backbone returns exactly the maps the method reads
    return backbone, taps


def _resolve_split(config: dict, dataset, seed: int, progress: bool):
    """The split ``config`` asks for: a ``split`` file, else ``protocol`` (default: the dataset's own
    default protocol, said aloud). Records the protocol used in ``config`` before it is saved, so that
    ``config.yaml`` and ``metrics.json`` name it and a resume makes the same split."""
    if config.get("split"):
        from hashlearn.data import Split

        if config.get("protocol") or config.get("protocol_args"):
            raise InputError("give --split FILE or --protocol/protocol_args, not both")
        split = Split.load(config["split"]).check(dataset, config["split"])
        config["protocol"] = split.protocol
        return split
    if not config.get("protocol"):
        from hashlearn.data import default_protocol

        config["protocol"] = default_protocol(dataset)
        _say(f"protocol {config['protocol']} (the default for {dataset.name}; --protocol chooses another)", progress)
    return make_split(dataset, config["protocol"], seed, config.get("protocol_args"))


def train(config: dict, dataset=None, split=None, out: str | Path | None = None, resume: bool = True,
          evaluator=None, progress: bool | None = None) -> list[dict]:
    """Train (or fit) ``config["method"]`` at each code length of ``config["bits"]``.

    ``dataset`` defaults to ``config["dataset"]``; ``split`` to the ``config["split"]`` file, else
    ``config["protocol"]`` (else the dataset's default protocol). Returns one
    metrics dict per code length (as written to ``metrics.json``)."""
    from hashlearn.methods import get_method, load_all

    config = validate_config(config)
    progress = bool(config["train"].get("progress", True)) if progress is None else progress
    config["train"]["progress"] = progress
    registry = load_all()
    method_name = str(config["method"]).lower()
    cls = get_method(method_name)
    kind = registry.info(method_name).get("kind", "deep")
    seed = int(config.get("seed", 0))
    bits_list = config["bits"]  # validated: whole numbers in the index's range
    out_root = Path(out or config.get("out") or f"runs/{method_name}-{config['dataset']}")
    # refuse a folder that is not ours, and a read-only place, before any work
    check_out_root(out_root)
    for bits in bits_list:
        check_run_dir_for_training(out_root / f"{bits}bits")
    probe_writable(next((p for p in (out_root, *out_root.parents) if p.exists()), Path(".")), target=out_root)
    if dataset is None:
        dataset = load_data(config["dataset"], progress)
    if split is None:
        split = _resolve_split(config, dataset, seed, progress)
    limit = (config.get("data") or {}).get("limit")
    parts = {k: _limit(getattr(split, k), limit, seed, i) for i, k in enumerate(("query", "train", "val", "database"))}
    describe = split.describe() if hasattr(split, "describe") else {}
    out_root.mkdir(parents=True, exist_ok=True)
    _say(f"hashlearn train: method {method_name} ({kind}), dataset {getattr(dataset, 'name', config['dataset'])} "
         f"({len(dataset)} images), protocol {config.get('protocol')}: "
         + ", ".join(f"{k} {len(v)}" for k, v in parts.items())
         + (f"; backbone {config['backbone']}{' (frozen)' if config.get('frozen') else ''}" if kind == "deep" else "")
         + f"; bits {bits_list}; out {out_root}", progress)
    results = []
    for bits in bits_list:
        run_cfg = copy.deepcopy(config)
        run_cfg["bits"] = bits
        run_cfg["method"] = method_name
        run_dir = out_root / f"{bits}bits"
        run_dir.mkdir(parents=True, exist_ok=True)
        probe_writable(run_dir)
        method = build_method(cls, bits, run_cfg.get("method_args")) if kind == "deep" else None
        if kind == "deep":
            info = _train_deep(run_cfg, method, dataset, parts, run_dir, resume, evaluator, progress)
        else:
            info = _fit_shallow(run_cfg, cls, dataset, parts, run_dir, progress)
        info.update({
            "method": method_name, "kind": kind, "dataset": getattr(dataset, "name", config["dataset"]),
            "protocol": config.get("protocol"), "protocol_description": _jsonable(describe),
            "bits": bits, "seed": seed, "sizes": {k: int(len(v)) for k, v in parts.items()},
            "data_limit": limit, "run_dir": str(run_dir),
        })
        metrics = _final_eval(run_cfg, info, dataset, parts, run_dir)
        results.append(metrics)
        _say(f"{bits} bits: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in metrics if k.startswith("mAP@"))
             + f" ({run_dir})", progress)
    table = summary_markdown(results)
    write_text_atomic(out_root / "summary.md", table + "\n")
    write_text_atomic(out_root / "summary.json", json.dumps(
        [{k: v for k, v in r.items() if k != "curves"} for r in results], indent=2, default=_default))
    return results


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=_default))


def _default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


class _Scatter:
    """Rows of ``values`` addressed by their dataset index (``rows[i]`` is dataset image ``i``)."""

    def __init__(self, rows: np.ndarray, values: np.ndarray):
        self.lookup = {int(r): n for n, r in enumerate(rows)}
        self.values = values

    def __getitem__(self, idx) -> np.ndarray:
        return self.values[[self.lookup[int(i)] for i in np.asarray(idx)]]


def _labels(dataset, idx: np.ndarray) -> np.ndarray:
    return np.asarray(dataset.labels[idx])


def _train_deep(cfg, method, dataset, parts, run_dir: Path, resume, evaluator, progress) -> dict:
    import torch

    from hashlearn.train.trainer import Trainer

    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    bargs = backbone_args_for(cfg, dataset)
    backbone, taps = build_backbone(cfg, method, bargs)
    size = image_size_for(cfg, dataset, cfg["backbone"]) or backbone.input_size
    run_info = {"kind": "deep", "taps": taps, "image_size": int(size), "backbone_args": bargs,
                "channels": int(dataset.images.shape[-1]), "method_hparams": method.hparams()}
    cfg["method_args"] = {**(cfg.get("method_args") or {})}
    save_config(cfg, run_dir / "config.yaml")
    write_json_atomic(run_dir / "run.json", run_info)
    features = None
    if cfg.get("frozen"):
        fbs = int(cfg["train"].get("feature_batch_size", 256))
        if bargs or getattr(backbone, "weights_id", "none") == "none":
            # constructor arguments or a random network: features of exactly this backbone (not cached)
            from hashlearn.train.trainer import pooled_features

            needed = np.unique(np.concatenate([parts[k] for k in ("train", "val", "query", "database")]))
            feats = pooled_features(backbone, IndexedImages(dataset.images, needed)[np.arange(len(needed))],
                                    taps, int(size), fbs, progress=progress)
            features = {t: _Scatter(needed, v) for t, v in feats.items()}
        else:
            from hashlearn.nn import extract_features

            features = extract_features(dataset, backbone=cfg["backbone"], image_size=int(size), taps=taps,
                                        weights=cfg.get("weights", "default"), seed=seed, batch_size=fbs,
                                        progress=progress)

    def part(name):
        idx = parts[name]
        d = {"labels": _labels(dataset, idx)}
        if features is not None:
            d["features"] = {t: np.asarray(features[t][idx], dtype=np.float32) for t in taps}
        else:
            d["images"] = IndexedImages(dataset.images, idx)
        return d

    trainer = Trainer(method, backbone, cfg, run_dir, train=part("train"), val=part("val"),
                      evaluator=evaluator, image_size=int(size))
    if len(parts["val"]) == 0:
        _say("note: the protocol has no validation split; the last epoch is kept (no model selection)", progress)
    result = trainer.fit(resume=resume)
    codes = {}
    for name in ("query", "database"):
        p = part(name)
        source = p["features"] if features is not None else p["images"]
        u = trainer.forward_all(source, len(parts[name]))
        codes[name] = sign(u.numpy())
    return {"codes": codes, "backbone": cfg["backbone"], "weights": str(cfg.get("weights")),
            "frozen": bool(cfg.get("frozen")), "image_size": int(size), "taps": taps,
            "best_epoch": result.best_epoch, "val_mAP": result.best_val_map, "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early, "training_seconds": round(result.training_seconds, 3),
            "images_per_second": round(result.images_per_second, 1), "method_hparams": method.hparams()}


def shallow_inputs(cfg: dict, dataset, image_size: int | None = None):
    """What a shallow method is fitted on: ``("pixels", None)`` or ``("backbone", tap)``."""
    choice = str((cfg.get("shallow") or {}).get("features", "auto")).lower()
    if choice == "auto":
        choice = "pixels" if cfg["backbone"] in ("smallcnn", "pixels") else "backbone"
    if choice not in ("pixels", "backbone"):
        raise InputError(f"shallow.features: expected auto, pixels or backbone, got {choice!r}")
    return choice


def pixels(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    return arr.reshape(len(arr), -1).astype(np.float32) / 255.0


def _fit_shallow(cfg, cls, dataset, parts, run_dir: Path, progress) -> dict:
    seed = int(cfg.get("seed", 0))
    choice = shallow_inputs(cfg, dataset)
    size = None
    if choice == "backbone":
        from hashlearn.nn import extract_features

        size = cfg.get("image_size")
        feats = extract_features(dataset, backbone=cfg["backbone"], image_size=size, taps=["pool"],
                                 weights=cfg.get("weights", "default"), seed=seed, progress=progress)["pool"]
        get = lambda idx: np.asarray(feats[idx], dtype=np.float32)  # noqa: E731
    else:
        get = lambda idx: pixels(dataset.images[np.sort(idx)][np.argsort(np.argsort(idx))])  # noqa: E731
    args = dict(cfg.get("method_args") or {})
    if "random_state" in inspect.signature(cls.__init__).parameters and "random_state" not in args:
        args["random_state"] = seed
    model = build_method(cls, int(cfg["bits"]), args)
    kwargs = {"bits": int(cfg["bits"]), **args}
    run_info = {"kind": "shallow", "features": choice, "image_size": size or int(dataset.images.shape[1]),
                "channels": int(dataset.images.shape[-1]), "method_hparams": _jsonable(kwargs)}
    save_config(cfg, run_dir / "config.yaml")
    write_json_atomic(run_dir / "run.json", run_info)
    x_train = get(parts["train"])
    t0 = time.perf_counter()
    model.fit(x_train, _labels(dataset, parts["train"]))
    seconds = time.perf_counter() - t0
    from hashlearn.methods.shallow import save_hasher

    save_hasher(model, run_dir / MODEL_FILE)  # arrays + JSON, never a pickle
    codes = {name: np.asarray(model.encode(get(parts[name]))) for name in ("query", "database")}
    return {"codes": codes, "features": choice, "backbone": cfg["backbone"] if choice == "backbone" else None,
            "training_seconds": round(seconds, 3), "images_per_second": round(len(x_train) / max(seconds, 1e-9), 1),
            "method_hparams": _jsonable(kwargs)}


def _final_eval(cfg, info: dict, dataset, parts, run_dir: Path) -> dict:
    from hashlearn.codes import pack_bits, save_codes

    codes = info.pop("codes")
    bits = int(cfg["bits"])
    for name in ("query", "database"):
        ids = np.asarray(dataset.ids)[parts[name]]
        save_codes(run_dir / f"{name}_codes.npz", pack_bits(codes[name]), bits, ids=ids)
    result = _evaluate(codes["query"], codes["database"], _labels(dataset, parts["query"]),
                       _labels(dataset, parts["database"]), cfg.get("eval") or {})
    metrics = {**info, **result.to_dict(curves=True)}
    metrics["tie_rule"] = metrics.get("ties")
    metrics = _jsonable(metrics)
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def summary_markdown(results: list[dict]) -> str:
    """One row per run: method, bits, every mAP@R, P@r2, training seconds."""
    if not results:
        return ""
    map_keys = [k for k in results[0] if k.startswith("mAP@")]
    radius_keys = [k for k in results[0] if k.startswith("P@r")]
    head = ["method", "dataset", "bits", *map_keys, *radius_keys, "train s", "img/s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["method"], str(r["dataset"]), str(r["bits"]), *[f"{r[k]:.4f}" for k in map_keys],
                 *[f"{r[k]:.4f}" for k in radius_keys], f"{r.get('training_seconds', 0):.1f}",
                 f"{r.get('images_per_second', 0):.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
