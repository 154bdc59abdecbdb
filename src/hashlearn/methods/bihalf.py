"""Bi-half — Deep Unsupervised Image Hashing by Maximizing Bit Entropy (Li, van Gemert, AAAI 2021); spec §8.
Label-free.

The bi-half layer (training only) sorts each bit's values over the batch and sets the top half
to +1 and the rest to −1 (``⌊B/2⌋`` ones per bit: maximal bit entropy, the optimal transport of
the continuous values onto a half/half ±1 distribution); its backward passes the gradient
through and adds ``γ (u − b) / numel`` (the authors' layer, [RECALL]; ``γ`` a setting, 3 by
default [INFER]). At test time the code is ``sgn(u)``.

Loss (as GreedyHash-U, whose unsupervised code the authors build on [RECALL]): ``similarity`` =
``mean (cos(b_i, b_j) − cos(x_i, x_j))²`` over the ``pairs`` (``halves`` or ``all``), ``x`` the
pretrained features (:class:`~hashlearn.methods.label_free.FeatureStore`), ``u = FC(x)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hashlearn.methods import register_method
from hashlearn.methods.base import check_number
from hashlearn.methods.label_free import CosinePreservingMethod


class _BiHalf(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, gamma: float) -> Tensor:
        n = u.shape[0]
        order = u.argsort(dim=0, descending=True, stable=True)
        ranked = torch.cat([torch.ones(n // 2, u.shape[1], dtype=u.dtype, device=u.device),
                            -torch.ones(n - n // 2, u.shape[1], dtype=u.dtype, device=u.device)])
        b = torch.zeros_like(u).scatter_(0, order, ranked)
        ctx.save_for_backward(u, b)
        ctx.gamma = gamma
        return b

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, b = ctx.saved_tensors
        return grad + ctx.gamma * (u - b) / b.numel(), None


def bihalf(u: Tensor, gamma: float = 3.0) -> Tensor:
    """The bi-half layer: per column, the ``⌊B/2⌋`` largest values → +1, the rest → −1 (ties by
    row order); backward ``grad + γ (u − b) / numel``."""
    return _BiHalf.apply(u, float(gamma))


@register_method(
    "bihalf",
    paper="Li, van Gemert. Deep Unsupervised Image Hashing by Maximizing Bit Entropy. AAAI 2021",
    kind="deep",
)
class BiHalf(CosinePreservingMethod):
    """Label-free: bi-half layer (half +1 per bit in a batch), cosine similarity of pretrained features preserved."""

    name = "bihalf"

    def __init__(self, bits: int, gamma: float = 3.0, pairs: str = "halves"):
        super().__init__(bits, pairs)
        self.gamma = check_number(self.name, "gamma", gamma, minimum=0)

    def binary(self, h: Tensor) -> Tensor:
        return bihalf(h, self.gamma)
