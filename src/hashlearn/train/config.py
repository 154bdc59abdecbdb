"""Run configuration, typed: one :class:`RunConfig` of sections, every setting with its default,
its check and its one-line description in ONE place (the dataclasses below).

Sources, later ones winning: the defaults ← a YAML file (``--config``) ← ``key=value``
overrides (``--set``). :func:`load_config` merges them and validates once
(:meth:`RunConfig.from_dict`): an unknown setting is one line that lists the valid ones, a value
of the wrong type or range is one line naming the setting. ``configs/default.yaml`` is
generated from these dataclasses (``python -m hashlearn.train.config > .../default.yaml``) and a
test checks that the file is exactly that text, so the documented defaults cannot drift.
YAML is only ever read with ``yaml.safe_load``. ``RunConfig.to_dict()`` is the plain form
saved as ``config.yaml`` and in checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
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


# -- value checks (each returns the normalised value or raises ValueError("what was expected")) ----------------

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


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" >= {lo}"
    return f" <= {hi}" if hi is not None else ""


def _int(lo: int | None = None, hi: int | None = None, none: bool = False):
    need = "an integer" + _range(lo, hi) + (" or null" if none else "")

    def check(v):
        if v is None and none:
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) \
                or (hi is not None and v > hi):
            raise ValueError(need)
        return v
    return check


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


class _Said(ValueError):
    """A check's complete message (not "expected ...")."""


def _bits(v):
    try:
        return parse_bits(v, where="")
    except InputError as exc:
        raise _Said(str(exc).removeprefix(": ")) from None


def setting(default: Any, check, doc: str):
    """A dataclass field: its default, its check and the comment ``default.yaml`` shows for it."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"check": check, "doc": doc})
    return field(default=default, metadata={"check": check, "doc": doc})


def section(cls, doc: str = ""):
    return field(default_factory=cls, metadata={"section": cls, "doc": doc})


# -- the settings ------------------------------------------------------------------------------------------

@dataclass
class DataSettings:
    limit: int | None = setting(None, _int(1, none=True),
                                "keep a seeded random subset of at most N images of each split (quick runs)")


@dataclass
class TrainSettings:
    epochs: int = setting(10, _int(1, 100_000), "")
    batch_size: int = setting(64, _int(2), "")
    eval_every: int = setting(1, _int(1), "validation mAP every N epochs (model selection on the validation split)")
    patience: int = setting(0, _int(0), "early stopping after N evaluations without improvement (0 = off)")
    val_topk: int | str = setting("all", _topk, "R of the validation mAP@R")
    threads: int | None = setting(None, _int(1, 4096, none=True), "torch CPU threads (null: torch default)")
    progress: bool = setting(True, _bool, "progress output (bars only on a terminal; one line per epoch)")
    feature_batch_size: int = setting(256, _int(1), "batch size for encoding and feature/activation extraction")
    sampler: str = setting("auto", _choice("auto", "random", "class_balanced"),
                           "batch order: random | class_balanced (every class in every batch, small classes "
                           "oversampled) | auto (the method's preference, else random)")


@dataclass
class OptimSettings:
    name: str = setting("adam", _choice("sgd", "adam", "rmsprop"), "sgd | adam | rmsprop")
    lr: float = setting(1.0e-3, _float(gt=0), "learning rate of the new layers (heads)")
    backbone_lr: float | None = setting(None, _float(ge=0, none=True),
                                        "null: = lr for a backbone trained from scratch, lr/10 for pretrained weights")
    momentum: float = setting(0.9, _float(ge=0), "")
    weight_decay: float = setting(1.0e-5, _float(ge=0), "")
    schedule: str = setting("cosine", _choice("none", "cosine", "step"),
                            "none | cosine | step (a function of the epoch and train.epochs)")
    step_size: int = setting(10, _int(1), "step schedule: decay every N epochs")
    gamma: float = setting(0.1, _float(gt=0), "step schedule: decay factor")


@dataclass
class AugmentSettings:
    hflip: bool = setting(True, _bool, "random horizontal flips (cached maps: the stored mirror)")
    crop_padding: int = setting(2, _int(0, 64), "random translation by up to N px (0 = off; not on cached maps)")


@dataclass
class EvalSettings:
    topk: list = setting([1000, "all"], _topk_list, "")
    graded_topk: list = setting([100], _topk_list, "multi-hot labels: these R too (NDCG/ACG/weighted mAP@R, mAP@R)")
    radius: int = setting(2, _int(0), "")
    ties: str = setting("expected", _choice("expected", "index"), "expected | index")
    retrieval: str = setting("auto", _choice("auto", "symmetric", "asymmetric"),
                             "auto | symmetric | asymmetric: database codes from the network (symmetric) or, for "
                             "the training images, the codes the method learned (ADSH/ExchNet V); auto = asymmetric "
                             "for methods that learn database codes, else symmetric")


@dataclass
class ShallowSettings:
    features: str = setting("auto", _choice("auto", "pixels", "backbone"),
                            "auto | pixels | backbone: what a shallow method is fitted on")


@dataclass
class RunConfig:
    """Every setting of ``hashlearn train`` (``configs/default.yaml`` is generated from this)."""

    method: str | None = setting(None, _str(none=True), "a registered method (hashlearn methods); required")
    method_args: dict = setting({}, _mapping, "constructor arguments of the method (e.g. {eta: 0.1})")
    dataset: str = setting("fashion-mnist", _str(), "")
    protocol: str | None = setting(None, _str(none=True), "a registered protocol (hashlearn data protocols); "
                                                          "null: the dataset's default (hashlearn data list)")
    split: str | None = setting(None, _str(none=True), "a split file written by `hashlearn data split`; "
                                                       "replaces protocol and protocol_args")
    protocol_args: dict = setting({}, _mapping, "parameters of the protocol (e.g. {query_per_class: 50})")
    bits: list = setting([12, 24, 32, 48], _bits, "code lengths from 8 to 1024 (one run folder each)")
    backbone: str = setting("smallcnn", _str(), "")
    weights: str | None = setting("default", _str(none=True),
                                  "default | none | PATH (smallcnn has no pretrained weights)")
    backbone_args: dict = setting({}, _mapping, "extra backbone constructor arguments (smallcnn: width, in_channels)")
    frozen: bool = setting(False, _bool, "true: nothing in the backbone trains; the heads train on cached "
                                         "pooled features (or cached maps for a method that asks for maps)")
    finetune_from: str | None = setting(None, _str(none=True),
                                        "a tap T: the backbone below T runs once (cached maps), the part above "
                                        "T trains with the heads; null: end to end")
    finetune_bn: str = setting("frozen", _choice("frozen", "train"),
                               "BatchNorm above the cut: frozen (running statistics kept) | train (batch statistics)")
    activation_dtype: str = setting("float16", _choice("float16", "float32"), "dtype of the cached maps")
    image_size: int | None = setting(None, _int(8, 1024, none=True),
                                     "null: native size for smallcnn, the backbone's input size otherwise")
    seed: int = setting(0, _int(0, 2**32 - 1), "")
    device: str = setting("auto", _device, "auto | cpu | cuda")
    data: DataSettings = section(DataSettings)
    train: TrainSettings = section(TrainSettings)
    optim: OptimSettings = section(OptimSettings)
    augment: AugmentSettings = section(AugmentSettings)
    eval: EvalSettings = section(EvalSettings)
    shallow: ShallowSettings = section(ShallowSettings)

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict | None, where: str = "", only: tuple[str, ...] | None = None) -> RunConfig:
        """Validated settings from a plain mapping (missing ones take their defaults).

        The first unknown or bad setting is an :class:`InputError` naming it (``where``, e.g. a
        file, starts the message). ``only``: dotted names (or section names) to check; any other
        setting that is unknown or fails its check is replaced by its default (used to read the
        ``config.yaml`` of a run trained by another version)."""
        return _build(cls, data, where, "", only)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested values (what ``config.yaml`` holds)."""
        return copy.deepcopy(dataclasses.asdict(self))

    def copy(self, **changes: Any) -> RunConfig:
        """A deep copy with top-level settings changed (``bits=[32]``); sections are copied too."""
        new = copy.deepcopy(self)
        for key, value in changes.items():
            if key not in _field_map(RunConfig):
                raise KeyError(key)
            setattr(new, key, value)
        return new

    @property
    def run_bits(self) -> int:
        """The one code length of a run's configuration."""
        if len(self.bits) != 1:
            raise ValueError(f"a run has one code length, this configuration has {self.bits}")
        return int(self.bits[0])


def _field_map(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def setting_names(cls=RunConfig, prefix: str = "") -> list[str]:
    """Every setting as a dotted name, in order (``method``, …, ``train.epochs``, …)."""
    out = []
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            out += setting_names(f.metadata["section"], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _valid_list(cls, prefix: str) -> str:
    names = [f"{prefix}{f.name}" for f in dataclasses.fields(cls)]
    return ", ".join(names)


def _wanted(only, dotted: str) -> bool:
    return only is None or dotted in only or dotted.split(".")[0] in only


def _build(cls, data, where: str, prefix: str, only):
    lead = f"{where}: " if where else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        what = prefix[:-1] or "settings"
        raise InputError(f"{lead}{what}: expected a section of settings, got {data!r}")
    fields = _field_map(cls)
    unknown = [k for k in data if k not in fields]
    if unknown and only is None:
        raise InputError(f"{lead}unknown setting {prefix}{unknown[0]!s}; valid: {_valid_list(cls, prefix)}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        dotted = prefix + name
        value = data[name]
        if "section" in f.metadata:
            if value is not None and not isinstance(value, dict) and not _wanted(only, dotted):
                continue
            if value is not None and not isinstance(value, dict):
                raise InputError(f"{lead}{dotted}: expected a section of settings, got {value!r}")
            values[name] = _build(f.metadata["section"], value or {}, where, dotted + ".", only)
            continue
        try:
            values[name] = f.metadata["check"](value)
        except ValueError as exc:
            if not _wanted(only, dotted):
                continue
            if isinstance(exc, _Said):
                raise InputError(f"{lead}{dotted}: {exc}") from None
            raise InputError(f"{lead}{dotted}: expected {exc}, got {value!r}") from None
    return cls(**values)


def default_config() -> RunConfig:
    return RunConfig()


# -- default.yaml, generated ----------------------------------------------------------------------------

_HEADER = ("# hashlearn train: every setting with its default. Override with --config FILE and --set key=value.\n"
           "# Generated from hashlearn/train/config.py (RunConfig): python -m hashlearn.train.config > this file\n")


def _yaml_value(value: Any) -> str:
    text = _yaml().safe_dump(value, default_flow_style=True, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def render_default_yaml() -> str:
    """The text of ``configs/default.yaml``: every setting, its default and its description."""
    lines = [_HEADER.rstrip("\n")]

    def emit(cls, obj, indent: str) -> None:
        for f in dataclasses.fields(cls):
            value = getattr(obj, f.name)
            if "section" in f.metadata:
                lines.append(f"{indent}{f.name}:")
                emit(f.metadata["section"], value, indent + "  ")
                continue
            head = f"{indent}{f.name}: {_yaml_value(value)}"
            doc = f.metadata.get("doc", "")
            lines.append(f"{head:<27}# {doc}" if doc else head)
            if doc and len(head) >= 27:
                lines[-1] = f"{head}  # {doc}"

    emit(RunConfig, RunConfig(), "")
    return "\n".join(lines) + "\n"


def packaged_config(name: str = "default") -> dict[str, Any]:
    """A config shipped in ``hashlearn/configs`` (``default``, ``demo``, …), as plain data."""
    path = resources.files("hashlearn") / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise NotFoundError(f"no packaged config {name!r}")
    return _yaml().safe_load(path.read_text()) or {}


# -- merging and overrides ---------------------------------------------------------------------------------

def deep_merge(base: dict, update: dict, where: str = "") -> dict:
    """``update`` merged into a copy of ``base`` (free-form sections are replaced, not merged)."""
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
        reason = " ".join(str(exc).split())[:160]
        raise InputError(f"--set {text!r}: cannot parse the value ({reason})") from None
    # YAML reads 1e-3 as a string (no dot); accept it as a number
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            pass
    return keys, value


def apply_overrides(config: dict, overrides: list[str] | None) -> dict:
    """Apply ``--set`` overrides to a plain mapping. A key that is not a setting is one line listing
    the valid ones; keys under the free-form sections (``method_args``, ``backbone_args``,
    ``protocol_args``) are passed on unchecked."""
    config = copy.deepcopy(config)
    for text in overrides or []:
        keys, value = parse_override(text)
        node, cls = config, RunConfig
        for i, k in enumerate(keys):
            free = i > 0 and keys[0] in FREE_SECTIONS
            if not free:
                fields = _field_map(cls) if cls is not None else {}
                if k not in fields:
                    where = ".".join(keys[:i])
                    if cls is None:
                        raise InputError(f"--set {text!r}: {where!r} is not a section")
                    valid = _valid_list(cls, where + "." if where else "")
                    raise InputError(f"--set {text!r}: unknown setting {'.'.join(keys[: i + 1])!r}; valid: {valid}")
                cls = fields[k].metadata.get("section")
            if i == len(keys) - 1:
                node[k] = value
            else:
                node = node.setdefault(k, {})
                if not isinstance(node, dict):
                    raise InputError(f"--set {text!r}: {'.'.join(keys[: i + 1])!r} is not a section")
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> RunConfig:
    """Defaults ← ``base`` (a mapping from code, e.g. the demo's) ← YAML file ← overrides, validated once."""
    config = deep_merge(RunConfig().to_dict(), base or {})
    if path is not None:
        user = read_config(path)
        RunConfig.from_dict(user, where=str(path))  # a bad setting of the file is named with the file
        config = deep_merge(config, user)
    return RunConfig.from_dict(apply_overrides(config, overrides))


def as_config(config: RunConfig | dict) -> RunConfig:
    """A :class:`RunConfig` from itself (a copy) or from a plain mapping (validated)."""
    if isinstance(config, RunConfig):
        return copy.deepcopy(config)
    return RunConfig.from_dict(deep_merge(RunConfig().to_dict(), config))


def validate_config(config: dict | RunConfig, where: str = "") -> RunConfig:
    """``config`` checked and normalised into a :class:`RunConfig` (missing settings: defaults)."""
    if isinstance(config, RunConfig):
        config = config.to_dict()
    return RunConfig.from_dict(config, where=where)


def config_for_yaml(config: RunConfig) -> dict[str, Any]:
    """``config.to_dict()`` with a single code length written as a number (``bits: 32``)."""
    data = config.to_dict()
    if len(data["bits"]) == 1:
        data["bits"] = data["bits"][0]
    return data


def save_config(config: RunConfig | dict, path: str | Path) -> Path:
    """Write ``config`` as YAML, atomically (a temporary name, then a rename)."""
    from hashlearn.train.runfolder import write_text_atomic

    data = config_for_yaml(config) if isinstance(config, RunConfig) else config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, _yaml().safe_dump(data, sort_keys=False))


def read_config(path: str | Path) -> dict[str, Any]:
    """The mapping saved in ``path`` (``yaml.safe_load``; anything else is a one-line error)."""
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"config file not found: {p}")
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


if __name__ == "__main__":  # pragma: no cover - regenerates configs/default.yaml
    print(render_default_yaml(), end="")
