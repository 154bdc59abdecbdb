"""A hasher: the model assembled ONCE (backbone → taps → head, and the cut), one protocol for deep
and shallow methods (``fit`` / ``encode``), and :func:`load_run`, the one way a trained hasher
is loaded (like timm's ``create_model``).

* :func:`new_hasher` builds an untrained hasher from a :class:`~hashlearn.train.config.RunConfig`;
  ``hasher.fit(job)`` trains it into a run folder (:class:`FitJob`).
* :func:`load_run` builds the same hasher from a run folder and loads its weights (``best.pt``
  with ``torch.load(weights_only=True)``, or the shallow ``model.npz`` with
  ``allow_pickle=False``); nothing in a run folder is ever unpickled.
* ``hasher.encode(uint8 images NHWC)`` → packed codes ``(n, ceil(bits/8))`` uint8 (the codes
  rule of :mod:`hashlearn.codes`); ``hasher.bits``, ``hasher.method`` (the method's name),
  ``hasher.config`` (a ``RunConfig``), ``hasher.info`` (``run.json``) and
  ``hasher.fingerprint`` (sha256 of the run's settings and weights, :func:`run_fingerprint`).

A fine-tuned run (``finetune_from: T``) encodes new images with the whole backbone and its saved
upper weights: in eval mode that equals ``forward_from(T, forward_to(T, x))``, what training saw.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn.errors import HashlearnError, InputError, NotFoundError
from hashlearn.train.config import RunConfig, read_config, save_config
from hashlearn.train.runfolder import (
    LEGACY_MODEL_FILE,
    MODEL_FILE,
    RESUME_FREE,
    load_checkpoint,
    read_run_config,
    read_run_info,
    short_reason,
    write_json_atomic,
)

#: the file holding a deep run's selected weights
WEIGHTS_FILE = "best.pt"


# -- what a method asks for ------------------------------------------------------------------------------

def method_kind(name: str) -> tuple[Any, str]:
    """``(class, "deep" | "shallow")`` of the registered method ``name``."""
    from hashlearn.methods import get_method, load_all

    registry = load_all()
    return get_method(name), registry.info(name).get("kind", "deep")


def wants_maps(method) -> bool:
    """Whether a deep method's head reads spatial maps in frozen mode (the method's ``spatial``
    attribute; heads otherwise get pooled vectors there)."""
    return bool(method.spatial)


def build_method(cls, bits: int, args: dict | None, where: str = "method_args"):
    """``cls(bits=bits, **args)``, with arguments that do not fit the constructor as one-line errors."""
    args = dict(args or {})
    name = getattr(cls, "__name__", str(cls))
    if "bits" in args:
        raise InputError(f"{where}.bits: set the code length with bits (--bits), not in {where}")
    try:
        inspect.signature(cls).bind(bits=bits, **args)
    except TypeError as exc:
        raise InputError(f"{where} {args}: do not fit {name} ({exc})") from None
    try:
        return cls(bits=bits, **args)
    except InputError as exc:  # the method's own check names the argument: say where it was set
        raise InputError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, HashlearnError):
            raise
        raise InputError(f"{where} {args}: {name} refuses them ({short_reason(exc)})") from None


def shallow_args(cls, config: RunConfig) -> dict:
    """The shallow method's constructor arguments: ``method_args`` plus ``random_state = seed``."""
    args = dict(config.method_args or {})
    if "random_state" in inspect.signature(cls.__init__).parameters and "random_state" not in args:
        args["random_state"] = config.seed
    return args


# -- backbone and model assembly --------------------------------------------------------------------------

def backbone_args_for(config: RunConfig, channels: int) -> dict:
    """Constructor arguments of the backbone for images of ``channels`` channels."""
    args = dict(config.backbone_args or {})
    if config.backbone == "smallcnn" and not config.frozen and "in_channels" not in args:
        args["in_channels"] = int(channels)
    return args


def create_backbone_checked(config: RunConfig, backbone_args: dict, where: str = "backbone_args",
                            weights: str | None = None):
    """``create_backbone`` with constructor arguments that do not fit as one-line errors."""
    from hashlearn.nn import create_backbone

    try:
        return create_backbone(config.backbone, weights=weights or config.weights or "default", taps=None,
                               seed=config.seed, **backbone_args)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, HashlearnError):
            raise
        raise InputError(f"{where} {backbone_args}: do not fit backbone {config.backbone!r} "
                         f"({short_reason(exc)})") from None


def method_taps(method, backbone) -> list[str]:
    try:
        taps = list(method.taps(list(backbone.default_taps)))
    except TypeError as exc:
        raise InputError(f"method_args: bad taps for {type(method).__name__} ({short_reason(exc)})") from None
    backbone.set_taps(taps)  # unknown taps: one line naming them
    return taps


def check_plan(config: RunConfig, method, backbone) -> None:
    """The training mode fits the backbone and the method's taps (one line otherwise): a cut is a
    spatial tap with every method tap at or after it; frozen maps exist at every method tap."""
    if config.frozen and config.finetune_from:
        raise InputError("give frozen (--frozen) or finetune_from (--finetune-from TAP), not both: frozen trains "
                         "nothing in the backbone, finetune_from trains the part above TAP")
    taps = list(backbone.taps)
    inserted = getattr(method, "inserts_at", None)  # a head module run inside the backbone, after this tap
    if inserted is not None:
        if inserted not in backbone.cut_taps:
            raise InputError(f"{method.name}: cannot insert after {inserted!r}: not a feature map of {backbone.name} "
                             f"(one of {', '.join(backbone.cut_taps)})")
        if config.frozen:
            raise InputError(f"{method.name}: a frozen backbone cannot run a module inserted after {inserted!r}; "
                             f"fine-tune from it (--finetune-from {inserted}) or train end to end")
        if config.finetune_from and config.finetune_from != inserted:
            raise InputError(f"{method.name}: the module is inserted after {inserted!r} but the cut is at "
                             f"{config.finetune_from!r}; fine-tuning needs them equal (--finetune-from {inserted})")
    if config.finetune_from:
        backbone.check_cut(config.finetune_from, taps)
    elif config.frozen and wants_maps(method):
        flat = [t for t in taps if t not in backbone.cut_taps and t != "pool"]
        if flat:
            raise InputError(f"tap {flat[0]!r} of {backbone.name} is a vector, not a map; a method that reads maps "
                             f"in frozen mode needs taps among {', '.join(backbone.cut_taps)}")


def image_size_for(config: RunConfig, side: int, backbone) -> int:
    if config.image_size:
        return int(config.image_size)
    if config.backbone == "smallcnn":
        return int(side)
    return int(backbone.input_size)


def pooled_features(backbone, images: np.ndarray, taps: list[str], size: int, batch_size: int = 256,
                    device=None, progress: bool = False, desc: str = "features") -> dict[str, np.ndarray]:
    """Pooled ``(N, C)`` float32 features of each tap (global average of feature maps)."""
    import torch

    device = device or torch.device("cpu")

    def batch(start: int, stop: int):
        return backbone(backbone.preprocess(np.asarray(images[start:stop]), size).to(device))

    return _pooled_batches(backbone, len(images), batch, taps, batch_size, progress, desc)


def pooled_features_from_cache(backbone, cache, rows, taps: list[str], batch_size: int = 256, device=None,
                               progress: bool = False, desc: str = "features") -> dict[str, np.ndarray]:
    """Pooled ``(N, C)`` float32 features of each tap for the images ``rows`` (dataset indices) of an
    activation cache (:class:`~hashlearn.nn.ActivationCache`, the maps of the images, not of their
    mirrors): the part of ``backbone`` above the cache's cut (``forward_from``) in eval mode on the
    stored maps. That is :func:`pooled_features` of the same images up to the maps' float16 rounding,
    and what the head of a run fine-tuned from that cut reads before its first step (the label-free
    methods' pretrained features). ``taps`` must lie at or above the cut; a backbone whose weights
    below the cut are not those the maps were made with is refused."""
    import torch

    if backbone.name != cache.backbone or backbone.state_digest_below(cache.tap) != cache.key["weights_below_sha256"]:
        raise InputError(f"activation cache {cache.path.name} was made by {cache.backbone} with other weights below "
                         f"{cache.tap!r} than this {backbone.name}; its maps do not fit this backbone")
    backbone.check_cut(cache.tap, taps)
    rows = np.asarray(rows, dtype=np.int64)
    device = device or torch.device("cpu")
    selected = backbone.taps
    backbone.set_taps([t for t in taps if t != "pool"])  # forward_from refuses selected taps below the cut
    try:
        return _pooled_batches(backbone, len(rows), lambda a, b: backbone.forward_from(
            cache.tap, cache.get(rows[a:b]).to(device)), taps, batch_size, progress, desc)
    finally:
        backbone.set_taps(selected)


def _pooled_batches(backbone, n: int, batch, taps: list[str], batch_size: int, progress: bool,
                    desc: str) -> dict[str, np.ndarray]:
    """``batch(start, stop)`` → the backbone's ``{tap: tensor}`` of items ``start:stop``, run in eval
    mode without gradients over ``n`` items, each tap pooled into ``(n, C)`` float32."""
    import torch

    from hashlearn.methods.base import pool
    from hashlearn.train.progress import progress_bar

    backbone.eval()
    out: dict[str, list[np.ndarray]] = {t: [] for t in taps}
    with torch.no_grad():
        for start in progress_bar(range(0, n, batch_size), progress, desc, unit="batch"):
            feats = batch(start, min(n, start + batch_size))
            for t in taps:
                out[t].append(pool(feats[t]).float().cpu().numpy())
    return {t: (np.concatenate(v) if v else np.zeros((0, 0), np.float32)) for t, v in out.items()}


def build_head(method, tap_channels: dict[str, int], pooled: bool, where: str = "method_args"):
    """``method.build_head(...)``; a hyper-parameter of the wrong type is a one-line error."""
    try:
        return method.build_head(tap_channels, pooled=pooled)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{where}: cannot build the {type(method).__name__} head with "
                         f"{method.hparams()} ({short_reason(exc)})") from None


def assemble_deep(config: RunConfig, method, backbone_args: dict, where: str = "backbone_args",
                  method_where: str = "method_args"):
    """THE model assembly: the backbone (its weights, seed and arguments), then
    :func:`assemble_model`. Returns a :class:`~hashlearn.train.trainer.HashModel`."""
    backbone = create_backbone_checked(config, backbone_args, where)
    return assemble_model(config, method, backbone, method_where)


def assemble_model(config: RunConfig, method, backbone, method_where: str = "method_args"):
    """A backbone → the method's taps → the training mode's checks (the cut) → the head (seeded)
    → a :class:`~hashlearn.train.trainer.HashModel`."""
    import torch

    from hashlearn.train.trainer import HashModel

    taps = method_taps(method, backbone)
    check_plan(config, method, backbone)
    pooled = config.frozen and not wants_maps(method)
    torch.manual_seed(config.seed)
    head = build_head(method, {t: backbone.tap_channels[t] for t in taps}, pooled=pooled, where=method_where)
    return HashModel(backbone, head, taps, frozen=config.frozen, pooled=pooled, cut=config.finetune_from,
                     bn_frozen=config.finetune_bn == "frozen")


# -- the fingerprint of a run -----------------------------------------------------------------------------

def run_fingerprint(run_dir: Path, weights_file: str, weights_sha256: str | None = None) -> str:
    """sha256 of what makes a run's codes: its saved settings (``config.yaml`` as written, less the
    settings that change no weight, :data:`RESUME_FREE`) and the bytes of its weights file. Code
    files record it; a search that encodes with run R checks a codes file against it.
    ``weights_sha256``: that file's sha256 when the file itself is not there (an exported model
    records it, so it keeps its run's fingerprint)."""
    from hashlearn._digest import file_digest

    saved = read_config(run_dir / "config.yaml")
    kept = {k: v for k, v in saved.items() if k not in RESUME_FREE}
    for key in RESUME_FREE:
        section, _, leaf = key.partition(".")
        if leaf and isinstance(kept.get(section), dict):
            kept[section] = {k: v for k, v in kept[section].items() if k != leaf}
    if weights_sha256 is None:
        weights = run_dir / weights_file
        if not weights.is_file():
            raise NotFoundError(f"{weights} not found")
        weights_sha256 = file_digest(weights)
    text = json.dumps({"config": kept, "weights_sha256": weights_sha256}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# -- the hasher protocol ------------------------------------------------------------------------------------

@dataclass
class FitJob:
    """What ``Hasher.fit`` trains on and where it writes: the dataset (as :func:`load_data` returns
    it), the split's index arrays ``parts`` (``train``, ``val``, ``query``, ``database``), the run
    folder, and the training options."""

    dataset: Any
    parts: dict[str, np.ndarray]
    run_dir: Path
    resume: bool = True
    evaluator: Any = None
    progress: bool = True


class Hasher:
    """A hasher of one code length: ``fit(job)`` → ``self``; ``encode(images)`` → packed uint8 codes.

    Attributes: ``config`` (:class:`RunConfig`, one code length), ``info`` (what ``run.json``
    holds), ``run_dir`` (after fit or load), ``bits``, ``method`` (the method's name), ``kind``,
    ``image_size``, ``channels``, ``model`` (the module or shallow estimator that makes the codes),
    ``fingerprint`` (None until the run's weights are on disk)."""

    kind = "?"

    def __init__(self, config: RunConfig, info: dict, model, run_dir: Path | None = None):
        self.config = config
        self.info = info
        self.model = model
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.fingerprint: str | None = None
        self.fit_info: dict = {}

    bits = property(lambda self: self.config.run_bits)
    method = property(lambda self: self.config.method)
    image_size = property(lambda self: int(self.info["image_size"]))
    channels = property(lambda self: int(self.info.get("channels", 3)))

    def __repr__(self) -> str:
        where = f"{str(self.run_dir)!r}, " if self.run_dir else ""
        return (f"{type(self).__name__}({where}method={self.method!r}, bits={self.bits}, "
                f"image_size={self.image_size}, channels={self.channels})")

    # -- encoding ------------------------------------------------------------------------------------------
    def _images(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] != self.channels:
            where = f"the run {self.run_dir}" if self.run_dir else "this hasher"
            raise InputError(f"images of shape {images.shape[1:]} do not fit {where}, trained on "
                             f"{self.channels}-channel images")
        return images

    def encode(self, images, batch_size: int | None = None) -> np.ndarray:
        """Packed codes ``(n, ceil(bits/8))`` uint8 of uint8 images ``(n, H, W[, C])``."""
        from hashlearn.codes import pack_bits

        return pack_bits(self.signs(images, batch_size))

    def signs(self, images, batch_size: int | None = None) -> np.ndarray:
        """±1 ``int8`` codes ``(n, bits)`` of uint8 images."""
        raise NotImplementedError

    def fit(self, job: FitJob) -> Hasher:
        raise NotImplementedError

    def learned_database_codes(self) -> np.ndarray | None:
        """±1 ``int8`` codes ``(n_train, bits)`` the method learned for the training images (ADSH's
        ``V``; row i = training image i), or None for a method that learns none."""
        return None

    def part_signs(self, name: str) -> np.ndarray:
        """±1 codes of the fitted split part ``name`` (``query``, ``database``, …), from what
        training used (cached features or maps where there are some)."""
        raise NotImplementedError

    def _write_run(self, run_dir: Path) -> None:
        save_config(self.config, run_dir / "config.yaml")
        write_json_atomic(run_dir / "run.json", self.info)


class DeepHasher(Hasher):
    """Backbone + head (a ``HashModel``) and the method object (loss, hooks: ``deep_method``)."""

    kind = "deep"

    def __init__(self, config: RunConfig, info: dict, model, deep_method, run_dir: Path | None = None):
        super().__init__(config, info, model, run_dir)
        self.deep_method = deep_method
        self._trainer = None
        self._feeds: dict = {}
        self.cache_info: list[dict] = []  # the activation caches training read (make_feeds fills it)

    def signs(self, images, batch_size: int | None = None) -> np.ndarray:
        import torch

        from hashlearn.codes import sign

        images = self._images(images)
        batch_size = batch_size or self.config.train.feature_batch_size
        device = next(self.model.parameters()).device
        self.model.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = self.model.backbone.preprocess(images[start:start + batch_size], self.image_size).to(device)
                out.append(sign(self.model(x).codes.float().cpu().numpy()))
        return np.concatenate(out) if out else np.zeros((0, self.bits), np.int8)

    def fit(self, job: FitJob) -> DeepHasher:
        from hashlearn.train import distributed
        from hashlearn.train.trainer import Trainer, make_feeds, pick_device

        run_dir = Path(job.run_dir)
        self.model.to(pick_device(self.config.device))
        with distributed.main_first():  # caches are written once (rank 0), then read by the others
            self._feeds, extra = make_feeds(self, job)
        self.info.update(extra)
        if distributed.is_main():
            self._write_run(run_dir)
        trainer = Trainer(self.deep_method, self.model, self.config, run_dir, train=self._feeds["train"],
                          val=self._feeds["val"], evaluator=job.evaluator)
        from hashlearn.train.run import IndexedImages

        # the training images themselves, for methods that make more inputs of them (BCDH's synthetic views)
        trainer.train_images = IndexedImages(job.dataset.images, job.parts["train"])
        trainer.train_images_name = f"{getattr(job.dataset, 'name', 'dataset')}-train"
        result = trainer.fit(resume=job.resume)
        self._trainer = trainer
        self.run_dir = run_dir
        if not distributed.is_main():  # data-parallel: rank 0 alone encodes and writes the run folder
            self.fingerprint, self.fit_info = "", {"best_epoch": result.best_epoch, "val_mAP": result.best_val_map}
            return self
        self.fingerprint = run_fingerprint(run_dir, WEIGHTS_FILE)
        self.fit_info = {
            "backbone": self.config.backbone, "weights": str(self.config.weights), "frozen": self.config.frozen,
            "finetune_from": self.config.finetune_from, "image_size": self.image_size, "taps": self.info["taps"],
            "best_epoch": result.best_epoch, "val_mAP": result.best_val_map, "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early, "training_seconds": round(result.training_seconds, 3),
            "images_per_second": round(result.images_per_second, 1), "method_hparams": self.deep_method.hparams()}
        if self.config.finetune_from:
            self.fit_info["finetune_bn"] = self.config.finetune_bn
        if self.cache_info:
            self.fit_info["activation_cache"] = self.cache_info[0]
            if len(self.cache_info) > 1:
                self.fit_info["activation_caches"] = self.cache_info
        self.fit_info["val_history"] = _val_history(run_dir)
        return self

    def part_signs(self, name: str) -> np.ndarray:
        from hashlearn.codes import sign

        return sign(self._trainer.forward_all(self._feeds[name]).numpy())

    def learned_database_codes(self) -> np.ndarray | None:
        from hashlearn.codes import sign

        learned = getattr(self.deep_method, "database_codes", lambda: None)()
        return None if learned is None else sign(learned.float().cpu().numpy())


def _val_history(run_dir: Path) -> list[dict]:
    """``[{"epoch", "val_mAP"}]`` of the epochs whose validation mAP ``log.jsonl`` records."""
    out = []
    log = run_dir / "log.jsonl"
    for line in (log.read_text().splitlines() if log.exists() else []):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "val_map" in record:
            out.append({"epoch": record.get("epoch"), "val_mAP": record["val_map"]})
    return out


class ShallowHasher(Hasher):
    """A scikit-learn style hasher (``fit``/``encode``) on pixels or pooled backbone features."""

    kind = "shallow"

    def __init__(self, config: RunConfig, info: dict, model, backbone=None, run_dir: Path | None = None):
        super().__init__(config, info, model, run_dir)
        self.backbone = backbone
        self._get = None
        self._parts: dict = {}

    def _x(self, images, batch_size: int | None = None) -> np.ndarray:
        images = self._images(images)
        if self.info["features"] == "pixels":
            want = (self.image_size, self.image_size, self.channels)
            if images.shape[1:] != want:
                raise InputError(f"images of shape {images.shape[1:]} do not match the run's {want}")
            return pixels(images)
        if self.backbone is None:
            self.backbone = create_backbone_checked(self.config, {}, where="backbone_args")
        batch_size = batch_size or self.config.train.feature_batch_size
        return pooled_features(self.backbone, images, ["pool"], self.image_size, batch_size)["pool"]

    def signs(self, images, batch_size: int | None = None) -> np.ndarray:
        return np.asarray(self.model.encode(self._x(images, batch_size))).astype(np.int8)

    def fit(self, job: FitJob) -> ShallowHasher:
        import time

        from hashlearn.methods.shallow import save_hasher

        run_dir = Path(job.run_dir)
        ds, cfg = job.dataset, self.config
        if self.info["features"] == "backbone":
            from hashlearn.nn import extract_features

            feats = extract_features(ds, backbone=cfg.backbone, image_size=cfg.image_size, taps=["pool"],
                                     weights=cfg.weights or "default", seed=cfg.seed,
                                     batch_size=cfg.train.feature_batch_size, progress=job.progress)["pool"]
            self._get = lambda idx: np.asarray(feats[idx], dtype=np.float32)
        else:
            self._get = lambda idx: pixels(ds.images[np.sort(idx)][np.argsort(np.argsort(idx))])
        self._parts = job.parts
        self._write_run(run_dir)
        x_train = self._get(job.parts["train"])
        t0 = time.perf_counter()
        self.model.fit(x_train, np.asarray(ds.labels[job.parts["train"]]))
        seconds = time.perf_counter() - t0
        save_hasher(self.model, run_dir / MODEL_FILE)  # arrays + JSON, never a pickle
        self.run_dir = run_dir
        self.fingerprint = run_fingerprint(run_dir, MODEL_FILE)
        self.fit_info = {"features": self.info["features"],
                         "backbone": cfg.backbone if self.info["features"] == "backbone" else None,
                         "training_seconds": round(seconds, 3),
                         "images_per_second": round(len(x_train) / max(seconds, 1e-9), 1),
                         "method_hparams": self.info["method_hparams"]}
        return self

    def part_signs(self, name: str) -> np.ndarray:
        return np.asarray(self.model.encode(self._get(self._parts[name]))).astype(np.int8)


def pixels(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    return arr.reshape(len(arr), -1).astype(np.float32) / 255.0


def shallow_features(config: RunConfig) -> str:
    """What a shallow method is fitted on: ``"pixels"`` or ``"backbone"`` (pooled features)."""
    choice = config.shallow.features
    if choice == "auto":
        choice = "pixels" if config.backbone in ("smallcnn", "pixels") else "backbone"
    return choice


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


# -- building: new, or from a run folder ---------------------------------------------------------------------

def new_hasher(config: RunConfig, channels: int, side: int) -> Hasher:
    """An untrained hasher for ``config`` (one code length) and images of ``channels`` channels,
    ``side`` px (the native size of a small CNN)."""
    cls, kind = method_kind(config.method)
    bits = config.run_bits
    if kind == "shallow":
        args = shallow_args(cls, config)
        model = build_method(cls, bits, args)
        features = shallow_features(config)
        backbone = create_backbone_checked(config, {}) if features == "backbone" else None
        size = config.image_size or (int(side) if backbone is None else backbone.input_size)
        info = {"kind": "shallow", "features": features, "image_size": int(size), "channels": int(channels),
                "method_hparams": _jsonable({"bits": bits, **args})}
        return ShallowHasher(config, info, model, backbone=backbone)
    method = build_method(cls, bits, config.method_args)
    bargs = backbone_args_for(config, channels)
    model = assemble_deep(config, method, bargs)
    size = image_size_for(config, side, model.backbone)
    info = {"kind": "deep", "taps": model.taps, "image_size": int(size), "backbone_args": bargs,
            "channels": int(channels), "method_hparams": _jsonable(method.hparams())}
    return DeepHasher(config, info, model, method)


def check_before_work(config: RunConfig) -> None:
    """Everything about the model that can fail, checked before data is loaded or anything
    trains: the method's arguments, its taps on the backbone, the cut (a weightless backbone is
    built for this; it only needs the tap names)."""
    cls, kind = method_kind(config.method)
    bits = config.bits[0]
    if config.eval.retrieval == "asymmetric" and not getattr(cls, "learns_database_codes", False):
        raise InputError(f"eval.retrieval: asymmetric needs a method that learns the database codes (adsh, exchnet); "
                         f"{config.method} does not (use symmetric or auto)")
    if kind == "shallow":
        build_method(cls, bits, shallow_args(cls, config))
        return
    method = build_method(cls, bits, config.method_args)
    args = dict(config.backbone_args or {})
    backbone = create_backbone_checked(config, args, weights="none")
    method_taps(method, backbone)
    check_plan(config, method, backbone)


def existing_run_dir(path) -> Path:
    """``path`` as a ``Path`` when it is a folder; a one-line error when it is missing or a file."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise NotFoundError(f"run folder not found: {run_dir}")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a folder (expected a run folder such as runs/NAME/32bits)")
    return run_dir


def load_run(path: str | Path) -> Hasher:
    """The trained hasher of the run folder ``path`` (one code length, e.g. ``runs/x/32bits``), or of
    the model file ``path`` that ``hashlearn export`` wrote (``model.hlm``: read and checked in
    memory by :func:`hashlearn.train.export.load_model_file`, never unpacked beside it).

    Every file is read as data (YAML ``safe_load``, JSON, ``weights_only`` checkpoints,
    ``allow_pickle=False`` arrays, safetensors); a missing, damaged or foreign file is a one-line
    :class:`~hashlearn.errors.HashlearnError` naming it."""
    from hashlearn.train.export import SUFFIX, load_model_file  # the standard library only

    if Path(path).is_file() or (Path(path).suffix == SUFFIX and not Path(path).exists()):
        return load_model_file(path)
    run_dir = existing_run_dir(path)
    info = read_run_info(run_dir)
    config = read_run_config(run_dir)
    hasher = _load_shallow(run_dir, config, info) if info["kind"] == "shallow" else _load_deep(run_dir, config, info)
    hasher.fingerprint = run_fingerprint(run_dir, MODEL_FILE if info["kind"] == "shallow" else WEIGHTS_FILE)
    return hasher


def _load_shallow(run_dir: Path, config: RunConfig, info: dict, model=None,
                  where: str | None = None) -> ShallowHasher:
    """``model``: the fitted hasher when it does not come from ``run_dir/model.npz`` (an exported
    model's), ``where`` naming its file in messages."""
    from hashlearn.methods.shallow import load_hasher

    path = run_dir / MODEL_FILE
    if model is None:
        if not path.exists() and (run_dir / LEGACY_MODEL_FILE).exists():
            raise InputError(f"{run_dir / LEGACY_MODEL_FILE} is a pickle from an older hashlearn; retrain "
                             f"(hashlearn train) — hashlearn never unpickles run files")
        model = load_hasher(path)
    path = where or path
    cls, kind = method_kind(config.method)
    if kind != "shallow" or cls is not type(model) or model.bits != config.run_bits:
        raise InputError(f"{path}: holds a {type(model).__name__} of {model.bits} bits, but {run_dir / 'config.yaml'} "
                         f"says {config.method} at {config.run_bits} bits")
    backbone = None
    if info["features"] == "pixels":
        dims = info["image_size"] ** 2 * info["channels"]
        if model.n_features_in_ != dims:
            raise InputError(f"{path}: fitted on {model.n_features_in_} features, but {run_dir / 'run.json'} "
                             f"describes {dims} pixels")
    else:
        backbone = create_backbone_checked(config, {}, where=f"{run_dir / 'config.yaml'}: backbone_args")
        if backbone.feature_dim != model.n_features_in_:
            raise InputError(f"{path}: fitted on {model.n_features_in_} features, but backbone "
                             f"{config.backbone!r} gives {backbone.feature_dim}")
    return ShallowHasher(config, info, model, backbone=backbone, run_dir=run_dir)


def _load_deep(run_dir: Path, config: RunConfig, info: dict, state: dict | None = None,
               weights: str | Path | None = None) -> DeepHasher:
    """``state``: the trained weights when they do not come from ``run_dir/best.pt`` (an exported
    model's), ``weights`` naming their file in messages."""
    where = run_dir / "config.yaml"
    cls, kind = method_kind(config.method)
    if kind != "deep":
        raise InputError(f"{run_dir / 'run.json'} says a deep run, but {where} names the shallow method "
                         f"{config.method!r}")
    weights = weights or run_dir / WEIGHTS_FILE
    if state is None:
        if not Path(weights).exists():
            raise NotFoundError(f"{weights} not found: the run has not finished an epoch")
        state = load_checkpoint(weights)["model"]  # before building anything: a damaged file fails fast
    method = build_method(cls, config.run_bits, config.method_args, where=f"{where}: method_args")
    model = assemble_deep(config, method, info.get("backbone_args") or {},
                          where=f"{run_dir / 'run.json'}: backbone_args", method_where=f"{where}: method_args")
    if list(model.taps) != list(info["taps"]):
        raise InputError(f"{run_dir / 'run.json'}: taps {info['taps']} differ from the taps {model.taps} of "
                         f"{config.method} with the method_args of {where}")
    cut = info.get("cut")
    if config.finetune_from and isinstance(cut, dict) and cut.get("weights_below_sha256"):
        if model.backbone.state_digest_below(config.finetune_from) != cut["weights_below_sha256"]:
            raise InputError(f"{run_dir / 'run.json'}: the backbone below the cut {config.finetune_from!r} is not the "
                             f"one this run was trained on (other weights {config.weights!r} or library version)")
    model.load_trainable_state(state, where=str(weights))
    model.eval()
    return DeepHasher(config, copy.deepcopy(info), model, method, run_dir=run_dir)
