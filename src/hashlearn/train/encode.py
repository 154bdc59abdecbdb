"""Encode images with a trained run.

:func:`load_run` is the one way a trained hasher is loaded from a run folder (like timm's
``create_model``): it checks ``run.json`` and ``config.yaml``, rebuilds the model and loads
its weights (``best.pt`` with ``torch.load(weights_only=True)``, or the shallow model's
``model.npz`` with ``allow_pickle=False``) and returns a :class:`RunEncoder`. Nothing in a
run folder is ever unpickled; a ``model.pkl`` from an older hashlearn is refused.
:func:`encode_images` (files), :func:`encode_files` (files, optionally skipping bad ones)
and :func:`encode_dataset` go through it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashlearn.codes import sign
from hashlearn.errors import HashlearnError, InputError, NotFoundError
from hashlearn.train.runfolder import (
    LEGACY_MODEL_FILE,
    MODEL_FILE,
    load_checkpoint,
    read_run_config,
    read_run_info,
)


class RunEncoder:
    """A trained run loaded for encoding (made by :func:`load_run`):
    ``encoder.encode(uint8 images NHWC) → ±1 int8 codes``.

    Attributes: ``run_dir``, ``config`` (the checked ``config.yaml``), ``info`` (``run.json``),
    ``kind`` (``"deep"``/``"shallow"``), ``bits``, ``image_size``, ``channels``, ``model``
    (a :class:`~hashlearn.train.trainer.HashModel` or a shallow hasher) and, for a shallow
    model on backbone features, ``backbone``."""

    def __init__(self, run_dir: Path, config: dict, info: dict, model, backbone=None):
        self.run_dir = Path(run_dir)
        self.config = config
        self.info = info
        self.kind = info["kind"]
        self.bits = int(config["bits"])
        self.image_size = int(info["image_size"])
        self.channels = int(info.get("channels", 3))
        self.model = model
        self.backbone = backbone

    def __repr__(self) -> str:
        return (f"RunEncoder({str(self.run_dir)!r}, method={self.config['method']!r}, kind={self.kind!r}, "
                f"bits={self.bits}, image_size={self.image_size}, channels={self.channels})")

    def encode(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] != self.channels:
            raise InputError(f"images of shape {images.shape[1:]} do not fit the run {self.run_dir}, trained on "
                             f"{self.channels}-channel images")
        if self.kind == "shallow":
            if self.info["features"] == "pixels":
                from hashlearn.train.run import pixels

                if images.shape[1:] != (self.image_size, self.image_size, self.channels):
                    raise InputError(f"images of shape {images.shape[1:]} do not match the run's "
                                     f"{(self.image_size, self.image_size, self.channels)}")
                x = pixels(images)
            else:
                from hashlearn.train.trainer import pooled_features

                x = pooled_features(self.backbone, images, ["pool"], self.image_size, batch_size)["pool"]
            return np.asarray(self.model.encode(x)).astype(np.int8)
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = self.model.backbone.preprocess(images[start:start + batch_size], self.image_size)
                u = self.model(x).codes
                out.append(sign(u.numpy()))
        return np.concatenate(out) if out else np.zeros((0, self.bits), np.int8)


def load_run(path: str | Path) -> RunEncoder:
    """The trained hasher of the run folder ``path`` (one code length, e.g. ``runs/x/32bits``).

    Every file is read as data (YAML ``safe_load``, JSON, ``weights_only`` checkpoints,
    ``allow_pickle=False`` arrays); a missing, damaged or foreign file is a one-line
    :class:`~hashlearn.errors.HashlearnError` naming it."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise NotFoundError(f"run folder not found: {run_dir}")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a folder (expected a run folder such as runs/NAME/32bits)")
    info = read_run_info(run_dir)
    config = read_run_config(run_dir)
    if info["kind"] == "shallow":
        model, backbone = _load_shallow(run_dir, config, info)
    else:
        model, backbone = _load_deep(run_dir, config, info), None
    return RunEncoder(run_dir, config, info, model, backbone)


def _load_shallow(run_dir: Path, config: dict, info: dict):
    from hashlearn.methods import load_all
    from hashlearn.methods.shallow import load_hasher

    path = run_dir / MODEL_FILE
    if not path.exists() and (run_dir / LEGACY_MODEL_FILE).exists():
        raise InputError(f"{run_dir / LEGACY_MODEL_FILE} is a pickle from an older hashlearn; retrain "
                         f"(hashlearn train) — hashlearn never unpickles run files")
    registry = load_all()
    model = load_hasher(path)
    name = str(config["method"]).lower()
    if name not in registry or registry.get(name) is not type(model) or model.bits != config["bits"]:
        raise InputError(f"{path}: holds a {type(model).__name__} of {model.bits} bits, but {run_dir / 'config.yaml'} "
                         f"says {name} at {config['bits']} bits")
    backbone = None
    if info["features"] == "pixels":
        dims = info["image_size"] ** 2 * info["channels"]
        if model.n_features_in_ != dims:
            raise InputError(f"{path}: fitted on {model.n_features_in_} features, but {run_dir / 'run.json'} "
                             f"describes {dims} pixels")
    else:
        from hashlearn.train.run import create_backbone_checked

        backbone = create_backbone_checked(config, {}, where=f"{run_dir / 'config.yaml'}: backbone_args")
        if backbone.feature_dim != model.n_features_in_:
            raise InputError(f"{path}: fitted on {model.n_features_in_} features, but backbone "
                             f"{config['backbone']!r} gives {backbone.feature_dim}")
    return model, backbone


def _load_deep(run_dir: Path, config: dict, info: dict):
    from hashlearn.methods import get_method, load_all
    from hashlearn.train.run import build_method, create_backbone_checked
    from hashlearn.train.trainer import HashModel, build_head

    where = run_dir / "config.yaml"
    registry = load_all()
    name = config["method"]
    cls = get_method(name)
    if registry.info(name).get("kind", "deep") != "deep":
        raise InputError(f"{run_dir / 'run.json'} says a deep run, but {where} names the shallow method {name!r}")
    weights = run_dir / "best.pt"
    if not weights.exists():
        raise NotFoundError(f"{weights} not found: the run has not finished an epoch")
    state = load_checkpoint(weights)["model"]  # before building anything: a damaged file fails fast
    method = build_method(cls, config["bits"], config.get("method_args"), where=f"{where}: method_args")
    backbone = create_backbone_checked(config, info.get("backbone_args") or {},
                                       where=f"{run_dir / 'run.json'}: backbone_args")
    taps = info["taps"]
    backbone.set_taps(taps)
    frozen = bool(config.get("frozen"))
    head = build_head(method, {t: backbone.tap_channels[t] for t in taps}, pooled=frozen,
                      where=f"{where}: method_args")
    model = HashModel(backbone, head, taps, frozen=frozen)
    model.load_trainable_state(state, where=str(weights))
    model.eval()
    return model


def _read_batch(paths, size: int, channels: int, skip_bad: bool, skipped: list) -> tuple[list, list]:
    from hashlearn.data import read_image

    mode = "L" if channels == 1 else "RGB"
    kept, images = [], []
    for p in paths:
        try:
            im = read_image(p, size=size, mode=mode)
        except HashlearnError as exc:
            if not skip_bad:
                raise
            skipped.append((str(p), str(exc)))
            continue
        kept.append(p)
        images.append(im if im.ndim == 3 else im[..., None])
    return kept, images


def encode_files(run: str | Path | RunEncoder, paths, skip_bad: bool = False, batch_size: int = 256):
    """``(codes, kept, skipped)``: ±1 int8 codes of the image files ``paths`` that could be read,
    those paths, and ``(path, reason)`` for each unreadable file (only with ``skip_bad``;
    otherwise the first unreadable file is an error naming it)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise InputError("no images to encode")
    enc = run if isinstance(run, RunEncoder) else load_run(run)
    kept_all, skipped, parts = [], [], []
    for start in range(0, len(paths), batch_size):
        kept, images = _read_batch(paths[start:start + batch_size], enc.image_size, enc.channels, skip_bad, skipped)
        if images:
            parts.append(enc.encode(np.stack(images)))
            kept_all += kept
    codes = np.concatenate(parts) if parts else np.zeros((0, enc.bits), np.int8)
    return codes, kept_all, skipped


def encode_images(run_dir: str | Path | RunEncoder, paths) -> tuple[np.ndarray, int]:
    """Packed codes ``(n, ceil(bits/8))`` uint8 of the image files ``paths`` and the bit count."""
    from hashlearn.codes import pack_bits

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise InputError("no images to encode")
    for p in paths:
        if not Path(p).is_file():
            raise NotFoundError(f"image not found: {p}")
    enc = run_dir if isinstance(run_dir, RunEncoder) else load_run(run_dir)
    codes, _, _ = encode_files(enc, paths)
    return pack_bits(codes), enc.bits


def encode_dataset(run_dir: str | Path | RunEncoder, dataset, batch_size: int = 1024, progress: bool = False):
    """``(packed, bits, ids)`` for every image of ``dataset``."""
    from hashlearn.codes import pack_bits

    enc = run_dir if isinstance(run_dir, RunEncoder) else load_run(run_dir)
    parts = []
    rng = range(0, len(dataset.images), batch_size)
    if progress:
        from tqdm import tqdm

        rng = tqdm(rng, desc="encode", unit="batch", leave=False)
    for start in rng:
        parts.append(enc.encode(np.asarray(dataset.images[start:start + batch_size])))
    codes = np.concatenate(parts) if parts else np.zeros((0, enc.bits), np.int8)
    return pack_bits(codes), enc.bits, np.asarray(dataset.ids)
