"""Run folders: what they hold, how they are written (atomically) and read (never unpickled).

A run folder (``OUT/<bits>bits/``) is written only by :func:`hashlearn.train.train`; every
file in it is read back as data: YAML with ``yaml.safe_load``, JSON, ``.npz`` with
``allow_pickle=False`` and checkpoints with ``torch.load(weights_only=True)``. A file that
does not parse, or parses to the wrong types, is a one-line :class:`InputError` naming it.
A run folder could have come from anyone, so nothing in it can run code.

``train --out`` only writes into a folder that is new, empty, or already a hashlearn
training output, so a typo in ``--out`` never mixes runs into (or overwrites) other files.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

from hashlearn.errors import HashlearnError, InputError, NotFoundError

#: the files of a run folder, in the order they are written
RUN_FILES = ("config.yaml", "run.json", "checkpoint.pt", "best.pt", "model.npz", "log.jsonl", "query_codes.npz",
             "database_codes.npz", "metrics.json", "pr_curves.png")
#: the fitted shallow model; older versions pickled it to ``model.pkl``, which is never read
MODEL_FILE, LEGACY_MODEL_FILE = "model.npz", "model.pkl"
#: files of the whole ``train --out`` folder
SUMMARY_FILES = ("summary.json", "summary.md")
_RUN_DIR = re.compile(r"^\d+bits$")
#: the settings of a run's config.yaml that loading it for encoding uses (the others are not checked,
#: so a run trained by an older version with a since-refused training setting still loads)
LOAD_KEYS = ("method", "backbone", "weights", "frozen", "finetune_from", "seed", "method_args", "backbone_args")
#: settings that may change when a run is resumed or extended: they change no weight of the epochs done
#: (a resume with any other setting changed is refused; the run's fingerprint leaves them out)
RESUME_FREE = ("train.epochs", "train.progress", "train.threads", "train.feature_batch_size", "train.patience",
               "device", "eval")


def short_reason(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# -- writing ----------------------------------------------------------------------------------

def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary name next to ``path`` and rename it: a killed process
    leaves the old file or the new one, never half of one (:mod:`hashlearn._atomic`)."""
    from hashlearn._atomic import atomic_write_text

    return atomic_write_text(path, text)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2))


def probe_writable(folder: Path, option: str = "--out", target: Path | None = None) -> None:
    """Fail now, with one line, if ``folder`` cannot take new files (read-only, no permission).
    ``target``: what the user asked for, when ``folder`` is the nearest existing folder above it."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".hashlearn-probe-")
    except OSError as exc:
        where = "there" if target is None or Path(target) == Path(folder) else f"in {folder}"
        raise HashlearnError(f"{option} {target or folder}: cannot write {where} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(name)


#: the temporary name of a file being written (hashlearn._atomic: ".<stem>.<pid>.tmp<suffix>"; older
#: versions: "<name>.tmp", "<name>.tmp.npz"), left behind only by a killed process
_TMP_NAME = re.compile(r"^\.(?P<stem>.+)\.\d+\.tmp(?P<suffix>\.[^.]*)?$")


def _is_run_file(name: str) -> bool:
    base = name[: -len(".tmp")] if name.endswith(".tmp") else name
    base = base[: -len(".tmp.npz")] if name.endswith(".tmp.npz") else base
    tmp = _TMP_NAME.match(name)
    if tmp:
        base = tmp["stem"] + (tmp["suffix"] or "")
    return base in RUN_FILES or base == LEGACY_MODEL_FILE


def check_run_dir_for_training(run_dir: Path) -> None:
    """``run_dir`` is new, empty, or a hashlearn run folder (its ``run.json`` readable), so
    training may write into it; otherwise a one-line error and nothing is touched."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise InputError(f"--out: {run_dir} exists and is not a folder")
    names = [p.name for p in run_dir.iterdir()]
    if (run_dir / "run.json").exists():
        read_run_info(run_dir)
        from hashlearn.train.config import read_config

        if (run_dir / "config.yaml").exists():
            read_config(run_dir / "config.yaml")
        return
    foreign = sorted(n for n in names if not _is_run_file(n))
    if foreign:
        raise InputError(f"--out: {run_dir} exists and is not a hashlearn run folder (it holds {foreign[0]!r}"
                         f"{' and more' if len(foreign) > 1 else ''}); pick a new or empty --out")


def check_out_root(out_root: Path) -> None:
    """``train --out`` must be new, empty, or a hashlearn training output (``<N>bits`` run
    folders, ``summary.json``/``summary.md``); anything else is refused with one line."""
    if not out_root.exists():
        return
    if not out_root.is_dir():
        raise InputError(f"--out {out_root}: exists and is not a folder")
    if (out_root / "run.json").exists():
        raise InputError(f"--out {out_root}: this is the run folder of one code length; pass the folder above it "
                         f"({out_root.parent})")
    entries = list(out_root.iterdir())
    runs = [p for p in entries if p.is_dir() and _RUN_DIR.match(p.name)]
    if any((p / "run.json").is_file() for p in runs) or (out_root / "summary.json").is_file():
        return  # an earlier training output (maybe with files the user added: they are left alone)
    others = sorted(p.name for p in entries if p not in runs)
    if not others:
        return  # empty, or runs killed before their first file (each is checked on its own)
    raise InputError(f"--out {out_root}: the folder exists, is not empty and is not a hashlearn training output "
                     f"(it holds {others[0]!r}{' and more' if len(others) > 1 else ''}); pick a new or empty folder")


# -- reading ----------------------------------------------------------------------------------

def read_json_mapping(path: Path) -> dict:
    """The JSON object in ``path``; anything else is a one-line error naming the file."""
    if not path.is_file():
        raise NotFoundError(f"{path} not found")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{path}: not valid JSON ({short_reason(exc)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _int_field(info: dict, key: str, path: Path, lo: int, hi: int) -> int:
    v = info.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InputError(f"{path}: {key} must be an integer from {lo} to {hi}, got {v!r}")
    return v


def read_run_info(run_dir: Path) -> dict:
    """``run.json`` of ``run_dir``, checked: what encoding new images needs."""
    path = run_dir / "run.json"
    if not path.exists():
        hint = ""
        subs = sorted(p.name for p in run_dir.glob("*bits")) if run_dir.is_dir() else []
        if subs:
            hint = f" (pick one code length: {', '.join(str(run_dir / s) for s in subs)})"
        raise NotFoundError(f"{run_dir}: not a hashlearn run folder (no run.json){hint}")
    info = read_json_mapping(path)
    kind = info.get("kind")
    if kind not in ("deep", "shallow"):
        raise InputError(f"{path}: kind must be 'deep' or 'shallow', got {kind!r}")
    _int_field(info, "image_size", path, 1, 65536)
    info.setdefault("channels", 3)
    if info["channels"] not in (1, 3) or isinstance(info["channels"], bool):
        raise InputError(f"{path}: channels must be 1 or 3, got {info['channels']!r}")
    if kind == "deep":
        taps = info.get("taps")
        if not isinstance(taps, list) or not taps or not all(isinstance(t, str) for t in taps):
            raise InputError(f"{path}: taps must be a non-empty list of tap names, got {taps!r}")
        bargs = info.setdefault("backbone_args", {})
        if not isinstance(bargs, dict):
            raise InputError(f"{path}: backbone_args must be a mapping, got {bargs!r}")
    elif info.get("features") not in ("pixels", "backbone"):
        raise InputError(f"{path}: features must be 'pixels' or 'backbone', got {info.get('features')!r}")
    return info


def read_run_config(run_dir: Path):
    """``config.yaml`` of ``run_dir`` as a :class:`~hashlearn.train.config.RunConfig` of one code
    length: the settings encoding needs (:data:`LOAD_KEYS`) checked, any other setting that this
    version does not know or accept replaced by its default (a run of an older version still loads)."""
    from hashlearn.train.config import RunConfig, read_config

    path = run_dir / "config.yaml"
    saved = read_config(path)
    bits = saved.get("bits")
    if isinstance(bits, list) and len(bits) == 1:
        bits = bits[0]
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise InputError(f"{path}: bits must be the run's one code length, got {saved.get('bits')!r}")
    config = RunConfig.from_dict(saved, where=str(path), only=LOAD_KEYS + ("bits",))
    if not config.method:
        raise InputError(f"{path}: method: no method named")
    return config


def load_checkpoint(path: Path, map_location: Any = "cpu", hint: str = "") -> dict:
    """A checkpoint written by the trainer, read with ``torch.load(weights_only=True)``: tensors and
    plain values only, so a planted pickle cannot run. It must hold ``model`` weights. ``hint`` ends
    the error message (e.g. what to do instead)."""
    import pickle

    import torch

    if not path.is_file():
        raise NotFoundError(f"{path} not found")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says enough
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{path}: holds objects other than tensors and plain values; refused, hashlearn never "
                         f"unpickles run files{hint}") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse the file means it is not a checkpoint
        reason = short_reason(exc).split(". ")[0][:120]
        raise InputError(f"{path}: not a readable checkpoint, damaged or truncated ({reason}){hint}") from None
    model = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        raise InputError(f"{path}: not a hashlearn checkpoint (no model weights){hint}")
    return ckpt
