"""The one training loop, for every deep method, in fine-tune and frozen-backbone mode.

* Fine-tune: each batch's uint8 images are preprocessed by the backbone, augmented, and
  run through backbone + head; both are trained (separate learning rates).
* Frozen: pooled tap features of every image are computed once with the frozen backbone
  (:func:`pooled_features`); the head trains on ``{tap: (B, C)}`` vectors.

Every epoch: a checkpoint (``checkpoint.pt``, written atomically) that holds the weights,
optimizer, schedule, the method's own state, the selection state and the settings it was
trained with, and one JSON line in ``log.jsonl``. Checkpoints hold only tensors and plain
values and are read with ``torch.load(weights_only=True)``
(:func:`hashlearn.train.runfolder.load_checkpoint`), so a planted file cannot run code.
Model selection and early stopping use the mAP of the *validation* split against the
training set; the query split is never seen during training. The batch order and
augmentation of epoch ``e`` depend only on ``(seed, e)`` (no RNG state needs storing), so a
run resumed from the checkpoint of epoch ``k`` ends with the same weights as an
uninterrupted run. A resume with other settings (see :data:`RESUME_FREE`) is refused.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hashlearn.codes import sign
from hashlearn.errors import InputError
from hashlearn.methods.base import Batch, Method, MethodOutput, pool
from hashlearn.train.runfolder import load_checkpoint, short_reason, write_text_atomic

#: settings that may change when a run is resumed (they do not change the weights of the epochs done)
RESUME_FREE = ("train.epochs", "train.progress", "train.threads", "train.feature_batch_size", "train.patience",
               "device", "eval", "out")

Evaluator = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]


def pick_device(name: str = "auto") -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"device: unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None


class HashModel(nn.Module):
    """Backbone + method head. ``forward`` takes images ``(B, C, H, W)`` or, in frozen mode,
    a dict of pooled tap features."""

    def __init__(self, backbone: nn.Module, head: nn.Module, taps: list[str], frozen: bool):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.taps = list(taps)
        self.frozen = frozen
        if frozen:
            for p in backbone.parameters():
                p.requires_grad_(False)

    def forward(self, x) -> MethodOutput:
        if isinstance(x, dict):
            feats = x
        else:
            if self.frozen:
                self.backbone.eval()
                with torch.no_grad():
                    feats = self.backbone(x)
                feats = {t: pool(feats[t]) for t in self.taps}
            else:
                feats = self.backbone(x)
        return self.head({t: feats[t] for t in self.taps})

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights a run must save: the head, plus the backbone when it is trained."""
        state = self.state_dict()
        if self.frozen:
            state = {k: v for k, v in state.items() if k.startswith("head.")}
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor], where: str = "saved weights") -> None:
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes that do not fit
            raise InputError(f"{where}: the weights do not fit this model ({short_reason(exc)})") from None
        wanted = set(self.trainable_state())
        if unexpected or (wanted & set(missing)):
            raise InputError(f"{where}: the weights do not fit this model (missing {list(missing)[:3]}, "
                             f"unexpected {list(unexpected)[:3]})")


def build_head(method: Method, tap_channels: dict[str, int], pooled: bool, where: str = "method_args") -> nn.Module:
    """``method.build_head(...)``; a hyper-parameter of the wrong type is a one-line error."""
    try:
        return method.build_head(tap_channels, pooled=pooled)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{where}: cannot build the {type(method).__name__} head with "
                         f"{method.hparams()} ({short_reason(exc)})") from None


def pooled_features(backbone, images: np.ndarray, taps: list[str], size: int, batch_size: int = 256,
                    device: torch.device | None = None, progress: bool = False,
                    desc: str = "features") -> dict[str, np.ndarray]:
    """Pooled ``(N, C)`` float32 features of each tap (global average of feature maps)."""
    device = device or torch.device("cpu")
    backbone.eval()
    out: dict[str, list[np.ndarray]] = {t: [] for t in taps}
    bar = _bar(range(0, len(images), batch_size), progress, desc, unit="batch")
    with torch.no_grad():
        for start in bar:
            x = backbone.preprocess(np.asarray(images[start:start + batch_size]), size).to(device)
            feats = backbone(x)
            for t in taps:
                out[t].append(pool(feats[t]).float().cpu().numpy())
    return {t: (np.concatenate(v) if v else np.zeros((0, 0), np.float32)) for t, v in out.items()}


def _bar(iterable, enabled: bool, desc: str, **kw):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True, **kw)


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
    """What hooks see. ``method_state`` is the method's own tensors (checkpointed)."""

    trainer: Trainer
    epoch: int = 0
    step: int = 0
    train_labels: torch.Tensor | None = None
    method_state: dict[str, Any] = field(default_factory=dict)

    def encode_train(self) -> torch.Tensor:
        """Relaxed codes ``u`` of the whole training set (eval mode), ``(N, bits)``."""
        return self.trainer.forward_all(self.trainer.train_inputs, len(self.trainer.train_labels))


@dataclass
class TrainResult:
    best_epoch: int
    best_val_map: float | None
    epochs_run: int
    training_seconds: float
    images_per_second: float
    stopped_early: bool


class Trainer:
    """Train ``method`` on ``train`` (with selection on ``val``) and write to ``out_dir``.

    ``train``/``val`` are dicts with ``images`` (uint8 NHWC, fine-tune mode) or ``features``
    (dict tap → (N, C) float, frozen mode) and ``labels``. ``evaluator(q_codes, db_codes,
    q_labels, db_labels) → mAP`` takes ±1 codes; it defaults to :func:`make_validation_evaluator`.
    """

    def __init__(self, method: Method, backbone: nn.Module, config: dict, out_dir: str | Path,
                 train: dict, val: dict | None = None, evaluator: Evaluator | None = None,
                 image_size: int | None = None):
        self.method = method
        self.config = config
        self.tc = config["train"]
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.device = pick_device(config.get("device", "auto"))
        self.seed = int(config.get("seed", 0))
        self.frozen = bool(config.get("frozen", False))
        self.image_size = image_size or getattr(backbone, "input_size", None)
        self.progress = bool(self.tc.get("progress", True))
        self.evaluator = evaluator or make_validation_evaluator(config)
        if self.tc.get("threads"):
            torch.set_num_threads(int(self.tc["threads"]))
        # numba's OpenMP layer (used by the evaluator) resets the shared OpenMP thread count;
        # a different count changes float summation order, so it is restored every epoch
        self._threads = torch.get_num_threads()

        default_taps = list(getattr(backbone, "default_taps", ()) or [])
        self.taps = method.taps(default_taps)
        tap_channels = {t: backbone.tap_channels[t] for t in self.taps}
        torch.manual_seed(self.seed)
        head = build_head(method, tap_channels, pooled=self.frozen)
        self.model = HashModel(backbone, head, self.taps, self.frozen).to(self.device)

        self.train_inputs = train["features"] if self.frozen else train["images"]
        self.train_labels = torch.as_tensor(np.asarray(train["labels"]))
        self.val = val if val is not None and len(val["labels"]) > 0 else None
        if len(self.train_labels) < 2:
            raise InputError("training split has fewer than 2 images")
        self.optimizer = self._optimizer()
        self.scheduler = self._scheduler()
        self.state = TrainState(trainer=self, train_labels=self.train_labels)

    # --- optimisation -------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        oc = self.config["optim"]
        lr = float(oc["lr"])
        blr = oc.get("backbone_lr")
        if blr is None:
            blr = lr if getattr(self.model.backbone, "weights_id", "none") == "none" else lr / 10
        groups = [{"params": list(self.model.head.parameters()), "lr": lr}]
        if not self.frozen:
            groups.append({"params": [p for p in self.model.backbone.parameters() if p.requires_grad],
                           "lr": float(blr)})
        wd = float(oc.get("weight_decay", 0.0))
        name = str(oc.get("name", "adam")).lower()
        if name == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=float(oc.get("momentum", 0.9)), weight_decay=wd)
        if name == "adam":
            return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
        if name == "rmsprop":
            return torch.optim.RMSprop(groups, lr=lr, momentum=float(oc.get("momentum", 0.0)), weight_decay=wd)
        raise InputError(f"optim.name: unknown optimizer {name!r}; known: sgd, adam, rmsprop")

    def _scheduler(self):
        oc = self.config["optim"]
        name = str(oc.get("schedule", "none")).lower()
        epochs = int(self.tc["epochs"])
        if name == "none":
            return None
        if name == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(epochs, 1))
        if name == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=int(oc.get("step_size", 10)),
                                                   gamma=float(oc.get("gamma", 0.1)))
        raise InputError(f"optim.schedule: unknown schedule {name!r}; known: none, cosine, step")

    # --- inputs -------------------------------------------------------------------------
    def _inputs(self, source, idx: np.ndarray, train: bool, generator: torch.Generator | None = None):
        if self.frozen:
            return {t: torch.as_tensor(np.asarray(source[t][idx]), dtype=torch.float32).to(self.device)
                    for t in self.taps}
        x = self.model.backbone.preprocess(np.asarray(source[idx]), self.image_size)
        if train:
            ac = self.config.get("augment", {}) or {}
            x = augment(x, bool(ac.get("hflip", False)), int(ac.get("crop_padding", 0)), generator)
        return x.to(self.device)

    def forward_all(self, source, n: int) -> torch.Tensor:
        """Relaxed codes of ``n`` items of ``source`` in eval mode (no augmentation)."""
        torch.set_num_threads(self._threads)
        was_training = self.model.training
        self.model.eval()
        bs = int(self.tc.get("feature_batch_size", 256))
        outs = []
        with torch.no_grad():
            for start in range(0, n, bs):
                idx = np.arange(start, min(n, start + bs))
                outs.append(self.model(self._inputs(source, idx, train=False)).codes.float().cpu())
        self.model.train(was_training)
        u = torch.cat(outs) if outs else torch.zeros(0, self.method.bits)
        if not torch.isfinite(u).all():
            raise InputError(f"training diverged: the network's codes are not finite (epoch {self.state.epoch}); "
                             f"lower optim.lr (now {self.config['optim']['lr']})")
        return u

    # --- checkpoints --------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def _save(self, obj: dict, path: Path) -> None:
        _check_plain(obj, path.name)
        tmp = path.with_name(path.name + ".tmp")
        try:
            torch.save(obj, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _checkpoint(self, epoch: int, best: dict, bad_evals: int, seconds: float, images: int,
                    stopped_early: bool = False) -> None:
        self._save({
            "epoch": epoch,
            "model": self.model.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "method_state": self.method.state_dict(),
            "best": best,
            "bad_evals": bad_evals,
            "seconds": seconds,
            "images": images,
            "step": self.state.step,
            "stopped_early": stopped_early,
            "config": json.loads(json.dumps(self.config, default=str)),
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
        changed = _changed_setting(ckpt.get("config"), self.config)
        if changed:
            raise InputError(f"{path} was trained with other settings ({changed}){again}")
        self.model.load_trainable_state(ckpt["model"], where=str(path))
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scheduler and ckpt.get("scheduler"):
                self.scheduler.load_state_dict(ckpt["scheduler"])
            self.method.load_state_dict(ckpt.get("method_state") or {})
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
            raise InputError(f"{path}: its optimizer or method state does not fit this run "
                             f"({short_reason(exc)}){again}") from None
        self.state.step = int(ckpt.get("step", 0) or 0)
        # drop log lines of epochs after the checkpoint (the killed run may have logged them, or half a line)
        log = self.out_dir / "log.jsonl"
        if log.exists():
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
        epochs = int(self.tc["epochs"])
        batch_size = int(self.tc["batch_size"])
        eval_every = max(1, int(self.tc.get("eval_every", 1)))
        patience = int(self.tc.get("patience", 0) or 0)
        n = len(self.train_labels)
        best = {"map": None, "epoch": 0}
        bad_evals, seconds, images, start_epoch = 0, 0.0, 0, 1
        ckpt = self._resume() if resume else None
        if ckpt is not None:
            best, bad_evals = ckpt["best"], ckpt["bad_evals"]
            seconds, images, start_epoch = ckpt["seconds"], ckpt["images"], ckpt["epoch"] + 1
            self._say(f"resuming from epoch {ckpt['epoch']} ({self.checkpoint_path})")
        elif not resume:
            for p in (self.checkpoint_path, self.best_path, self.out_dir / "log.jsonl"):
                p.unlink(missing_ok=True)
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
            self.method.on_epoch_start(self.state)
            self.model.train()
            if self.frozen:
                self.model.backbone.eval()
            t0 = time.perf_counter()
            total, parts_sum, seen = 0.0, {}, 0
            bar = _bar(range(n_batches), self.progress, f"epoch {epoch}/{epochs}", unit="batch")
            for b in bar:
                idx = order[b * batch_size:(b + 1) * batch_size]
                x = self._inputs(self.train_inputs, idx, train=True, generator=gen)
                labels = self.train_labels[idx].to(self.device)
                batch = Batch(labels=labels, index=torch.as_tensor(idx), inputs=x)
                out = self.model(x)
                loss = self.method.loss(out, batch)
                if not torch.isfinite(loss):
                    raise InputError(f"loss became {float(loss)} at epoch {epoch}; lower optim.lr")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.state.step += 1
                self.method.on_batch_end(self.state, batch, out)
                total += float(loss.detach()) * len(idx)
                for k, v in self.method.last_parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v * len(idx)
                seen += len(idx)
                if self.progress and hasattr(bar, "set_postfix"):
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{total / seen:.4f}", img_s=f"{rate:.0f}")
            if self.scheduler:
                self.scheduler.step()
            self.method.on_epoch_end(self.state)
            epoch_seconds = time.perf_counter() - t0
            seconds += epoch_seconds
            images += seen
            record = {"epoch": epoch, "loss": total / max(seen, 1),
                      "parts": {k: v / max(seen, 1) for k, v in parts_sum.items()},
                      "lr": [g["lr"] for g in self.optimizer.param_groups],
                      "seconds": round(epoch_seconds, 3),
                      "images_per_second": round(seen / max(epoch_seconds, 1e-9), 1)}
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
            val_txt = f" val mAP {record['val_map']:.4f}" if "val_map" in record else ""
            self._say(f"epoch {epoch}/{epochs} loss {record['loss']:.4f}{val_txt} "
                      f"({record['images_per_second']:.0f} img/s, best epoch {best['epoch']})")
            if stopped_early:
                self._say(f"early stopping: no validation improvement in {patience} evaluations")
                break
        if self.best_path.exists():
            self.model.load_trainable_state(load_checkpoint(self.best_path, map_location=self.device)["model"],
                                            where=str(self.best_path))
        return TrainResult(best_epoch=int(best["epoch"]), best_val_map=best["map"],
                           epochs_run=last_epoch,
                           training_seconds=seconds, images_per_second=images / max(seconds, 1e-9),
                           stopped_early=stopped_early)

    def validate(self) -> float:
        """mAP of validation codes against training-set codes (never the query split)."""
        val_inputs = self.val["features"] if self.frozen else self.val["images"]
        q = self.forward_all(val_inputs, len(self.val["labels"]))
        db = self.forward_all(self.train_inputs, len(self.train_labels))
        return float(self.evaluator(sign(q.numpy()), sign(db.numpy()), np.asarray(self.val["labels"]),
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
    free = lambda k: any(k == f or k.startswith(f + ".") for f in RESUME_FREE)  # noqa: E731
    for key in sorted(set(now) | set(before)):
        if not free(key) and now.get(key) != before.get(key):
            return f"{key}: {before.get(key)!r} → {now.get(key)!r}"
    return None


def make_validation_evaluator(config: dict):
    """The model-selection metric: mAP@R (R = ``train.val_topk``) of the validation queries
    against the training images, computed by :func:`hashlearn.eval.evaluate` (the one
    evaluator) with the run's tie rule."""
    topk = config.get("train", {}).get("val_topk", "all")
    ties = config.get("eval", {}).get("ties", "expected")

    def evaluator(q_codes, db_codes, q_labels, db_labels) -> float:
        from hashlearn.eval import evaluate

        result = evaluate(q_codes, db_codes, q_labels, db_labels, topk=(topk,), ties=ties)
        return float(next(iter(result.map.values())))

    return evaluator
