"""The one training loop, for every deep method, in every training mode.

The model (:class:`HashModel`, assembled by :func:`hashlearn.train.model.assemble_deep`) reads
its inputs from a *feed* (:func:`make_feeds`), one per split part:

* end to end (default): each batch's uint8 images are preprocessed by the backbone,
  augmented (flips, translations), and run through backbone + head; both train;
* ``finetune_from: T``: the backbone below T ran once over the dataset and its maps are
  cached (:func:`hashlearn.nn.extract_activations`, the original and the mirrored image); a
  batch draws one of the two per image (seeded) and runs ``forward_from(T, map)`` + head; the
  part above T and the head train;
* frozen: nothing in the backbone trains; the head reads cached pooled tap features, or
  cached maps at its taps when the method asks for maps (its ``spatial`` attribute).

Every epoch: a checkpoint (``checkpoint.pt``, written atomically) that holds the weights that
train, the optimizer, the method's own state, the selection state and the settings it was
trained with, and one JSON line in ``log.jsonl``. The learning rate is a function of the epoch
and ``train.epochs`` (:func:`lr_factor`), so a finished run extended with more epochs continues
on the schedule of the new length. Checkpoints hold only tensors and plain values and are read
with ``torch.load(weights_only=True)`` (:func:`hashlearn.train.runfolder.load_checkpoint`), so a
planted file cannot run code. Model selection and early stopping use the mAP of the
*validation* split against the training set; the query split is never seen during training.
The batch order and augmentation of epoch ``e`` depend only on ``(seed, e)`` (no RNG state
needs storing), so a run resumed from the checkpoint of epoch ``k`` ends with the same weights
as an uninterrupted run. A resume with other settings (see
:data:`~hashlearn.train.runfolder.RESUME_FREE`) is refused. Progress bars are drawn only on a
terminal; a log gets one line per epoch.

Data-parallel (``torchrun``, :mod:`hashlearn.train.distributed`): ``train.batch_size`` is the
*global* batch; each of the W ranks takes its own disjoint slice of ``batch_size / W`` images of
every global batch (the same seeded permutation on every rank), the model is wrapped in
``DistributedDataParallel`` (gradients averaged), ``TrainState.all_gather`` keeps per-image method
state identical on every rank, and rank 0 alone validates and writes (log, ``best.pt``,
checkpoints) while the others wait at a barrier. Augmentation draws come from a per-rank generator
seeded by ``(seed, epoch, rank)``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hashlearn._atomic import atomic_target
from hashlearn.codes import sign
from hashlearn.errors import InputError
from hashlearn.methods.base import Batch, Method, MethodOutput, pool, total_loss
from hashlearn.train import distributed
from hashlearn.train.config import RunConfig
from hashlearn.train.progress import progress_bar
from hashlearn.train.runfolder import RESUME_FREE, load_checkpoint, short_reason, write_text_atomic

Evaluator = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]


def pick_device(name: str = "auto") -> torch.device:
    if name in (None, "auto"):
        return distributed.device_for(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available")
    try:
        return distributed.device_for(torch.device(name))
    except RuntimeError:
        raise InputError(f"device: unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None


class HashModel(nn.Module):
    """Backbone + method head, in one of three modes.

    * end to end (default): ``model(images)`` runs the backbone and the head, both train;
    * ``frozen``: nothing in the backbone trains; ``model(images)`` runs it without gradients,
      pooling the taps (``pooled``) or passing their maps; ``model({tap: tensor})`` feeds
      cached inputs straight to the head;
    * ``cut`` = tap T: only the backbone above T trains (``freeze_below``);
      ``model(map, at=T)`` runs ``forward_from(T, map)`` + head on a cached map, and
      ``model(images)`` the whole network (equal in eval mode). With ``bn_frozen``, BatchNorm
      above T keeps its running statistics in train mode.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, taps: list[str], frozen: bool = False,
                 pooled: bool | None = None, cut: str | None = None, bn_frozen: bool = True):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.taps = list(taps)
        self.frozen = bool(frozen)
        self.pooled = self.frozen if pooled is None else bool(pooled)
        self.cut = cut
        self.bn_frozen = bool(bn_frozen)
        if self.frozen:
            for p in backbone.parameters():
                p.requires_grad_(False)
        elif cut is not None:
            backbone.freeze_below(cut)

    def forward(self, x, at: str | None = None) -> MethodOutput:
        inserted = getattr(self.head, "insert_at", None)
        if inserted is not None and not isinstance(x, dict):
            return self._forward_inserted(x, at, inserted)
        return self.head(self.head_inputs(x, at))

    def _forward_inserted(self, x, at: str | None, tap: str) -> MethodOutput:
        """A head whose ``insert_at`` names a tap T (ATH's attention inserted into the backbone): the
        map at T (images → ``forward_to``; a cached map at the cut T as it is) goes through
        ``head.attention`` → ``(map, attention)``, the rest of the backbone runs on the result
        (``forward_from``), then the head; its output carries ``extras["attention"]``.
        (``check_plan`` refuses a frozen backbone and a cut other than T before any work.)"""
        if at is None:
            x = self.backbone.forward_to(tap, x)
        elif at != tap:
            raise InputError(f"the head's module is inserted after {tap!r}, but the cached maps are at {at!r}")
        x, attention = self.head.attention(x)
        feats = self.backbone.forward_from(tap, x)
        out = self.head({t: feats[t] for t in self.taps})
        out.extras["attention"] = attention
        return out

    def head_inputs(self, x, at: str | None = None) -> dict[str, torch.Tensor]:
        """What the head reads, ``{tap: tensor}``, for the inputs ``x`` (images, a map at ``at``
        or cached tap features)."""
        if at is not None:
            feats = self.backbone.forward_from(at, x)
        elif isinstance(x, dict):
            feats = x
        else:
            if self.frozen:
                self.backbone.eval()
                with torch.no_grad():
                    feats = self.backbone(x)
            else:
                feats = self.backbone(x)
            if self.pooled:
                feats = {t: pool(feats[t]) for t in self.taps}
        return {t: feats[t] for t in self.taps}

    def train(self, mode: bool = True) -> HashModel:
        super().train(mode)
        if mode and self.frozen:
            self.backbone.eval()
        elif mode and self.cut is not None:
            for m in self.backbone.modules_below(self.cut):
                m.eval()
            if self.bn_frozen:
                for top in self.backbone.modules_above(self.cut):
                    for m in top.modules():
                        if isinstance(m, nn.modules.batchnorm._BatchNorm):
                            m.eval()
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights a run must save: the head, plus what trains of the backbone (all of it end
        to end, the part above the cut — ``state_names_above`` — when fine-tuning from a cut)."""
        state = self.state_dict()
        if self.frozen:
            return {k: v for k, v in state.items() if k.startswith("head.")}
        if self.cut is not None:
            above = {f"backbone.{k}" for k in self.backbone.state_names_above(self.cut)}
            return {k: v for k, v in state.items() if k.startswith("head.") or k in above}
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor], where: str = "saved weights") -> None:
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes that do not fit
            raise InputError(f"{where}: the weights do not fit this model ({short_reason(exc)})") from None
        wanted = set(self.trainable_state())
        if unexpected or (wanted & set(missing)):
            raise InputError(f"{where}: the weights do not fit this model (missing "
                             f"{[k for k in missing if k in wanted][:3]}, unexpected {list(unexpected)[:3]})")


def lr_factor(schedule: str, epoch: int, epochs: int, step_size: int = 10, gamma: float = 0.1) -> float:
    """The learning rate of (1-based) ``epoch`` of a run of ``epochs``, relative to the base rate:
    ``cosine`` ½(1 + cos(π (epoch − 1) / epochs)), ``step`` γ^⌊(epoch − 1) / step_size⌋, ``none`` 1.
    A function of the epoch and the run's length only, so extending a run rebuilds the schedule
    for the new length instead of restarting it."""
    e = epoch - 1
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * e / max(int(epochs), 1)))
    if schedule == "step":
        return float(gamma) ** (e // max(int(step_size), 1))
    return 1.0


def augment(x: torch.Tensor, hflip: bool, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations by up to ``padding`` px (zero fill), per sample."""
    n = len(x)
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if padding > 0:
        h, w = x.shape[-2:]
        padded = nn.functional.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return x


@dataclass
class TrainState:
    """What hooks see. ``method_state`` is the method's own tensors (checkpointed).
    ``train_labels`` is None for a label-free method (``Method.supervised = False``)."""

    trainer: Trainer
    epoch: int = 0
    step: int = 0
    train_labels: torch.Tensor | None = None
    method_state: dict[str, Any] = field(default_factory=dict)
    #: data-parallel only: ``all_gather(tensor)`` → the ranks' tensors concatenated in rank order
    #: (``Method.on_batch_end`` gathers the batch rows through it); None in one process
    all_gather: Callable[[torch.Tensor], torch.Tensor] | None = None

    def encode_train(self) -> torch.Tensor:
        """Relaxed codes ``u`` of the whole training set (eval mode), ``(N, bits)``."""
        return self.trainer.forward_all(self.trainer.train)

    def forward(self, inputs) -> MethodOutput:
        """The model on ``inputs`` of the training feed's kind (images, maps at the cut, or cached
        tap features), in its current mode and with gradients — e.g. a second image of a pair."""
        return self.trainer.net(_to(inputs, self.trainer.device), at=self.trainer.train.at)

    @property
    def head(self) -> nn.Module:
        """The method's head (what its ``build_head`` built), e.g. to initialise it from data."""
        return self.trainer.model.head

    def head_inputs(self, limit: int | None = None, seed: int = 0):
        """What the head reads, ``{tap: tensor}``, batch by batch, for ``limit`` training images (a
        sample seeded by ``seed``; all of them when None), in eval mode and without gradients —
        e.g. the local descriptors a NetVLAD layer is k-means initialised from."""
        return self.trainer.head_inputs(self.trainer.train, limit, seed)


@dataclass
class TrainResult:
    best_epoch: int
    best_val_map: float | None
    epochs_run: int
    training_seconds: float
    images_per_second: float
    stopped_early: bool


class Trainer:
    """Train ``method`` (its loss and hooks) with ``model`` (a :class:`HashModel`) on the feed
    ``train`` (with selection on ``val``) and write to ``out_dir``.

    A feed (:class:`ImageFeed`, :class:`FeatureFeed`, :class:`MapFeed`; :func:`make_feeds`
    builds them) gives the model's inputs and the labels of the items of one split part.
    ``evaluator(q_codes, db_codes, q_labels, db_labels) → mAP`` takes ±1 codes; it defaults to
    :func:`make_validation_evaluator`.
    """

    def __init__(self, method: Method, model: HashModel | nn.Module, config: RunConfig | dict, out_dir: str | Path,
                 train: Feed | dict, val: Feed | dict | None = None, evaluator: Evaluator | None = None,
                 image_size: int | None = None):
        from hashlearn.train.config import as_config

        config = as_config(config)
        if not isinstance(model, HashModel):  # a bare backbone: the head is assembled here (one assembly function)
            from hashlearn.train.model import assemble_model

            model = assemble_model(config, method, model)
        train, val = (_feed(p, model, config, image_size) for p in (train, val))
        self.method = method
        self.config = config
        self.tc = config.train
        self.out_dir = Path(out_dir)
        self.world = distributed.world_size()
        self.main = distributed.is_main()
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.device = pick_device(config.device)
        self.seed = int(config.seed)
        self.progress = bool(self.tc.progress) and self.main
        self.evaluator = evaluator or make_validation_evaluator(config)
        if self.tc.threads:
            torch.set_num_threads(int(self.tc.threads))
        # numba's OpenMP layer (used by the evaluator) resets the shared OpenMP thread count;
        # a different count changes float summation order, so it is restored every epoch
        self._threads = torch.get_num_threads()
        self.model = model.to(self.device)
        self.taps = list(model.taps)
        self.train = train
        self.train_labels = torch.as_tensor(np.asarray(train.labels))
        #: the training images (uint8, indexable) when the caller knows them (``DeepHasher.fit`` sets
        #: them): what a method makes more inputs of (BCDH's synthetic views); None otherwise
        self.train_images = None
        self.train_images_name = "train"
        self.val = val if val is not None and len(val) > 0 else None
        if len(self.train_labels) < 2:
            raise InputError("training split has fewer than 2 images")
        self.optimizer = self._optimizer()
        from hashlearn.train.sampler import check_class_balanced, resolve_sampler

        #: the batch order (train.sampler; "auto" → the method's preference)
        self.sampler = resolve_sampler(self.tc.sampler, method, self.train_labels.numpy(), int(self.tc.batch_size),
                                       self.world)
        if self.sampler == "class_balanced":
            check_class_balanced(self.train_labels.numpy(), int(self.tc.batch_size), self.world)
        elif self.tc.sampler == "auto" and getattr(method, "sampler", "random") == "class_balanced":
            self._say(f"note: train.sampler auto: a batch of {self.tc.batch_size} cannot hold every class; "
                      f"random batches instead (raise train.batch_size for class-balanced ones)")
        #: False for a label-free method (``method.supervised = False``): its loss gets
        #: ``Batch.labels = None`` and its hooks ``TrainState.train_labels = None``; labels still
        #: serve validation (model selection) only
        self.supervised = bool(getattr(method, "supervised", True))
        if not self.supervised and self.sampler == "class_balanced":
            raise InputError(f"train.sampler class_balanced reads the labels, but {method.name} is label-free; "
                             f"use train.sampler random")
        self.state = TrainState(trainer=self, train_labels=self.train_labels if self.supervised else None)
        self.net: nn.Module = self.model  # what the training step calls (DDP-wrapped when data-parallel)
        if self.world > 1:
            bs = int(self.tc.batch_size)
            if bs % self.world:
                raise InputError(f"train.batch_size {bs} (the global batch) is not divisible by the {self.world} "
                                 f"processes; choose a multiple of {self.world}")
            if len(self.train_labels) < bs:
                raise InputError(f"training split ({len(self.train_labels)} images) is smaller than the global "
                                 f"batch train.batch_size {bs}")
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
            self.state.all_gather = distributed.all_gather

    # --- optimisation -------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        oc = self.config.optim
        lr = float(oc.lr)
        backbone = self.model.backbone
        blr = oc.backbone_lr
        if blr is None:
            blr = lr if getattr(backbone, "weights_id", "none") == "none" else lr / 10
        groups = [{"params": list(self.model.head.parameters()), "lr": lr}]
        if self.model.cut is not None:
            groups.append({"params": backbone.parameters_above(self.model.cut), "lr": float(blr)})
        elif not self.model.frozen:
            groups.append({"params": [p for p in backbone.parameters() if p.requires_grad], "lr": float(blr)})
        for g in groups:
            g["base_lr"] = g["lr"]
        wd = float(oc.weight_decay)
        if oc.name == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=float(oc.momentum), weight_decay=wd)
        if oc.name == "adam":
            return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
        return torch.optim.RMSprop(groups, lr=lr, momentum=float(oc.momentum), weight_decay=wd)

    def _set_lr(self, epoch: int) -> None:
        oc = self.config.optim
        factor = lr_factor(oc.schedule, epoch, self.tc.epochs, oc.step_size, oc.gamma)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor

    # --- inputs -------------------------------------------------------------------------
    def _inputs(self, feed: Feed, idx: np.ndarray, train: bool, generator: torch.Generator | None = None):
        return _to(feed.inputs(idx, train, generator), self.device)

    def forward_all(self, feed: Feed) -> torch.Tensor:
        """Relaxed codes of every item of ``feed`` in eval mode (no augmentation)."""
        torch.set_num_threads(self._threads)
        was_training = self.model.training
        self.model.eval()
        bs = int(self.tc.feature_batch_size)
        n = len(feed)
        outs = []
        with torch.no_grad():
            for start in range(0, n, bs):
                idx = np.arange(start, min(n, start + bs))
                outs.append(self.model(self._inputs(feed, idx, train=False), at=feed.at).codes.float().cpu())
        self.model.train(was_training)
        u = torch.cat(outs) if outs else torch.zeros(0, self.method.bits)
        if not torch.isfinite(u).all():
            raise InputError(f"training diverged: the network's codes are not finite (epoch {self.state.epoch}); "
                             f"lower optim.lr (now {self.config.optim.lr})")
        return u

    def head_inputs(self, feed: Feed, limit: int | None = None, seed: int = 0):
        """:meth:`HashModel.head_inputs` of ``limit`` items of ``feed`` (a seeded sample; all when
        None), batch by batch, in eval mode without gradients (see :meth:`TrainState.head_inputs`)."""
        n = len(feed)
        rows = np.arange(n)
        if limit is not None and limit < n:
            rows = np.sort(np.random.default_rng(seed).choice(n, int(limit), replace=False))
        bs = int(self.tc.feature_batch_size)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(rows), bs):
                    x = self._inputs(feed, rows[start:start + bs], train=False)
                    yield self.model.head_inputs(x, at=feed.at)
        finally:
            self.model.train(was_training)

    # --- checkpoints --------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def _save(self, obj: dict, path: Path) -> None:
        _check_plain(obj, path.name)
        with atomic_target(path) as tmp:
            torch.save(obj, tmp)

    def _checkpoint(self, epoch: int, best: dict, bad_evals: int, seconds: float, images: int,
                    stopped_early: bool = False) -> None:
        self._save({
            "epoch": epoch,
            "model": self.model.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None,  # the learning rate is a function of (epoch, epochs): nothing to store
            "method_state": self.method.state_dict(),
            "best": best,
            "bad_evals": bad_evals,
            "seconds": seconds,
            "images": images,
            "step": self.state.step,
            "stopped_early": stopped_early,
            "config": json.loads(json.dumps(self.config.to_dict(), default=str)),
        }, self.checkpoint_path)

    def _resume(self) -> dict | None:
        path = self.checkpoint_path
        if not path.exists():
            return None
        again = "; pass --no-resume to start over, or another --out"
        ckpt = load_checkpoint(path, map_location=self.device, hint=again)
        kinds = {"epoch": int, "optimizer": dict, "best": dict, "bad_evals": int, "seconds": (int, float),
                 "images": int}
        for key, kind in kinds.items():
            if isinstance(ckpt.get(key), bool) or not isinstance(ckpt.get(key), kind):
                raise InputError(f"{path}: not a hashlearn checkpoint ({key} is {ckpt.get(key)!r}){again}")
        best = ckpt["best"]
        if not isinstance(best.get("epoch"), int) or not isinstance(best.get("map"), (float, int, type(None))):
            raise InputError(f"{path}: not a hashlearn checkpoint (best is {best!r}){again}")
        changed = _changed_setting(ckpt.get("config"), self.config.to_dict())
        if changed:
            raise InputError(f"{path} was trained with other settings ({changed}){again}")
        self.model.load_trainable_state(ckpt["model"], where=str(path))
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            for g in self.optimizer.param_groups:
                g.setdefault("base_lr", g.get("initial_lr", g["lr"]))  # a checkpoint of an older version
            self.method.load_state_dict(ckpt.get("method_state") or {})
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
            raise InputError(f"{path}: its optimizer or method state does not fit this run "
                             f"({short_reason(exc)}){again}") from None
        self.state.step = int(ckpt.get("step", 0) or 0)
        # drop log lines of epochs after the checkpoint (the killed run may have logged them, or half a line)
        log = self.out_dir / "log.jsonl"
        if log.exists() and self.main:
            keep = []
            for line in log.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("epoch"), int) \
                        and record["epoch"] <= ckpt["epoch"]:
                    keep.append(line)
            write_text_atomic(log, "".join(ln + "\n" for ln in keep))
        return ckpt

    # --- the loop -----------------------------------------------------------------------
    def fit(self, resume: bool = True) -> TrainResult:
        epochs = int(self.tc.epochs)
        batch_size = int(self.tc.batch_size)
        eval_every = max(1, int(self.tc.eval_every))
        patience = int(self.tc.patience)
        n = len(self.train_labels)
        best = {"map": None, "epoch": 0}
        bad_evals, seconds, images, start_epoch = 0, 0.0, 0, 1
        ckpt = self._resume() if resume else None
        if self.world > 1:  # every rank must resume from the same epoch (the run folder must be shared)
            at = torch.tensor([-1 if ckpt is None else ckpt["epoch"]], dtype=torch.float64, device=self.device)
            low, high = distributed.all_gather(at).min(), distributed.all_gather(at).max()
            if low != high:
                raise InputError(f"{self.checkpoint_path}: the processes found different checkpoints (epochs "
                                 f"{int(low)}..{int(high)}); the run folder must be shared by every process")
        if ckpt is not None:
            best, bad_evals = ckpt["best"], ckpt["bad_evals"]
            seconds, images, start_epoch = ckpt["seconds"], ckpt["images"], ckpt["epoch"] + 1
            self._say(f"resuming from epoch {ckpt['epoch']} ({self.checkpoint_path})")
        elif not resume and self.main:
            for p in (self.checkpoint_path, self.best_path, self.out_dir / "log.jsonl"):
                p.unlink(missing_ok=True)
        distributed.barrier()
        self.method.on_train_start(self.state)
        stopped_early = False
        last_epoch = start_epoch - 1
        if ckpt is not None and ckpt.get("stopped_early"):
            start_epoch = epochs + 1
        for epoch in range(start_epoch, epochs + 1):
            self.state.epoch = last_epoch = epoch
            torch.set_num_threads(self._threads)
            torch.manual_seed(self.seed * 100_003 + epoch)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen).numpy()
            n_batches = n // batch_size if n >= batch_size else 1  # drop the last partial batch
            shard = batch_size // self.world  # this rank's slice of each global batch
            if self.sampler == "class_balanced":  # every class in every (per-rank) batch
                from hashlearn.train.sampler import class_balanced_order

                order = class_balanced_order(self.train_labels.numpy(), n_batches, batch_size,
                                             self.seed * 1_000_003 + epoch, self.world)
            offset = distributed.rank() * shard
            if self.world > 1:
                gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_009 + distributed.rank())
            self.method.on_epoch_start(self.state)
            subset = getattr(self.method, "epoch_images", lambda state: None)(self.state)
            if subset is not None:  # the method's images for this epoch (ADSH's Ω), in a seeded order
                subset = torch.as_tensor(subset).cpu().long().numpy()
                pick = torch.Generator().manual_seed(self.seed * 1_000_033 + epoch)
                order = subset[torch.randperm(len(subset), generator=pick).numpy()]
                n_batches = len(order) // batch_size if len(order) >= batch_size else 1
            self._set_lr(epoch)
            lrs = [g["lr"] for g in self.optimizer.param_groups]
            self.model.train()
            t0 = time.perf_counter()
            total, parts_sum, seen = 0.0, {}, 0
            bar = progress_bar(range(n_batches), self.progress, f"epoch {epoch}/{epochs}", unit="batch")
            for b in bar:
                if self.world > 1:
                    idx = order[b * batch_size + offset:b * batch_size + offset + shard]
                else:
                    idx = order[b * batch_size:(b + 1) * batch_size]
                x = self._inputs(self.train, idx, train=True, generator=gen)
                labels = self.train_labels[idx].to(self.device) if self.supervised else None
                batch = Batch(labels=labels, index=torch.as_tensor(idx), inputs=x)
                out = self.net(x, at=self.train.at)
                parts = self.method.loss(out, batch)
                loss = total_loss(parts)
                if not torch.isfinite(loss):
                    bad = ", ".join(k for k, v in parts.items() if not torch.isfinite(v))
                    raise InputError(f"loss became {float(loss)} at epoch {epoch} ({bad}); lower optim.lr")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.state.step += 1
                self.method.on_batch_end(self.state, batch, out)
                total += float(loss.detach()) * len(idx)
                values = torch.stack([p.detach().float() for p in parts.values()]).tolist()  # one device sync
                for k, v in zip(parts, values, strict=True):
                    parts_sum[k] = parts_sum.get(k, 0.0) + v * len(idx)
                seen += len(idx)
                if hasattr(bar, "set_postfix"):
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{total / seen:.4f}", img_s=f"{rate:.0f}")
            self.method.on_epoch_end(self.state)
            if self.world > 1:  # the epoch's sums over every rank's shard
                sums = torch.tensor([total, float(seen), *parts_sum.values()], dtype=torch.float64, device=self.device)
                sums = distributed.all_reduce_sum(sums).tolist()
                total, seen = sums[0], int(sums[1])
                parts_sum = dict(zip(parts_sum, sums[2:], strict=True))
            epoch_seconds = time.perf_counter() - t0
            seconds += epoch_seconds
            images += seen
            record = {"epoch": epoch, "loss": total / max(seen, 1),
                      "parts": {k: v / max(seen, 1) for k, v in parts_sum.items()},
                      "lr": lrs,
                      "seconds": round(epoch_seconds, 3),
                      "images_per_second": round(seen / max(epoch_seconds, 1e-9), 1)}
            if not self.main:  # rank 0 validates and writes; here: its verdict (best, early stop)
                distributed.barrier()
                verdict = distributed.broadcast(torch.zeros(4, dtype=torch.float64, device=self.device)).tolist()
                best = {"map": None if math.isnan(verdict[0]) else verdict[0], "epoch": int(verdict[1])}
                bad_evals, stopped_early = int(verdict[2]), bool(verdict[3])
                if stopped_early:
                    break
                continue
            if self.val is not None and (epoch % eval_every == 0 or epoch == epochs):
                val_map = self.validate()
                record["val_map"] = val_map
                if best["map"] is None or val_map > best["map"]:
                    best = {"map": val_map, "epoch": epoch}
                    bad_evals = 0
                    self._save({"epoch": epoch, "model": self.model.trainable_state(), "val_map": val_map},
                               self.best_path)
                else:
                    bad_evals += 1
            elif self.val is None:
                best = {"map": None, "epoch": epoch}
                self._save({"epoch": epoch, "model": self.model.trainable_state(), "val_map": None}, self.best_path)
            record["best_epoch"] = best["epoch"]
            with open(self.out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            stopped_early = patience > 0 and bad_evals >= patience and epoch < epochs
            self._checkpoint(epoch, best, bad_evals, seconds, images, stopped_early)
            if self.world > 1:
                distributed.barrier()
                distributed.broadcast(torch.tensor([math.nan if best["map"] is None else best["map"], best["epoch"],
                                                    bad_evals, float(stopped_early)],
                                                   dtype=torch.float64, device=self.device))
            val_txt = f" val mAP {record['val_map']:.4f}" if "val_map" in record else ""
            parts_txt = " (" + ", ".join(f"{k} {v:.4f}" for k, v in record["parts"].items()) + ")"
            self._say(f"epoch {epoch}/{epochs} loss {record['loss']:.4f}{parts_txt}{val_txt} "
                      f"({record['images_per_second']:.0f} img/s, best epoch {best['epoch']})")
            if stopped_early:
                self._say(f"early stopping: no validation improvement in {patience} evaluations")
                break
        if self.main and self.best_path.exists():
            self.model.load_trainable_state(load_checkpoint(self.best_path, map_location=self.device)["model"],
                                            where=str(self.best_path))
        return TrainResult(best_epoch=int(best["epoch"]), best_val_map=best["map"],
                           epochs_run=last_epoch,
                           training_seconds=seconds, images_per_second=images / max(seconds, 1e-9),
                           stopped_early=stopped_early)

    def validate(self) -> float:
        """mAP of validation codes against training-set codes (never the query split)."""
        q = self.forward_all(self.val)
        db = self.forward_all(self.train)
        return float(self.evaluator(sign(q.numpy()), sign(db.numpy()), np.asarray(self.val.labels),
                                    self.train_labels.numpy()))

    def _say(self, text: str) -> None:
        if self.progress:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)


def _check_plain(obj: Any, where: str) -> None:
    """Checkpoints hold only what ``torch.load(weights_only=True)`` reads back: tensors, numbers,
    strings, None and lists/tuples/dicts of them (a method's state included)."""
    if obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str)):
        return
    if isinstance(obj, (list, tuple)):
        for x in obj:
            _check_plain(x, where)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where}: {type(obj).__name__} cannot be checkpointed; use tensors and plain values "
                    f"(a numpy array: torch.from_numpy; an RNG state: its tensor or a list of ints)")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("method_args", "backbone_args", "protocol_args"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _changed_setting(saved: Any, config: dict) -> str | None:
    """The first setting (other than :data:`RESUME_FREE`) that differs, as ``"key: old → new"``."""
    if not isinstance(saved, dict):
        return None  # a checkpoint from before settings were stored in it
    now = _flatten(json.loads(json.dumps(config, default=str)))
    before = _flatten(saved)
    defaults = _flatten(json.loads(json.dumps(RunConfig().to_dict(), default=str)))
    for flat in (now, before):
        if not isinstance(flat.get("bits"), list):
            flat["bits"] = [flat.get("bits")]
    free = lambda k: any(k == f or k.startswith(f + ".") for f in RESUME_FREE)  # noqa: E731
    for key in sorted(set(now) | set(before)):
        if key not in before and key in defaults and now.get(key) == defaults[key]:
            continue  # a setting newer than the checkpoint, at its default: what the older version did
        if not free(key) and now.get(key) != before.get(key):
            return f"{key}: {before.get(key)!r} → {now.get(key)!r}"
    return None


def make_validation_evaluator(config: RunConfig):
    """The model-selection metric: mAP@R (R = ``train.val_topk``) of the validation queries
    against the training images, computed by :func:`hashlearn.eval.evaluate` (the one
    evaluator) with the run's tie rule."""
    topk, ties = config.train.val_topk, config.eval.ties

    def evaluator(q_codes, db_codes, q_labels, db_labels) -> float:
        from hashlearn.eval import evaluate

        result = evaluate(q_codes, db_codes, q_labels, db_labels, topk=(topk,), ties=ties)
        return float(next(iter(result.map.values())))

    return evaluator


# --- feeds: what the model reads for the items of one split part ------------------------------

def _to(x, device: torch.device):
    if isinstance(x, dict):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def _feed(part, model: HashModel, config: RunConfig, image_size: int | None):
    """A feed from a feed, None, or a mapping ``{"images" | "features": ..., "labels": ...}``."""
    if part is None or isinstance(part, Feed):
        return part
    if "features" in part:
        return FeatureFeed(part["features"], part["labels"])
    size = image_size or model.backbone.input_size
    return ImageFeed(part["images"], part["labels"], model.backbone, size, config.augment.hflip,
                     config.augment.crop_padding)


class Feed:
    """The model's inputs for the items ``0 .. len - 1`` of one split part, and their ``labels``.
    ``at``: the cut whose map :meth:`inputs` returns (the model runs ``forward_from``), else None."""

    at: str | None = None
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, idx: np.ndarray, train: bool, generator: torch.Generator | None):
        raise NotImplementedError


class ImageFeed(Feed):
    """Images (uint8 NHWC, any indexable), preprocessed for the backbone and, in training,
    augmented (random flips, translations by up to ``padding`` px)."""

    def __init__(self, images, labels, backbone, size: int, hflip: bool, padding: int):
        self.images, self.labels = images, np.asarray(labels)
        self.backbone, self.size, self.hflip, self.padding = backbone, int(size), bool(hflip), int(padding)

    def inputs(self, idx, train, generator):
        x = self.backbone.preprocess(np.asarray(self.images[idx]), self.size)
        if train:
            x = augment(x, self.hflip, self.padding, generator)
        return x


class FeatureFeed(Feed):
    """Cached pooled features ``{tap: (n, C)}`` (frozen mode)."""

    def __init__(self, features: dict[str, np.ndarray], labels):
        self.features, self.labels = features, np.asarray(labels)

    def inputs(self, idx, train, generator):
        return {t: torch.as_tensor(np.asarray(v[idx]), dtype=torch.float32) for t, v in self.features.items()}


class MapFeed(Feed):
    """Cached maps (:class:`~hashlearn.nn.ActivationCache`, rows = dataset indices ``rows``).

    In training each image's map is the original's or its mirror's (seeded draw, the flip
    augmentation of cached maps) when ``hflip`` and the cache holds mirrors; otherwise the
    original. With a cut ``at``, :meth:`inputs` is the map at the cut; without, a dict
    ``{tap: map}`` for a frozen head (``"pool"`` = the spatial mean of the pooled tap's map)."""

    def __init__(self, caches: dict, rows: np.ndarray, labels, hflip: bool, at: str | None = None,
                 sources: dict[str, str] | None = None):
        self.caches, self.rows, self.labels = caches, np.asarray(rows, dtype=np.int64), np.asarray(labels)
        self.hflip = bool(hflip) and all(c.views > 1 for c in caches.values())
        self.at = at
        self.sources = sources or {t: t for t in caches}

    def inputs(self, idx, train, generator):
        rows = self.rows[np.asarray(idx)]
        flips = (torch.rand(len(rows), generator=generator) < 0.5).numpy() if train and self.hflip else False
        maps = {t: c.get(rows, flips) for t, c in self.caches.items()}
        if self.at is not None:
            return maps[self.at]
        return {t: (maps[src].mean(dim=(2, 3)) if t == "pool" else maps[src]) for t, src in self.sources.items()}


def make_feeds(hasher, job) -> tuple[dict[str, Feed], dict]:
    """One feed per split part (``train``, ``val``, ``query``, ``database``) for the deep ``hasher``
    and what ``run.json`` records about cached inputs (the cut, the cache key and path)."""
    from hashlearn.train.run import IndexedImages, Scatter

    cfg: RunConfig = hasher.config
    model: HashModel = hasher.model
    backbone, taps = model.backbone, model.taps
    ds, parts, size = job.dataset, job.parts, hasher.image_size
    labels = {k: np.asarray(ds.labels[v]) for k, v in parts.items()}
    fbs = cfg.train.feature_batch_size
    extra: dict = {}

    def say(text: str) -> None:
        if job.progress:
            print(text, file=sys.stderr, flush=True)

    def activations(tap: str):
        from hashlearn.nn import extract_activations

        return extract_activations(backbone, ds, tap, size, flip=cfg.augment.hflip, dtype=cfg.activation_dtype,
                                   batch_size=fbs, progress=job.progress)

    def record(cache) -> dict:
        return {"tap": cache.tap, "key": cache.key, "path": str(cache.path)}

    def describe(cache) -> dict:  # for metrics.json: what the cache is and what making it cost
        return {"tap": cache.tap, "path": str(cache.path), "shape": list(cache.array.shape), "dtype": cache.dtype,
                "nbytes": cache.nbytes, "seconds": cache.manifest.get("seconds"),
                "images_per_second": cache.manifest.get("images_per_second")}

    if cfg.finetune_from:
        cut = cfg.finetune_from
        if cfg.augment.crop_padding:
            say(f"note: augment.crop_padding ({cfg.augment.crop_padding}) does not apply to cached maps; ignored "
                f"(flips use the stored mirror)")
        say(f"fine-tuning above {cut} of {backbone.name}: the part below runs once (cached maps), BatchNorm above "
            f"the cut {'keeps its running statistics' if cfg.finetune_bn == 'frozen' else 'uses batch statistics'} "
            f"(finetune_bn: {cfg.finetune_bn})")
        cache = activations(cut)
        extra["cut"] = {**record(cache), "bn": cfg.finetune_bn,
                        "weights_below_sha256": cache.key["weights_below_sha256"]}
        hasher.cache_info = [describe(cache)]
        feeds = {k: MapFeed({cut: cache}, v, labels[k], cfg.augment.hflip, at=cut) for k, v in parts.items()}
        return feeds, extra
    if model.frozen and not model.pooled:
        sources = {t: (backbone.pool_tap if t == "pool" else t) for t in taps}
        caches = {src: activations(src) for src in dict.fromkeys(sources.values())}
        extra["maps"] = [record(c) for c in caches.values()]
        hasher.cache_info = [describe(c) for c in caches.values()]
        feeds = {k: MapFeed(caches, v, labels[k], cfg.augment.hflip, sources=sources) for k, v in parts.items()}
        return feeds, extra
    if model.frozen:
        bargs = hasher.info.get("backbone_args") or {}
        if bargs or getattr(backbone, "weights_id", "none") == "none":
            # constructor arguments or a random network: features of exactly this backbone (not cached)
            from hashlearn.train.model import pooled_features

            needed = np.unique(np.concatenate(list(parts.values())))
            feats = pooled_features(backbone, IndexedImages(ds.images, needed)[np.arange(len(needed))], taps, size,
                                    fbs, progress=job.progress)
            features = {t: Scatter(needed, v) for t, v in feats.items()}
        else:
            from hashlearn.nn import extract_features

            features = extract_features(ds, backbone=cfg.backbone, image_size=size, taps=taps,
                                        weights=cfg.weights or "default", seed=cfg.seed, batch_size=fbs,
                                        progress=job.progress)
        feeds = {k: FeatureFeed({t: np.asarray(features[t][v], dtype=np.float32) for t in taps}, labels[k])
                 for k, v in parts.items()}
        return feeds, extra
    feeds = {k: ImageFeed(IndexedImages(ds.images, v), labels[k], backbone, size, cfg.augment.hflip,
                          cfg.augment.crop_padding) for k, v in parts.items()}
    return feeds, extra
