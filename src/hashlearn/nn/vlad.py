"""VLAD aggregation of the local descriptors of a feature map, random (frozen) or learned (NetVLAD).

``VLAD(channels, clusters=K)`` maps a map ``(B, C, H, W)`` — ``H·W`` local descriptors
``x_t ∈ R^C`` — to a vector ``(B, K·C)`` (Arandjelović et al., "NetVLAD", CVPR 2016, Eq. 4)::

    x_t ← x_t / ‖x_t‖                                   (descriptor-wise L2, ``normalize_input``)
    a_k(x_t) = softmax_k(w_k^T x_t + β_k)               (soft assignment: a 1×1 conv and a softmax)
    V(k, :) = Σ_t a_k(x_t) (x_t − c_k)                  (residual aggregation)
    V(k, :) ← V(k, :) / ‖V(k, :)‖                       (intra-normalisation, per cluster)
    v = vec(V) / ‖vec(V)‖                               (global L2)

``w_k = 2α c_k`` and ``β_k = −α‖c_k‖²`` make the softmax the soft nearest-centre assignment
``softmax_k(−α‖x − c_k‖²)`` (the ``‖x‖²`` term cancels); α sets its hardness.

* ``mode="random"`` (RV-SSDH, Weng et al. 2020; spec §4): nothing trains. The centres are
  ``c_k ~ N(0, I)`` then L2-normalised, drawn from a generator seeded by ``seed`` (the same seed
  gives the same layer on any machine), and kept as buffers, so the layer has no parameter.
  ``assignment="centres"`` derives ``w, β`` from them as above; ``assignment="conv"`` draws the
  1×1 conv independently (``w_k ~ N(0, I/C)``, ``β = 0``).
* ``mode="learned"`` (NetVLAD): ``w``, ``β`` and ``c`` are three trainable parameters (decoupled,
  as in NetVLAD); :meth:`init_from_descriptors` sets them from k-means centres of real
  descriptors (:func:`kmeans`) and marks the layer ``initialised`` (a buffer, so a resumed
  or loaded layer is not initialised twice).

A vector input ``(B, C)`` is one descriptor per image (a 1×1 map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.errors import InputError

VLAD_MODES = ("random", "learned")
ASSIGNMENTS = ("centres", "conv")


class VLAD(nn.Module):
    """A VLAD layer over the ``H·W`` local descriptors of ``(B, C, H, W)`` maps → ``(B, K·C)``."""

    def __init__(self, channels: int, clusters: int = 64, alpha: float = 100.0, mode: str = "random",
                 assignment: str = "centres", seed: int = 0, normalize_input: bool = True):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise InputError(f"VLAD: channels must be a positive integer, got {channels!r}")
        if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
            raise InputError(f"VLAD: clusters must be a positive integer, got {clusters!r}")
        if mode not in VLAD_MODES:
            raise InputError(f"VLAD: mode must be one of {', '.join(VLAD_MODES)}, got {mode!r}")
        if assignment not in ASSIGNMENTS:
            raise InputError(f"VLAD: assignment must be one of {', '.join(ASSIGNMENTS)}, got {assignment!r}")
        if not float(alpha) > 0:
            raise InputError(f"VLAD: alpha must be > 0, got {alpha!r}")
        self.channels, self.clusters, self.alpha = channels, clusters, float(alpha)
        self.mode, self.assignment, self.seed = mode, assignment, int(seed)
        self.normalize_input = bool(normalize_input)
        self.out_dim = clusters * channels
        g = torch.Generator().manual_seed(self.seed)
        centres = F.normalize(torch.randn(clusters, channels, generator=g), dim=1)
        if assignment == "conv":
            weight = torch.randn(clusters, channels, generator=g) / channels ** 0.5
            bias = torch.zeros(clusters)
        else:
            weight, bias = self.assignment_from_centres(centres, self.alpha)
        if mode == "random":
            self.register_buffer("centres", centres)
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)
        else:
            self.centres = nn.Parameter(centres)
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias)
        # a random layer needs no initialisation; a learned one is initialised once from data
        self.register_buffer("initialised", torch.tensor(mode == "random"))

    @staticmethod
    def assignment_from_centres(centres: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
        """``w_k = 2α c_k``, ``β_k = −α‖c_k‖²``: softmax_k(w_k^T x + β_k) = softmax_k(−α‖x − c_k‖²)."""
        return 2 * alpha * centres, -alpha * centres.pow(2).sum(dim=1)

    def descriptors(self, x: Tensor) -> Tensor:
        """The (normalised) local descriptors ``(B, C, N)``, N = H·W, of maps or vectors."""
        if x.dim() == 2:
            x = x[:, :, None, None]
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise InputError(f"VLAD: expected maps (B, {self.channels}, H, W) or vectors (B, {self.channels}), "
                             f"got {tuple(x.shape)}")
        x = x.flatten(2).float()
        return F.normalize(x, dim=1) if self.normalize_input else x

    def assign(self, desc: Tensor) -> Tensor:
        """Soft assignments ``(B, K, N)`` of descriptors ``(B, C, N)``; they sum to 1 over K."""
        logits = torch.einsum("kc,bcn->bkn", self.weight, desc) + self.bias[None, :, None]
        return logits.softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        desc = self.descriptors(x)
        a = self.assign(desc)
        # Σ_t a_k(x_t) x_t − (Σ_t a_k(x_t)) c_k
        residuals = torch.bmm(a, desc.transpose(1, 2)) - a.sum(dim=2, keepdim=True) * self.centres[None]
        residuals = F.normalize(residuals, dim=2)
        return F.normalize(residuals.flatten(1), dim=1)

    @torch.no_grad()
    def init_from_descriptors(self, descriptors: Tensor, iterations: int = 20, seed: int = 0) -> None:
        """Learned layer: centres from k-means of ``descriptors`` ``(n, C)`` (already normalised
        as :meth:`descriptors` gives them), ``w = 2αc``, ``β = −α‖c‖²``; marks it initialised."""
        if self.mode != "learned":
            raise InputError("VLAD: only a learned layer is initialised from descriptors (this one is random)")
        centres = kmeans(descriptors.float(), self.clusters, iterations=iterations, seed=seed)
        weight, bias = self.assignment_from_centres(centres, self.alpha)
        self.centres.copy_(centres)
        self.weight.copy_(weight)
        self.bias.copy_(bias)
        self.initialised.fill_(True)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, clusters={self.clusters}, alpha={self.alpha:g}, mode={self.mode}, "
                f"assignment={self.assignment}, seed={self.seed}")


def kmeans(x: Tensor, k: int, iterations: int = 20, seed: int = 0) -> Tensor:
    """Lloyd's k-means of the rows of ``x`` ``(n, d)`` → centres ``(k, d)``.

    k-means++ seeding from a generator seeded by ``seed``; an empty cluster takes the point
    farthest from its centre. Fewer distinct points than ``k`` is an :class:`InputError`."""
    x = x.float()
    n = len(x)
    if n < k:
        raise InputError(f"k-means: {n} descriptors cannot make {k} clusters")
    g = torch.Generator().manual_seed(int(seed))
    centres = x[torch.randint(n, (1,), generator=g)]
    closest = torch.cdist(x, centres).pow(2).squeeze(1)
    for _ in range(1, k):
        if float(closest.sum()) <= 0:
            raise InputError(f"k-means: the descriptors have fewer than {k} distinct values")
        pick = torch.multinomial(closest, 1, generator=g)
        centres = torch.cat([centres, x[pick]])
        closest = torch.minimum(closest, torch.cdist(x, x[pick]).pow(2).squeeze(1))
    for _ in range(iterations):
        dist = torch.cdist(x, centres)
        label = dist.argmin(dim=1)
        counts = torch.bincount(label, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, label, x)
        new = sums / counts.clamp(min=1)[:, None].float()
        empty = counts == 0
        if empty.any():
            far = dist.gather(1, label[:, None]).squeeze(1).topk(int(empty.sum())).indices
            new[empty] = x[far]
        if torch.equal(new, centres):
            break
        centres = new
    return centres
