"""DCH — Deep Cauchy Hashing (Cao, Long, Liu, Wang, CVPR 2018); spec §8.

A Cauchy distribution on the normalised Hamming distance ``d_ij = (k/2)(1 − cos(u_i, u_j))``
gives the probability of similarity ``σ(d) = γ / (γ + d)``. The weighted Cauchy cross-entropy
(Eq. 8) and the Cauchy quantization loss (Eq. 9)::

    L = Σ_{ij} w_ij [ s_ij log(d_ij / γ) + log(1 + γ / d_ij) ] + λ Σ_i log(1 + d(|u_i|, 1) / γ)

``w_ij`` are HashNet's imbalance weights (``|S|/|S_1|``, ``|S|/|S_0|``), ``γ = 20`` and
``λ = 0.1`` (the paper's tuned values, spec §8). The hash layer ends in ``tanh``.

Parts (:meth:`DCH.loss`): ``cauchy`` — the weighted sum divided by ``2|S|`` (``½ mean_{S_1} +
½ mean_{S_0}``, :func:`~hashlearn.methods.base.pair_mean`; ``balance=False`` for a plain mean)
— and ``quantization`` = ``λ · mean_i log(1 + d(|u_i|, 1)/γ)``. ``d_ij`` is floored at
``min_distance`` (1e-3) so ``log(1 + γ/d)`` stays finite for identical codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, MethodOutput, check_bool, check_number, pair_mean, similarity
from hashlearn.methods.hashlayer import HashLayerHead, tap_of
from hashlearn.methods.memory import batch_reference
from hashlearn.methods.pairwise import PairwiseMethod


def cauchy_distance(a: Tensor, b: Tensor) -> Tensor:
    """DCH's normalised Hamming distance ``(k/2)(1 − cos(a_i, b_j))`` ``(len(a), len(b))`` (Eq. 6)."""
    cos = F.normalize(a, dim=1, eps=1e-8) @ F.normalize(b, dim=1, eps=1e-8).T
    return 0.5 * a.shape[1] * (1 - cos)


@register_method(
    "dch",
    paper="Cao, Long, Liu, Wang. Deep Cauchy Hashing for Hamming Space Retrieval. CVPR 2018",
    kind="deep",
)
class DCH(PairwiseMethod):
    """Cauchy cross-entropy on normalised Hamming distances + Cauchy quantization."""

    name = "dch"

    def __init__(self, bits: int, gamma: float = 20.0, lam: float = 0.1, balance: bool = True,
                 min_distance: float = 1e-3, pairs: str = "batch", memory_size: int = 0):
        super().__init__(bits, pairs=pairs, memory_size=memory_size)
        who = self.name
        self.gamma = check_number(who, "gamma", gamma, minimum=1e-12)
        self.lam = check_number(who, "lam", lam, minimum=0)
        self.balance = check_bool(who, "balance", balance)
        self.min_distance = check_number(who, "min_distance", min_distance, minimum=1e-12)

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        return HashLayerHead(*tap_of(tap_channels), self.bits, activation="tanh")

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        u = out.codes
        ref = self.reference(u, batch) or batch_reference(u, batch.labels)
        s = similarity(batch.labels, ref.labels)
        g = self.gamma
        d = cauchy_distance(u, ref.codes).clamp(min=self.min_distance)
        cauchy = s * torch.log(d / g) + torch.log1p(g / d)
        d_q = cauchy_distance(u.abs(), torch.ones_like(u[:1])).squeeze(1).clamp(min=0)
        return {
            "cauchy": pair_mean(cauchy, s, ref.valid, self.balance),
            "quantization": self.lam * torch.log1p(d_q / g).mean(),
        }
