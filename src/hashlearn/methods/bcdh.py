"""BCDH — Binary Constrained Deep Hashing without manual annotation (Do, Hoang, Le Tan, Pham, Le, Cheung,
Reid, WACV 2019); spec §1. Label-free (unless ``pairs="labels"``, the sanity check).

**Loss** ("pairwise constrained loss", spec §1 [INFER]) over the pairs ``P`` of a batch, with
auxiliary binary codes ``b_i ∈ {−1, +1}^k``::

    L(Θ, B) = (1/|P|) Σ_{(i,j)∈P} [ s_ij ½‖u_i − u_j‖² + (1 − s_ij) ½ max(0, m − ‖u_i − u_j‖²) ]
              + (λ/N_b) Σ_i ‖u_i − b_i‖²

Named parts: ``pair`` (the first sum) and ``quantization`` (the second). ``m = margin · k``
(``margin = 2``: half the largest squared distance ``4k`` of ±1 codes); ``λ = 0.1``, times
``lambda_growth^(epoch − 1)`` up to ``lambda_max`` (continuation; growth 1 = off).

**Alternating optimisation**, per batch: the B-step with Θ fixed, then one gradient step on Θ
with B fixed.

* ``pair_on_binary=False`` (default): the pair term is on ``u``; the B-step is the closed form
  ``b = sgn(u)`` (:func:`closed_form_codes`, the minimiser of ``‖u − b‖²`` over ±1 codes).
* ``pair_on_binary=True``: the pair term is on ``b`` (the abstract's "distances between pairs of
  hash codes"); the B-step minimises :func:`binary_objective` by bitwise coordinate descent
  (:func:`coordinate_descent`: start at ``sgn(u)``, flip a bit when that strictly lowers the
  objective, at most ``sweeps`` sweeps), which never increases it. ``pair`` is then the value at
  ``B`` (no gradient: it reaches Θ through the quantization term pulling ``u`` to the ``B`` that
  serves the pairs).

**Pairs** (:mod:`hashlearn.methods.pairs`): ``"views"`` (default: synthetic viewpoint changes of
unlabelled images, the stand-in for 3D models; ``views`` per image, cached), ``"sfm"``
(retrieval-SfM-120k metadata, ``sfm_metadata`` = a JSON/NPZ path) or ``"labels"`` (sanity check;
the method is then supervised). Each anchor keeps its positive and its ``negatives`` nearest
negatives in the current code space (hard-negative mining, spec §1; 0 = all).

**Head** [INFER]: pooled tap, L2-normalised (``normalize``), → FC(C → k), no activation,
weights N(0, 0.01).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, Method, MethodOutput, check_bool, check_choice, check_int, check_number
from hashlearn.methods.label_free import PooledHead
from hashlearn.methods.pairs import LabelPairs, PairSource, SfMPairs, ViewPairs

SOURCES = ("views", "sfm", "labels")


def closed_form_codes(u: Tensor) -> Tensor:
    """``argmin_{b ∈ {−1,+1}^k} ‖u − b‖² = sgn(u)`` (sgn(0) = +1)."""
    return torch.where(u >= 0, torch.ones_like(u), -torch.ones_like(u))


def pair_terms(d2: Tensor, s: Tensor, margin: float) -> Tensor:
    """Per pair ``s ½ d² + (1 − s) ½ max(0, m − d²)`` for squared distances ``d2``."""
    return s * 0.5 * d2 + (1 - s) * 0.5 * (margin - d2).clamp(min=0)


def pair_loss(codes: Tensor, anchor: Tensor, partner: Tensor, s: Tensor, margin: float) -> Tensor:
    """The mean pair term over the pairs ``(anchor[t], partner[t], s[t])`` (rows of ``codes``)."""
    if len(s) == 0:
        return codes.sum() * 0
    d2 = (codes[anchor] - codes[partner]).pow(2).sum(1)
    return pair_terms(d2, s.to(codes.dtype), margin).mean()


def binary_objective(b: Tensor, u: Tensor, anchor: Tensor, partner: Tensor, s: Tensor, margin: float,
                     lam: float) -> float:
    """``(1/|P|) Σ pair terms on b + (λ/N) Σ_i ‖u_i − b_i‖²`` (the B-step's objective)."""
    pair = pair_loss(b, anchor, partner, s, margin) if len(s) else torch.zeros(())
    return float(pair) + lam * float((u - b).pow(2).sum(1).mean())


def coordinate_descent(u: Tensor, anchor: Tensor, partner: Tensor, s: Tensor, margin: float, lam: float,
                       sweeps: int = 3, b: Tensor | None = None) -> Tensor:
    """Bitwise coordinate descent on :func:`binary_objective` over ``b`` (rows of ``u``), from
    ``sgn(u)`` (or ``b``): for each row and bit, flip it when the exact change of the objective is
    negative. Each accepted flip lowers the objective, so a sweep never increases it."""
    u64 = u.detach().double().cpu()
    b = (closed_form_codes(u64) if b is None else b.detach().double().cpu()).clone()
    n, k = b.shape
    a, p, sv = anchor.cpu(), partner.cpu(), s.double().cpu()
    n_pairs = max(len(sv), 1)
    # the pairs each row takes part in, as (other row, s)
    involve = [[] for _ in range(n)]
    for t in range(len(sv)):
        i, j = int(a[t]), int(p[t])
        if i != j:
            involve[i].append((j, t))
            involve[j].append((i, t))
    for _ in range(int(sweeps)):
        changed = False
        for i in range(n):
            if involve[i]:
                others = torch.tensor([j for j, _ in involve[i]])
                svals = sv[torch.tensor([t for _, t in involve[i]])]
                d2 = (b[i] - b[others]).pow(2).sum(1)  # current squared distances
            for d in range(k):
                # quantization: (u + b)² − (u − b)² = 4 u b for flipping b → −b
                delta = lam / n * 4 * u64[i, d] * b[i, d]
                if involve[i]:
                    new_d2 = d2 + 4 * b[i, d] * b[others, d]  # ‖b_i − b_j‖² after the flip
                    delta = delta + (pair_terms(new_d2, svals, margin) - pair_terms(d2, svals, margin)).sum() / n_pairs
                if delta < 0:
                    if involve[i]:
                        d2 = d2 + 4 * b[i, d] * b[others, d]
                    b[i, d] = -b[i, d]
                    changed = True
        if not changed:
            break
    return b.to(u.dtype).to(u.device)


def hardest_negatives(codes: Tensor, anchor: Tensor, partner: Tensor, s: Tensor, keep: int) -> Tensor:
    """A mask keeping every positive and each anchor's ``keep`` nearest negatives (code space)."""
    if keep <= 0 or len(s) == 0:
        return torch.ones_like(s, dtype=torch.bool)
    with torch.no_grad():
        d2 = (codes[anchor] - codes[partner]).pow(2).sum(1)
    mask = s > 0
    for i in anchor.unique().tolist():
        neg = torch.nonzero((anchor == i) & (s <= 0)).reshape(-1)
        if len(neg):
            mask[neg[d2[neg].argsort()[:keep]]] = True
    return mask


@register_method(
    "bcdh",
    paper="Do, Hoang, Le Tan, Pham, Le, Cheung, Reid. Binary Constrained Deep Hashing Network for Image "
          "Retrieval without Manual Annotation. WACV 2019",
    kind="deep",
)
class BCDH(Method):
    """Label-free: pairwise constrained loss with auxiliary binary codes; pairs from views, SfM or labels."""

    name = "bcdh"

    def __init__(self, bits: int, pairs: str = "views", margin: float = 2.0, lam: float = 0.1,
                 lambda_growth: float = 1.0, lambda_max: float = 10.0, pair_on_binary: bool = False, sweeps: int = 3,
                 negatives: int = 5, views: int = 4, sfm_metadata: str | None = None, normalize: bool = False,
                 seed: int = 0):
        super().__init__(bits)
        who = self.name
        self.pairs = check_choice(who, "pairs", pairs, SOURCES)
        self.margin = check_number(who, "margin", margin, minimum=0)
        self.lam = check_number(who, "lam", lam, minimum=0)
        self.lambda_growth = check_number(who, "lambda_growth", lambda_growth, minimum=1)
        self.lambda_max = check_number(who, "lambda_max", lambda_max, minimum=0)
        self.pair_on_binary = check_bool(who, "pair_on_binary", pair_on_binary)
        self.sweeps = check_int(who, "sweeps", sweeps, minimum=1)
        self.negatives = check_int(who, "negatives", negatives, minimum=0)
        self.views = check_int(who, "views", views, minimum=1)
        self.normalize = check_bool(who, "normalize", normalize)
        self.seed = check_int(who, "seed", seed, minimum=0)
        if self.pairs == "sfm" and not (isinstance(sfm_metadata, str) and sfm_metadata):
            raise InputError("bcdh: pairs 'sfm' needs sfm_metadata, the path of a JSON/NPZ metadata file")
        self.sfm_metadata = sfm_metadata
        self._source: PairSource = (ViewPairs(self.views, self.seed) if self.pairs == "views"
                                    else SfMPairs(Path(sfm_metadata), self.seed) if self.pairs == "sfm"
                                    else LabelPairs())
        self._lam_now = self.lam
        self._forward = None
        self._step = 0

    @property
    def supervised(self) -> bool:  # the trainer reads it: only the label sanity check sees labels
        return self._source.supervised

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        head = PooledHead(tap, tap_channels[tap], self.bits, normalize=self.normalize)
        nn.init.normal_(head.layers[-1].weight, std=0.01)
        nn.init.zeros_(head.layers[-1].bias)
        return head

    def on_train_start(self, state: Any) -> None:
        self._source.prepare(state)
        self._forward = getattr(state, "forward", None)

    def on_epoch_start(self, state: Any) -> None:
        # λ of epoch e: λ·growth^(e−1), capped — a function of the epoch, so a resumed run continues it
        epoch = max(int(getattr(state, "epoch", 1) or 1), 1)
        self._lam_now = min(self.lam * self.lambda_growth ** (epoch - 1), max(self.lambda_max, self.lam))

    def epoch_images(self, state: Any) -> Tensor | None:
        return self._source.queries() if isinstance(self._source, SfMPairs) else None

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        u = out.codes
        self._step += 1
        found = self._source.partners(batch.index, batch.labels, self._step)
        codes = u
        if found.inputs is not None:
            if self._forward is None:
                raise InputError("bcdh: the partners' codes need the trainer (TrainState.forward)")
            codes = torch.cat([u, self._forward(found.inputs).codes])
        anchor, partner, s = found.anchor.to(u.device), found.partner.to(u.device), found.s.to(u.device)
        # mining picks hard negatives beside positives; with no positives (views outside the trainer) it is off
        keep = hardest_negatives(codes, anchor, partner, s, self.negatives if bool((s > 0).any()) else 0)
        anchor, partner, s = anchor[keep], partner[keep], s[keep]
        margin = self.margin * self.bits
        if self.pair_on_binary:
            b = coordinate_descent(codes, anchor, partner, s, margin, self._lam_now, self.sweeps)
            pair = pair_loss(b, anchor, partner, s, margin).detach()
        else:
            b = closed_form_codes(codes.detach())
            pair = pair_loss(codes, anchor, partner, s, margin)
        return {"pair": pair, "quantization": self._lam_now * (codes - b).pow(2).sum(1).mean()}
