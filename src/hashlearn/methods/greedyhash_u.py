"""GreedyHash-U — GreedyHash's unsupervised variant (Su, Zhang, Huang, Tian, NeurIPS 2018); spec §8.
Label-free.

The hash layer's output ``h = FC(x)`` is binarised in the forward pass, ``b = sgn(h)``, with the
straight-through gradient (:func:`~hashlearn.methods.greedyhash.sign_straight_through`), and the
codes are asked to keep the cosine similarities of the pretrained features ``x``
(:class:`~hashlearn.methods.label_free.CosinePreservingMethod`):

* ``similarity`` = ``mean_{(i,j)} (cos(b_i, b_j) − cos(x_i, x_j))²`` over the pairs of ``pairs``:
  ``"halves"`` (image i of the batch's first half with image i of its second half, as the authors'
  unsupervised code pairs them [RECALL]) or ``"all"`` (every i ≠ j);
* ``penalty`` = ``α · mean_{i,d} | |h_id| − 1 |³`` (GreedyHash's cubic term; α = 0.1 [RECALL]).
"""

from __future__ import annotations

from torch import Tensor

from hashlearn.methods import register_method
from hashlearn.methods.base import check_number
from hashlearn.methods.greedyhash import cubic_penalty, sign_straight_through
from hashlearn.methods.label_free import CosinePreservingMethod


@register_method(
    "greedyhash-u",
    paper="Su, Zhang, Huang, Tian. Greedy Hash: Towards Fast Optimization for Accurate Hash Coding in CNN. "
          "NeurIPS 2018 (unsupervised variant)",
    kind="deep",
)
class GreedyHashU(CosinePreservingMethod):
    """Label-free: sign with straight-through gradient, cosine similarity of the pretrained features preserved."""

    name = "greedyhash-u"

    def __init__(self, bits: int, alpha: float = 0.1, pairs: str = "halves"):
        super().__init__(bits, pairs)
        self.alpha = check_number(self.name, "alpha", alpha, minimum=0)

    def binary(self, h: Tensor) -> Tensor:
        return sign_straight_through(h)

    def extra_parts(self, h: Tensor) -> dict[str, Tensor]:
        return {"penalty": self.alpha * cubic_penalty(h)}
