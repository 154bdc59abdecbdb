"""DHN — Deep Hashing Network (Zhu, Long, Wang, Cao, AAAI 2016); spec §8.

The pairwise likelihood of DPSH on ``Θ_ij = α u_i^T u_j`` plus a smooth quantization loss::

    L = Σ_{s_ij} [ log(1 + e^{Θ_ij}) − s_ij Θ_ij ] + λ Σ_i Σ_d log cosh(|u_id| − 1)

``log cosh`` is a smooth surrogate of ``| |u| − 1 |`` (quadratic near the vertices ±1, linear
far from them, like the pseudo-Huber loss). The hash layer ends in ``tanh``.

Parts (:meth:`DHN.loss`): ``likelihood`` (mean over the pairs of ``pairs``, the one
:class:`~hashlearn.methods.losses.PairwiseLikelihood`) and ``quantization`` =
``λ · mean_{i,d} log cosh(|u_id| − 1)``. Defaults: ``alpha = 0.5`` (DPSH's ½; [INFER], the
spec leaves α open), ``lam = 0.1`` (the DeepHash-pytorch re-implementation; [RECALL], the
paper tunes λ by cross-validation).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, MethodOutput, check_number
from hashlearn.methods.hashlayer import HashLayerHead, tap_of
from hashlearn.methods.losses import PairwiseLikelihood
from hashlearn.methods.pairwise import PairwiseMethod


def log_cosh(x: Tensor) -> Tensor:
    """``log cosh x`` without overflow: ``|x| + log(1 + e^{−2|x|}) − log 2``."""
    a = x.abs()
    return a + F.softplus(-2 * a) - math.log(2.0)


def log_cosh_quantization(u: Tensor) -> Tensor:
    """DHN's quantization ``mean_{i,d} log cosh(|u_id| − 1)``."""
    return log_cosh(u.abs() - 1).mean()


@register_method(
    "dhn",
    paper="Zhu, Long, Wang, Cao. Deep Hashing Network for Efficient Similarity Retrieval. AAAI 2016",
    kind="deep",
)
class DHN(PairwiseMethod):
    """Pairwise likelihood + log-cosh (smooth L1) quantization."""

    name = "dhn"

    def __init__(self, bits: int, alpha: float = 0.5, lam: float = 0.1, pairs: str = "batch", memory_size: int = 0):
        super().__init__(bits, pairs=pairs, memory_size=memory_size)
        self.alpha = check_number(self.name, "alpha", alpha, minimum=0)
        self.lam = check_number(self.name, "lam", lam, minimum=0)
        self._likelihood = PairwiseLikelihood(scale=self.alpha)

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        return HashLayerHead(*tap_of(tap_channels), self.bits, activation="tanh")

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        u = out.codes
        return {
            "likelihood": self._likelihood(u, batch.labels, self.reference(u, batch)),
            "quantization": self.lam * log_cosh_quantization(u),
        }


__all__ = ["DHN", "log_cosh", "log_cosh_quantization"]
