"""The interface every deep hashing method implements, and the pieces its losses share.

A method is one small class (see ``dpsh.py``, ``dmsh.py``):

* hyper-parameters in ``__init__`` with defaults (``bits`` first), each checked there for
  type and range (:func:`check_int`, :func:`check_number`, :func:`check_choice`, …: an
  :class:`~hashlearn.errors.InputError` naming the method and the argument);
* :meth:`Method.build_head` builds its head(s) on top of a backbone, given the channels of
  the backbone taps it asked for (:attr:`Method.taps`);
* :meth:`Method.loss` returns the loss as **named parts** ``{name: scalar tensor}``, each
  already weighted; the total is their sum, :func:`total_loss` (pytorch-metric-learning's
  named sub-losses), so the training log shows every term;
* optional hooks (``on_train_start``, ``on_epoch_start``, ``on_batch_end``,
  ``on_epoch_end``) for methods that alternate network steps with code or similarity
  updates (ADSH/ExchNet database codes, DSAH similarity rounds, BCDH auxiliary codes). A
  hook receives the trainer's :class:`TrainState`, which exposes the training set's
  labels, an ``encode_train()`` function, the epoch, and ``state.method_state``;
* memories (:mod:`hashlearn.methods.memory`: a FIFO of recent codes, the per-image codes
  ``U``) registered in ``self._memories`` are updated by the default :meth:`Method.on_batch_end`
  and saved by :meth:`Method.state_dict` (tensors only: checkpoints are read with
  ``torch.load(weights_only=True)``). Miners (:mod:`hashlearn.methods.miners`) and reusable
  loss terms (:mod:`hashlearn.methods.losses`) are separate small objects a method composes.

One head serves every training mode. End to end, and when fine-tuning above a cached cut
(``--finetune-from TAP``), the head receives ``{tap: (B, C, H, W)}`` feature maps; with a
frozen backbone it receives cached pooled vectors ``{tap: (B, C)}``, or cached maps when the
method sets ``spatial = True``. :func:`pool` turns either into ``(B, C)``, so a head that only
needs vectors works unchanged; a head with convolutional layers (DMSH) builds an MLP
instead when told ``pooled=True``.

Pairwise similarity (spec §0): ``s_ij = 1[y_i^T y_j > 0]`` for one-hot or multi-hot labels,
and for integer class labels ``s_ij = 1[y_i = y_j]``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.errors import InputError


@dataclass
class Batch:
    """One mini-batch as a method sees it.

    ``labels`` are int64 class ids ``(B,)`` or multi-hot ``(B, C)`` — None for a label-free
    method (``Method.supervised = False``); ``index`` holds the batch's positions in the training
    set (for methods that keep per-sample state).
    """

    labels: Tensor | None
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
    scale: float = 0.5,
) -> Tensor:
    """Mean DPSH negative log-likelihood over the pairs (spec §8):
    ``ℓ_ij = log(1 + e^{Θ_ij}) − s_ij Θ_ij`` with ``Θ_ij = scale · u_i^T u_j`` (DPSH: ½;
    HashNet/DHN call it α). ``s`` may be soft (in [0, 1]): the cross-entropy of σ(Θ) to ``s``.

    ``focal_gamma > 0`` gives the focal form ``−(1 − p_t)^γ log p_t`` with ``p = σ(Θ)``
    (spec §7). ``balance`` weights similar and dissimilar pairs so each class of pair
    contributes half the loss (HashNet-style ``w_ij``). ``mask`` (0/1 or bool) drops pairs,
    e.g. ``i = j``.
    """
    theta = scale * (u_a @ u_b.T)
    # −log p_t for p = σ(Θ): softplus(Θ) − sΘ, numerically stable for large |Θ|
    nll = F.softplus(theta) - s * theta
    if focal_gamma > 0:
        p = torch.sigmoid(theta)
        p_t = torch.where(s > 0, p, 1 - p)
        nll = (1 - p_t).pow(focal_gamma) * nll
    return pair_mean(nll, s, mask, balance)


def pair_mean(values: Tensor, s: Tensor, mask: Tensor | None = None, balance: bool = False) -> Tensor:
    """The mean of a pair loss ``values`` ``(B, M)`` over the pairs ``mask`` keeps (all when None).

    ``balance``: HashNet's weights ``w_ij = |S|/|S_1|`` for similar pairs (``s > 0``) and
    ``|S|/|S_0|`` for dissimilar ones (Cao et al., ICCV 2017, Eq. 4; DCH reuses them), divided by
    ``2|S|`` — each kind of pair then weighs half: ``½ mean_{S_1} + ½ mean_{S_0}``."""
    weights = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    if balance:
        pos = (s > 0).to(values.dtype) * weights
        neg = (s <= 0).to(values.dtype) * weights
        n_pos, n_neg = pos.sum().clamp(min=1), neg.sum().clamp(min=1)
        weights = pos * (0.5 / n_pos) + neg * (0.5 / n_neg)
        return (weights * values).sum()
    return (weights * values).sum() / weights.sum().clamp(min=1)


def quantization_loss(u: Tensor) -> Tensor:
    """``mean_{i,d} (u_id − sgn(u_id))²`` — ``Σ_i ‖u_i − b_i‖²`` (spec §8) as a per-entry mean;
    ``b = sgn(u)`` with sgn(0) = +1, held constant (no gradient through the sign)."""
    b = torch.where(u >= 0, torch.ones_like(u), -torch.ones_like(u)).detach()
    return (u - b).pow(2).mean()


def total_loss(parts: dict[str, Tensor]) -> Tensor:
    """The loss to minimise: the sum of a method's named, already weighted parts.

    ``parts`` is what :meth:`Method.loss` returns; a method that returns anything else (a bare
    tensor, a non-scalar part) is a bug, so this raises ``TypeError``."""
    if not isinstance(parts, dict) or not parts:
        raise TypeError(f"Method.loss must return a non-empty dict {{name: scalar tensor}}, got {type(parts).__name__}")
    total = None
    for name, value in parts.items():
        if not isinstance(name, str) or not isinstance(value, Tensor) or value.dim() != 0:
            raise TypeError(f"loss part {name!r} must be a scalar tensor named by a string, got "
                            f"{type(value).__name__} {tuple(getattr(value, 'shape', ()))}")
        total = value if total is None else total + value
    return total


# --- hyper-parameter checks (one line naming the method and the argument) ------------------
def check_int(who: str, name: str, value: Any, minimum: int | None = None) -> int:
    """An integer (an integral float such as YAML's ``8.0`` is accepted; ``True`` is not)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    need = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (minimum is not None and value < minimum):
        raise InputError(f"{who}: {name} must be {need}, got {value!r}")
    return int(value)


def check_number(who: str, name: str, value: Any, minimum: float | None = None) -> float:
    """A finite number ``>= minimum``; a numeric string is accepted (YAML reads ``1e-3`` as one)."""
    need = "a finite number" + (f" >= {minimum:g}" if minimum is not None else "")
    given = value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InputError(f"{who}: {name} must be {need}, got {given!r}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (minimum is not None and value < minimum):
        raise InputError(f"{who}: {name} must be {need}, got {given!r}")
    return float(value)


def check_bool(who: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{who}: {name} must be true or false, got {value!r}")
    return value


def check_choice(who: str, name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{who}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_tap(who: str, tap: Any) -> str | None:
    """A backbone tap name, or None (the method's default tap)."""
    if tap is not None and (not isinstance(tap, str) or not tap):
        raise InputError(f"{who}: tap must be a backbone tap name or null, got {tap!r}")
    return tap


def check_names(who: str, name: str, value: Any, none: bool = True) -> list[str] | None:
    """A non-empty list of non-empty strings (backbone tap names), or None when ``none``."""
    if value is None and none:
        return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise InputError(f"{who}: {name} must be a non-empty list of names{' or null' if none else ''}, got {value!r}")


class Method:
    """Base class of the deep hashing methods.

    Subclasses set ``name``/``paper`` through ``@register_method`` and implement
    :meth:`build_head` and :meth:`loss`. ``kind = "deep"`` (shallow methods follow the
    scikit-learn ``fit``/``encode`` shape instead and are registered with ``kind="shallow"``).
    """

    kind = "deep"
    #: the prefix of this method's error messages (subclasses set their registered name)
    name = "method"
    #: True: the head reads spatial maps ``{tap: (B, C, H, W)}`` in every mode (attention, VLAD,
    #: part or conv scale heads), so a frozen backbone gives it cached maps at its taps instead of
    #: pooled vectors. False: pooled vectors are enough when the backbone is frozen.
    spatial = False
    #: True: the method learns the database codes itself (ADSH's ``V``, :meth:`database_codes`), so
    #: ``eval.retrieval: asymmetric`` can rank the database by them
    learns_database_codes = False
    #: False: a label-free method (DSAH, BCDH, the unsupervised baselines); the trainer passes its
    #: loss ``Batch.labels = None`` and its hooks ``TrainState.train_labels = None`` (labels are then
    #: read only to validate, i.e. select the epoch, and to evaluate)
    supervised = True

    def __init__(self, bits: int):
        self.bits = check_int(self.name, "bits", bits, minimum=1)
        #: memories this method owns, by name (their tensors are its checkpointed state)
        self._memories: dict[str, Any] = {}

    # --- what the trainer asks -------------------------------------------------------
    def taps(self, default_taps: list[str]) -> list[str]:
        """The backbone taps this method reads, given the backbone's multi-scale default taps.

        Default: ``["pool"]``, the globally pooled last feature map every backbone returns."""
        return ["pool"]

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        """A module mapping ``{tap: tensor}`` to a :class:`MethodOutput`."""
        raise NotImplementedError

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        """The loss's named parts ``{name: scalar tensor}``, each already weighted; the
        trainer minimises their sum (:func:`total_loss`) and logs each one's epoch mean.
        A loss reads the memories but never changes them (they change in ``on_batch_end``)."""
        raise NotImplementedError

    # --- optional hooks ----------------------------------------------------------------
    def on_train_start(self, state: Any) -> None:
        pass

    def on_epoch_start(self, state: Any) -> None:
        pass

    def on_batch_end(self, state: Any, batch: Batch, out: MethodOutput) -> None:
        """Default: every memory takes the batch's (index, detached codes, labels).

        Data parallelism: each rank's loss sees only its own batch, but every rank's memories
        must hold the same rows. A distributed trainer gives its ``TrainState`` an
        ``all_gather(tensor) -> tensor`` (the ranks' tensors concatenated in rank order); the
        rows are then gathered before :meth:`update_memories`, so all ranks stay identical."""
        if self._memories:
            self.update_memories(batch.index, out.codes, batch.labels, gather=getattr(state, "all_gather", None))

    def on_epoch_end(self, state: Any) -> None:
        pass

    def epoch_images(self, state: Any) -> Tensor | None:
        """The training images (indices) this epoch's steps run over, asked right after
        :meth:`on_epoch_start`; None (default): all of them. ADSH returns its sampled subset Ω; the
        trainer shuffles it with the epoch's seed (the same order on every rank)."""
        return None

    def database_codes(self) -> Tensor | None:
        """±1 codes ``(N, bits)`` the method learned for the N training images (row i = training
        image i, the trainer's order), for asymmetric retrieval; None (default): none."""
        return None

    def update_memories(self, index: Tensor, codes: Tensor, labels: Tensor,
                        gather: Callable[[Tensor], Tensor] | None = None) -> None:
        """Write the rows ``(index, codes, labels)`` into every memory (codes detached);
        ``gather`` (e.g. an all-gather across ranks) is applied to each tensor first."""
        codes = codes.detach()
        index = index.to(codes.device)
        labels = labels.to(codes.device)
        if gather is not None:
            index, codes, labels = gather(index), gather(codes), gather(labels)
        for memory in self._memories.values():
            memory.update(index, codes, labels)

    # --- state the method owns (checkpointed) ---------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Tensors only, ``"<memory>.<tensor>"``: what ``torch.load(weights_only=True)`` reads back."""
        return {f"{name}.{key}": value for name, memory in self._memories.items()
                for key, value in memory.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`'s tensors; a key no memory owns is a ``KeyError``."""
        owned = {name: {} for name in self._memories}
        for key, value in state.items():
            name, _, rest = key.partition(".")
            if name not in owned or not rest:
                raise KeyError(f"method state {key!r} belongs to no memory of {type(self).__name__}")
            owned[name][rest] = value
        for name, memory in self._memories.items():
            memory.load_state_dict(owned[name])

    def hparams(self) -> dict[str, Any]:
        """The constructor arguments as plain values (recorded in the run's config)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")
                and isinstance(v, (int, float, str, bool, list, tuple, type(None)))}
