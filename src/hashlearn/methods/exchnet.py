"""ExchNet — a unified hashing network for large-scale fine-grained image retrieval (Cui, Jiang, Wei,
Li, Yoshie, ECCV 2020); spec §6. Codes are learned with ADSH's asymmetric alternation: this class
*is* an :class:`~hashlearn.methods.adsh.ADSH` (the same sampled Ω, ``U_Ω``, bit-by-bit ``V`` update,
checkpointed state and asymmetric evaluation) with ExchNet's head and extra loss terms.

Head (``spatial = True``: it reads the map ``F`` (C, h, w) of one backbone tap in every mode; a pooled
vector is a 1×1 map). The spec's ResNet-50 network has a copy of ``layer4`` as global branch and a
shared copy as local branch on top of ``layer3``; here, above any backbone tap, each branch is a
small convolutional block [INFER] (1×1 conv C → ``width``, BN, ReLU, 3×3 conv, BN, ReLU):

* global branch: ``g = GAP(branch_g(F))`` ∈ R^width;
* attention branch: 1×1 conv C → C/4, BN, ReLU, 1×1 conv → M, BN, ReLU → maps ``A`` (M, h, w);
* local branch (shared by the M parts): ``L_m = branch_l(F ⊙ A_m)`` (width, h, w), ``ℓ_m = GAP(L_m)``;
* hash layer: ``u = tanh(W_h [ℓ_1; …; ℓ_M; g])``, input width · (M + 1).

Loss (named parts)::

    similarity, quantization   ADSH's terms on u (adsh.py), rebalanced similarity by default
    spatial   = λ_sp · mean_b [1 − (2/(M(M−1))) Σ_{m<m'} H(p_m, p_m')]        (:func:`spatial_diversity`)
    channel   = λ_ch · mean_b max(0, t − (2/(M(M−1))) Σ_{m<m'} H(q_m, q_m'))  (:func:`channel_diversity`)
    alignment = λ_al · ‖ℓ_{1..M} − C_{y,1..M}‖₂ / B                            (after the alignment start)

with ``p_m`` = softmax over positions of the channel mean of ``L_m``, ``q_m`` = softmax over channels
of ``ℓ_m`` and the Hellinger distance ``H(p, q) = ‖√p − √q‖₂ / √2``.

Local feature alignment: after outer iteration ``align_start`` (T_align = 25; i.e. from trainer
epoch ``align_start · inner_epochs + 1`` on) the class anchors ``C_{y,m}`` (the mean of ``ℓ_m`` over
the training images of class y, network in eval mode) are recomputed at the start of every outer
iteration, and in training every part feature ``ℓ_m`` of every image is replaced, independently with
probability ``exchange_prob`` (0.5), by the anchor of the image's class for the same part
(:func:`exchange_parts`) before the hash layer; the ADSH terms then use the exchanged codes (which
are also what ``U_Ω`` stores). Never at test time. The anchors are checkpointed (memory ``anchors``).

Every [RECALL]/[INFER]/[CODE] value of the spec is a setting: ``parts`` (M = 4), ``width`` (the
branches' width; 2048 in ResNet's layer4, 256 here for a CPU-sized head), ``lambda_sp``, ``lambda_ch``,
``lambda_align`` (1, the training script), ``margin`` (t = 0.4), ``exchange_prob`` (0.5), ``align_start``
(25; null = never), ``num_samples`` (2000), ``gamma`` (200), ``inner_epochs`` (10, the config; ADSH's
3), ``similarity`` (``rebalanced``), ``tap`` (null: the last of the backbone's default taps).
Single-label data only when the alignment is on (a class anchor needs one class per image).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.adsh import ADSH
from hashlearn.methods.base import Batch, MethodOutput, check_int, check_number


# --- the two attention constraints ---------------------------------------------------------------
def hellinger(p: Tensor, q: Tensor) -> Tensor:
    """``H(p, q) = ‖√p − √q‖₂ / √2`` over the last dimension (distributions)."""
    return (p.clamp(min=0).sqrt() - q.clamp(min=0).sqrt()).pow(2).sum(-1).clamp(min=1e-12).sqrt() / math.sqrt(2)


def mean_pairwise_hellinger(dist: Tensor) -> Tensor:
    """``(2 / (M (M − 1))) Σ_{m<m'} H(d_m, d_m')`` per image, for ``dist`` ``(B, M, K)``."""
    m = dist.shape[1]
    i, j = torch.triu_indices(m, m, offset=1)
    return hellinger(dist[:, i], dist[:, j]).mean(dim=1)


def spatial_diversity(part_maps: Tensor) -> Tensor:
    """``mean_b [1 − mean_{m<m'} H(p_m, p_m')]``, ``p_m`` = softmax over the positions of the
    channel mean of ``L_m``; ``part_maps`` ``(B, M, D, h, w)``."""
    p = part_maps.mean(dim=2).flatten(2).softmax(dim=-1)
    return (1 - mean_pairwise_hellinger(p)).mean()


def channel_diversity(parts: Tensor, margin: float) -> Tensor:
    """``mean_b max(0, t − mean_{m<m'} H(q_m, q_m'))``, ``q_m`` = softmax over the channels of
    ``ℓ_m``; ``parts`` ``(B, M, D)``."""
    return F.relu(margin - mean_pairwise_hellinger(parts.softmax(dim=-1))).mean()


def exchange_parts(parts: Tensor, labels: Tensor, anchors: Tensor, prob: float,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``(exchanged, mask)``: ``exchanged[i, m] = anchors[labels[i], m]`` where ``mask[i, m]`` (drawn
    Bernoulli(``prob``) per image and part), else ``parts[i, m]``. ``parts`` ``(B, M, D)``,
    ``anchors`` ``(classes, M, D)``: only the same part of the image's own class is ever swapped in."""
    mask = torch.rand(parts.shape[:2], generator=generator).to(parts.device) < prob
    target = anchors.to(parts.device, parts.dtype)[labels.long().to(parts.device)]
    return torch.where(mask[..., None], target, parts), mask


# --- head --------------------------------------------------------------------------------------------
def _branch(channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
    )


class ExchNetHead(nn.Module):
    def __init__(self, tap: str, channels: int, bits: int, parts: int, width: int):
        super().__init__()
        self.tap, self.parts, self.width = tap, parts, width
        mid = max(channels // 4, parts)
        self.attention = nn.Sequential(
            nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, parts, 1, bias=False), nn.BatchNorm2d(parts), nn.ReLU(inplace=True),
        )
        self.global_branch = _branch(channels, width)
        self.local_branch = _branch(channels, width)
        self.hash = nn.Linear(width * (parts + 1), bits)

    def code(self, parts: Tensor, g: Tensor) -> Tensor:
        """``u = tanh(W_h [ℓ_1; …; ℓ_M; g])`` for part features ``(B, M, D)`` and global ``(B, D)``."""
        return torch.tanh(self.hash(torch.cat([parts.flatten(1), g], dim=1)))

    def forward(self, features: dict[str, Tensor]) -> MethodOutput:
        x = features[self.tap]
        if x.dim() == 2:
            x = x[:, :, None, None]  # a pooled vector is a 1×1 map
        b, c, h, w = x.shape
        a = self.attention(x)  # (B, M, h, w)
        g = self.global_branch(x).mean(dim=(2, 3))
        local = (x[:, None] * a[:, :, None]).reshape(b * self.parts, c, h, w)
        maps = self.local_branch(local).reshape(b, self.parts, self.width, h, w)
        parts = maps.mean(dim=(3, 4))
        return MethodOutput(codes=self.code(parts, g), extras={
            "parts": parts, "part_maps": maps, "global": g, "part_attention": a, "code": self.code})


# --- class anchors (checkpointed) ------------------------------------------------------------------------
class PartAnchors:
    """``C`` ``(classes, M, D)``, the class anchor of every part, and ``on`` (exchange active)."""

    def __init__(self) -> None:
        self.anchors: Tensor | None = None

    def update(self, index: Tensor, codes: Tensor, labels: Tensor) -> None:
        pass  # recomputed once per outer iteration (ExchNet.on_epoch_start), not per batch

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.anchors is None else {"anchors": self.anchors}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        anchors = state.get("anchors")
        if anchors is not None and (not isinstance(anchors, Tensor) or anchors.dim() != 3):
            raise ValueError("part anchors: not a (classes, parts, width) tensor")
        self.anchors = None if anchors is None else anchors.float().cpu()


@register_method(
    "exchnet",
    paper="Cui, Jiang, Wei, Li, Yoshie. ExchNet: A Unified Hashing Network for Large-Scale Fine-Grained "
          "Image Retrieval. ECCV 2020",
    kind="deep",
)
class ExchNet(ADSH):
    """Global + M attention-part branches, part exchange with class anchors, ADSH's asymmetric codes."""

    name = "exchnet"
    spatial = True

    def __init__(self, bits: int, parts: int = 4, width: int = 256, lambda_sp: float = 1.0, lambda_ch: float = 1.0,
                 lambda_align: float = 1.0, margin: float = 0.4, exchange_prob: float = 0.5,
                 align_start: int | None = 25, num_samples: int = 2000, gamma: float = 200.0,
                 inner_epochs: int = 10, similarity: str = "rebalanced", tap: str | None = None):
        super().__init__(bits, num_samples=num_samples, gamma=gamma, inner_epochs=inner_epochs,
                         similarity=similarity, tap=tap)
        del self.head, self.mid_channels  # ADSH's head settings; ExchNet builds its own head
        who = self.name
        self.parts = check_int(who, "parts", parts, minimum=2)
        self.width = check_int(who, "width", width, minimum=1)
        self.lambda_sp = check_number(who, "lambda_sp", lambda_sp, minimum=0)
        self.lambda_ch = check_number(who, "lambda_ch", lambda_ch, minimum=0)
        self.lambda_align = check_number(who, "lambda_align", lambda_align, minimum=0)
        self.margin = check_number(who, "margin", margin, minimum=0)
        self.exchange_prob = check_number(who, "exchange_prob", exchange_prob, minimum=0)
        if self.exchange_prob > 1:
            raise InputError(f"{who}: exchange_prob must be in [0, 1], got {exchange_prob!r}")
        self.align_start = None if align_start is None else check_int(who, "align_start", align_start, minimum=0)
        self._memories["anchors"] = PartAnchors()

    def taps(self, default_taps: list[str]) -> list[str]:
        return [self.tap] if self.tap else [list(default_taps)[-1]]

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        return ExchNetHead(tap, tap_channels[tap], self.bits, self.parts, self.width)

    # --- alignment ----------------------------------------------------------------------------------
    @property
    def anchors(self) -> Tensor | None:
        return self._memories["anchors"].anchors

    def aligning(self, epoch: int) -> bool:
        """Whether trainer epoch ``epoch`` exchanges parts: its outer iteration is past ``align_start``."""
        return self.align_start is not None and self.outer_iteration(epoch) > self.align_start

    def on_train_start(self, state: Any) -> None:
        super().on_train_start(state)
        if self.align_start is not None and self._train_labels.dim() != 1:
            raise InputError("exchnet: the part exchange needs one class per image (multi-hot labels given); "
                             "set method_args.align_start: null")

    def on_epoch_start(self, state: Any) -> None:
        first = self.codes_state.outer != self.outer_iteration(state.epoch) or self.codes_state.omega is None
        super().on_epoch_start(state)
        if self.aligning(state.epoch) and (first or self.anchors is None):
            self._memories["anchors"].anchors = self.compute_anchors(state)

    def compute_anchors(self, state: Any) -> Tensor:
        """``C_{y,m}``: the mean of ``ℓ_m`` over the training images of class y (eval mode)."""
        head, labels = state.head, self._train_labels.long()
        classes = int(labels.max()) + 1
        sums = torch.zeros(classes, self.parts, self.width)
        counts = torch.zeros(classes)
        start = 0
        was = head.training
        head.eval()
        try:
            with torch.no_grad():
                for x in state.head_inputs():
                    parts = head(x).extras["parts"].float().cpu()
                    y = labels[start:start + len(parts)]
                    sums.index_add_(0, y, parts)
                    counts.index_add_(0, y, torch.ones(len(y)))
                    start += len(parts)
        finally:
            head.train(was)
        # data-parallel: every rank runs the same weights over the whole training set: identical anchors
        return sums / counts.clamp(min=1)[:, None, None]

    # --- loss -----------------------------------------------------------------------------------------
    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        parts_feat, u = out.extras["parts"], out.codes
        anchors = self.anchors
        aligning = anchors is not None and self.align_start is not None and self.codes_state.outer > self.align_start
        parts = {}
        if aligning:
            exchanged, _ = exchange_parts(parts_feat, batch.labels, anchors, self.exchange_prob)
            u = out.extras["code"](exchanged, out.extras["global"])
            out.extras["train_codes"] = u.detach()  # what U_Ω stores (on_batch_end)
        parts.update(self.hash_parts(u, batch))
        if self.lambda_sp > 0:
            parts["spatial"] = self.lambda_sp * spatial_diversity(out.extras["part_maps"])
        if self.lambda_ch > 0:
            parts["channel"] = self.lambda_ch * channel_diversity(parts_feat, self.margin)
        if aligning and self.lambda_align > 0:
            target = anchors.to(parts_feat.device, parts_feat.dtype)[batch.labels.long().to(parts_feat.device)]
            parts["alignment"] = self.lambda_align * (parts_feat - target).flatten(1).norm() / len(parts_feat)
        return parts

    def on_batch_end(self, state: Any, batch: Batch, out: MethodOutput) -> None:
        codes = out.extras.get("train_codes", out.codes)
        self.update_memories(batch.index, codes, batch.labels, gather=getattr(state, "all_gather", None))
