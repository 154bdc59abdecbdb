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


class RandomTripletMiner(Miner):
    """Per anchor, ``per_anchor`` triplets ``(a, p, n)``, each with a positive drawn uniformly among
    the anchor's positives and a negative drawn uniformly among its negatives (ATH's online
    triplets, spec §2: "for each anchor, a random positive of the same class and a negative of
    another class"). Anchors without a positive or a negative are left out.

    The draws use ``generator`` (a CPU ``torch.Generator``) when it is set, else torch's global
    generator. A method sets it per batch with :func:`batch_generator`, so the triplets are a
    function of the batch (and of the trainer's per-epoch seed): a resumed run, or the same loss
    evaluated twice, draws the same ones."""

    def __init__(self, per_anchor: int = 1):
        if isinstance(per_anchor, bool) or not isinstance(per_anchor, int) or per_anchor < 1:
            raise InputError(f"random triplet miner: per_anchor must be an integer >= 1, got {per_anchor!r}")
        self.per_anchor = per_anchor
        self.generator: torch.Generator | None = None

    def mine(self, codes, ref_codes, pos, neg):
        keep = pos.any(dim=1) & neg.any(dim=1)
        anchors = keep.nonzero(as_tuple=True)[0]
        if len(anchors) == 0:
            empty = anchors.new_zeros(0)
            return empty, empty, empty
        k = self.per_anchor
        g = self.generator
        p = torch.multinomial(pos[anchors].float().cpu(), k, replacement=True, generator=g).reshape(-1)
        n = torch.multinomial(neg[anchors].float().cpu(), k, replacement=True, generator=g).reshape(-1)
        return anchors.repeat_interleave(k), p.to(anchors.device), n.to(anchors.device)


def batch_generator(index: Tensor) -> torch.Generator:
    """A CPU generator seeded by torch's current seed (the trainer reseeds it every epoch from
    ``(seed, epoch)``) and the batch's training-set indices."""
    import hashlib

    digest = hashlib.sha256(index.detach().cpu().to(torch.int64).numpy().tobytes()).digest()
    seed = (torch.initial_seed() * 1_000_003 + int.from_bytes(digest[:8], "little")) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


#: the triplet miners a method's ``triplets`` setting names
TRIPLET_MINERS = {"random": RandomTripletMiner, "all": AllTripletsMiner, "batch_hard": BatchHardMiner,
                  "semi_hard": SemiHardMiner}


def triplet_miner(name: str, who: str = "method", **args) -> Miner:
    """The triplet miner called ``name`` (:data:`TRIPLET_MINERS`); ``args`` go to its constructor."""
    if name not in TRIPLET_MINERS:
        raise InputError(f"{who}: triplets must be one of {', '.join(map(repr, TRIPLET_MINERS))}, got {name!r}")
    return TRIPLET_MINERS[name](**args)


def graded_relevance(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """Multilevel relevance (spec §0, §5) as float ``(len(a), len(b))``: ``r_ij = y_i^T y_j``, the
    number of shared labels, for multi-hot labels; ``r_ij = 1[y_i = y_j]`` for class ids."""
    if labels_a.dim() == 1 and labels_b.dim() == 1:
        return (labels_a[:, None] == labels_b[None, :]).float()
    if labels_a.dim() == 2 and labels_b.dim() == 2:
        return labels_a.float() @ labels_b.float().T
    raise InputError("labels must both be class ids (N,) or both multi-hot (N, C)")


class GradedTripletMiner(Miner):
    """Every triple ``(q, i, j)`` with graded relevance ``r_qi > r_qj`` (:func:`graded_relevance`),
    ``i`` and ``j`` valid for ``q`` (in the batch: ``i, j ≠ q``): DSRH's triples, mined online with
    every image a query (Zhao et al., CVPR 2015; spec §5). ``j`` may share labels with ``q`` (fewer
    than ``i``), so this differs from :class:`AllTripletsMiner` (negatives share none) on multi-hot
    labels; on class ids it gives the same triplets. Returns ``(q, i, j)``, ``q`` indexing the batch
    and ``i, j`` the reference, ordered by ``q``, then ``i``, then ``j``.

    Cost: a ``(B, M, M)`` mask, fine for a batch (128³ ≈ 2 M entries), not for a whole training set.
    """

    def __call__(self, codes: Tensor, labels: Tensor, ref_codes: Tensor | None = None,
                 ref_labels: Tensor | None = None, valid: Tensor | None = None) -> tuple[Tensor, ...]:
        q, i, j = self.mask(labels, ref_labels if ref_codes is not None else None, valid,
                            batch=ref_codes is None).nonzero(as_tuple=True)
        return q, i, j

    def mask(self, labels: Tensor, ref_labels: Tensor | None = None, valid: Tensor | None = None,
             batch: bool = True) -> Tensor:
        """The triples as a dense ``(B, M, M)`` bool mask ``[q, i, j]`` (what a loss that sums over
        all of them uses directly: no index tensors). ``batch``: the batch against itself."""
        with torch.no_grad():
            if batch:
                ref_labels = labels
                if valid is None:
                    valid = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
            elif ref_labels is None:
                raise InputError("a miner's reference needs its labels (ref_labels)")
            r = graded_relevance(labels, ref_labels.to(labels.device))
            if valid is None:
                valid = torch.ones_like(r, dtype=torch.bool)
            valid = valid.to(r.device)
            return (r[:, :, None] > r[:, None, :]) & valid[:, :, None] & valid[:, None, :]
