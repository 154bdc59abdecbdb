"""GreedyHash (Su, Zhang, Huang, Tian, NeurIPS 2018), supervised; spec §8.

The hash layer's output ``h`` is binarised in the forward pass, ``b = sgn(h)``, and the gradient
of ``b`` is passed to ``h`` unchanged (straight-through: the greedy principle's update, Eq. 6–8);
a linear classifier reads the binary codes, and a cubic penalty pulls ``h`` to ``sgn(h)``::

    L = CE(W^T b, y) + α ‖ |h| − 1 ‖₃³ ,   b = sgn(h)

Parts (:meth:`GreedyHash.loss`): ``classification`` (softmax cross-entropy for class ids, a
sigmoid per class for multi-hot labels, :func:`~hashlearn.methods.ssdh.classification_loss`) and
``penalty`` = ``α · mean_{i,d} | |h_id| − 1 |³``. ``α = 0.1`` and a classifier without bias, as the
authors' supervised CIFAR-10 code (``cifar1.py``). ``classes`` is the classifier's size (``hashlearn
train`` sets it from the dataset). The relaxed code ``u`` is ``h`` (linear hash layer).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, Method, MethodOutput, check_number
from hashlearn.methods.hashlayer import HashLayerHead, tap_of
from hashlearn.methods.ssdh import check_classes, classification_loss, need_classes


class _SignStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:
        return torch.where(h >= 0, torch.ones_like(h), -torch.ones_like(h))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def sign_straight_through(h: Tensor) -> Tensor:
    """``sgn(h)`` (sgn(0) = +1) forward, identity backward (GreedyHash's hash layer)."""
    return _SignStraightThrough.apply(h)


def cubic_penalty(h: Tensor) -> Tensor:
    """GreedyHash's ``mean_{i,d} | |h_id| − 1 |³`` (``‖h − sgn(h)‖₃³`` per entry)."""
    return (h.abs() - 1).abs().pow(3).mean()


@register_method(
    "greedyhash",
    paper="Su, Zhang, Huang, Tian. Greedy Hash: Towards Fast Optimization for Accurate Hash Coding in CNN. "
          "NeurIPS 2018",
    kind="deep",
)
class GreedyHash(Method):
    """Sign with a straight-through gradient, a classifier on the binary codes, a cubic penalty."""

    name = "greedyhash"

    def __init__(self, bits: int, alpha: float = 0.1, classes: int | None = None):
        super().__init__(bits)
        self.alpha = check_number(self.name, "alpha", alpha, minimum=0)
        self.classes = check_classes(self.name, classes)

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        return HashLayerHead(*tap_of(tap_channels), self.bits, activation="none",
                             classes=need_classes(self.name, self.classes), classify=sign_straight_through)

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        return {
            "classification": classification_loss(out.extras["logits"], batch.labels),
            "penalty": self.alpha * cubic_penalty(out.codes),
        }
