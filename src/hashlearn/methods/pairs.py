"""Training pairs for label-free pairwise methods (BCDH, spec §1), behind one small interface.

A :class:`PairSource` is prepared once (``prepare(state)``, in the method's ``on_train_start``)
and then, for each batch, gives the *partners* of the batch's images and the pairs:

    partners(index, step) -> Partners(inputs, anchor, partner, s)

``inputs`` are the model inputs of the partner items (the training feed's kind, run through
``TrainState.forward`` with gradients: the Siamese branch shares the weights), or None when the
pairs are among the batch itself; ``(anchor[t], partner[t], s[t])`` is a pair: an index into the
batch, an index into ``[batch codes; partner codes]``, and ``s ∈ {0, 1}``.

Sources:

* :class:`SfMPairs` — the *retrieval-SfM-120k* metadata layout (Radenović et al.): a cluster id
  (3D model) per image and lists of query / positive image indices (``qidxs``, ``pidxs``). Read
  from JSON or NPZ (:func:`read_sfm_metadata`); the original ``.pkl`` is refused (hashlearn never
  unpickles a file) with one line saying how to convert it. Each batch image that is a query gets
  one of its positives (seeded by the step) as partner (s = 1); every other batch image and
  partner of *another* cluster is a negative (s = 0); same-cluster non-listed pairs are left out.
  The metadata's rows are the training images, in the trainer's order.
* :class:`ViewPairs` — synthetic viewpoint change, the stand-in for 3D models when there are no
  photo collections with SfM reconstructions: each training image gets ``views`` random views
  (:func:`synthetic_view`: a perspective warp, a crop with rescale, a rotation, brightness /
  contrast / colour changes), made once with a seeded generator; their backbone inputs are cached
  through the existing caches (pooled features: :func:`hashlearn.nn.extract_features`; maps at
  the cut: :func:`hashlearn.nn.extract_activations`), keyed by the views' content. A view of
  image i is its positive; the views of the other batch images are negatives.
* :class:`LabelPairs` — pairs among the batch from the class labels (``s_ij = 1[y_i = y_j]``), for
  sanity checks only: a method using it is supervised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hashlearn.errors import InputError
from hashlearn.methods.base import similarity


@dataclass
class Partners:
    inputs: Any
    anchor: Tensor
    partner: Tensor
    s: Tensor


class PairSource:
    #: True: the pairs come from the labels (the method must then be given labels)
    supervised = False

    def prepare(self, state: Any) -> None:
        pass

    def partners(self, index: Tensor, labels: Tensor | None, step: int) -> Partners:
        raise NotImplementedError


def all_pairs(n: int, s: Tensor) -> Partners:
    """Every ``i ≠ j`` of a batch of ``n`` with the pair labels ``s`` ``(n, n)``."""
    a, b = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    off = a != b
    return Partners(None, a[off], b[off], s[off].float())


class LabelPairs(PairSource):
    supervised = True

    def partners(self, index, labels, step):
        if labels is None:
            raise InputError("pairs 'labels' needs the training labels (a sanity check, not label-free)")
        return all_pairs(len(index), similarity(labels, labels).cpu())


# --- (a) retrieval-SfM-120k metadata --------------------------------------------------------------------------
def read_sfm_metadata(path: str | Path) -> dict[str, np.ndarray]:
    """``{"cluster": (N,), "qidxs": (Q,), "pidxs": (Q,)}`` int64 from a JSON or NPZ file in the
    retrieval-SfM-120k layout (the ``train`` part of ``retrieval-SfM-120k.pkl``: keys ``cluster``,
    ``qidxs``, ``pidxs``; a JSON file may hold them at the top or under ``"train"``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        raise InputError(f"{path}: a pickle; hashlearn never unpickles files — convert it once to JSON or NPZ with "
                         f"the keys cluster, qidxs, pidxs (e.g. np.savez('sfm.npz', **db['train']) in your own "
                         f"trusted session) and pass that file")
    if not path.is_file():
        raise InputError(f"{path}: no such SfM metadata file")
    try:
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "train" in data and isinstance(data["train"], dict):
                data = data["train"]
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        else:
            raise InputError(f"{path}: SfM metadata must be a .json or .npz file")
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not readable SfM metadata ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: SfM metadata must be an object with cluster, qidxs, pidxs")
    out = {}
    for key in ("cluster", "qidxs", "pidxs"):
        if key not in data:
            raise InputError(f"{path}: SfM metadata has no {key!r} (needs cluster, qidxs, pidxs)")
        try:
            arr = np.asarray(data[key], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise InputError(f"{path}: SfM metadata {key!r} must be a list of integers") from None
        out[key] = arr
    n = len(out["cluster"])
    if len(out["qidxs"]) != len(out["pidxs"]):
        raise InputError(f"{path}: qidxs ({len(out['qidxs'])}) and pidxs ({len(out['pidxs'])}) differ in length")
    for key in ("qidxs", "pidxs"):
        if len(out[key]) and (out[key].min() < 0 or out[key].max() >= n):
            raise InputError(f"{path}: {key} index out of range for {n} images")
    return out


class SfMPairs(PairSource):
    def __init__(self, metadata: dict[str, np.ndarray] | str | Path, seed: int = 0):
        self.meta = read_sfm_metadata(metadata) if isinstance(metadata, (str, Path)) else metadata
        self.cluster = torch.as_tensor(self.meta["cluster"])
        self.seed = int(seed)
        self.positives: dict[int, list[int]] = {}
        for q, p in zip(self.meta["qidxs"].tolist(), self.meta["pidxs"].tolist(), strict=True):
            self.positives.setdefault(q, []).append(p)
        self._inputs = None

    def prepare(self, state: Any) -> None:
        trainer = getattr(state, "trainer", None)
        if trainer is None:
            return
        n = len(trainer.train)
        if n != len(self.cluster):
            raise InputError(f"SfM metadata describes {len(self.cluster)} images, the training split has {n}")
        self._inputs = lambda idx: trainer.train.inputs(np.asarray(idx), False, None)

    def queries(self) -> Tensor:
        return torch.as_tensor(sorted(self.positives), dtype=torch.long)

    def pick(self, index: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """(batch rows that are queries, one seeded positive of each)."""
        rng = np.random.default_rng(self.seed * 1_000_003 + step)
        rows, partners = [], []
        for r, i in enumerate(index.tolist()):
            pos = self.positives.get(i)
            if pos:
                rows.append(r)
                partners.append(pos[int(rng.integers(len(pos)))])
        return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(partners, dtype=torch.long)

    def partners(self, index, labels, step):
        index = index.cpu().long()
        n = len(index)
        rows, partner_ids = self.pick(index, step)
        items = torch.cat([index, partner_ids])  # the codes: batch, then partners
        cl = self.cluster[items]
        anchors, others, s = [], [], []
        for t, r in enumerate(rows.tolist()):
            anchors.append(r)
            others.append(n + t)
            s.append(1.0)
            neg = torch.nonzero(cl != cl[r]).reshape(-1)
            anchors += [r] * len(neg)
            others += neg.tolist()
            s += [0.0] * len(neg)
        inputs = self._inputs(partner_ids.numpy()) if self._inputs is not None and len(partner_ids) else None
        if inputs is None and len(partner_ids):
            raise InputError("SfM pairs need the trainer (the partners' inputs); use them through hashlearn train")
        return Partners(inputs, torch.as_tensor(anchors, dtype=torch.long), torch.as_tensor(others, dtype=torch.long),
                        torch.as_tensor(s))


# --- (b) synthetic viewpoint change ---------------------------------------------------------------------------
def _perspective_coeffs(src: np.ndarray, dst: np.ndarray) -> list[float]:
    """PIL's 8 perspective coefficients mapping output corners ``dst`` to input corners ``src``."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.asarray(rows, dtype=np.float64), src.reshape(-1).astype(np.float64)).tolist()


def synthetic_view(image: np.ndarray, rng: np.random.Generator, warp: float = 0.15, crop: float = 0.3,
                   rotation: float = 15.0, photometric: float = 0.3) -> np.ndarray:
    """One random view of a uint8 ``(H, W, 3)`` image: perspective warp (corners moved by up to
    ``warp`` of the side), crop of up to ``crop`` of the area, rescaled back, rotation by up to
    ``±rotation`` degrees, brightness / contrast / per-channel gain by up to ``±photometric``."""
    from PIL import Image, ImageEnhance

    h, w = image.shape[:2]
    img = Image.fromarray(image)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    moved = corners + rng.uniform(-warp, warp, size=(4, 2)) * np.array([w, h])
    img = img.transform((w, h), Image.PERSPECTIVE, _perspective_coeffs(moved, corners), Image.BILINEAR)
    keep = np.sqrt(1 - rng.uniform(0, crop))
    cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
    img = img.rotate(float(rng.uniform(-rotation, rotation)), resample=Image.BILINEAR)
    img = ImageEnhance.Brightness(img).enhance(1 + rng.uniform(-photometric, photometric))
    img = ImageEnhance.Contrast(img).enhance(1 + rng.uniform(-photometric, photometric))
    out = np.asarray(img, dtype=np.float32) * (1 + rng.uniform(-photometric, photometric, size=3) / 2)
    return np.clip(out, 0, 255).astype(np.uint8)


def synthetic_views(images, views: int, seed: int = 0, **kwargs) -> np.ndarray:
    """``(N·views, H, W, C)`` uint8 (the images' shape): rows ``i·views … i·views + views − 1`` are
    image i's views (grey images are warped as RGB and averaged back)."""
    rng = np.random.default_rng(seed)
    n = len(images)
    images = np.asarray(images[np.arange(n)])
    out = np.empty((n * views, *images.shape[1:]), dtype=np.uint8)
    for i in range(n):
        img = images[i]
        grey = img.ndim == 2 or img.shape[-1] == 1
        rgb = np.repeat(img.reshape(*img.shape[:2], 1), 3, axis=-1) if grey else img
        for v in range(views):
            view = synthetic_view(rgb, rng, **kwargs)
            out[i * views + v] = view.mean(-1).round().astype(np.uint8).reshape(img.shape) if grey else view
    return out


class ViewPairs(PairSource):
    def __init__(self, views: int = 4, seed: int = 0):
        self.views, self.seed = int(views), int(seed)
        self._feed = None

    def prepare(self, state: Any) -> None:
        """Make the views of the training images and the feed of their cached backbone inputs."""
        trainer = getattr(state, "trainer", None)
        images = getattr(trainer, "train_images", None)
        if trainer is None or images is None:
            return
        from hashlearn.train.trainer import FeatureFeed, ImageFeed, MapFeed

        cfg, model, feed = trainer.config, trainer.model, trainer.train
        views = synthetic_views(images, self.views, self.seed)
        labels = np.zeros(len(views), dtype=np.int64)
        key = f"{getattr(trainer, 'train_images_name', 'train')}-views{self.views}-seed{self.seed}"
        size = int(cfg.image_size or model.backbone.input_size)
        if feed.at is not None:
            from hashlearn.nn import extract_activations

            cache = extract_activations(model.backbone, views, feed.at, size, flip=False, dtype=cfg.activation_dtype,
                                        batch_size=cfg.train.feature_batch_size, key=key, progress=trainer.progress)
            self._feed = MapFeed({feed.at: cache}, np.arange(len(views)), labels, False, at=feed.at)
        elif isinstance(feed, FeatureFeed):
            from hashlearn.nn import extract_features

            feats = extract_features(views, backbone=cfg.backbone, image_size=size, taps=list(feed.features),
                                     weights=cfg.weights or "default", seed=cfg.seed, key=key,
                                     batch_size=cfg.train.feature_batch_size, progress=trainer.progress)
            self._feed = FeatureFeed({t: np.asarray(feats[t], dtype=np.float32) for t in feed.features}, labels)
        elif isinstance(feed, ImageFeed):
            self._feed = ImageFeed(views, labels, feed.backbone, feed.size, feed.hflip, feed.padding)
        else:
            raise InputError("pairs 'views' works end to end, with --frozen on pooled features, or with "
                             "--finetune-from; not on cached maps of a frozen backbone")

    def partners(self, index, labels, step):
        index = index.cpu().long()
        n = len(index)
        if self._feed is None:  # outside the trainer: no views; only the batch's distinct images, as negatives
            return all_pairs(n, torch.zeros(n, n))
        rng = np.random.default_rng(self.seed * 1_000_003 + step)
        rows = index.numpy() * self.views + rng.integers(0, self.views, size=n)
        a, b = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        s = (a == b).float()
        return Partners(self._feed.inputs(rows, True, None), a.reshape(-1), n + b.reshape(-1), s.reshape(-1))
