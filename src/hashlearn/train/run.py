"""``hashlearn train`` as a function: one run folder per code length, then a summary.

Run folder (``OUT/<bits>bits/``)::

    config.yaml           the resolved configuration (this code length)
    run.json              what encoding new images needs (kind, taps, image size, channels; the cut,
                          its activation cache's key and path)
    checkpoint.pt         last epoch (deep methods; resumable)
    best.pt               weights selected by validation mAP (deep methods): the head and what
                          trained of the backbone
    model.npz             the fitted model (shallow methods): arrays + JSON parameters, never a pickle
    log.jsonl             one line per epoch
    query_codes.npz       packed query codes + ids + the run's fingerprint
    database_codes.npz    packed database codes + ids + the run's fingerprint
    metrics.json          every figure + the chance level, protocol, sizes, R, relevance and tie
                          rules, seed, code length, training seconds and images/s, fingerprint
    pr_curves.png         precision–recall over Hamming radii and precision@N

and ``OUT/summary.json`` / ``OUT/summary.md`` for the whole command. Under ``torchrun``
(``WORLD_SIZE > 1``, :mod:`hashlearn.train.distributed`) every process trains and rank 0 alone
writes all of this; the other processes return ``[]``. ``OUT`` must be new,
empty or an earlier training output (:func:`hashlearn.train.runfolder.check_out_root`); every
file is written to a temporary name and renamed. Nothing here ever deletes a file it did
not write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn.errors import HashlearnError, InputError, NotFoundError
from hashlearn.train.config import RunConfig, as_config
from hashlearn.train.runfolder import (
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
    from hashlearn.train.progress import bars_enabled

    try:
        return open_prepared(name)
    except HashlearnError as exc:
        if name not in DATASETS:  # neither prepared (e.g. with --as) nor a dataset hashlearn can prepare
            raise NotFoundError(f"unknown dataset {name!r} ({exc}); known: {', '.join(DATASETS.names())}") from None
        _say(f"preparing dataset {name} (once; cached for later runs)", progress)
        return prepare(name, progress=bars_enabled(progress))


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


class Scatter:
    """Rows of ``values`` addressed by their dataset index (``rows[i]`` is dataset image ``i``)."""

    def __init__(self, rows: np.ndarray, values: np.ndarray):
        self.lookup = {int(r): n for n, r in enumerate(rows)}
        self.values = values

    def __getitem__(self, idx) -> np.ndarray:
        return self.values[[self.lookup[int(i)] for i in np.asarray(idx)]]


def _resolve_split(config: RunConfig, dataset, progress: bool):
    """The split ``config`` asks for: a ``split`` file, else ``protocol`` (default: the dataset's own
    default protocol, said aloud). Records the protocol used in ``config`` before it is saved, so that
    ``config.yaml`` and ``metrics.json`` name it and a resume makes the same split."""
    if config.split:
        from hashlearn.data import Split

        if config.protocol or config.protocol_args:
            raise InputError("give --split FILE or --protocol/protocol_args, not both")
        split = Split.load(config.split).check(dataset, config.split)
        config.protocol = split.protocol
        return split
    if not config.protocol:
        from hashlearn.data import default_protocol

        config.protocol = default_protocol(dataset)
        _say(f"protocol {config.protocol} (the default for {dataset.name}; --protocol chooses another)", progress)
    return make_split(dataset, config.protocol, config.seed, config.protocol_args)


def _mode(config: RunConfig) -> str:
    if config.finetune_from:
        return f" (fine-tuned above {config.finetune_from}, BatchNorm {config.finetune_bn})"
    return " (frozen)" if config.frozen else ""


def train(config: RunConfig | dict, dataset=None, split=None, out: str | Path | None = None, resume: bool = True,
          evaluator=None, progress: bool | None = None) -> list[dict]:
    """Train (or fit) ``config.method`` at each code length of ``config.bits``.

    ``dataset`` defaults to ``config.dataset`` (prepared once); ``split`` to the ``config.split``
    file, else ``config.protocol`` (else the dataset's default protocol). Every model setting is
    checked before any data is loaded. Returns one metrics dict per code length (as written to
    ``metrics.json``); data-parallel (``WORLD_SIZE > 1``, started by ``torchrun``), every process
    trains and the processes other than rank 0 return ``[]``."""
    from hashlearn.train import distributed

    config = as_config(config)
    created = distributed.setup(config.device)
    try:
        return _train(config, dataset, split, out, resume, evaluator, progress)
    finally:
        distributed.teardown(created)


def _train(config: RunConfig, dataset, split, out, resume: bool, evaluator, progress: bool | None) -> list[dict]:
    from hashlearn.train import distributed
    from hashlearn.train.model import FitJob, check_before_work, method_kind, new_hasher

    main = distributed.is_main()
    if not config.method:
        raise InputError("no method given; pass --method NAME (see: hashlearn methods)")
    if progress is not None:
        config.train.progress = bool(progress)
    if not main:
        config.train.progress = False
    progress = config.train.progress
    _, kind = method_kind(config.method)
    if kind != "deep" and distributed.world_size() > 1:
        raise InputError(f"method {config.method} is shallow (fit, not trained in batches): run it without torchrun")
    config.method = config.method.lower()
    out_root = Path(out or f"runs/{config.method}-{config.dataset}")
    # refuse a folder that is not ours, and a read-only place, before any work
    if main:
        check_out_root(out_root)
        for bits in config.bits:
            check_run_dir_for_training(out_root / f"{bits}bits")
        probe_writable(next((p for p in (out_root, *out_root.parents) if p.exists()), Path(".")), target=out_root)
    check_before_work(config)  # method arguments, taps, the cut: one line now, not after loading data
    with distributed.main_first():  # a dataset is prepared once (rank 0), then opened by the others
        if dataset is None:
            dataset = load_data(config.dataset, progress)
        if split is None:
            split = _resolve_split(config, dataset, progress)
    limit, seed = config.data.limit, config.seed
    parts = {k: _limit(getattr(split, k), limit, seed, i) for i, k in enumerate(("query", "train", "val", "database"))}
    describe = split.describe() if hasattr(split, "describe") else {}
    if main:
        out_root.mkdir(parents=True, exist_ok=True)
    _say(f"hashlearn train: method {config.method} ({kind}), dataset {getattr(dataset, 'name', config.dataset)} "
         f"({len(dataset)} images), protocol {config.protocol}: "
         + ", ".join(f"{k} {len(v)}" for k, v in parts.items())
         + (f"; backbone {config.backbone}{_mode(config)}" if kind == "deep" else "")
         + f"; bits {config.bits}; out {out_root}", progress)
    if kind == "deep" and len(parts["val"]) == 0:
        _say("note: the protocol has no validation split; the last epoch is kept (no model selection)", progress)
    channels, side = int(dataset.images.shape[-1]), int(dataset.images.shape[1])
    if kind == "deep":
        _fill_classes(config, dataset)
    results = []
    for bits in config.bits:
        run_cfg = config.copy(bits=[bits])
        run_dir = out_root / f"{bits}bits"
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe_writable(run_dir)
        distributed.barrier()
        hasher = new_hasher(run_cfg, channels, side)
        hasher.fit(FitJob(dataset, parts, run_dir, resume=resume, evaluator=evaluator, progress=progress))
        if not main:  # rank 0 encodes, evaluates and writes; wait for it before the next code length
            distributed.barrier()
            continue
        info = {**hasher.fit_info,
                "method": config.method, "kind": kind, "dataset": getattr(dataset, "name", config.dataset),
                "protocol": config.protocol, "protocol_description": _jsonable(describe),
                "bits": bits, "seed": seed, "sizes": {k: int(len(v)) for k, v in parts.items()},
                "data_limit": limit, "run_dir": str(run_dir), "fingerprint": hasher.fingerprint}
        codes = {name: hasher.part_signs(name) for name in ("query", "database")}
        symmetric = None
        retrieval, learned = run_cfg.eval.retrieval, hasher.learned_database_codes()
        if retrieval == "auto":
            retrieval = "asymmetric" if learned is not None else "symmetric"
        info["retrieval"] = retrieval
        if retrieval == "asymmetric":
            if learned is None:
                raise InputError(f"eval.retrieval: asymmetric, but {config.method} learned no database codes")
            symmetric = codes["database"]
            codes["database"], covered = asymmetric_database(symmetric, parts["database"], parts["train"], learned)
            info["database_learned_codes"] = covered
        metrics = _final_eval(run_cfg, info, codes, dataset, parts, run_dir, hasher.fingerprint, symmetric)
        results.append(metrics)
        _say(f"{bits} bits: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in metrics if k.startswith("mAP@"))
             + f", chance {metrics['chance_mAP@all']:.4f} ({run_dir})", progress)
        distributed.barrier()
    if not main:
        return []
    table = summary_markdown(results)
    write_text_atomic(out_root / "summary.md", table + "\n")
    write_text_atomic(out_root / "summary.json", json.dumps(
        [{k: v for k, v in r.items() if k != "curves"} for r in results], indent=2, default=_default))
    return results


def _fill_classes(config: RunConfig, dataset) -> None:
    """A deep method whose constructor takes ``classes`` (a class head, e.g. ATH's) and was not given
    it gets the dataset's number of classes in ``method_args``; ``config.yaml`` records it, so
    ``load_run`` builds the same head."""
    import inspect

    from hashlearn.train.model import method_kind

    cls, _ = method_kind(config.method)
    if "classes" in inspect.signature(cls).parameters and (config.method_args or {}).get("classes") is None:
        n = getattr(dataset, "n_classes", None) or len(dataset.class_names)
        config.method_args = {**(config.method_args or {}), "classes": int(n)}


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=_default))


def _default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def asymmetric_database(db_signs: np.ndarray, db_index: np.ndarray, train_index: np.ndarray,
                        learned: np.ndarray) -> tuple[np.ndarray, int]:
    """The database codes of asymmetric retrieval and how many came from ``learned``.

    ``learned`` holds the codes a method learned for the training images (ADSH/ExchNet ``V``;
    row i = ``train_index[i]``); a database image that is a training image gets its learned code,
    every other one keeps its network code from ``db_signs`` (rows = ``db_index``). In cifar10-1
    the 5,000 training images lie in the 59,000-image database: 4,500 (``train``) get V, the rest
    (``val`` and the images never trained on) are coded by the network."""
    train_index, db_index = np.asarray(train_index), np.asarray(db_index)
    if len(learned) != len(train_index):
        raise InputError(f"the method learned {len(learned)} database codes for {len(train_index)} training images")
    row = {int(d): i for i, d in enumerate(train_index)}
    out = np.array(db_signs, copy=True)
    covered = 0
    for j, d in enumerate(db_index):
        i = row.get(int(d))
        if i is not None:
            out[j] = learned[i]
            covered += 1
    return out, covered


def _final_eval(cfg: RunConfig, info: dict, codes: dict, dataset, parts, run_dir: Path, fingerprint: str,
                symmetric_database: np.ndarray | None = None) -> dict:
    from hashlearn.codes import pack_bits
    from hashlearn.eval import chance_map, evaluate, plot_curves
    from hashlearn.train.encode import save_run_codes

    bits = cfg.run_bits
    for name in ("query", "database"):
        ids = np.asarray(dataset.ids)[parts[name]]
        save_run_codes(run_dir / f"{name}_codes.npz", pack_bits(codes[name]), bits, ids, fingerprint)
    q_labels, db_labels = np.asarray(dataset.labels[parts["query"]]), np.asarray(dataset.labels[parts["database"]])
    topk = list(cfg.eval.topk)
    if q_labels.ndim == 2:  # multi-hot: the graded metrics' R too (NDCG@100, ACG@100 in the DSRH papers)
        topk = sorted(dict.fromkeys([*topk, *cfg.eval.graded_topk]), key=lambda t: (t == "all", 0 if t == "all" else t))
    result = evaluate(codes["query"], codes["database"], q_labels, db_labels, topk=tuple(topk),
                      radius=cfg.eval.radius, ties=cfg.eval.ties)
    metrics = {**info, **result.to_dict(curves=True)}
    if symmetric_database is not None:  # asymmetric retrieval: the symmetric figures (database re-encoded) too
        sym = evaluate(codes["query"], symmetric_database, q_labels, db_labels, topk=tuple(topk),
                       radius=cfg.eval.radius, ties=cfg.eval.ties).to_dict(curves=False)
        metrics["symmetric"] = {k: v for k, v in sym.items() if k.startswith(("mAP@", "P@"))}
    metrics["chance_mAP@all"] = chance_map(q_labels, db_labels)
    metrics["tie_rule"] = metrics.get("ties")
    metrics = _jsonable(metrics)
    write_json_atomic(run_dir / "metrics.json", metrics)
    plot_curves({f"{cfg.method}": result}, run_dir / "pr_curves.png")
    return metrics


def summary_markdown(results: list[dict]) -> str:
    """One row per run: method, bits, every mAP@R, the chance mAP@all (a random ranking), P@r,
    training seconds."""
    if not results:
        return ""
    map_keys = [k for k in results[0] if k.startswith("mAP@")]
    radius_keys = [k for k in results[0] if k.startswith("P@r")]
    head = ["method", "dataset", "bits", *map_keys, "chance mAP@all", *radius_keys, "train s", "img/s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["method"], str(r["dataset"]), str(r["bits"]), *[f"{r[k]:.4f}" for k in map_keys],
                 f"{r.get('chance_mAP@all', float('nan')):.4f}", *[f"{r[k]:.4f}" for k in radius_keys],
                 f"{r.get('training_seconds', 0):.1f}", f"{r.get('images_per_second', 0):.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
