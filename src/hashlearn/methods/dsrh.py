"""DSRH — Deep Semantic Ranking based Hashing (Zhao, Huang, Wang, Tan, CVPR 2015); spec §5.

For multi-label images relevance is graded: ``r(q, x) = y_q^T y_x``, the number of shared labels
(:func:`~hashlearn.methods.miners.graded_relevance`; ``1[y_q = y_x]`` for class ids). DSRH learns
codes whose Hamming ranking follows this graded ranking, through an NDCG-weighted triplet hinge.

Head (spec §5, "Architecture"): the hash layer reads **two** backbone taps, the skip connection
(the paper: fc7 and the pooled conv5 of AlexNet), each globally pooled and concatenated::

    h̃(x) = 2σ(W^T [f_a(x); f_b(x)] + v) − 1 ∈ (−1, 1)^k,      test: b = sgn(W^T [f_a; f_b] + v)

(``sgn(h̃) = sgn(W^T f + v)``, so the binarised relaxed code is the test code.) ``taps`` names the
two taps; the default is the last two of the backbone's multi-scale default taps (EfficientNet-Lite0:
``stage5`` and ``stage7``). ``normalize`` (``"none"``, the spec's plain layer; ``"bn"``; ``"l2"``)
rescales each pooled tap before the concatenation, since backbone stages differ in magnitude.

Loss (spec §5 [RECALL — verify]), with ``d(q, x) = ½ (k − h̃(q)^T h̃(x))`` the relaxed Hamming
distance, every image of the batch a query against the others, and the triples
``T_q = {(i, j): r_qi > r_qj}`` (:class:`~hashlearn.methods.miners.GradedTripletMiner`)::

    ω(r_i, r_j) = (2^{r_i} − 2^{r_j}) / Z_q
    F = Σ_q Σ_{(i,j)∈T_q} ω(r_qi, r_qj) · max(0, ρ + d(q, x_i) − d(q, x_j))  +  (α/2) ‖mean_q h̃(q)‖²

:meth:`DSRH.loss` returns two named parts:

* ``ranking``: the first sum (``reduction="sum"``, as the spec writes F) or that sum divided by
  the batch's number of queries (``reduction="mean"``);
* ``balance``: ``(α/2) ‖mean_q h̃(q)‖²``, the bit-balance term over the batch.

Settings, each a [RECALL]/[INFER] choice of the spec with its default: ``margin`` ρ = 1 (bits, the
scale of ``d``); ``alpha`` = 1; ``normalizer`` — ``Z_q`` is ``"idcg"`` (default: the ideal DCG of
query q's batch ranking, ``Σ_n (2^{r_(n)} − 1) / log2(1 + n)`` over its batch items sorted by
relevance), ``"max"`` (the largest weight of the query's triples becomes 1) or ``"none"`` (Z = 1).
The spec's ``(β/2) ‖W‖²`` is weight decay: the trainer's ``optim.weight_decay`` (the spec's [INFER]
value is 5e-4; the trainer's default is 1e-5), not a loss part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, Method, MethodOutput, check_choice, check_names, check_number, pool
from hashlearn.methods.miners import GradedTripletMiner, graded_relevance


def skip_taps(default_taps: list[str]) -> list[str]:
    """The two taps of the skip connection: the last two default taps (one default tap: it and
    ``pool``; none: ``pool`` only)."""
    taps = list(default_taps)
    if len(taps) >= 2:
        return taps[-2:]
    return [*taps, "pool"] if taps else ["pool"]


class DSRHHead(nn.Module):
    """Pool each tap, optionally normalise it, concatenate, one hash layer, ``2σ(·) − 1``."""

    def __init__(self, tap_channels: dict[str, int], bits: int, normalize: str = "none"):
        super().__init__()
        self.taps = list(tap_channels)
        self.normalize = normalize
        self.norms = nn.ModuleDict({t: nn.BatchNorm1d(c) for t, c in tap_channels.items()}) \
            if normalize == "bn" else None
        self.fc = nn.Linear(sum(tap_channels.values()), bits)

    def forward(self, features: dict[str, Tensor]) -> MethodOutput:
        parts = []
        for tap in self.taps:
            x = pool(features[tap])
            if self.norms is not None:
                x = self.norms[tap](x)
            elif self.normalize == "l2":
                x = F.normalize(x, dim=1)
            parts.append(x)
        logits = self.fc(torch.cat(parts, dim=1))
        return MethodOutput(codes=2 * torch.sigmoid(logits) - 1)


def ideal_dcg(relevance: Tensor, valid: Tensor) -> Tensor:
    """Per row: ``Σ_n (2^{r_(n)} − 1) / log2(1 + n)`` over the row's valid items sorted by
    decreasing relevance ``r`` (``(B, M)`` → ``(B,)``)."""
    r = torch.where(valid, relevance, torch.zeros_like(relevance))
    ordered = r.sort(dim=1, descending=True).values
    n = torch.arange(1, r.shape[1] + 1, dtype=r.dtype, device=r.device)
    return ((torch.exp2(ordered) - 1) / torch.log2(1 + n)).sum(dim=1)


class NDCGTripletHinge:
    """The NDCG-weighted triplet hinge of DSRH (spec §5), over the batch with every image a query::

        Σ_q Σ_{(i,j): r_qi > r_qj} (2^{r_qi} − 2^{r_qj}) / Z_q · max(0, ρ + d(q, x_i) − d(q, x_j))

    ``d`` the relaxed Hamming distance ``½ (k − h̃_q^T h̃_x)``; ``reduction="mean"`` divides by the
    number of queries. No triple (e.g. a batch of one label set): a zero that depends on the codes."""

    def __init__(self, margin: float = 1.0, normalizer: str = "idcg", reduction: str = "sum"):
        self.margin = float(margin)
        self.normalizer = normalizer
        self.reduction = reduction
        self.miner = GradedTripletMiner()

    def weights(self, codes: Tensor, labels: Tensor) -> Tensor:
        """The weights ``ω[q, i, j]`` ``(B, B, B)`` of the batch's triples (0 where ``(q, i, j)`` is
        no triple: ``r_qi ≤ r_qj``, or ``i`` or ``j`` is ``q``)."""
        n = len(labels)
        valid = ~torch.eye(n, dtype=torch.bool, device=labels.device)
        triples = self.miner.mask(labels, valid=valid)
        r = graded_relevance(labels, labels).to(codes.dtype)
        gain = torch.exp2(r)
        if self.normalizer == "idcg":
            z = ideal_dcg(r, valid)
        elif self.normalizer == "max":
            big = torch.finfo(r.dtype).max
            r_max = torch.where(valid, r, torch.full_like(r, -big)).amax(dim=1)
            r_min = torch.where(valid, r, torch.full_like(r, big)).amin(dim=1)
            z = torch.exp2(r_max) - torch.exp2(r_min)
        else:
            z = torch.ones(n, dtype=r.dtype, device=r.device)
        omega = (gain[:, :, None] - gain[:, None, :]) / z.clamp(min=torch.finfo(r.dtype).tiny)[:, None, None]
        return torch.where(triples, omega, torch.zeros_like(omega))  # a query with a triple has z > 0

    def __call__(self, codes: Tensor, labels: Tensor) -> Tensor:
        omega = self.weights(codes, labels)
        d = 0.5 * (codes.shape[1] - codes @ codes.T)
        loss = _WeightedHinge.apply(d, omega, self.margin)
        return loss / len(codes) if self.reduction == "mean" else loss


class _WeightedHinge(torch.autograd.Function):
    """``Σ_{q,i,j} ω_qij · max(0, ρ + d_qi − d_qj)`` dense over ``(B, M, M)``, with its gradient
    ``∂/∂d_qx = Σ_j g_qxj − Σ_i g_qix`` (``g = ω · 1[hinge active]``) written out, so the backward
    keeps one ``(B, M)`` tensor instead of autograd's ``(B, M, M)`` temporaries (B³ ≈ 2 M entries for
    a batch of 128)."""

    @staticmethod
    def forward(ctx, d: Tensor, omega: Tensor, margin: float) -> Tensor:
        x = (d[:, :, None] - d[:, None, :]).add_(margin)
        active = omega * (x > 0)
        ctx.save_for_backward(active.sum(dim=2) - active.sum(dim=1))
        return (active * x).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        (grad_d,) = ctx.saved_tensors
        return grad * grad_d, None, None


@register_method(
    "dsrh",
    paper="Zhao, Huang, Wang, Tan. Deep Semantic Ranking Based Hashing for Multi-Label Image Retrieval. CVPR 2015",
    kind="deep",
)
class DSRH(Method):
    """Two-tap (skip) hash layer, 2σ(·) − 1 codes; NDCG-weighted graded triplet hinge + bit balance."""

    name = "dsrh"

    def __init__(self, bits: int, margin: float = 1.0, alpha: float = 1.0, normalizer: str = "idcg",
                 reduction: str = "sum", taps: list[str] | None = None, normalize: str = "none"):
        super().__init__(bits)
        who = self.name
        self.margin = check_number(who, "margin", margin, minimum=0)
        self.alpha = check_number(who, "alpha", alpha, minimum=0)
        self.normalizer = check_choice(who, "normalizer", normalizer, ("idcg", "max", "none"))
        self.reduction = check_choice(who, "reduction", reduction, ("sum", "mean"))
        self.tap_names = check_names(who, "taps", taps)
        if self.tap_names is not None and (len(self.tap_names) != 2 or len(set(self.tap_names)) != 2):
            raise InputError(f"{who}: taps must name two different backbone taps (the skip connection), "
                             f"got {self.tap_names!r}")
        self.normalize = check_choice(who, "normalize", normalize, ("none", "bn", "l2"))
        self._ranking = NDCGTripletHinge(self.margin, self.normalizer, self.reduction)

    def taps(self, default_taps: list[str]) -> list[str]:
        return list(self.tap_names) if self.tap_names else skip_taps(default_taps)

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        return DSRHHead(tap_channels, self.bits, self.normalize)

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        """Named parts ``ranking`` (the NDCG-weighted triplet hinge) and ``balance``
        (``(α/2) ‖mean_q h̃(q)‖²``); see the module docstring."""
        h = out.codes
        return {
            "ranking": self._ranking(h, batch.labels.to(h.device)),
            "balance": 0.5 * self.alpha * h.mean(dim=0).pow(2).sum(),
        }
