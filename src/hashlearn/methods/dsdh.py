"""DSDH — Deep Supervised Discrete Hashing (Li, Sun, He, Tan, NIPS 2017); spec §8.

The codes ``B ∈ {−1, +1}^{N×k}`` of the N training images are variables of their own, tied to
the network's outputs ``U`` and classified linearly by ``W``::

    min_{B,W,Θ}  −Σ_{s_ij} (s_ij Ω_ij − log(1 + e^{Ω_ij})) + μ ‖Y − B W‖² + ν ‖W‖² + η ‖B − U‖²,
    Ω_ij = ½ u_i^T u_j

The network step (:meth:`DSDH.loss`, ``B`` fixed) minimises the likelihood and ``η ‖B − U‖²``;
after every epoch (``on_epoch_end``), with ``U`` fixed (the per-image memory of ``pairs="all"``
when every row is written, else a pass over the training set), ``dcc_iters`` rounds of:

* W-step (ridge regression): ``W = (BᵀB + (ν/μ) I)⁻¹ Bᵀ Y``;
* B-step (discrete cyclic coordinate descent, bit by bit): with ``Q = μ Y Wᵀ + η U``, bit ``d``
  is ``b_d = sgn(q_d − μ B' W' w_d)`` (``B'``, ``W'``: the other bits' columns / rows, ``w_d``
  row ``d`` of ``W``) — the exact minimiser over that bit, so the objective never increases.

``B`` (initially ``sgn(U)`` of the untrained network) and ``W`` are the method's state (tensors,
checkpointed). Defaults ``μ = 1``, ``ν = 0.1``, ``η = 55``, ``dcc_iters = 10``: the DSDH_PyTorch
re-implementation's (TreezzZ), which match the paper's CIFAR-10 setting as we recall it [RECALL].

Normalisation: the network loss is the paper's objective divided by ``N²``, estimated on the
batch: ``likelihood`` = the mean over the pairs of ``pairs`` (DPSH's
:class:`~hashlearn.methods.losses.PairwiseLikelihood`), ``quantization`` =
``η · mean_{i∈batch} ‖b_i − u_i‖² / N``, so μ, ν, η keep the paper's relative weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, MethodOutput, check_int, check_number
from hashlearn.methods.hashlayer import HashLayerHead, count_classes, label_matrix, tap_of
from hashlearn.methods.losses import PairwiseLikelihood
from hashlearn.methods.pairwise import PairwiseMethod
from hashlearn.methods.shallow_supervised import dcc_b_step, discrete_objective, ridge_w
from hashlearn.methods.ssdh import check_classes


def _sgn(x: Tensor) -> Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def discrete_step(B: Tensor, U: Tensor, Y: Tensor, mu: float, nu: float, eta: float,
                  rounds: int) -> tuple[Tensor, Tensor, list[float]]:
    """``rounds`` of W-step then B-step with ``U`` fixed (the one implementation SDH shares:
    :func:`~hashlearn.methods.shallow_supervised.ridge_w`,
    :func:`~hashlearn.methods.shallow_supervised.dcc_b_step`); returns ``B``, ``W`` and the
    objective after each round."""
    b, u, y = (x.detach().cpu().double().numpy() for x in (B, U, Y))
    trace = []
    for _ in range(rounds):
        w = ridge_w(b, y, nu / mu)
        b = dcc_b_step(b, w, u, y, mu, eta)
        trace.append(discrete_objective(b, w, u, y, mu, nu, eta))
    return (torch.from_numpy(b).to(U.device, torch.float32), torch.from_numpy(w).to(U.device, torch.float32),
            trace)


@register_method(
    "dsdh",
    paper="Li, Sun, He, Tan. Deep Supervised Discrete Hashing. NIPS 2017",
    kind="deep",
)
class DSDH(PairwiseMethod):
    """Pairwise likelihood + linear classification of discrete codes B (DCC B-step each epoch)."""

    name = "dsdh"

    def __init__(self, bits: int, mu: float = 1.0, nu: float = 0.1, eta: float = 55.0, dcc_iters: int = 10,
                 pairs: str = "all", memory_size: int = 0, classes: int | None = None):
        super().__init__(bits, pairs=pairs, memory_size=memory_size)
        who = self.name
        self.mu = check_number(who, "mu", mu, minimum=1e-12)
        self.nu = check_number(who, "nu", nu, minimum=0)
        self.eta = check_number(who, "eta", eta, minimum=0)
        self.dcc_iters = check_int(who, "dcc_iters", dcc_iters, minimum=1)
        self.classes = check_classes(who, classes)
        self._likelihood = PairwiseLikelihood()
        self._B: Tensor | None = None
        self._W: Tensor | None = None
        self._Y: Tensor | None = None
        self._trace: list[float] = []

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        return HashLayerHead(*tap_of(tap_channels), self.bits, activation="none")

    def on_train_start(self, state: Any) -> None:
        super().on_train_start(state)
        labels = torch.as_tensor(state.train_labels)
        self._Y = label_matrix(labels, self.classes or count_classes(labels))
        if self._B is None:
            self._B = _sgn(state.encode_train().float())
            w = ridge_w(self._B.cpu().double().numpy(), self._Y.double().numpy(), self.nu / self.mu)
            self._W = torch.from_numpy(w).to(self._B.device, torch.float32)
        if len(self._B) != len(self._Y):
            raise InputError(f"dsdh: the saved codes B hold {len(self._B)} images, the training set has "
                             f"{len(self._Y)}; train again without resuming (--no-resume)")

    def _current_u(self, state: Any) -> Tensor:
        memory = self._memories.get("images")
        if memory is not None and memory.codes is not None and len(memory.codes) == len(self._B) \
                and bool(memory.filled.all()):
            return memory.codes.float()
        return state.encode_train().float()

    def discrete_step(self, U: Tensor) -> None:
        """``dcc_iters`` rounds of W-step then B-step with ``U`` fixed (:attr:`objective_trace`)."""
        self._B, self._W, self._trace = discrete_step(self._B, U, self._Y, self.mu, self.nu, self.eta,
                                                      self.dcc_iters)

    @property
    def objective_trace(self) -> list[float]:
        """The discrete objective after each W/B round of the last :meth:`discrete_step`."""
        return list(self._trace)

    def on_epoch_end(self, state: Any) -> None:
        self.discrete_step(self._current_u(state))

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        if self._B is None:
            raise InputError("dsdh: the codes B are not initialised (on_train_start makes them)")
        u = out.codes
        b = self._B.to(u.device)[batch.index.to(u.device).long()]
        return {
            "likelihood": self._likelihood(u, batch.labels, self.reference(u, batch)),
            "quantization": self.eta * (b - u).pow(2).sum(1).mean() / len(self._B),
        }

    def state_dict(self) -> dict[str, Tensor]:
        state = super().state_dict()
        if self._B is not None:
            state.update({"B": self._B, "W": self._W})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        B, W = state.pop("B", None), state.pop("W", None)
        super().load_state_dict(state)
        if B is not None:
            if B.dim() != 2 or B.shape[1] != self.bits or W is None or W.shape[0] != self.bits:
                raise ValueError(f"dsdh: saved B {tuple(B.shape)} / W do not fit {self.bits} bits")
            self._B, self._W = B.float(), W.float()
