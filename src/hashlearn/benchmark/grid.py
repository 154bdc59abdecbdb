"""A benchmark grid read from YAML: methods × code lengths × datasets/protocols × backbones/cuts × seeds.

A config (``hashlearn/configs/benchmarks/*.yaml`` ship with the package)::

    name: cifar10-1                  # leaderboard-NAME.{md,json}; default: the file's stem
    title: CIFAR-10 ...              # the leaderboard's title (optional)
    out: runs/benchmarks/cifar10-1   # the run folders (default runs/benchmarks/NAME)
    methods:                         # a method name, or {method, label, method_args, set}
      - dpsh
      - {method: dmsh, method_args: {deep_supervision: 0.3}}
      - {method: adsh, set: [train.epochs=8]}       # settings of this method's runs only
    bits: [16, 32, 48, 64]
    datasets:                        # {dataset, protocol, protocol_args, label}
      - {dataset: cifar10, protocol: cifar10-1}
    backbones:                       # {backbone, weights, backbone_args, image_size, frozen, finetune_from,
      - {backbone: efficientnet_lite0, image_size: 96, finetune_from: stage5}   #  finetune_bn, activation_dtype, label}
    seeds: [0]
    epochs: 15
    lr: 1.0e-3
    batch_size: 64
    device: auto
    set: [train.eval_every=2]        # any other `hashlearn train` setting, for every run
    metrics: [NDCG@100]              # more leaderboard columns (keys of metrics.json)
    notes: [a line under the title]
    compare: {ath: dtsh, dmsh: dpsh}  # method label → its baseline's label: the leaderboard gives the ratio
                                      # of their mAP@all at each code length and says which wins

Every key is checked; an unknown or bad one is one :class:`InputError` line naming the file and the
key. A *cell* is one (method entry, dataset entry, backbone entry, seed): one ``hashlearn train``
output folder ``OUT/<dataset label>/<backbone label>/<method label>/seed<S>/`` holding a run folder
per code length, trained by one call of :func:`hashlearn.train.train` (the one trainer). Its
settings are a :class:`~hashlearn.train.config.RunConfig`: the defaults ← ``set`` and
``epochs``/``lr``/``batch_size``/``device`` ← the entries' keys ← the method entry's ``set``.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hashlearn.errors import InputError, NotFoundError

#: top-level keys of a benchmark config and what each is
TOP_KEYS = {
    "name": "the leaderboard's name (leaderboard-NAME.md/.json); default: the file's stem",
    "title": "the leaderboard's title",
    "out": "folder of the run folders; default runs/benchmarks/NAME",
    "methods": "list of method names or {method, label, method_args, set}",
    "bits": "code lengths, e.g. [16, 32, 48, 64]",
    "datasets": "list of {dataset, protocol, protocol_args, label}",
    "backbones": "list of {backbone, weights, backbone_args, image_size, frozen, finetune_from, finetune_bn, "
    "activation_dtype, label}",
    "seeds": "list of seeds, e.g. [0, 1, 2]",
    "epochs": "train.epochs of every run",
    "lr": "optim.lr of every run",
    "batch_size": "train.batch_size of every run (the global batch under --nproc)",
    "device": "auto | cpu | cuda | cuda:N | mps",
    "set": "list of KEY=VALUE hashlearn train settings for every run",
    "metrics": "more leaderboard columns: metrics.json keys such as NDCG@100",
    "notes": "lines under the leaderboard's title",
    "compare": "mapping of method label → the label of its baseline (the leaderboard gives their mAP@all ratio)",
}
REQUIRED = ("methods", "bits", "datasets", "backbones")
#: top-level shortcuts → the RunConfig setting each sets
SHORTCUTS = {"epochs": "train.epochs", "lr": "optim.lr", "batch_size": "train.batch_size", "device": "device"}
METHOD_KEYS = ("method", "label", "method_args", "set")
DATASET_KEYS = ("dataset", "protocol", "protocol_args", "label")
BACKBONE_KEYS = (
    "backbone",
    "weights",
    "backbone_args",
    "image_size",
    "frozen",
    "finetune_from",
    "finetune_bn",
    "activation_dtype",
    "label",
)
#: settings the grid's own keys decide: a ``set`` line may not change them
AXES = ("method", "method_args", "bits", "seed", "split", *DATASET_KEYS[:-1], *BACKBONE_KEYS[:-1])
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _yaml():
    import yaml

    return yaml


# -- entries ----------------------------------------------------------------------------------------------


@dataclass
class MethodEntry:
    method: str
    label: str
    method_args: dict = field(default_factory=dict)
    set: list = field(default_factory=list)


@dataclass
class DatasetEntry:
    dataset: str
    label: str
    protocol: str | None = None
    protocol_args: dict = field(default_factory=dict)


@dataclass
class BackboneEntry:
    label: str
    settings: dict  # RunConfig top-level settings: backbone, image_size, finetune_from, ...


@dataclass
class Cell:
    """One ``hashlearn train`` output folder: a method entry on a dataset entry and a backbone entry, one seed,
    every code length of the grid (``config.bits``)."""

    method: MethodEntry
    dataset: DatasetEntry
    backbone: BackboneEntry
    seed: int
    config: Any  # RunConfig
    out: Path

    @property
    def name(self) -> str:
        return f"{self.method.label} / {self.dataset.label} / {self.backbone.label} / seed {self.seed}"

    def run_dir(self, bits: int) -> Path:
        return self.out / f"{bits}bits"


@dataclass
class Grid:
    name: str
    title: str
    path: Path
    out: Path
    methods: list[MethodEntry]
    bits: list[int]
    datasets: list[DatasetEntry]
    backbones: list[BackboneEntry]
    seeds: list[int]
    metrics: list[str]
    notes: list[str]
    common: list[str]  # the top-level set lines and shortcuts, as KEY=VALUE (for the leaderboard's notes)
    cells: list[Cell]
    compare: dict[str, str] = field(default_factory=dict)  # method label → its baseline's label

    def select(self, only: list[str] | None) -> list[Cell]:
        """The cells of the methods named in ``only``, all when None. A name is an entry's label, else a method
        name, which selects every entry of that method (``dpsh`` is the entry labelled dpsh when there is one,
        not also ``dpsh-batch``)."""
        if not only:
            return list(self.cells)
        labels = {m.label for m in self.methods}
        unknown = [o for o in only if o not in labels and o not in {m.method for m in self.methods}]
        if unknown:
            raise InputError(
                f"--only {unknown[0]!r}: not a method of {self.path.name}; its methods: "
                + ", ".join(m.label for m in self.methods)
            )
        chosen = {m.label for m in self.methods if m.label in only or (m.method in only and m.method not in labels)}
        return [c for c in self.cells if c.method.label in chosen]


# -- finding a config -------------------------------------------------------------------------------------


def shipped_dir():
    return resources.files("hashlearn") / "configs" / "benchmarks"


def shipped_configs() -> list[str]:
    """Names of the benchmark configs shipped with hashlearn (``hashlearn benchmark NAME``)."""
    folder = shipped_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def config_path(source: str | Path) -> Path:
    """A config file: ``source`` when it is a file, else the shipped config of that bare name."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    text = str(source)
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        shipped = shipped_dir() / f"{text}.yaml"
        if shipped.is_file():
            return Path(str(shipped))
    raise NotFoundError(
        f"benchmark config {text!r}: no such file, nor a shipped config; shipped: "
        + (", ".join(shipped_configs()) or "none")
    )


# -- checking ---------------------------------------------------------------------------------------------


def _setting_check(dotted: str):
    """The check function of a RunConfig setting (``train.epochs``)."""
    from hashlearn.train.config import RunConfig

    cls, parts = RunConfig, dotted.split(".")
    for part in parts[:-1]:
        cls = {f.name: f for f in dataclasses.fields(cls)}[part].metadata["section"]
    return {f.name: f for f in dataclasses.fields(cls)}[parts[-1]].metadata["check"]


def _checked(dotted: str, value: Any, where: str) -> Any:
    """``value`` checked (and normalised) as the RunConfig setting ``dotted``; one line naming ``where``."""
    from hashlearn.train.config import _Said

    try:
        return _setting_check(dotted)(value)
    except _Said as exc:  # a complete message
        raise InputError(f"{where}: {exc}") from None
    except ValueError as exc:  # what was expected
        raise InputError(f"{where}: expected {exc}, got {value!r}") from None


def _keys(value: Any, allowed: tuple[str, ...] | dict[str, str], where: str, required: tuple[str, ...] = ()) -> dict:
    """``value``, a mapping of ``allowed`` keys holding every ``required`` one; ``allowed`` may map each key to
    what it is, said when a required one is missing."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a mapping of {', '.join(allowed)}, got {value!r}")
    for key in value:
        if key not in allowed:
            raise InputError(f"{where}: unknown key {key!r}; valid: {', '.join(allowed)}")
    for key in required:
        if value.get(key) is None:
            said = f" ({allowed[key]})" if isinstance(allowed, dict) else ""
            raise InputError(f"{where}: {key} is required{said}")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: expected a non-empty list, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InputError(f"{where}: expected a mapping of name: value, got {value!r}")
    return copy.deepcopy(value)


def _label(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _LABEL.fullmatch(value) or len(value) > 100:
        raise InputError(
            f"{where}: {value!r} is not a plain name (letters, digits, '.', '_', '+', '-'; it names a folder)"
        )
    return value


def _set_lines(value: Any, where: str, own: tuple[str, ...]) -> list[str]:
    """``set`` lines (KEY=VALUE, as ``hashlearn train --set``), none of them a setting the grid decides."""
    from hashlearn.train.config import RunConfig, apply_overrides, parse_override

    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise InputError(f"{where}: expected a list of KEY=VALUE lines, e.g. [train.eval_every=2], got {value!r}")
    for text in value:
        try:
            keys, _ = parse_override(text)
        except InputError as exc:
            raise InputError(f"{where}: {str(exc).removeprefix('--set ')}") from None
        dotted = ".".join(keys)
        if keys[0] in AXES or dotted in own:
            key = {v: k for k, v in SHORTCUTS.items()}.get(dotted, keys[0])
            raise InputError(f"{where}: {text!r} sets {dotted}, which the config's own key {key!r} decides")
        try:
            apply_overrides(RunConfig().to_dict(), [text])  # an unknown setting: one line listing the valid ones
        except InputError as exc:
            raise InputError(f"{where}: {str(exc).removeprefix('--set ')}") from None
    return list(value)


def _unique(labels: list[str], where: str) -> None:
    seen = set()
    for i, label in enumerate(labels):
        if label in seen:
            raise InputError(f"{where}[{i}]: label {label!r} is used twice; give the entries different labels")
        seen.add(label)


def _method_entry(value: Any, where: str) -> MethodEntry:
    from hashlearn.methods import get_method

    entry = {"method": value} if isinstance(value, str) else _keys(value, METHOD_KEYS, where, ("method",))
    name = entry["method"]
    if not isinstance(name, str):
        raise InputError(f"{where}.method: expected a method name, got {name!r}")
    try:
        get_method(name)
    except NotFoundError as exc:
        raise NotFoundError(f"{where}.method: {exc}") from None
    name = name.lower()
    label = _label(entry.get("label", name), f"{where}.label")
    args = _mapping(entry.get("method_args"), f"{where}.method_args")
    lines = _set_lines(entry.get("set"), f"{where}.set", own=())
    return MethodEntry(method=name, label=label, method_args=args, set=lines)


def _dataset_entry(value: Any, where: str) -> DatasetEntry:
    from hashlearn.data import DATASETS, get_protocol, prepared_names

    entry = _keys(value, DATASET_KEYS, where, ("dataset",))
    name = entry["dataset"]
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{where}.dataset: expected a dataset name, got {name!r}")
    if name not in DATASETS and name not in prepared_names():
        raise NotFoundError(
            f"{where}.dataset: unknown dataset {name!r} (neither registered nor prepared); "
            f"known: {', '.join(DATASETS.names())}"
        )
    protocol = entry.get("protocol")
    if protocol is not None and (not isinstance(protocol, str) or not protocol.strip()):
        raise InputError(f"{where}.protocol: expected a protocol name, got {protocol!r}")
    args = _mapping(entry.get("protocol_args"), f"{where}.protocol_args")
    if protocol is not None:
        try:
            get_protocol(protocol, **args)
        except (InputError, NotFoundError) as exc:
            key = "protocol_args" if args and not isinstance(exc, NotFoundError) else "protocol"
            raise type(exc)(f"{where}.{key}: {exc}") from None
    elif args:
        raise InputError(f"{where}.protocol_args: given without a protocol")
    default = name  # cifar10 + cifar10-1 → cifar10-1; brain-mri + official-split → brain-mri-official-split
    if protocol:
        default = protocol if protocol.lower().startswith(name.lower()) else f"{name}-{protocol}"
    label = _label(entry.get("label", default), f"{where}.label")
    return DatasetEntry(dataset=name, label=label, protocol=protocol, protocol_args=args)


def _backbone_entry(value: Any, where: str) -> BackboneEntry:
    entry = _keys(value, BACKBONE_KEYS, where, ("backbone",))
    settings = {k: _checked(k, v, f"{where}.{k}") for k, v in entry.items() if k != "label"}
    default = settings["backbone"]
    if settings.get("image_size"):
        default += f"-{settings['image_size']}px"
    if settings.get("finetune_from"):
        default += f"-ft-{settings['finetune_from']}"
    elif settings.get("frozen"):
        default += "-frozen"
    return BackboneEntry(label=_label(entry.get("label", default), f"{where}.label"), settings=settings)


def _seeds(value: Any, where: str) -> list[int]:
    seeds = [_checked("seed", s, f"{where}[{i}]") for i, s in enumerate(_list(value, where))]
    if len(set(seeds)) != len(seeds):
        raise InputError(f"{where}: a seed is given twice ({seeds})")
    return seeds


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) and x.strip() for x in value):
        raise InputError(f"{where}: expected a list of strings, got {value!r}")
    return list(value)


def load_grid(source: str | Path, out: str | Path | None = None) -> Grid:
    """The grid of the config ``source`` (a file, or a shipped config's bare name), every key checked.
    ``out`` replaces the config's ``out``."""
    from hashlearn.train.config import parse_bits, read_config

    path = config_path(source)
    data = read_config(path)  # yaml.safe_load; a mapping, else one line
    where = str(path) if not str(path).startswith(str(shipped_dir())) else f"{path.stem} (shipped config)"
    _keys(data, TOP_KEYS, where, REQUIRED)
    name = _label(data.get("name", path.stem), f"{where}: name")
    title = data.get("title", f"Leaderboard {name}")
    if not isinstance(title, str) or not title.strip():
        raise InputError(f"{where}: title: expected a line of text, got {title!r}")
    out_dir = out if out is not None else data.get("out", f"runs/benchmarks/{name}")
    if not isinstance(out_dir, (str, Path)) or not str(out_dir).strip():
        raise InputError(f"{where}: out: expected a folder, got {out_dir!r}")
    methods = [_method_entry(m, f"{where}: methods[{i}]") for i, m in enumerate(_list(data["methods"], "methods"))]
    _unique([m.label for m in methods], f"{where}: methods")
    bits = parse_bits(data["bits"], where=f"{where}: bits")
    datasets = [
        _dataset_entry(d, f"{where}: datasets[{i}]")
        for i, d in enumerate(_list(data["datasets"], f"{where}: datasets"))
    ]
    _unique([d.label for d in datasets], f"{where}: datasets")
    backbones = [
        _backbone_entry(b, f"{where}: backbones[{i}]")
        for i, b in enumerate(_list(data["backbones"], f"{where}: backbones"))
    ]
    _unique([b.label for b in backbones], f"{where}: backbones")
    seeds = _seeds(data.get("seeds", [0]), f"{where}: seeds")
    common = _set_lines(data.get("set"), f"{where}: set", own=tuple(SHORTCUTS.values()))
    for key, dotted in SHORTCUTS.items():
        if data.get(key) is not None:
            value = _checked(dotted, data[key], f"{where}: {key}")
            common.append(f"{dotted}={_flow(value)}")
    grid = Grid(
        name=name,
        title=title,
        path=path,
        out=Path(out_dir).expanduser(),
        methods=methods,
        bits=bits,
        datasets=datasets,
        backbones=backbones,
        seeds=seeds,
        metrics=_strings(data.get("metrics"), f"{where}: metrics"),
        notes=_strings(data.get("notes"), f"{where}: notes"),
        common=common,
        cells=[],
        compare=_compare(data.get("compare"), [m.label for m in methods], f"{where}: compare"),
    )
    grid.cells = [_cell(grid, m, d, b, s, where) for d in datasets for b in backbones for m in methods for s in seeds]
    return grid


def _compare(value: Any, labels: list[str], where: str) -> dict[str, str]:
    """The ``compare`` mapping: method label → baseline label, both labels of the grid's methods."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a mapping of method label → baseline label, got {value!r}")
    pairs = {}
    for method, baseline in value.items():
        for label in (method, baseline):
            if not isinstance(label, str) or label not in labels:
                known = ", ".join(labels)
                raise InputError(f"{where}: {label!r} is not a method label of this grid; its methods: {known}")
        if method == baseline:
            raise InputError(f"{where}: {method!r} is compared with itself")
        pairs[method] = baseline
    return pairs


def _flow(value: Any) -> str:
    """A value as one line of YAML (what ``--set KEY=VALUE`` reads back as the same value)."""
    text = _yaml().safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _cell(grid: Grid, m: MethodEntry, d: DatasetEntry, b: BackboneEntry, seed: int, where: str) -> Cell:
    from hashlearn.train.config import RunConfig, apply_overrides

    config = apply_overrides(RunConfig().to_dict(), grid.common)
    config.update(
        {
            "method": m.method,
            "method_args": copy.deepcopy(m.method_args),
            "bits": list(grid.bits),
            "seed": seed,
            "dataset": d.dataset,
            "protocol": d.protocol,
            "protocol_args": copy.deepcopy(d.protocol_args),
            **copy.deepcopy(b.settings),
        }
    )
    try:
        config = apply_overrides(config, m.set)
    except InputError as exc:
        raise InputError(f"{where}: methods entry {m.label!r}: set: {str(exc).removeprefix('--set ')}") from None
    try:
        run_config = RunConfig.from_dict(config)
    except InputError as exc:
        raise InputError(f"{where}: {m.label} on {d.label}, {b.label}: {exc}") from None
    out = grid.out / d.label / b.label / m.label / f"seed{seed}"
    return Cell(method=m, dataset=d, backbone=b, seed=seed, config=run_config, out=out)


# -- before any work: every cell's model -------------------------------------------------------------------


def check_cells(cells: list[Cell], nproc: int = 1) -> None:
    """What can fail about each cell's model at each code length (method arguments, taps, the cut; the
    trainer's own :func:`~hashlearn.train.model.check_before_work`), and, data-parallel, that the global
    batch divides among the processes: one line naming the cell, before anything trains."""
    from hashlearn.train.model import check_before_work, method_kind

    for cell in cells:
        for bits in cell.config.bits:
            try:
                check_before_work(cell.config.copy(bits=[bits]))
            except InputError as exc:
                raise InputError(f"{cell.name}, {bits} bits: {exc}") from None
        if nproc > 1 and method_kind(cell.method.method)[1] == "deep" and cell.config.train.batch_size % nproc:
            raise InputError(
                f"{cell.name}: train.batch_size {cell.config.train.batch_size} is not divisible by the "
                f"{nproc} processes of --nproc (it is the global batch)"
            )


# -- the equivalent `hashlearn train` command -------------------------------------------------------------

#: settings with their own `hashlearn train` option (the others go through --set)
OPTIONS = {
    "dataset": "--dataset",
    "protocol": "--protocol",
    "backbone": "--backbone",
    "weights": "--weights",
    "image_size": "--image-size",
    "seed": "--seed",
    "train.epochs": "--epochs",
    "train.batch_size": "--batch-size",
    "optim.lr": "--lr",
    "data.limit": "--limit",
    "finetune_from": "--finetune-from",
}
_FREE = ("method_args", "backbone_args", "protocol_args")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in _FREE:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def train_argv(config, bits: list[int], out: Path, resume: bool = True, progress: bool = True) -> list[str]:
    """``hashlearn train`` arguments (after ``hashlearn``) that give ``config`` at ``bits``, writing ``out``:
    what ``--dry-run`` prints and what a data-parallel cell runs under ``torchrun``."""
    from hashlearn.train.config import RunConfig

    defaults = _flat(RunConfig().to_dict())
    argv = ["train", "--method", config.method, "--bits", ",".join(str(b) for b in bits)]
    sets = []
    for key, value in _flat(config.to_dict()).items():
        if key in ("method", "bits", "train.progress") or value == defaults.get(key):
            continue
        if key in OPTIONS and value is not None:
            argv += [OPTIONS[key], str(value)]
        elif key == "frozen" and value is True:
            argv.append("--frozen")
        else:
            sets += ["--set", f"{key}={_flow(value)}"]
    argv += sets + ["--out", str(out)]
    if not resume:
        argv.append("--no-resume")
    if not progress:
        argv.append("--quiet")
    return argv


# -- which code lengths are finished -----------------------------------------------------------------------

#: settings that change nothing in a finished run's figures
IGNORED = ("train.progress", "train.threads", "train.feature_batch_size", "device")


def changed_setting(saved: dict, config) -> str | None:
    """The first setting in which the ``config.yaml`` a run saved (``saved``) differs from ``config`` (one code
    length), as ``"key: old → new"``; None when the run is what ``config`` asks for. ``hashlearn train`` fills
    ``method_args.classes`` (a class head) and the default protocol itself, so those count as equal."""
    from hashlearn.train.config import RunConfig

    have = _flat(RunConfig.from_dict(saved, only=()).to_dict())
    want = _flat(config.to_dict())
    if want.get("protocol") is None:
        have.pop("protocol", None), want.pop("protocol", None)
    args = dict(have.get("method_args") or {})
    if "classes" in args and "classes" not in (want.get("method_args") or {}):
        args.pop("classes")
        have["method_args"] = args
    for key in sorted(set(have) | set(want)):
        if key in IGNORED:
            continue
        if have.get(key) != want.get(key):
            return f"{key}: {have.get(key)!r} → {want.get(key)!r}"
    return None


def bits_status(cell: Cell, bits: int) -> str:
    """``done`` (metrics.json of these settings), ``resume`` (a checkpoint: `hashlearn train` resumes it),
    ``changed: KEY: old → new`` (a finished run of other settings) or ``new``."""
    from hashlearn.train.config import read_config

    run_dir = cell.run_dir(bits)
    metrics = run_dir / "metrics.json"
    if metrics.is_file() and (run_dir / "config.yaml").is_file():
        try:
            changed = changed_setting(read_config(run_dir / "config.yaml"), cell.config.copy(bits=[bits]))
        except InputError as exc:
            return f"changed: {exc}"
        return "done" if changed is None else f"changed: {changed}"
    return "resume" if (run_dir / "checkpoint.pt").is_file() else "new"
