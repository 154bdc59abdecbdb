"""Encode images with a trained run: :func:`encode_images` (files) and :func:`encode_dataset`."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from hashlearn.codes import sign
from hashlearn.errors import InputError, NotFoundError


class RunEncoder:
    """A trained run loaded for encoding: ``encoder.encode(uint8 images NHWC) → ±1 int8 codes``."""

    def __init__(self, run_dir: str | Path):
        from hashlearn.train.config import read_config

        self.run_dir = Path(run_dir)
        if not (self.run_dir / "run.json").exists():
            hint = ""
            subs = sorted(p.name for p in self.run_dir.glob("*bits")) if self.run_dir.is_dir() else []
            if subs:
                hint = f" (pick one code length: {', '.join(str(self.run_dir / s) for s in subs)})"
            raise NotFoundError(f"{self.run_dir}: not a hashlearn run folder (no run.json){hint}")
        self.config = read_config(self.run_dir / "config.yaml")
        self.info = json.loads((self.run_dir / "run.json").read_text())
        self.bits = int(self.config["bits"])
        self.image_size = int(self.info["image_size"])
        self.channels = int(self.info.get("channels", 3))
        self.kind = self.info["kind"]
        if self.kind == "shallow":
            with open(self.run_dir / "model.pkl", "rb") as f:
                self.model = pickle.load(f)
            if self.info["features"] == "backbone":
                from hashlearn.nn import create_backbone

                self.backbone = create_backbone(self.config["backbone"], weights=self.config.get("weights", "default"),
                                                seed=int(self.config.get("seed", 0)))
        else:
            self._load_deep()

    def _load_deep(self) -> None:
        import torch

        from hashlearn.methods import get_method
        from hashlearn.nn import create_backbone
        from hashlearn.train.trainer import HashModel

        cfg = self.config
        method = get_method(cfg["method"])(bits=self.bits, **(cfg.get("method_args") or {}))
        backbone = create_backbone(cfg["backbone"], weights=cfg.get("weights", "default"), taps=None,
                                   seed=int(cfg.get("seed", 0)), **(self.info.get("backbone_args") or {}))
        taps = self.info["taps"]
        backbone._set_taps(taps)
        head = method.build_head({t: backbone.tap_channels[t] for t in taps}, pooled=bool(cfg.get("frozen")))
        self.model = HashModel(backbone, head, taps, frozen=bool(cfg.get("frozen")))
        weights = self.run_dir / "best.pt"
        if not weights.exists():
            raise NotFoundError(f"{weights} not found: the run has not finished an epoch")
        self.model.load_trainable_state(torch.load(weights, map_location="cpu", weights_only=False)["model"])
        self.model.eval()

    def encode(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
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


def _read(paths, size: int, channels: int) -> np.ndarray:
    from hashlearn.data import read_image

    mode = "L" if channels == 1 else "RGB"
    imgs = [read_image(p, size=size, mode=mode) for p in paths]
    return np.stack([im if im.ndim == 3 else im[..., None] for im in imgs])


def encode_images(run_dir: str | Path, paths) -> tuple[np.ndarray, int]:
    """Packed codes ``(n, ceil(bits/8))`` uint8 of the image files ``paths`` and the bit count."""
    from hashlearn.codes import pack_bits

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise InputError("no images to encode")
    for p in paths:
        if not Path(p).is_file():
            raise NotFoundError(f"image not found: {p}")
    enc = RunEncoder(run_dir)
    return pack_bits(enc.encode(_read(paths, enc.image_size, enc.channels))), enc.bits


def encode_dataset(run_dir: str | Path, dataset, batch_size: int = 1024, progress: bool = False):
    """``(packed, bits, ids)`` for every image of ``dataset``."""
    from hashlearn.codes import pack_bits

    enc = RunEncoder(run_dir)
    parts = []
    rng = range(0, len(dataset.images), batch_size)
    if progress:
        from tqdm import tqdm

        rng = tqdm(rng, desc="encode", unit="batch", leave=False)
    for start in rng:
        parts.append(enc.encode(np.asarray(dataset.images[start:start + batch_size])))
    codes = np.concatenate(parts) if parts else np.zeros((0, enc.bits), np.int8)
    return pack_bits(codes), enc.bits, np.asarray(dataset.ids)
