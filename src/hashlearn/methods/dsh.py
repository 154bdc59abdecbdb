"""DSH — Deep Supervised Hashing (Liu, Wang, Shan, Chen, CVPR 2016); spec §8.

A contrastive loss on real-valued codes with a regulariser pulling every entry's magnitude to 1.
With ``y_ij = 0`` for a similar and ``1`` for a dissimilar pair (Eq. 4)::

    L(i, j) = ½ (1 − y_ij) ‖u_i − u_j‖² + ½ y_ij max(0, m − ‖u_i − u_j‖²)
              + α ( ‖ |u_i| − 1 ‖₁ + ‖ |u_j| − 1 ‖₁ )

``m = 2k`` (``margin=None``) and ``α = 0.01`` as in the paper; the hash layer is linear (no
activation). Parts (:meth:`DSH.loss`), each the mean over the pairs of ``pairs`` (the batch by
default, as the paper's online pairs): ``contrastive`` and ``regulariser``.
"""

from __future__ import annotations

from torch import Tensor, nn

from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, MethodOutput, check_number, pair_mean, similarity
from hashlearn.methods.hashlayer import HashLayerHead, tap_of
from hashlearn.methods.memory import batch_reference
from hashlearn.methods.pairwise import PairwiseMethod


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``‖a_i − b_j‖²`` ``(len(a), len(b))``."""
    return (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2 * a @ b.T).clamp(min=0)


@register_method(
    "dsh",
    paper="Liu, Wang, Shan, Chen. Deep Supervised Hashing for Fast Image Retrieval. CVPR 2016",
    kind="deep",
)
class DSH(PairwiseMethod):
    """Contrastive loss with margin 2k on real codes + an L1 pull of every magnitude to 1."""

    name = "dsh"

    def __init__(self, bits: int, margin: float | None = None, alpha: float = 0.01, pairs: str = "batch",
                 memory_size: int = 0):
        super().__init__(bits, pairs=pairs, memory_size=memory_size)
        #: m; None = 2 · bits (the paper)
        self.margin = None if margin is None else check_number(self.name, "margin", margin, minimum=0)
        self.alpha = check_number(self.name, "alpha", alpha, minimum=0)

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        return HashLayerHead(*tap_of(tap_channels), self.bits, activation="none")

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        u = out.codes
        ref = self.reference(u, batch) or batch_reference(u, batch.labels)
        s = similarity(batch.labels, ref.labels)
        m = 2.0 * self.bits if self.margin is None else self.margin
        d2 = squared_distances(u, ref.codes)
        contrastive = 0.5 * s * d2 + 0.5 * (1 - s) * (m - d2).clamp(min=0)
        r_batch = (u.abs() - 1).abs().sum(1)
        r_ref = (ref.codes.abs() - 1).abs().sum(1)
        return {
            "contrastive": pair_mean(contrastive, s, ref.valid),
            "regulariser": self.alpha * pair_mean(r_batch[:, None] + r_ref[None, :], s, ref.valid),
        }
