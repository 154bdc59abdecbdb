"""RV-SSDH — Random-VLAD based deep hashing (Weng, Ye, Tian, Cao, Wang, arXiv 2002.02333, 2020); spec §4.

The head, on the map of one backbone tap (``spatial = True``: a frozen backbone gives it cached
maps, never pooled vectors):

1. a **random VLAD layer** (:class:`hashlearn.nn.VLAD`, ``mode="random"``): descriptor-wise L2, soft
   assignment to K random unit centres ``c_k ~ N(0, I)/‖·‖`` with ``w_k = 2αc_k``, ``β_k = −α‖c_k‖²``,
   residual aggregation, intra-normalisation, global L2 → ``K·C`` dims; frozen (no parameter), the
   same for the same ``vlad_seed``;
2. the **transform layer** FC(K·C → ``transform``) → ReLU → dropout;
3. the **latent hash layer** FC(→ k) → sigmoid = ``h ∈ (0, 1)^k``;
4. the **classification layer** FC(k → classes).

Loss (spec §4), as named parts, means over the batch::

    L = classification · CE(y, W_C^T h)  +  λ_q · (1/(N k)) Σ_{n,d} (h_nd − b_nd)²,   b = 1[h ≥ ½]
        [ + λ_b · mean_n (mean_d h_nd − ½)² ]

``quantization="squared"`` is the form above (default); ``"ssdh"`` is SSDH's push-to-binary
``−(1/k)‖h − ½·1‖²`` instead. ``balance`` (λ_b) is off by default (the abstract names two terms).
The code is ``1[h ≥ ½]``, returned as ``u = 2h − 1`` so that hashlearn's ``sign(u)`` gives it.

Every [INFER]/[RECALL] value of the spec is a setting with its default: ``clusters`` K = 64,
``alpha`` α = 100, ``assignment`` ("centres", or "conv": random frozen 1×1 conv weights),
``normalize_descriptors`` (True), ``transform`` 1024, ``dropout`` 0.5, ``quantization``,
``lambda_q`` 1, ``balance`` 0, ``vlad_seed`` 0; ``vlad_norm`` (not in the spec: what the transform
layer reads of the unit-norm VLAD vector, a BatchNorm by default — :class:`~hashlearn.methods.netvlad.VLADRescale`
says why). ``tap`` (None: the backbone's last default tap;
VGG-16's conv5 as in the spec, EfficientNet's stage7). ``classes``: set from the dataset by
``hashlearn train``. The spec's optimiser (SGD momentum 0.9, lr 1e-3 for new layers and 1e-4 for
the backbone, weight decay 5e-4, batch 64, 50 epochs, ×0.1 at 30 and 40) is the trainer's
configuration (``optim.*``, ``train.*``), not the method's.

``vlad="learned"`` swaps the random layer for a trained, k-means initialised one (NetVLAD's,
initialised in ``on_train_start`` as :mod:`hashlearn.methods.netvlad` does) with everything else
equal: the ablation that prices the random layer against the learned one.
"""

from __future__ import annotations

from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, Method, MethodOutput, check_choice, check_int, check_number
from hashlearn.methods.netvlad import VLADRescale, kmeans_init, set_vlad_settings, vlad_tap
from hashlearn.methods.ssdh import (
    LatentHash,
    bit_balance,
    check_classes,
    classification_loss,
    latent_quantization,
    need_classes,
    push_to_binary,
)
from hashlearn.nn.vlad import VLAD


class RVSSDHHead(nn.Module):
    def __init__(self, tap: str, channels: int, bits: int, classes: int, clusters: int, alpha: float,
                 assignment: str, normalize: bool, vlad_seed: int, transform: int, dropout: float, vlad: str,
                 vlad_norm: str = "bn"):
        super().__init__()
        self.tap = tap
        self.vlad = VLAD(channels, clusters, alpha, mode=vlad, assignment=assignment, seed=vlad_seed,
                         normalize_input=normalize)
        self.rescale = VLADRescale(self.vlad.out_dim, vlad_norm)
        self.hash = LatentHash(self.vlad.out_dim, bits, classes, hidden=transform, dropout=dropout)

    def forward(self, features: dict[str, Tensor]) -> MethodOutput:
        return self.hash(self.rescale(self.vlad(features[self.tap])))


@register_method(
    "rvssdh",
    paper="Weng, Ye, Tian, Cao, Wang. Random VLAD based Deep Hashing for Efficient Image Retrieval. "
          "arXiv 2002.02333, 2020",
    kind="deep",
)
class RVSSDH(Method):
    """Random frozen VLAD → transform → sigmoid latent hash layer → classifier; CE + quantization."""

    name = "rvssdh"
    spatial = True

    def __init__(self, bits: int, clusters: int = 64, alpha: float = 100.0, assignment: str = "centres",
                 normalize_descriptors: bool = True, transform: int = 1024, dropout: float = 0.5,
                 quantization: str = "squared", lambda_q: float = 1.0, balance: float = 0.0,
                 classification: float = 1.0, vlad_seed: int = 0, vlad: str = "random", tap: str | None = None,
                 kmeans_images: int = 1000, kmeans_iterations: int = 20, vlad_norm: str = "bn",
                 classes: int | None = None):
        super().__init__(bits)
        who = self.name
        set_vlad_settings(self, clusters=clusters, alpha=alpha, normalize_descriptors=normalize_descriptors, tap=tap,
                          kmeans_images=kmeans_images, kmeans_iterations=kmeans_iterations, vlad_norm=vlad_norm)
        self.assignment = check_choice(who, "assignment", assignment, ("centres", "conv"))
        self.transform = check_int(who, "transform", transform, minimum=1)
        self.dropout = check_number(who, "dropout", dropout, minimum=0)
        if self.dropout >= 1:
            raise InputError(f"{who}: dropout must be below 1, got {dropout!r}")
        self.quantization = check_choice(who, "quantization", quantization, ("squared", "ssdh"))
        self.lambda_q = check_number(who, "lambda_q", lambda_q, minimum=0)
        self.balance = check_number(who, "balance", balance, minimum=0)
        self.classification = check_number(who, "classification", classification, minimum=0)
        self.vlad_seed = check_int(who, "vlad_seed", vlad_seed, minimum=0)
        self.vlad = check_choice(who, "vlad", vlad, ("random", "learned"))
        self.classes = check_classes(who, classes)

    def taps(self, default_taps: list[str]) -> list[str]:
        return vlad_tap(self.tap, default_taps)

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        return RVSSDHHead(tap, tap_channels[tap], self.bits, need_classes(self.name, self.classes), self.clusters,
                          self.alpha, self.assignment, self.normalize_descriptors, self.vlad_seed, self.transform,
                          self.dropout, self.vlad, self.vlad_norm)

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        """Named parts: ``classification`` (weighted CE of the classifier on ``h``), ``quantization``
        (``λ_q ·`` :func:`~hashlearn.methods.ssdh.latent_quantization`, or ``λ_q ·``
        :func:`~hashlearn.methods.ssdh.push_to_binary` with ``quantization="ssdh"``) and, when
        ``balance > 0``, ``balance`` (``λ_b ·`` :func:`~hashlearn.methods.ssdh.bit_balance`)."""
        h = out.extras["h"]
        quantize = latent_quantization if self.quantization == "squared" else push_to_binary
        parts = {
            "classification": self.classification * classification_loss(out.extras["logits"], batch.labels),
            "quantization": self.lambda_q * quantize(h),
        }
        if self.balance > 0:
            parts["balance"] = self.balance * bit_balance(h)
        return parts

    def on_train_start(self, state) -> None:
        head = getattr(state, "head", None)
        if self.vlad == "learned" and head is not None:
            kmeans_init(head.vlad, state, head.tap, self.kmeans_images, self.kmeans_iterations, self.vlad_seed)
