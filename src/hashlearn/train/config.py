"""Run configuration: packaged YAML defaults, a user YAML file, then ``key=value`` overrides.

The resolved configuration is a plain nested dict, saved as ``config.yaml`` in every run.
:func:`validate_config` checks the type and range of every known setting (one-line
:class:`InputError` naming the setting) and normalises them (``bits`` becomes a list of ints).
YAML is only ever read with ``yaml.safe_load``.
"""

from __future__ import annotations

import copy
import math
from importlib import resources
from pathlib import Path
from typing import Any

from hashlearn.errors import InputError, NotFoundError

#: sections whose keys are free-form (passed to a constructor), not checked against the defaults
FREE_SECTIONS = ("method_args", "backbone_args", "protocol_args")

#: code lengths hashlearn trains: the range the Hamming index (hashlearn.index) searches
MIN_BITS, MAX_BITS = 8, 1024


def _yaml():
    import yaml

    return yaml


def packaged_config(name: str = "default") -> dict[str, Any]:
    """A config shipped in ``hashlearn/configs`` (``default``, ``demo``, …)."""
    path = resources.files("hashlearn") / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise NotFoundError(f"no packaged config {name!r}")
    return _yaml().safe_load(path.read_text()) or {}


def deep_merge(base: dict, update: dict, where: str = "") -> dict:
    """``update`` merged into a copy of ``base``; unknown top-level sections are errors."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in FREE_SECTIONS:
            out[key] = deep_merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` → (["optim", "lr"], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise InputError(f"--set {text!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise InputError(f"--set {text!r}: empty key")
    try:
        value = _yaml().safe_load(raw) if raw.strip() else None
    except Exception as exc:
        raise InputError(f"--set {text!r}: cannot parse the value ({exc})") from None
    # YAML reads 1e-3 as a string (no dot); accept it as a number
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            pass
    return keys, value


def apply_overrides(config: dict, overrides: list[str] | None, known: dict | None = None) -> dict:
    """Apply ``--set`` overrides; a key that is not in ``known`` (the defaults) is an error,
    except under the free-form sections (``method_args``, ``backbone_args``, ``protocol_args``)."""
    config = copy.deepcopy(config)
    known = config if known is None else known
    for text in overrides or []:
        keys, value = parse_override(text)
        node, ref = config, known
        for i, k in enumerate(keys):
            free = i > 0 and keys[0] in FREE_SECTIONS
            if not free and (not isinstance(ref, dict) or k not in ref):
                raise InputError(f"--set {text!r}: unknown setting {'.'.join(keys[: i + 1])!r}")
            if i == len(keys) - 1:
                node[k] = value
            else:
                node = node.setdefault(k, {})
                if not isinstance(node, dict):
                    raise InputError(f"--set {text!r}: {'.'.join(keys[: i + 1])!r} is not a section")
                ref = ref.get(k, {}) if isinstance(ref, dict) else {}
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> dict[str, Any]:
    """Defaults ← YAML file ← overrides."""
    defaults = packaged_config("default")
    config = deep_merge(defaults, base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise NotFoundError(f"config file not found: {p}")
        try:
            user = _yaml().safe_load(p.read_text()) or {}
        except Exception as exc:
            raise InputError(f"{p}: not valid YAML ({exc})") from None
        if not isinstance(user, dict):
            raise InputError(f"{p}: expected a mapping of settings")
        unknown = sorted(set(user) - set(defaults))
        if unknown:
            raise InputError(f"{p}: unknown setting(s) {unknown}")
        config = deep_merge(config, user)
    return validate_config(apply_overrides(config, overrides, known=defaults))


def save_config(config: dict, path: str | Path) -> Path:
    """Write ``config`` as YAML, atomically (a temporary name, then a rename)."""
    from hashlearn.train.runfolder import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, _yaml().safe_dump(config, sort_keys=False))


def read_config(path: str | Path) -> dict[str, Any]:
    """The mapping saved in ``path`` (``yaml.safe_load``; anything else is a one-line error)."""
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"config not found: {p}")
    try:
        data = _yaml().safe_load(p.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError, _yaml().YAMLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p}: not a valid YAML settings file ({reason[:200]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping of settings, got {type(data).__name__}")
    return data


# -- validation ----------------------------------------------------------------------------------

def parse_bits(value: Any, where: str = "bits") -> list[int]:
    """Code lengths from an int, a list of ints or a ``"12,24,32"`` string; each a whole number in
    [:data:`MIN_BITS`, :data:`MAX_BITS`], no repeats."""
    items = value if isinstance(value, (list, tuple)) else (value.split(",") if isinstance(value, str) else [value])
    hint = f"expected whole numbers of bits from {MIN_BITS} to {MAX_BITS}, e.g. 12,24,32"
    out: list[int] = []
    for item in items:
        if isinstance(item, str) and item.strip().lstrip("+").isdigit():
            item = int(item.strip())
        if isinstance(item, bool) or not isinstance(item, int):
            raise InputError(f"{where}: {item!r} is not a whole number of bits ({hint})")
        if not MIN_BITS <= item <= MAX_BITS:
            raise InputError(f"{where}: {item} bits is out of range ({hint})")
        if item in out:
            raise InputError(f"{where}: {item} is given twice")
        out.append(item)
    if not out:
        raise InputError(f"{where}: no code length given ({hint})")
    return out


def _int(lo: int | None = None, hi: int | None = None, none: bool = False):
    def check(v):
        if v is None and none:
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("an integer" + _range(lo, hi) + (" or null" if none else ""))
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ValueError("an integer" + _range(lo, hi) + (" or null" if none else ""))
        return v
    return check


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" >= {lo}"
    return f" <= {hi}" if hi is not None else ""


def _float(gt: float | None = None, ge: float | None = None, none: bool = False):
    need = "a finite number" + (f" > {gt}" if gt is not None else "") + (f" >= {ge}" if ge is not None else "") \
        + (" or null" if none else "")

    def check(v):
        if v is None and none:
            return None
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise ValueError(need) from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(need)
        if (gt is not None and v <= gt) or (ge is not None and v < ge):
            raise ValueError(need)
        return float(v)
    return check


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _str(none: bool = False):
    def check(v):
        if v is None and none:
            return None
        if not isinstance(v, str) or not v.strip():
            raise ValueError("a name" + (" or null" if none else ""))
        return v
    return check


def _choice(*options: str):
    def check(v):
        if not isinstance(v, str) or v.lower() not in options:
            raise ValueError("one of " + ", ".join(options))
        return v.lower()
    return check


def _device(v):
    import re

    if not isinstance(v, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
        raise ValueError("auto, cpu, cuda, cuda:N or mps")
    return v


def _topk(v):
    if isinstance(v, str) and v.lower() == "all":
        return "all"
    try:
        return _int(1)(v)
    except ValueError:
        raise ValueError("'all' or an integer >= 1") from None


def _topk_list(v):
    items = v if isinstance(v, list) else [v]
    try:
        out = [_topk(x) for x in items]
    except ValueError:
        raise ValueError("a list of 'all' or integers >= 1") from None
    if not out:
        raise ValueError("a list of 'all' or integers >= 1")
    return out


def _mapping(v):
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise ValueError("a mapping of name: value")
    return v


#: every setting of ``configs/default.yaml`` with its check (``bits`` is checked by :func:`parse_bits`)
SCHEMA = {
    "method": _str(), "dataset": _str(), "protocol": _str(none=True), "split": _str(none=True), "backbone": _str(),
    "weights": _str(none=True), "frozen": _bool, "image_size": _int(8, 1024, none=True), "seed": _int(0, 2**32 - 1),
    "device": _device, "method_args": _mapping, "backbone_args": _mapping, "protocol_args": _mapping,
    "data.limit": _int(1, none=True),
    "train.epochs": _int(1, 100_000), "train.batch_size": _int(2), "train.eval_every": _int(1),
    "train.patience": _int(0), "train.val_topk": _topk, "train.threads": _int(1, 4096, none=True),
    "train.progress": _bool, "train.feature_batch_size": _int(1),
    "optim.name": _choice("sgd", "adam", "rmsprop"), "optim.lr": _float(gt=0),
    "optim.backbone_lr": _float(ge=0, none=True), "optim.momentum": _float(ge=0), "optim.weight_decay": _float(ge=0),
    "optim.schedule": _choice("none", "cosine", "step"), "optim.step_size": _int(1), "optim.gamma": _float(gt=0),
    "augment.hflip": _bool, "augment.crop_padding": _int(0, 64),
    "eval.topk": _topk_list, "eval.radius": _int(0), "eval.ties": _choice("expected", "index"),
    "shallow.features": _choice("auto", "pixels", "backbone"),
}


def validate_config(config: dict, where: str = "", keys=None) -> dict:
    """A copy of ``config`` with every known setting (or only ``keys``, dotted names; ``bits`` is
    always checked) checked and normalised; the first bad one is an :class:`InputError` naming it
    (``where`` prefixes the message, e.g. a config file's path)."""
    prefix = f"{where}: " if where else ""
    if not isinstance(config, dict):
        raise InputError(f"{prefix}expected a mapping of settings, got {type(config).__name__}")
    config = copy.deepcopy(config)
    if "bits" not in config:
        raise InputError(f"{prefix}bits: no code length given")
    config["bits"] = parse_bits(config["bits"], f"{prefix}bits")
    for key, check in SCHEMA.items():
        if keys is not None and key not in keys:
            continue
        *parents, leaf = key.split(".")
        node = config
        for i, part in enumerate(parents):
            node = node.get(part)
            if not isinstance(node, dict):
                raise InputError(f"{prefix}{'.'.join(parents[: i + 1])}: expected a section of settings, "
                                 f"got {node!r}")
        if leaf not in node:
            continue
        try:
            node[leaf] = check(node[leaf])
        except ValueError as exc:
            raise InputError(f"{prefix}{key}: expected {exc}, got {node[leaf]!r}") from None
    return config
