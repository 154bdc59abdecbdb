"""``hashlearn export RUN --out model.hlm``: one trained run (one code length) as one file to share,
with its model card beside it; :func:`load_model_file` reads it back (what :func:`load_run` and
every ``--run`` option do with a file).

The file (format :data:`FORMAT_VERSION`) is a zip archive, every member *stored* (not compressed):

* ``manifest.json`` — format and format version, the hashlearn version that wrote it, kind,
  method, bits, the backbone (name, weights, sha256 of the backbone tensors the file does not
  carry), image size and channels, dataset and protocol, the run's metrics, the run's fingerprint
  and the sha256 of every other member;
* ``config.yaml`` and ``run.json`` — the run's, byte for byte (the resolved settings; what the
  model is built from);
* ``metrics.json`` — the run's, less ``run_dir`` (a path on the machine that trained it), when
  the run was evaluated;
* ``weights.safetensors`` — a deep run's trained weights (the tensors of ``best.pt``'s ``model``:
  the head and what trained of the backbone), or a shallow hasher's learned arrays with its
  method and parameters as JSON in the safetensors metadata (``hashlearn_state``).

Why a zip of plain files rather than one safetensors file with the JSON in its metadata: the
metadata of a safetensors file is a flat string → string map with no checksum of the tensor
bytes, so settings, metrics and checksums would be strings inside strings; a zip keeps each part a
file any tool opens (``unzip -p model.hlm config.yaml``, the weights member loads in any
safetensors reader unchanged), each member has the zip's CRC-32 plus its sha256 in the manifest,
and new members can come in a later format version. Stored members cannot be decompression bombs,
and fixed timestamps, order and permissions make the same run give the same bytes.

Nothing is ever unpickled: the weights are safetensors (tensors only), the rest JSON and YAML
(``safe_load``). Loading checks, before building anything: that the file is a zip holding exactly
the members its manifest lists, each with the listed sha256 (a damaged file is one line naming it
and the member); that its format version is this reader's and that hashlearn versions
:data:`READS_FROM` up to this one wrote it (else one line: upgrade, or export again). The model is
then built exactly as :func:`load_run` builds a run folder (the same code, the members' bytes
handed over in memory; the two small text members pass through a private temporary folder,
removed at once) and the backbone tensors it rebuilt from its named weights must have the
recorded sha256 (else one line: other weights or library version). The loaded hasher keeps the
fingerprint of the run it came from, so code files of the run and of the model file match.

Runs whose backbone weights came from a file (``--weights PATH``) are refused: a model file cannot
carry those weights yet. Only the standard library is imported at module level (the CLI stays light).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hashlearn.errors import HashlearnError, InputError, NotFoundError

#: the value of ``format`` in every model file's manifest
FORMAT_NAME = "hashlearn-model"
#: the layout this version writes and reads
FORMAT_VERSION = 1
#: the oldest hashlearn (major, minor) whose model files this version reads
READS_FROM = (0, 1)
#: the file name ending ``--out`` must have
SUFFIX = ".hlm"
MANIFEST, CONFIG, RUN_INFO, METRICS, WEIGHTS = (
    "manifest.json", "config.yaml", "run.json", "metrics.json", "weights.safetensors")
#: every member in the order written; all but metrics.json are required
MEMBERS = (MANIFEST, CONFIG, RUN_INFO, METRICS, WEIGHTS)
#: the safetensors metadata key holding a shallow hasher's method and parameters (JSON)
SHALLOW_META_KEY = "hashlearn_state"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_NAMED_WEIGHTS = {"default", "imagenet", "pretrained", "none"}


# -- the command -----------------------------------------------------------------------------------------

def register(sub) -> None:
    x = sub.add_parser(
        "export",
        help="write a trained run as one shareable file (.hlm: safetensors weights, settings, metrics) "
             "and its model card",
        description="Write the run folder RUN (one code length) as one file: the weights as safetensors (no "
                    "pickle), the resolved config, method, bits, backbone and its weights' checksum, protocol, "
                    "metrics and the hashlearn version, each part checksummed. A model card (Markdown) is written "
                    "beside it (OUT with .md). Every --run option and hashlearn.load_run accept the file.",
    )
    x.add_argument("run", metavar="RUN", help="run folder of one code length (e.g. runs/dmsh/32bits)")
    x.add_argument("--out", required=True, metavar="MODEL.hlm",
                   help="the file to write (ending in .hlm, in an existing folder); its card goes to MODEL.md")
    x.add_argument("--force", action="store_true", help="replace OUT and its model card when they exist")
    x.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    command = f"hashlearn export {args.run} --out {args.out}" + (" --force" if args.force else "")
    out, card = export_run(args.run, args.out, force=args.force, command=command)
    print(f"wrote {out} and its model card {card}")
    return 0


# -- writing ---------------------------------------------------------------------------------------------

def card_path(out: str | Path) -> Path:
    """Where the model card of the model file ``out`` goes: beside it, ``.md`` instead of ``.hlm``."""
    return Path(out).with_suffix(".md")


def check_out(out: str | Path, force: bool = False) -> tuple[Path, Path]:
    """``(model file, card)`` for ``--out``, or one line: not ``.hlm``, a folder, its folder missing or
    not writable, or an existing file (either of the two) without ``force``. Nothing is touched."""
    from hashlearn.train.runfolder import probe_writable

    out = Path(out)
    if out.suffix != SUFFIX:
        raise InputError(f"--out {out}: a model file's name must end in {SUFFIX} (e.g. model{SUFFIX})")
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; give a file name such as {out / ('model' + SUFFIX)}")
    folder = out.parent
    if not folder.is_dir():
        raise NotFoundError(f"--out {out}: the folder {folder} does not exist")
    card = card_path(out)
    for path in (out, card):
        if (path.exists() or path.is_symlink()) and not force:
            raise InputError(f"--out {out}: {path} exists; pass --force to replace it")
        if path.is_dir():
            raise InputError(f"--out {out}: {path} is a folder")
    probe_writable(folder, "--out", target=out)
    return out, card


def export_run(run: str | Path, out: str | Path, force: bool = False, command: str | None = None) -> tuple[Path, Path]:
    """Write the run folder ``run`` (one code length) to the model file ``out`` (``.hlm``) and its
    model card beside it (``.md``); return both paths. ``out`` and the card are replaced only with
    ``force``; nothing else is written. ``command``: what the card says made it."""
    from hashlearn._atomic import atomic_target, atomic_write_text
    from hashlearn._digest import file_digest
    from hashlearn.train.model import existing_run_dir, load_run
    from hashlearn.train.runfolder import read_run_config, read_run_info

    out, card = check_out(out, force)
    if Path(run).is_file():
        raise InputError(f"{run}: a file, not a run folder; export takes a run folder such as runs/NAME/32bits")
    run_dir = existing_run_dir(run)
    info, config = read_run_info(run_dir), read_run_config(run_dir)
    uses_backbone = info["kind"] == "deep" or info.get("features") == "backbone"
    weights_name = str(config.weights or "default")
    if uses_backbone and weights_name.lower() not in _NAMED_WEIGHTS:
        raise InputError(f"{run_dir}: its backbone weights come from the file {weights_name}, which a model file "
                         f"cannot carry; export runs on named weights (default, none)")
    hasher = load_run(run_dir)  # the run loads, with every check load_run makes
    members, manifest = _members(run_dir, hasher, config)
    with atomic_target(out) as tmp:
        _write_zip(tmp, members, manifest)
        _check_round_trip(load_model_file(tmp), hasher, tmp)
        size, digest = tmp.stat().st_size, file_digest(tmp)
    command = command or f"hashlearn export {run} --out {out}"
    atomic_write_text(card, model_card(manifest, members, out, command, size=size, sha256=digest))
    return out, card


def _members(run_dir: Path, hasher, config) -> tuple[dict[str, bytes], dict]:
    from hashlearn import __version__
    from hashlearn._digest import file_digest
    from hashlearn.train.model import MODEL_FILE, WEIGHTS_FILE
    from hashlearn.train.runfolder import read_json_mapping

    members = {CONFIG: (run_dir / CONFIG).read_bytes(), RUN_INFO: (run_dir / RUN_INFO).read_bytes()}
    metrics: dict = {}
    if (run_dir / METRICS).is_file():
        metrics = read_json_mapping(run_dir / METRICS)
        metrics.pop("run_dir", None)
        members[METRICS] = (json.dumps(metrics, indent=2) + "\n").encode()
    if hasher.kind == "deep":
        from hashlearn.train.runfolder import load_checkpoint

        state = load_checkpoint(run_dir / WEIGHTS_FILE)["model"]
        members[WEIGHTS] = _deep_weights_bytes(state)
        source = run_dir / WEIGHTS_FILE
    else:
        members[WEIGHTS] = _shallow_weights_bytes(hasher.model)
        state, source = {}, run_dir / MODEL_FILE
    backbone = None
    if hasher.kind == "deep" or hasher.info.get("features") == "backbone":
        backbone = {"name": config.backbone, "weights": str(config.weights or "default"),
                    "weights_sha256": backbone_digest(hasher, set(state))}
    protocol = metrics.get("protocol_description") or {"protocol": config.protocol, "split": config.split}
    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "hashlearn_version": __version__,
        "kind": hasher.kind, "method": hasher.method, "bits": hasher.bits, "backbone": backbone,
        "image_size": hasher.image_size, "channels": hasher.channels,
        "dataset": metrics["dataset"] if "dataset" in metrics else config.dataset, "protocol": protocol,
        "metrics": _headline_metrics(metrics),
        "run_fingerprint": hasher.fingerprint, "source_weights": source.name,
        "source_weights_sha256": file_digest(source),
        "members": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
    }
    return members, manifest


def _deep_weights_bytes(state: dict) -> bytes:
    from safetensors.torch import save

    # clones: safetensors refuses tensors that share memory (tied weights), and wants them contiguous
    return save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, metadata={"format": "pt"})


def _shallow_weights_bytes(model) -> bytes:
    import numpy as np
    from safetensors.numpy import save

    from hashlearn.methods.shallow import STATE_FORMAT

    state = model.get_state()
    meta = json.dumps({"format": STATE_FORMAT, "method": state["method"], "params": state["params"]})
    arrays = {k: np.asarray(v, order="C") for k, v in state["arrays"].items()}  # 0-d arrays stay 0-d
    return save(arrays, metadata={SHALLOW_META_KEY: meta})


def _headline_metrics(metrics: dict) -> dict:
    """The run's figures (``mAP@all``, ``P@r2``, the chance level, …) and how it trained: plain numbers."""
    kept = ("val_mAP", "best_epoch", "epochs_run", "training_seconds", "n_query", "n_db")
    return {k: v for k, v in metrics.items()
            if ("@" in k or k in kept) and isinstance(v, int | float) and not isinstance(v, bool)}


def _write_zip(path: Path, members: dict[str, bytes], manifest: dict) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        items = {MANIFEST: (json.dumps(manifest, indent=2) + "\n").encode(), **members}
        for name in MEMBERS:
            if name in items:
                entry = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                entry.compress_type, entry.create_system, entry.external_attr = zipfile.ZIP_STORED, 3, 0o644 << 16
                zf.writestr(entry, items[name])


def backbone_digest(hasher, saved: set[str]) -> str:
    """sha256 of the backbone tensors a loader rebuilds from the named weights rather than reading them
    from the model file (deep: every model tensor not in ``saved``, e.g. a frozen backbone or the part
    below a cut; nothing when it trained end to end; shallow: the feature backbone). Each tensor's
    name, dtype, shape and bytes, in name order (the scheme of ``Backbone.state_digest_below``)."""
    import torch

    if hasher.kind == "deep":
        state = {k: v for k, v in hasher.model.state_dict().items() if k not in saved}
    else:
        state = hasher.backbone.state_dict() if hasher.backbone is not None else {}
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _check_round_trip(loaded, hasher, path: Path) -> None:
    """The file just written loads as the same model: every tensor (deep) or learned array (shallow)
    equal. A difference is a bug in this module, not bad input."""
    import numpy as np

    if hasher.kind == "deep":
        a, b = hasher.model.state_dict(), loaded.model.state_dict()
        same = a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and bool((a[k] == b[k]).all()) for k in a)
    else:
        a, b = hasher.model.get_state()["arrays"], loaded.model.get_state()["arrays"]
        same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    if not same or loaded.fingerprint != hasher.fingerprint:
        raise RuntimeError(f"{path}: the exported model does not load as the run it came from")


# -- the model card --------------------------------------------------------------------------------------

def model_card(manifest: dict, members: dict[str, bytes], out: Path, command: str, size: int, sha256: str) -> str:
    """The Markdown model card of the model file ``out`` (``size`` bytes, ``sha256``) in the shape of
    ``hashlearn/models/default/MODEL_CARD.md``; every figure comes from the run's files, none is typed."""
    from hashlearn.methods import load_all

    registry = load_all()
    method, bits = manifest["method"], manifest["bits"]
    paper = registry.info(method).get("paper", "") if method in registry.names() else ""
    config = _yaml_mapping(members[CONFIG])
    metrics = json.loads(members[METRICS]) if METRICS in members else {}
    protocol = manifest["protocol"] or {}
    backbone = manifest["backbone"]
    lines = [f"# {out.name}: {method}, {bits} bits", "",
             f"Written by `{command}` (hashlearn {manifest['hashlearn_version']}, model format "
             f"{manifest['format_version']}); the figures below come from the run's `metrics.json`, not typed.", "",
             "## What it is", ""]
    hparams = json.dumps(metrics.get("method_hparams") or config.get("method_args") or {})
    lines.append(f"* **Method:** {method} ({manifest['kind']}), {bits} bits" + (f"; {paper}" if paper else "")
                 + f". Hyper-parameters: `{hparams}`.")
    if backbone:
        if manifest["kind"] == "shallow":
            mode = "its pooled features; nothing in it trained"
        elif config.get("frozen"):
            mode = "frozen"
        elif config.get("finetune_from"):
            mode = f"fine-tuned above `{config['finetune_from']}`"
        else:
            mode = "trained end to end"
        if backbone["weights_sha256"] == hashlib.sha256().hexdigest():
            check = "every backbone tensor is in the file"
        else:
            check = (f"the tensors rebuilt from those weights have sha256 `{backbone['weights_sha256'][:16]}…` "
                     f"(checked on loading)")
        lines.append(f"* **Backbone:** {backbone['name']}, weights `{backbone['weights']}` ({mode}); {check}.")
    else:
        lines.append("* **Input:** the pixels themselves (no backbone).")
    lines.append(f"* **Images:** {manifest['image_size']} px, {manifest['channels']} channel(s).")
    sizes = protocol.get("sizes") or metrics.get("sizes") or {}
    split = ", ".join(f"{v} {k}" for k, v in sizes.items())
    lines.append(f"* **Data:** {manifest['dataset'] or 'unknown'}, protocol `{protocol.get('protocol')}`"
                 + (f" (seed {protocol['seed']})" if protocol.get("seed") is not None else "")
                 + (f": {split}" if split else "") + "; the queries never reach training"
                 + (", the epoch is chosen on the validation part." if manifest["kind"] == "deep" else "."))
    figures = manifest["metrics"]
    if "training_seconds" in figures:
        how = f"{figures['training_seconds']:g} s of training"
        if "best_epoch" in figures:
            how += f", best epoch {figures['best_epoch']} of {figures.get('epochs_run', '?')} by validation mAP"
        lines.append(f"* **Training:** {how}.")
    lines.append(f"* **File:** `{out.name}`, {size / 1024:.0f} KiB, sha256 `{sha256}`; "
                 f"members {', '.join(f'`{n}`' for n in [MANIFEST, *members])}; weights as safetensors, "
                 f"nothing pickled. Fingerprint of the run: `{manifest['run_fingerprint'][:16]}…`.")
    lines += ["", "## Retrieval metrics", ""]
    table = [(k, v) for k, v in figures.items() if "@" in k]
    if table:
        ties = metrics.get("ties") or (config.get("eval") or {}).get("ties")
        lines += [f"Queries against the database of the protocol ({ties} ties, "
                  f"relevance: {metrics.get('relevance', 'same class')}).", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in table]
    else:
        lines.append("The run holds no `metrics.json` (it was not evaluated).")
    lines += ["", "## Use", "", "```bash",
              f"hashlearn encode --run {out.name} --images my_photos/ --out photos.npz",
              f"hashlearn search --run {out.name} --codes photos.npz --image query.jpg -k 10", "```", "",
              f"From Python: `hashlearn.load_run(\"{out.name}\").encode(images)` (uint8 images of "
              f"{manifest['image_size']} px). Codes are comparable only with codes of this model (the same "
              f"fingerprint).", "",
              "## Reproduce", "",
              f"The resolved settings are inside: `unzip -p {out.name} config.yaml > config.yaml`, then "
              f"`hashlearn train --config config.yaml --out runs/again` (the same dataset prepared as `hashlearn "
              f"data prepare` does).", ""]
    return "\n".join(lines)


def _yaml_mapping(data: bytes) -> dict:
    import yaml

    try:
        value = yaml.safe_load(data.decode("utf-8"))
    except (ValueError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


# -- reading ---------------------------------------------------------------------------------------------

@dataclass
class ModelFile:
    """A model file's checked content: its path, manifest and members (name → bytes)."""

    path: Path
    manifest: dict
    members: dict[str, bytes]


def _version_tuple(text) -> tuple[int, int] | None:
    parts = str(text).split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return None


def _check_versions(path: Path, manifest: dict) -> None:
    from hashlearn import __version__

    if manifest.get("format") != FORMAT_NAME:
        raise InputError(f"{path}: not a hashlearn model file (its manifest's format is {manifest.get('format')!r})")
    fmt, written_by = manifest.get("format_version"), manifest.get("hashlearn_version")
    ours = _version_tuple(__version__)
    theirs = _version_tuple(written_by)
    if fmt != FORMAT_VERSION:
        newer = isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT_VERSION
        advice = "upgrade hashlearn to read it" if newer else "export the run again with this hashlearn"
        raise InputError(f"{path}: model file format {fmt!r} (written by hashlearn {written_by}); this hashlearn "
                         f"{__version__} reads format {FORMAT_VERSION}: {advice}")
    if theirs is None or not READS_FROM <= theirs <= ours:
        span = f"{READS_FROM[0]}.{READS_FROM[1]} to {ours[0]}.{ours[1]}"
        advice = ("upgrade hashlearn to read it" if theirs is not None and theirs > ours
                  else "export the run again with this hashlearn")
        raise InputError(f"{path}: written by hashlearn {written_by}; this hashlearn {__version__} reads model "
                         f"files of hashlearn {span}: {advice}")


def read_model_file(path: str | Path, only: tuple[str, ...] | None = None) -> ModelFile:
    """The checked content of the model file ``path``: a zip of stored members, exactly those its
    manifest lists, each with the listed sha256, from a compatible format and hashlearn version.
    ``only``: read and check just these members (the manifest always). Any problem is one line
    naming the file (and the member)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"model file not found: {path}")
    what = f"{path}: not a hashlearn model file ({SUFFIX} from hashlearn export) or damaged"
    try:
        with zipfile.ZipFile(path) as zf:
            entries = zf.infolist()
            names = [e.filename for e in entries]
            if MANIFEST not in names:
                raise InputError(f"{what} (no {MANIFEST})")
            if len(set(names)) != len(names):
                raise InputError(f"{what} (a member appears twice)")
            odd = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
            if odd:
                raise InputError(f"{what} ({odd[0]} is compressed; model files store their members)")
            manifest = _json_object(zf.read(MANIFEST), f"{path}: {MANIFEST}")
            _check_versions(path, manifest)
            listed = manifest.get("members")
            if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
                raise InputError(f"{path}: {MANIFEST}: members must map each member to its sha256")
            unknown = sorted(set(listed) - set(MEMBERS) | set(names) - set(MEMBERS))
            missing = sorted({CONFIG, RUN_INFO, WEIGHTS} - set(listed))
            if unknown or missing or set(listed) != set(names) - {MANIFEST}:
                problem = (f"unexpected member {unknown[0]!r}" if unknown else f"no {missing[0]}" if missing
                           else "its members differ from those its manifest lists")
                raise InputError(f"{what} ({problem})")
            members = {}
            for name in listed:
                if only is not None and name not in only:
                    continue
                data = zf.read(name)
                if hashlib.sha256(data).hexdigest() != listed[name]:
                    raise InputError(f"{path}: damaged: {name} does not match its sha256 in the manifest")
                members[name] = data
    except zipfile.BadZipFile as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "not a zip archive"
        if "CRC" in reason:
            raise InputError(f"{path}: damaged ({reason})") from None
        raise InputError(f"{what} ({reason})") from None
    except (OSError, EOFError, ValueError, OverflowError, NotImplementedError) as exc:
        if isinstance(exc, HashlearnError):
            raise
        raise InputError(f"{what} ({type(exc).__name__}: {str(exc)[:120]})") from None
    return ModelFile(path, manifest, members)


def _json_object(data: bytes, where: str) -> dict:
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{where}: not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


@contextmanager
def _unpacked(model: ModelFile) -> Iterator[Path]:
    """A private temporary folder holding the model's text members (what ``read_run_info`` and
    ``read_run_config`` read), removed on exit; errors that name it name ``model.path`` instead."""
    with tempfile.TemporaryDirectory(prefix="hashlearn-model-") as tmp:
        folder = Path(tmp)
        for name in (CONFIG, RUN_INFO):
            if name in model.members:
                (folder / name).write_bytes(model.members[name])
        try:
            yield folder
        except HashlearnError as exc:
            message = str(exc).replace(f"{folder}{os.sep}", f"{model.path}: ").replace(str(folder), str(model.path))
            raise type(exc)(message) from None


def model_file_config(path: str | Path):
    """The :class:`~hashlearn.train.config.RunConfig` inside the model file ``path`` (checked as
    :func:`read_model_file` does, reading only what it needs)."""
    from hashlearn.train.runfolder import read_run_config

    model = read_model_file(path, only=(CONFIG,))
    with _unpacked(model) as folder:
        return read_run_config(folder)


def model_file_metrics(path: str | Path) -> dict:
    """The run's ``metrics.json`` inside the model file ``path`` (``{}`` when it holds none)."""
    model = read_model_file(path, only=(METRICS,))
    return _json_object(model.members[METRICS], f"{path}: {METRICS}") if METRICS in model.members else {}


def load_model_file(path: str | Path):
    """The trained hasher in the model file ``path`` (what ``hashlearn export`` wrote), checked and
    built in memory as the module docstring says; ``run_dir`` is ``path``, ``fingerprint`` the
    fingerprint of the run it was exported from."""
    from hashlearn.train.model import (
        MODEL_FILE,
        WEIGHTS_FILE,
        _load_deep,
        _load_shallow,
        run_fingerprint,
    )
    from hashlearn.train.runfolder import read_run_config, read_run_info

    model = read_model_file(path)
    path, manifest = model.path, model.manifest
    with _unpacked(model) as folder:
        info, config = read_run_info(folder), read_run_config(folder)
        expected = (manifest.get("kind"), manifest.get("method"), manifest.get("bits"))
        if expected != (info["kind"], config.method, config.run_bits):
            raise InputError(f"{path}: {MANIFEST} says {expected[0]} {expected[1]} at {expected[2]} bits, but its "
                             f"run.json and config.yaml say {info['kind']} {config.method} at {config.run_bits} bits")
        where = f"{path}: {WEIGHTS}"
        if info["kind"] == "deep":
            state = _read_deep_weights(model.members[WEIGHTS], where)
            hasher = _load_deep(folder, config, info, state=state, weights=where)
        else:
            hasher = _load_shallow(folder, config, info, model=_read_shallow_weights(model.members[WEIGHTS], where),
                                   where=where)
            state = {}
        source = manifest.get("source_weights_sha256")
        if not isinstance(source, str):
            raise InputError(f"{path}: {MANIFEST}: no source_weights_sha256")
        hasher.fingerprint = run_fingerprint(folder, MODEL_FILE if info["kind"] == "shallow" else WEIGHTS_FILE,
                                             weights_sha256=source)
    backbone = manifest.get("backbone")
    if info["kind"] == "deep" or info.get("features") == "backbone":
        if not isinstance(backbone, dict):
            raise InputError(f"{path}: {MANIFEST}: no backbone entry (name, weights, weights_sha256)")
        if backbone_digest(hasher, set(state)) != backbone.get("weights_sha256"):
            raise InputError(f"{path}: the backbone {config.backbone} built here from weights {config.weights!r} is "
                             f"not the one the model was trained with (sha256 differs: other weights or library "
                             f"version)")
    hasher.run_dir = path
    return hasher


def _read_deep_weights(data: bytes, where: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError) as exc:
        raise InputError(f"{where}: not readable safetensors ({str(exc)[:120]})") from None


def _read_shallow_weights(data: bytes, where: str):
    """The fitted shallow hasher in a safetensors member: arrays + its method and parameters in the
    metadata, checked as ``methods.shallow.load_hasher`` checks ``model.npz``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    from hashlearn.methods.shallow import STATE_FORMAT
    from hashlearn.train.model import method_kind

    try:
        arrays = load(data)
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_size].decode("utf-8"))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise InputError(f"{where}: not readable safetensors ({str(exc)[:120]})") from None
    raw = (header.get("__metadata__") or {}).get(SHALLOW_META_KEY) if isinstance(header, dict) else None
    meta = _json_object(raw.encode(), where) if isinstance(raw, str) else None
    if meta is None or meta.get("format") != STATE_FORMAT:
        raise InputError(f"{where}: no shallow hasher state ({SHALLOW_META_KEY} of format {STATE_FORMAT!r})")
    cls, kind = method_kind(str(meta.get("method")))
    if kind != "shallow":
        raise InputError(f"{where}: {meta.get('method')!r} is not a shallow hashing method")
    return cls.from_state({"params": meta.get("params"), "arrays": arrays}, where=where)


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "ModelFile", "card_path", "export_run", "load_model_file",
           "model_card", "model_file_config", "model_file_metrics", "read_model_file"]
