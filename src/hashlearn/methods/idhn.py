"""IDHN — Improved Deep Hashing Network with soft pairwise similarity (Zhang, Zou, Lin, Chen, Wang,
IEEE TMM 2019), for multi-label retrieval.

The pairwise similarity is graded: ``s_ij = cos(y_i, y_j)``, the cosine of the label vectors
(1 for identical label sets, 0 for disjoint ones). Pairs split in two (the authors' code):

* *hard* pairs (``s_ij < 0.01`` or ``s_ij > 0.99``): the cross-entropy of DPSH's likelihood on
  ``Θ_ij = (β/k) u_i^T u_j``: ``log(1 + e^{Θ_ij}) − s_ij Θ_ij``;
* *soft* pairs (``0.01 ≤ s_ij ≤ 0.99``): a squared error between the similarity and the inner
  product mapped to [0, 1]: ``γ k ((u_i^T u_j + k)/(2k) − s_ij)²``;

plus a quantization term ``α mean_{i,d} | |u_id| − 1 |``. The codes are ``u = z / (1 + |z|)``
(softsign). Defaults from the authors' code: ``α = 0.1``, ``β = 5``, ``γ = 0.1``.

Parts (:meth:`IDHN.loss`): ``likelihood`` and ``soft``, each summed over its pairs and divided by
the number of all pairs (the authors' mean over every pair), and ``quantization``. Pairs of an
image with itself are left out (the authors' code, on ``D Dᵀ`` of the batch, counts them). With class ids
(single-label) every pair is hard and IDHN is DPSH with ``Θ = (β/k) u^T u``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, MethodOutput, check_number, pair_mean, pairwise_likelihood_loss
from hashlearn.methods.hashlayer import HashLayerHead, label_matrix, tap_of
from hashlearn.methods.memory import batch_reference
from hashlearn.methods.pairwise import PairwiseMethod


def soft_similarity(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """``s_ij = cos(y_i, y_j)`` of the label vectors (class ids count as one-hot)."""
    if labels_a.dim() == 1 and labels_b.dim() == 1:
        return (labels_a[:, None] == labels_b[None, :]).float()
    ya, yb = label_matrix(labels_a), label_matrix(labels_b)
    return F.normalize(ya, dim=1) @ F.normalize(yb, dim=1).T


@register_method(
    "idhn",
    paper="Zhang, Zou, Lin, Chen, Wang. Improved Deep Hashing with Soft Pairwise Similarity for Multi-label "
          "Image Retrieval. IEEE TMM 2019",
    kind="deep",
)
class IDHN(PairwiseMethod):
    """Graded similarity cos(y_i, y_j): cross-entropy on hard pairs, squared error on soft pairs."""

    name = "idhn"

    def __init__(self, bits: int, alpha: float = 0.1, beta: float = 5.0, gamma: float = 0.1,
                 hard_below: float = 0.01, hard_above: float = 0.99, pairs: str = "batch", memory_size: int = 0):
        super().__init__(bits, pairs=pairs, memory_size=memory_size)
        who = self.name
        self.alpha = check_number(who, "alpha", alpha, minimum=0)
        self.beta = check_number(who, "beta", beta, minimum=0)
        self.gamma = check_number(who, "gamma", gamma, minimum=0)
        self.hard_below = check_number(who, "hard_below", hard_below, minimum=0)
        self.hard_above = check_number(who, "hard_above", hard_above, minimum=0)

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        return HashLayerHead(*tap_of(tap_channels), self.bits, activation="softsign")

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        u = out.codes
        k = self.bits
        ref = self.reference(u, batch) or batch_reference(u, batch.labels)
        s = soft_similarity(batch.labels, ref.labels).to(u.dtype)
        valid = ref.valid.to(u.dtype) if ref.valid is not None else s.new_ones(s.shape)
        hard = ((s < self.hard_below) | (s > self.hard_above)).to(u.dtype) * valid
        soft = valid - hard
        n_pairs = valid.sum().clamp(min=1)
        likelihood = pairwise_likelihood_loss(u, ref.codes, s, mask=hard, scale=self.beta / k) \
            * hard.sum() / n_pairs
        squared = self.gamma * k * ((u @ ref.codes.T + k) / (2 * k) - s).pow(2)
        return {
            "likelihood": likelihood,
            "soft": pair_mean(squared, s, soft) * soft.sum() / n_pairs,
            "quantization": self.alpha * (u.abs() - 1).abs().mean(),
        }
