"""ATH — Attention-based Triplet Hashing (Fang, Fu, Liu, "Deep triplet hashing network for
case-based medical image retrieval", Medical Image Analysis 2021); spec §2.

Network. A spatial-attention module (:class:`hashlearn.nn.SpatialAttention`: 3×3 max-pool, channel
max and mean, conv 2→1, sigmoid map multiplied into the features) re-weights a feature map; after
global average pooling a hash head ``u = tanh(FC(·))`` gives the codes and a class head
``FC(·) → C`` logits. Where the attention sits is a setting (spec: "make the insertion point
configurable"):

* ``attention_at: null`` (default) — on the map at ``tap`` that the head reads (default: the last
  of the backbone's default taps, e.g. ``stage7`` of EfficientNet-Lite0), just before its global
  pooling; works in every training mode (frozen backbones give the head cached maps: ``spatial``);
* ``attention_at: TAP`` — *inserted into the backbone* after ``TAP``: the rest of the network runs
  on the attended map (the spec's placement; its default is ResNet ``layer1``) and the head reads
  the pooled vector. The model (:class:`~hashlearn.train.trainer.HashModel`) applies the head's
  ``attention`` module there; end to end any spatial tap works, fine-tuning from a cut needs
  ``TAP`` = the cut (the map the cache holds), and a frozen backbone cannot run it (refused).

Either way the head's output carries the map as ``extras["attention"]`` ``(B, 1, h, w)``, which
``hashlearn attention`` draws over an image.

Loss (spec §2, triplet cross-entropy), over the triplets ``T = {(q, p, n)}`` mined in the batch
(``triplets``, default ``"random"``: per anchor a random positive of its class and a random
negative, :class:`~hashlearn.methods.miners.RandomTripletMiner`; the class-balanced batch sampler
``train.sampler: class_balanced``, this method's preferred one, puts every class in every batch)::

    D(a, b) = ‖u_a − u_b‖²                    (distance="euclidean")
            = ½ (k − u_a^T u_b)               (distance="hamming", the relaxed Hamming distance)
    L = (1/|T|) Σ_T [ w_t · max(0, D(q,p) − D(q,n) + m)
                      + μ · (CE(y_q, ŷ_q) + CE(y_p, ŷ_p) + CE(y_n, ŷ_n))
                      + α · Σ_{i∈{q,p,n}} mean_d ||u_id| − 1| ]

returned as three named parts (:meth:`ATH.loss`): ``triplet``, ``cross_entropy``,
``regularization``. Defaults (spec): ``m = 0.5·k`` (``margin: null``), ``α = 0.01``, ``μ = 1``
([INFER]), ``w_t = 1``. Ablations: ``triplet_weight: 0`` (cross-entropy only) and ``mu: 0``
(triplet only); a part whose weight is 0 is left out. CE is the softmax cross-entropy for class
ids and the binary cross-entropy (mean over labels) for multi-hot labels.

``classes``: the class head's width (no class head when ``mu`` is 0). ``hashlearn train`` fills it
from the dataset (recorded in the run's ``method_args``, so ``load_run`` rebuilds the same head);
left null, the head has :data:`FALLBACK_CLASSES` outputs and a label beyond them is a one-line error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, Method, MethodOutput, check_choice, check_int, check_number, pool
from hashlearn.methods.miners import TRIPLET_MINERS, RandomTripletMiner, batch_generator, triplet_miner
from hashlearn.nn.attention import SpatialAttention

#: the class head's width when ``classes`` is not given (``hashlearn train`` always gives it)
FALLBACK_CLASSES = 64


class ATHHead(nn.Module):
    """Attention (on the head's map, or inserted into the backbone by the model), global average
    pooling, hash layer (tanh) and class layer."""

    def __init__(self, tap: str, channels: int, bits: int, classes: int, pooled: bool, attention_at: str | None,
                 kernel_size: int = 3, pool_size: int = 3, class_from: str = "feature"):
        super().__init__()
        self.tap = tap
        #: a backbone tap after which the model applies ``self.attention`` (None: on this head's map)
        self.insert_at = attention_at
        # pooled vectors (frozen, no maps) leave no map to attend to: no attention module then
        self.attention = None if pooled and attention_at is None else SpatialAttention(kernel_size, pool_size)
        self.hash = nn.Linear(channels, bits)
        self.class_from = class_from
        # no class head when the cross-entropy is off (an unused layer would stall data-parallel training)
        self.classifier = nn.Linear(bits if class_from == "code" else channels, classes) if classes else None

    def forward(self, features: dict[str, Tensor]) -> MethodOutput:
        x = features[self.tap]
        extras = {}
        if self.insert_at is None and self.attention is not None:
            if x.dim() != 4:
                raise InputError(f"ath: the attention needs the feature map at {self.tap!r}, got shape "
                                 f"{tuple(x.shape)}")
            x, extras["attention"] = self.attention(x)
        h = pool(x)
        u = torch.tanh(self.hash(h))
        if self.classifier is not None:
            extras["logits"] = self.classifier(u if self.class_from == "code" else h)
        return MethodOutput(codes=u, extras=extras)


def triplet_distances(u_a: Tensor, u_b: Tensor, distance: str) -> Tensor:
    """Row-wise ``D(a_i, b_i)``: ``‖a − b‖²`` (``euclidean``) or ``½ (k − a^T b)`` (``hamming``)."""
    if distance == "euclidean":
        return (u_a - u_b).pow(2).sum(dim=1)
    return 0.5 * (u_a.shape[1] - (u_a * u_b).sum(dim=1))


def triplet_ranking(u: Tensor, a: Tensor, p: Tensor, n: Tensor, margin: float, distance: str = "euclidean") -> Tensor:
    """Per triplet ``max(0, D(q, p) − D(q, n) + m)`` ``(|T|,)``."""
    return F.relu(triplet_distances(u[a], u[p], distance) - triplet_distances(u[a], u[n], distance) + margin)


def class_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per image: softmax cross-entropy (class ids ``(B,)``) or the mean binary cross-entropy over the
    labels (multi-hot ``(B, C)``; a head wider than C sees the extra labels as 0)."""
    width = logits.shape[1]
    if labels.dim() == 1:
        if len(labels) and int(labels.max()) >= width:
            raise InputError(f"ath: class {int(labels.max())} is beyond the class head's {width} outputs; set "
                             f"method_args.classes to the number of classes")
        return F.cross_entropy(logits, labels.long(), reduction="none")
    if labels.shape[1] > width:
        raise InputError(f"ath: {labels.shape[1]} labels but the class head has {width} outputs; set "
                         f"method_args.classes")
    target = F.pad(labels.float(), (0, width - labels.shape[1]))
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)


def unit_magnitude(u: Tensor) -> Tensor:
    """Per image ``mean_d ||u_d| − 1|`` (the |u| → 1 term)."""
    return (u.abs() - 1).abs().mean(dim=1)


@register_method(
    "ath",
    paper="Fang, Fu, Liu. Deep triplet hashing network for case-based medical image retrieval. "
          "Medical Image Analysis 2021",
    kind="deep",
)
class ATH(Method):
    """Spatial attention, tanh hash and class heads; triplet, cross-entropy and code-magnitude terms (spec §2)."""

    name = "ath"
    spatial = True
    #: the head returns ``extras["attention"]`` (``hashlearn attention`` draws it)
    attention_map = True
    #: the batch sampler this method prefers (``train.sampler: auto``)
    sampler = "class_balanced"

    def __init__(self, bits: int, classes: int | None = None, margin: float | None = None, alpha: float = 0.01,
                 mu: float = 1.0, triplet_weight: float = 1.0, triplets: str = "random", per_anchor: int = 1,
                 distance: str = "euclidean", tap: str | None = None, attention_at: str | None = None,
                 kernel_size: int = 3, pool_size: int = 3, class_from: str = "feature"):
        super().__init__(bits)
        who = self.name
        self.classes = None if classes is None else check_int(who, "classes", classes, minimum=2)
        self.margin = 0.5 * self.bits if margin is None else check_number(who, "margin", margin, minimum=0)
        self.alpha = check_number(who, "alpha", alpha, minimum=0)
        self.mu = check_number(who, "mu", mu, minimum=0)
        self.triplet_weight = check_number(who, "triplet_weight", triplet_weight, minimum=0)
        if self.mu == 0 and self.triplet_weight == 0 and self.alpha == 0:
            raise InputError("ath: mu, triplet_weight and alpha are all 0: nothing to train")
        self.triplets = check_choice(who, "triplets", triplets, TRIPLET_MINERS)
        self.per_anchor = check_int(who, "per_anchor", per_anchor, minimum=1)
        if self.per_anchor != 1 and self.triplets != "random":
            raise InputError(f"ath: per_anchor is the number of random triplets per anchor of triplets='random'; "
                             f"with triplets={self.triplets!r} leave it 1")
        self.distance = check_choice(who, "distance", distance, ("euclidean", "hamming"))
        for arg, value in (("tap", tap), ("attention_at", attention_at)):
            if value is not None and (not isinstance(value, str) or not value):
                raise InputError(f"ath: {arg} must be a backbone tap name or null, got {value!r}")
        if tap is not None and attention_at is not None:
            raise InputError("ath: give tap (attention on the head's map) or attention_at (inserted into the "
                             "backbone), not both")
        self.tap = tap
        self.attention_at = attention_at
        self.kernel_size = check_int(who, "kernel_size", kernel_size, minimum=1)
        self.pool_size = check_int(who, "pool_size", pool_size, minimum=1)
        for arg, value in (("kernel_size", self.kernel_size), ("pool_size", self.pool_size)):
            if value % 2 == 0:
                raise InputError(f"ath: {arg} must be odd (the map keeps its size), got {value}")
        self.class_from = check_choice(who, "class_from", class_from, ("feature", "code"))
        args = {"per_anchor": self.per_anchor} if self.triplets == "random" else {}
        self._miner = triplet_miner(self.triplets, who, **args)

    @property
    def inserts_at(self) -> str | None:
        """The backbone tap after which the model runs the head's attention (None: in the head)."""
        return self.attention_at

    def taps(self, default_taps: list[str]) -> list[str]:
        if self.attention_at is not None:
            return ["pool"]
        if self.tap:
            return [self.tap]
        return [default_taps[-1]] if default_taps else ["pool"]

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        classes = (self.classes or FALLBACK_CLASSES) if self.mu > 0 else 0
        return ATHHead(tap, tap_channels[tap], self.bits, classes, pooled,
                       self.attention_at, self.kernel_size, self.pool_size, self.class_from)

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        """Named parts, each a mean over the mined triplets ``(q, p, n)`` (spec §2):

        * ``triplet`` = ``w_t · max(0, D(q,p) − D(q,n) + m)``;
        * ``cross_entropy`` = ``μ · (CE(q) + CE(p) + CE(n))``;
        * ``regularization`` = ``α · Σ_{i∈{q,p,n}} mean_d ||u_id| − 1|``.

        A part whose weight is 0 is left out; a batch without a triplet gives zeros (that still
        depend on the network, so backward works)."""
        u = out.codes
        labels = batch.labels.to(u.device)
        if isinstance(self._miner, RandomTripletMiner):
            self._miner.generator = batch_generator(batch.index)
        a, p, n = self._miner(u, labels)
        parts: dict[str, Tensor] = {}
        if len(a) == 0:
            zero = 0.0 * u.sum() + (0.0 * out.extras["logits"].sum() if "logits" in out.extras else 0.0)
            weights = {"triplet": self.triplet_weight, "cross_entropy": self.mu, "regularization": self.alpha}
            return {k: zero for k, w in weights.items() if w > 0}
        if self.triplet_weight > 0:
            parts["triplet"] = self.triplet_weight * triplet_ranking(u, a, p, n, self.margin, self.distance).mean()
        if self.mu > 0:
            ce = class_cross_entropy(out.extras["logits"], labels)
            parts["cross_entropy"] = self.mu * (ce[a] + ce[p] + ce[n]).mean()
        if self.alpha > 0:
            mag = unit_magnitude(u)
            parts["regularization"] = self.alpha * (mag[a] + mag[p] + mag[n]).mean()
        return parts
