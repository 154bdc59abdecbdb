"""Pair and triplet miners: which pairs or triplets a loss uses (pytorch-metric-learning's miners).

A miner is called as ``miner(codes, labels)`` — the batch against itself, self-pairs left
out — or ``miner(codes, labels, ref_codes, ref_labels, valid)`` against a
:class:`~hashlearn.methods.memory.Reference` (``valid`` ``(B, M)`` bool: the pairs that exist).
It returns index tensors: pair miners ``(i, j)``, triplet miners ``(anchor, positive,
negative)``, anchors indexing the batch and the others the reference. Positives share a
label with the anchor (``s = 1``, spec §0), negatives share none (``s = 0``). Miners see no
gradient.

Distances are relaxed Hamming distances ``d_ij = ½ (k − u_i^T u_j)``, the Hamming distance
of ±1 codes (spec §0), a decreasing function of the inner product the likelihoods use.

Cost: the all-triplets and semi-hard miners enumerate (anchor, positive) pairs times the
reference, which suits a batch or a memory of recent codes, not ``U`` of a whole training set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hashlearn.errors import InputError
from hashlearn.methods.base import similarity


def code_distances(codes: Tensor, ref_codes: Tensor) -> Tensor:
    """``½ (k − u_i^T u_j)`` ``(B, M)``: the Hamming distance for ±1 codes."""
    return 0.5 * (codes.shape[1] - codes @ ref_codes.T)


class Miner:
    """Base class: resolves the reference and the positive/negative masks once."""

    def _masks(self, codes, labels, ref_codes, ref_labels, valid):
        if ref_codes is None:
            ref_codes, ref_labels = codes, labels
            if valid is None:
                valid = ~torch.eye(len(codes), dtype=torch.bool, device=codes.device)
        elif ref_labels is None:
            raise InputError("a miner's reference needs its labels (ref_labels)")
        s = similarity(labels, ref_labels) > 0
        if valid is None:
            valid = torch.ones_like(s)
        valid = valid.to(s.device)
        return ref_codes, s & valid, ~s & valid

    def __call__(self, codes: Tensor, labels: Tensor, ref_codes: Tensor | None = None,
                 ref_labels: Tensor | None = None, valid: Tensor | None = None) -> tuple[Tensor, ...]:
        with torch.no_grad():
            ref_codes, pos, neg = self._masks(codes, labels, ref_codes, ref_labels, valid)
            return self.mine(codes.detach(), ref_codes.detach(), pos, neg)

    def mine(self, codes: Tensor, ref_codes: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, ...]:
        raise NotImplementedError


class AllPairsMiner(Miner):
    """Every valid pair ``(i, j)``: what the DPSH likelihood sums over."""

    def mine(self, codes, ref_codes, pos, neg):
        i, j = (pos | neg).nonzero(as_tuple=True)
        return i, j


class AllTripletsMiner(Miner):
    """Every triplet ``(a, p, n)`` with ``s_ap = 1`` and ``s_an = 0``."""

    def mine(self, codes, ref_codes, pos, neg):
        a, p, n = (pos[:, :, None] & neg[:, None, :]).nonzero(as_tuple=True)
        return a, p, n


class BatchHardMiner(Miner):
    """Per anchor, its farthest positive and its closest negative (Hermans et al., In Defense
    of the Triplet Loss, 2017); anchors without a positive or a negative are left out."""

    def mine(self, codes, ref_codes, pos, neg):
        d = code_distances(codes, ref_codes)
        inf = torch.finfo(d.dtype).max
        hardest_pos = torch.where(pos, d, torch.full_like(d, -inf)).argmax(dim=1)
        hardest_neg = torch.where(neg, d, torch.full_like(d, inf)).argmin(dim=1)
        keep = pos.any(dim=1) & neg.any(dim=1)
        anchors = keep.nonzero(as_tuple=True)[0]
        return anchors, hardest_pos[anchors], hardest_neg[anchors]


class SemiHardMiner(Miner):
    """Per positive pair ``(a, p)``, the closest negative that is farther than the positive but
    within ``margin`` of it: ``d_ap < d_an < d_ap + margin`` (Schroff et al., FaceNet, 2015).
    Positive pairs without such a negative are left out. ``margin`` is in bits."""

    def __init__(self, margin: float = 2.0):
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0:
            raise InputError(f"semi-hard miner: margin must be a number > 0, got {margin!r}")
        self.margin = float(margin)

    def mine(self, codes, ref_codes, pos, neg):
        d = code_distances(codes, ref_codes)
        a, p = pos.nonzero(as_tuple=True)
        d_ap = d[a, p][:, None]
        d_an = d[a]
        semi_hard = neg[a] & (d_an > d_ap) & (d_an < d_ap + self.margin)
        closest = torch.where(semi_hard, d_an, torch.full_like(d_an, torch.finfo(d.dtype).max)).argmin(dim=1)
        keep = semi_hard.any(dim=1)
        return a[keep], p[keep], closest[keep]
