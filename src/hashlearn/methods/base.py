"""The interface every deep hashing method implements, and the pieces pairwise losses share.

A method is one small class (see ``dpsh.py``, ``dmsh.py``):

* hyper-parameters in ``__init__`` with defaults (``bits`` first);
* :meth:`Method.build_head` builds its head(s) on top of a backbone, given the channels of
  the backbone taps it asked for (:attr:`Method.taps`);
* :meth:`Method.loss` computes a scalar loss from the head's :class:`MethodOutput` and the
  :class:`Batch`;
* optional hooks (``on_train_start``, ``on_epoch_start``, ``on_batch_end``,
  ``on_epoch_end``) for methods that alternate network steps with code or similarity
  updates (ADSH/ExchNet database codes, DSAH similarity rounds, BCDH auxiliary codes). A
  hook receives the trainer's :class:`TrainState`, which exposes the training set's
  labels, an ``encode_train()`` function, the epoch, and ``state.method_state`` — a dict of
  tensors the method owns (saved in every checkpoint, restored on resume).

One head serves both training modes. In fine-tune mode the head receives
``{tap: (B, C, H, W)}`` feature maps; in frozen-backbone mode it receives cached pooled
vectors ``{tap: (B, C)}``. :func:`pool` turns either into ``(B, C)``, so a head that only
needs vectors works unchanged; a head with convolutional layers (DMSH) builds an MLP
instead when told ``pooled=True``.

Pairwise similarity (spec §0): ``s_ij = 1[y_i^T y_j > 0]`` for one-hot or multi-hot labels,
and for integer class labels ``s_ij = 1[y_i = y_j]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.errors import InputError


@dataclass
class Batch:
    """One mini-batch as a method sees it.

    ``labels`` are int64 class ids ``(B,)`` or multi-hot ``(B, C)``; ``index`` holds the
    batch's positions in the training set (for methods that keep per-sample state).
    """

    labels: Tensor
    index: Tensor
    inputs: Any = None


@dataclass
class MethodOutput:
    """What a head returns: ``codes`` is the relaxed code ``u`` (B, bits) that is binarised
    at test time by ``sign`` (sign(0)=+1); ``extras`` holds anything else the loss needs
    (e.g. per-scale codes)."""

    codes: Tensor
    extras: dict[str, Any] = field(default_factory=dict)


def pool(x: Tensor) -> Tensor:
    """Global average pooling of a feature map ``(B, C, H, W)``; vectors pass through."""
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    if x.dim() == 2:
        return x
    raise InputError(f"expected a feature map (B, C, H, W) or vectors (B, C), got shape {tuple(x.shape)}")


def similarity(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """``s_ij = 1[y_i^T y_j > 0]`` as float ``(len(a), len(b))``."""
    if labels_a.dim() == 1 and labels_b.dim() == 1:
        return (labels_a[:, None] == labels_b[None, :]).float()
    if labels_a.dim() == 2 and labels_b.dim() == 2:
        return ((labels_a.float() @ labels_b.float().T) > 0).float()
    raise InputError("labels must both be class ids (N,) or both multi-hot (N, C)")


def pairwise_likelihood_loss(
    u_a: Tensor,
    u_b: Tensor,
    s: Tensor,
    focal_gamma: float = 0.0,
    balance: bool = False,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean DPSH negative log-likelihood over the pairs (spec §8):
    ``ℓ_ij = log(1 + e^{Θ_ij}) − s_ij Θ_ij`` with ``Θ_ij = ½ u_i^T u_j``.

    ``focal_gamma > 0`` gives the focal form ``−(1 − p_t)^γ log p_t`` with ``p = σ(Θ)``
    (spec §7). ``balance`` weights similar and dissimilar pairs so each class of pair
    contributes half the loss (HashNet-style ``w_ij``). ``mask`` (0/1) drops pairs, e.g.
    ``i = j``.
    """
    theta = 0.5 * (u_a @ u_b.T)
    # −log p_t for p = σ(Θ): softplus(Θ) − sΘ, numerically stable for large |Θ|
    nll = F.softplus(theta) - s * theta
    if focal_gamma > 0:
        p = torch.sigmoid(theta)
        p_t = torch.where(s > 0, p, 1 - p)
        nll = (1 - p_t).pow(focal_gamma) * nll
    weights = torch.ones_like(nll) if mask is None else mask.float()
    if balance:
        pos = (s > 0).float() * weights
        neg = (s <= 0).float() * weights
        n_pos, n_neg = pos.sum().clamp(min=1), neg.sum().clamp(min=1)
        weights = pos * (0.5 / n_pos) + neg * (0.5 / n_neg)
        return (weights * nll).sum()
    return (weights * nll).sum() / weights.sum().clamp(min=1)


def quantization_loss(u: Tensor) -> Tensor:
    """``mean_i ‖u_i − sgn(u_i)‖² / bits`` (per-element mean; sgn(0) = +1)."""
    b = torch.where(u >= 0, torch.ones_like(u), -torch.ones_like(u)).detach()
    return (u - b).pow(2).mean()


class CodeMemory:
    """A first-in-first-out memory of recent (detached) codes and their labels, so a
    pairwise loss can also compare the batch against the last ``size`` training codes.
    Its tensors live in ``method_state`` so they are checkpointed."""

    def __init__(self, size: int):
        self.size = int(size)
        self.codes: Tensor | None = None
        self.labels: Tensor | None = None

    def push(self, codes: Tensor, labels: Tensor) -> None:
        codes, labels = codes.detach(), labels.detach()
        if self.codes is None:
            self.codes, self.labels = codes[-self.size :], labels[-self.size :]
        else:
            self.codes = torch.cat([self.codes, codes])[-self.size :]
            self.labels = torch.cat([self.labels, labels])[-self.size :]

    def state(self) -> dict[str, Tensor]:
        return {} if self.codes is None else {"memory_codes": self.codes, "memory_labels": self.labels}

    def load(self, state: dict[str, Tensor]) -> None:
        self.codes, self.labels = state.get("memory_codes"), state.get("memory_labels")


class Method:
    """Base class of the deep hashing methods.

    Subclasses set ``name``/``paper`` through ``@register_method`` and implement
    :meth:`build_head` and :meth:`loss`. ``kind = "deep"`` (shallow methods follow the
    scikit-learn ``fit``/``encode`` shape instead and are registered with ``kind="shallow"``).
    """

    kind = "deep"

    def __init__(self, bits: int):
        if int(bits) <= 0:
            raise InputError(f"bits must be a positive integer, got {bits}")
        self.bits = int(bits)
        self.last_parts: dict[str, float] = {}

    # --- what the trainer asks -------------------------------------------------------
    def taps(self, default_taps: list[str]) -> list[str]:
        """The backbone taps this method reads, given the backbone's multi-scale default taps.

        Default: ``["pool"]``, the globally pooled last feature map every backbone returns."""
        return ["pool"]

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        """A module mapping ``{tap: tensor}`` to a :class:`MethodOutput`."""
        raise NotImplementedError

    def loss(self, out: MethodOutput, batch: Batch) -> Tensor:
        raise NotImplementedError

    # --- optional hooks (no-ops by default) --------------------------------------------
    def on_train_start(self, state: Any) -> None:
        pass

    def on_epoch_start(self, state: Any) -> None:
        pass

    def on_batch_end(self, state: Any, batch: Batch, out: MethodOutput) -> None:
        pass

    def on_epoch_end(self, state: Any) -> None:
        pass

    # --- state the method owns (checkpointed) ---------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        pass

    def hparams(self) -> dict[str, Any]:
        """The constructor arguments as plain values (recorded in the run's config)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "last_parts"
                and isinstance(v, (int, float, str, bool, list, tuple, type(None)))}


class PairwiseMethod(Method):
    """Shared batch + memory pairwise-likelihood machinery for DPSH-family methods."""

    def __init__(self, bits: int, memory: int = 0):
        super().__init__(bits)
        self.memory = int(memory)
        if self.memory < 0:
            raise InputError(f"memory must be >= 0 (0 = no memory of recent codes), got {memory}")
        self._memory = CodeMemory(self.memory) if self.memory > 0 else None

    def pair_loss(self, u: Tensor, labels: Tensor, focal_gamma: float = 0.0, balance: bool = False) -> Tensor:
        """Pairwise loss of the batch against itself (pairs i ≠ j) and, when a memory is
        kept, against the memory of recent codes."""
        n = len(u)
        s = similarity(labels, labels)
        mask = 1 - torch.eye(n, device=u.device)
        loss = pairwise_likelihood_loss(u, u, s, focal_gamma, balance, mask)
        if self._memory is not None and self._memory.codes is not None:
            mem_codes = self._memory.codes.to(u.device)
            mem_s = similarity(labels, self._memory.labels.to(labels.device))
            loss = 0.5 * (loss + pairwise_likelihood_loss(u, mem_codes, mem_s, focal_gamma, balance))
        return loss

    def on_batch_end(self, state: Any, batch: Batch, out: MethodOutput) -> None:
        if self._memory is not None:
            self._memory.push(out.codes, batch.labels)

    def state_dict(self) -> dict[str, Tensor]:
        return self._memory.state() if self._memory is not None else {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self._memory is not None:
            self._memory.load(state)

