"""OrthoHash — One Loss for All (Hoe, Ng, Zhang, Chan, Song, Xiang, NeurIPS 2021).

Each class ``c`` has a fixed binary code ``o_c ∈ {−1, +1}^k``, the codes mutually orthogonal
(:func:`~hashlearn.methods.centres.orthogonal_centres`: rows of a Hadamard matrix when ``C ≤ k``
and one of order ``k`` exists, else Bernoulli(½) codes, nearly orthogonal). The hash layer's
output goes through a BatchNorm (zero-mean codes: bit balance), giving ``v``; the cosine
similarities ``cos(v, o_c)`` act as logits of a cosine-margin softmax (CosFace form, scale ``s``,
margin ``m``)::

    L_ce = − log [ e^{s (cos(v, o_y) − m)} / ( e^{s (cos(v, o_y) − m)} + Σ_{c≠y} e^{s cos(v, o_c)} ) ]

Maximising ``cos(v, o_y)`` both separates the classes and shrinks the quantization error (the
paper's single objective). Multi-label images: the margin is taken at every positive label and the
target is the label-smoothed distribution ``y / Σ y`` (the paper's label smoothing). The optional
quantization term of the authors' code, ``quantization · mean_i (1 − cos(v_i, sgn(v_i)))``, is off by
default (``quantization = 0``, the paper's one-loss setting).

Defaults ``s = 8``, ``m = 0.2`` (the authors' code). Parts (:meth:`OrthoHash.loss`):
``cosine_ce`` and, when its weight is > 0, ``quantization``. The codebook is the method's state
(tensors, checkpointed), made in ``on_train_start`` from the number of classes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, Method, MethodOutput, check_choice, check_int, check_number
from hashlearn.methods.centres import orthogonal_centres
from hashlearn.methods.hashlayer import HashLayerHead, count_classes, label_matrix, tap_of
from hashlearn.methods.ssdh import check_classes


def cosine_margin_ce(cos: Tensor, labels: Tensor, s: float, m: float) -> Tensor:
    """Mean cosine-margin cross-entropy of the cosine logits ``cos`` ``(B, C)``: softmax CE of
    ``s (cos − m·onehot)`` for class ids; for multi-hot labels, CE against ``y / Σ y`` with the
    margin at every positive label."""
    y = label_matrix(labels, cos.shape[1]).to(cos.dtype)
    log_p = F.log_softmax(s * (cos - m * y), dim=1)
    target = y / y.sum(1, keepdim=True).clamp(min=1)
    return -(target * log_p).sum(1).mean()


@register_method(
    "orthohash",
    paper="Hoe, Ng, Zhang, Chan, Song, Xiang. One Loss for All: Deep Hashing with a Single Cosine Similarity "
          "based Learning Objective. NeurIPS 2021",
    kind="deep",
)
class OrthoHash(Method):
    """Cosine similarity to orthogonal binary class codes, scale s, margin m (one loss)."""

    name = "orthohash"

    def __init__(self, bits: int, s: float = 8.0, m: float = 0.2, quantization: float = 0.0,
                 codebook: str = "auto", seed: int = 0, classes: int | None = None):
        super().__init__(bits)
        who = self.name
        self.s = check_number(who, "s", s, minimum=0)
        self.m = check_number(who, "m", m, minimum=0)
        self.quantization = check_number(who, "quantization", quantization, minimum=0)
        self.codebook = check_choice(who, "codebook", codebook, ("auto", "hadamard", "bernoulli"))
        self.seed = check_int(who, "seed", seed, minimum=0)
        self.classes = check_classes(who, classes)
        self._codebook: Tensor | None = None

    def on_train_start(self, state: Any) -> None:
        if self._codebook is None:
            classes = self.classes or count_classes(torch.as_tensor(state.train_labels))
            self._codebook = orthogonal_centres(classes, self.bits, self.codebook, self.seed)

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        return HashLayerHead(*tap_of(tap_channels), self.bits, activation="none", batchnorm=True)

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        if self._codebook is None:
            raise InputError("orthohash: the class codes are not made yet (on_train_start makes them)")
        v = out.codes
        codebook = self._codebook.to(v.device, v.dtype)
        cos = F.normalize(v, dim=1, eps=1e-8) @ F.normalize(codebook, dim=1).T
        parts = {"cosine_ce": cosine_margin_ce(cos, batch.labels, self.s, self.m)}
        if self.quantization > 0:
            b = torch.where(v >= 0, 1.0, -1.0).to(v.dtype).detach()
            parts["quantization"] = self.quantization * (1 - F.cosine_similarity(v, b, dim=1)).mean()
        return parts

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self._codebook is None else {"codebook": self._codebook}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        codebook = state.pop("codebook", None)
        super().load_state_dict(state)
        if codebook is not None:
            if codebook.dim() != 2 or codebook.shape[1] != self.bits:
                raise ValueError(f"orthohash: saved codebook of shape {tuple(codebook.shape)} does not fit "
                                 f"{self.bits} bits")
            self._codebook = codebook.float()
