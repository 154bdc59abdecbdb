"""Run configuration: packaged YAML defaults, a user YAML file, then ``key=value`` overrides.

The resolved configuration is a plain nested dict, saved as ``config.yaml`` in every run.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

from hashlearn.errors import InputError, NotFoundError

#: sections whose keys are free-form (passed to a constructor), not checked against the defaults
FREE_SECTIONS = ("method_args", "backbone_args", "protocol_args")


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
    return apply_overrides(config, overrides, known=defaults)


def save_config(config: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_yaml().safe_dump(config, sort_keys=False))
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"config not found: {p}")
    return _yaml().safe_load(p.read_text()) or {}
