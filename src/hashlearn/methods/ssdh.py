"""SSDH — Supervised Semantics-preserving Deep Hashing (Yang, Lin, Chen, TPAMI 2017/2018); spec §8.

A latent layer of ``k`` sigmoid units ``h = σ(W_H^T f + b_H)`` is inserted between the network's
last feature ``f`` (VGG's fc7 in the paper; here the tap ``tap``, by default the backbone's pooled
last feature) and a classification layer ``ŷ = W_C^T h``; the classification error makes ``h``
carry the semantics, two terms push it to binary::

    L = (1/N) Σ_n CE(y_n, ŷ_n) − α (1/k) (1/N) Σ_n ‖h_n − ½·1‖² + β (1/N) Σ_n (mean_d h_nd − ½)²

(classification, push-to-binary, bit balance; α = β = 1 [RECALL]). Where the paper sums over
images, the terms here are means over the batch, so the weights keep their meaning at any
batch size. Multi-hot labels ``(B, C)``: a sigmoid cross-entropy per class.

The binary code is ``1[h ≥ ½]``; in hashlearn's convention (a relaxed code ``u`` binarised by
``sign``, sign(0) = +1) the head returns ``u = 2h − 1``, so ``sign(u) = +1 ⇔ h ≥ ½``.

Settings: ``alpha`` (push-to-binary), ``beta`` (balance), ``classification`` (its weight),
``hidden`` (0 = the paper: the latent layer directly on the feature; > 0 adds FC(C → hidden) →
ReLU → dropout before it, e.g. to give SSDH the capacity of RV-SSDH's transform layer),
``dropout``, ``tap`` (None: the pooled last feature; a map tap is average-pooled by the head, and a
frozen backbone then gives the head that tap's cached maps), ``classes`` (the classification layer's
size; ``hashlearn train`` sets it from the dataset when not given).

The pieces RV-SSDH shares (:mod:`hashlearn.methods.rvssdh`): :class:`LatentHash` (latent layer
+ classifier), :func:`classification_loss`, :func:`push_to_binary`, :func:`bit_balance`,
:func:`latent_quantization`, :func:`check_classes`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, Method, MethodOutput, check_int, check_number, check_tap, pool


def check_classes(who: str, classes) -> int | None:
    """None (set later from the dataset) or an integer >= 2."""
    return None if classes is None else check_int(who, "classes", classes, minimum=2)


def need_classes(who: str, classes: int | None) -> int:
    if classes is None:
        raise InputError(f"{who}: classes (the size of the classification layer) is not set; pass "
                         f"method_args.classes=N (hashlearn train sets it from the dataset)")
    return classes


# --- loss terms on the latent layer h ∈ (0, 1)^k --------------------------------------------------

def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy: softmax over classes for class ids ``(B,)``, a sigmoid per class for
    multi-hot labels ``(B, C)``."""
    if labels.dim() == 1:
        return F.cross_entropy(logits, labels.long())
    return F.binary_cross_entropy_with_logits(logits, labels.float())


def push_to_binary(h: Tensor) -> Tensor:
    """SSDH's push-to-binary term ``−mean_n (1/k) ‖h_n − ½·1‖²`` (smallest when h is 0 or 1)."""
    return -(h - 0.5).pow(2).mean()


def bit_balance(h: Tensor) -> Tensor:
    """SSDH's balance term ``mean_n (mean_d h_nd − ½)²``: about half of each code's bits are 1."""
    return (h.mean(dim=1) - 0.5).pow(2).mean()


def latent_quantization(h: Tensor) -> Tensor:
    """``(1/(N k)) Σ_{n,d} (h_nd − b_nd)²`` with ``b = 1[h ≥ ½]`` held constant (RV-SSDH, spec §4)."""
    b = (h >= 0.5).to(h.dtype).detach()
    return (h - b).pow(2).mean()


class LatentHash(nn.Module):
    """``[FC(d → hidden) → ReLU → dropout] → FC(→ k) → sigmoid = h`` and the classifier
    ``FC(k → classes)``; returns ``u = 2h − 1`` with ``h`` and the logits in the extras."""

    def __init__(self, in_dim: int, bits: int, classes: int, hidden: int = 0, dropout: float = 0.5):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)) \
            if hidden > 0 else nn.Identity()
        self.latent = nn.Linear(hidden if hidden > 0 else in_dim, bits)
        self.classifier = nn.Linear(bits, classes)

    def forward(self, x: Tensor) -> MethodOutput:
        h = torch.sigmoid(self.latent(self.transform(x)))
        return MethodOutput(codes=2 * h - 1, extras={"h": h, "logits": self.classifier(h)})


class SSDHHead(nn.Module):
    def __init__(self, tap: str, channels: int, bits: int, classes: int, hidden: int, dropout: float):
        super().__init__()
        self.tap = tap
        self.hash = LatentHash(channels, bits, classes, hidden, dropout)

    def forward(self, features: dict[str, Tensor]) -> MethodOutput:
        return self.hash(pool(features[self.tap]))


@register_method(
    "ssdh",
    paper="Yang, Lin, Chen. Supervised Learning of Semantics-Preserving Hash via Deep Convolutional Neural "
          "Networks. TPAMI 2018",
    kind="deep",
)
class SSDH(Method):
    """Latent sigmoid hash layer + classifier; classification + push-to-binary + bit balance."""

    name = "ssdh"

    def __init__(self, bits: int, alpha: float = 1.0, beta: float = 1.0, classification: float = 1.0,
                 hidden: int = 0, dropout: float = 0.5, tap: str | None = None, classes: int | None = None):
        super().__init__(bits)
        who = self.name
        self.alpha = check_number(who, "alpha", alpha, minimum=0)
        self.beta = check_number(who, "beta", beta, minimum=0)
        self.classification = check_number(who, "classification", classification, minimum=0)
        self.hidden = check_int(who, "hidden", hidden, minimum=0)
        self.dropout = check_number(who, "dropout", dropout, minimum=0)
        if self.dropout >= 1:
            raise InputError(f"{who}: dropout must be below 1, got {dropout!r}")
        self.tap = check_tap(who, tap)
        # a map tap is pooled by the head itself, so a frozen backbone gives it that tap's cached map (the
        # cache the VLAD heads read); the default pooled tap keeps cached pooled vectors
        self.spatial = tap is not None and tap != "pool"
        self.classes = check_classes(who, classes)

    def taps(self, default_taps: list[str]) -> list[str]:
        return [self.tap] if self.tap else ["pool"]

    def hparams(self) -> dict:
        return {k: v for k, v in super().hparams().items() if k != "spatial"}  # follows from tap

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        return SSDHHead(tap, tap_channels[tap], self.bits, need_classes(self.name, self.classes), self.hidden,
                        self.dropout)

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        """Named parts: ``classification`` (weighted CE), ``push_to_binary`` (``α ·`` :func:`push_to_binary`,
        negative) and ``balance`` (``β ·`` :func:`bit_balance`)."""
        h = out.extras["h"]
        return {
            "classification": self.classification * classification_loss(out.extras["logits"], batch.labels),
            "push_to_binary": self.alpha * push_to_binary(h),
            "balance": self.beta * bit_balance(h),
        }
