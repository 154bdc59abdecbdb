"""HashNet — Deep Learning to Hash by Continuation (Cao, Long, Wang, Yu, ICCV 2017); spec §8.

A hash layer with activation ``u = tanh(β z)`` and the weighted pairwise likelihood (Eq. 4–6)::

    L = Σ_{(i,j)∈S} w_ij [ log(1 + e^{α u_i^T u_j}) − s_ij α u_i^T u_j ]

with ``w_ij = |S|/|S_1|`` for similar pairs and ``|S|/|S_0|`` for dissimilar pairs (data
imbalance) and ``α`` the sigmoid's adaptive parameter (``α = 10/k``, the authors' PyTorch
``sigmoid_param``; their code replaces ``w_ij`` by a constant weight on similar pairs, here
``balance=False`` gives unweighted pairs).
**Continuation**: ``β`` starts at ``beta_init`` and grows with the training iteration ``t`` as
``β_t = β_0 (1 + γ t)^p``, raised every ``beta_step`` iterations (the authors' PyTorch code:
``γ = 0.005``, ``p = 0.5``, every 200 iterations), so ``tanh(β z)`` tends to ``sign(z)``.
:func:`beta_at` is the schedule; the method sets the head's ``β`` before every step
(``on_train_start``, ``on_batch_end``) from the trainer's step count, which checkpoints keep, so a
resumed run continues the schedule.

Normalisation: :meth:`HashNet.loss` returns ``likelihood`` = the paper's sum divided by
``2|S|`` (``½ mean_{S_1} + ½ mean_{S_0}``, :func:`~hashlearn.methods.base.pair_mean`);
``balance=False`` drops the weights (a plain mean). ``pairs``: the batch (default) or a memory
(:mod:`hashlearn.methods.pairwise`). The paper has no quantization term: the continuation does
its work.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, MethodOutput, check_bool, check_int, check_number
from hashlearn.methods.hashlayer import HashLayerHead, tap_of
from hashlearn.methods.losses import PairwiseLikelihood
from hashlearn.methods.pairwise import PairwiseMethod


def beta_at(iteration: int, beta_init: float = 1.0, gamma: float = 0.005, power: float = 0.5,
            step: int = 200) -> float:
    """HashNet's β for the (1-based) training ``iteration``: ``β_0 (1 + γ t)^p`` with ``t`` the
    last multiple of ``step`` reached (β is raised every ``step`` iterations)."""
    t = (int(iteration) // int(step)) * int(step)
    return float(beta_init) * (1.0 + float(gamma) * t) ** float(power)


@register_method(
    "hashnet",
    paper="Cao, Long, Wang, Yu. HashNet: Deep Learning to Hash by Continuation. ICCV 2017",
    kind="deep",
)
class HashNet(PairwiseMethod):
    """tanh(βz) with β raised by continuation; weighted pairwise cross-entropy."""

    name = "hashnet"

    def __init__(self, bits: int, alpha: float | None = None, balance: bool = True, beta_init: float = 1.0,
                 beta_gamma: float = 0.005, beta_power: float = 0.5, beta_step: int = 200, pairs: str = "batch",
                 memory_size: int = 0):
        super().__init__(bits, pairs=pairs, memory_size=memory_size)
        who = self.name
        #: α of Θ = α u_i^T u_j; None = 10 / bits (the authors' code)
        self.alpha = None if alpha is None else check_number(who, "alpha", alpha, minimum=0)
        self.balance = check_bool(who, "balance", balance)
        self.beta_init = check_number(who, "beta_init", beta_init, minimum=0)
        self.beta_gamma = check_number(who, "beta_gamma", beta_gamma, minimum=0)
        self.beta_power = check_number(who, "beta_power", beta_power, minimum=0)
        self.beta_step = check_int(who, "beta_step", beta_step, minimum=1)
        scale = 10.0 / self.bits if self.alpha is None else self.alpha
        self._likelihood = PairwiseLikelihood(balance=self.balance, scale=scale)
        self._heads: list[HashLayerHead] = []

    def beta(self, iteration: int) -> float:
        return beta_at(iteration, self.beta_init, self.beta_gamma, self.beta_power, self.beta_step)

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        head = HashLayerHead(*tap_of(tap_channels), self.bits, activation="scaled_tanh")
        head.beta = self.beta(1)
        self._heads = [head]
        return head

    def _set_beta(self, state: Any) -> None:
        beta = self.beta(int(getattr(state, "step", 0)) + 1)  # the coming iteration's β
        for head in self._heads:
            head.beta = beta

    def on_train_start(self, state: Any) -> None:
        super().on_train_start(state)
        self._set_beta(state)

    def on_batch_end(self, state: Any, batch: Batch, out: MethodOutput) -> None:
        super().on_batch_end(state, batch, out)
        self._set_beta(state)

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        u = out.codes
        return {"likelihood": self._likelihood(u, batch.labels, self.reference(u, batch))}
