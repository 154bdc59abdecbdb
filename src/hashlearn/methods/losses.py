"""Reusable loss terms: each a small class, hyper-parameters in ``__init__``, called as
``loss(codes, labels, reference=None)``.

``reference`` is what the batch is compared with (:mod:`hashlearn.methods.memory`): ``None``
for the batch itself, or a memory's ``reference(codes, labels, index)``, so any of these
terms works with any memory. An optional miner (:mod:`hashlearn.methods.miners`) chooses the
pairs or triplets; the reference's ``valid`` mask always applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hashlearn.errors import InputError
from hashlearn.methods.base import pairwise_likelihood_loss, similarity
from hashlearn.methods.memory import Reference, batch_reference
from hashlearn.methods.miners import AllTripletsMiner, Miner


class PairwiseLikelihood:
    """The DPSH negative log-likelihood of the pairwise labels (Li, Wang, Kang, IJCAI 2016;
    spec §8), as a mean over the pairs ``P`` used::

        L = (1/|P|) Σ_{(i,j)∈P} [ log(1 + e^{Θ_ij}) − s_ij Θ_ij ],   Θ_ij = ½ u_i^T u_j

    ``focal_gamma`` > 0: the focal form ``−(1 − p_t)^γ log p_t``, ``p = σ(Θ)`` (spec §7);
    ``balance``: similar and dissimilar pairs each weigh half (HashNet's ``w_ij``).
    ``scale``: ``Θ_ij = scale · u_i^T u_j`` (DPSH ½; HashNet's and DHN's α).
    ``miner=None`` uses every valid pair (dense, no index tensors);
    ``miner=AllPairsMiner()`` gives the same value through indices.
    """

    def __init__(self, focal_gamma: float = 0.0, balance: bool = False, miner: Miner | None = None,
                 scale: float = 0.5):
        if focal_gamma < 0:
            raise InputError(f"focal_gamma must be >= 0, got {focal_gamma!r}")
        self.focal_gamma = float(focal_gamma)
        self.balance = bool(balance)
        self.miner = miner
        self.scale = float(scale)

    def __call__(self, codes: Tensor, labels: Tensor, reference: Reference | None = None) -> Tensor:
        ref = reference if reference is not None else batch_reference(codes, labels)
        s = similarity(labels, ref.labels)
        mask = ref.valid
        if self.miner is not None:
            i, j = self.miner(codes, labels, ref.codes, ref.labels, ref.valid)
            mined = torch.zeros_like(s, dtype=torch.bool)
            mined[i, j] = True
            mask = mined if mask is None else mined & mask
        return pairwise_likelihood_loss(codes, ref.codes, s, self.focal_gamma, self.balance, mask, self.scale)


class TripletLikelihood:
    """The DTSH triplet negative log-likelihood (Wang, Shi, Kitani, Deep Supervised Hashing with
    Triplet Labels, ACCV 2016; spec §8), as a mean over the mined triplets ``T``::

        L = (1/|T|) Σ_{(q,p,n)∈T} −[ Θ_qp − Θ_qn − α − log(1 + e^{Θ_qp − Θ_qn − α}) ]
          = (1/|T|) Σ softplus(−(Θ_qp − Θ_qn − α)),      Θ_ij = ½ u_i^T u_j

    ``margin`` is α; ``miner`` defaults to every valid triplet. No triplet: a zero that
    still depends on the codes (so backward works)."""

    def __init__(self, margin: float = 0.0, miner: Miner | None = None):
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
            raise InputError(f"triplet margin must be a number >= 0, got {margin!r}")
        self.margin = float(margin)
        self.miner = miner if miner is not None else AllTripletsMiner()

    def __call__(self, codes: Tensor, labels: Tensor, reference: Reference | None = None) -> Tensor:
        ref = reference if reference is not None else batch_reference(codes, labels)
        a, p, n = self.miner(codes, labels, ref.codes, ref.labels, ref.valid)
        if len(a) == 0:
            return 0.0 * codes.sum()
        theta = 0.5 * (codes @ ref.codes.T)
        return F.softplus(-(theta[a, p] - theta[a, n] - self.margin)).mean()
