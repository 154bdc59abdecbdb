"""CSQ — Central Similarity Quantization (Yuan, Wang, Zhang, Tay, Xie, Feng, CVPR 2020); spec §8.

Each class ``c`` gets a hash centre ``c_c ∈ {−1, +1}^k`` far from the others (Algorithm 1,
:func:`~hashlearn.methods.centres.hash_centres`: rows of ``[H_k; −H_k]`` for a Hadamard matrix
``H_k`` when ``C ≤ 2k``, else Bernoulli(½) codes); a multi-label image's centre is the sign of
the sum of its labels' centres (:func:`~hashlearn.methods.centres.multilabel_centres`). The
codes ``u = tanh(z)`` are pulled to their centre by a bitwise binary cross-entropy, plus a
quantization term (Eq. 8)::

    L = (1/k) Σ_i Σ_d BCE((u_id + 1)/2, (c_{y_i},d + 1)/2) + λ Σ_i Σ_d (|u_id| − 1)²,   λ = 1e-4

Parts (:meth:`CSQ.loss`), means over the batch and the bits: ``central`` and ``quantization``.
The centres are the method's state (tensors, checkpointed), made in ``on_train_start`` from the
number of classes of the training labels (or ``classes``), drawn with ``seed``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, Method, MethodOutput, check_choice, check_int, check_number
from hashlearn.methods.centres import hash_centres, multilabel_centres
from hashlearn.methods.hashlayer import HashLayerHead, count_classes, tap_of
from hashlearn.methods.ssdh import check_classes


@register_method(
    "csq",
    paper="Yuan, Wang, Zhang, Tay, Xie, Feng. Central Similarity Quantization for Efficient Image and Video "
          "Retrieval. CVPR 2020",
    kind="deep",
)
class CSQ(Method):
    """Hash centres (Hadamard / Bernoulli); central BCE + quantization."""

    name = "csq"

    def __init__(self, bits: int, lam: float = 1e-4, centres: str = "auto", seed: int = 0,
                 classes: int | None = None):
        super().__init__(bits)
        who = self.name
        self.lam = check_number(who, "lam", lam, minimum=0)
        self.centres = check_choice(who, "centres", centres, ("auto", "hadamard", "bernoulli"))
        self.seed = check_int(who, "seed", seed, minimum=0)
        self.classes = check_classes(who, classes)
        self._centres: Tensor | None = None
        self._tie_break: Tensor | None = None

    def make_centres(self, classes: int) -> None:
        self._centres = hash_centres(classes, self.bits, self.centres, self.seed)
        g = torch.Generator().manual_seed(self.seed + 1)
        self._tie_break = torch.where(torch.rand(self.bits, generator=g) < 0.5, -1.0, 1.0)

    def on_train_start(self, state: Any) -> None:
        if self._centres is None:
            self.make_centres(self.classes or count_classes(state.train_labels))

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        return HashLayerHead(*tap_of(tap_channels), self.bits, activation="tanh")

    def targets(self, labels: Tensor) -> Tensor:
        """The hash centre of each image, ±1 ``(B, k)``."""
        if self._centres is None:
            raise InputError("csq: the hash centres are not made yet (on_train_start makes them from the labels)")
        return multilabel_centres(labels, self._centres.to(labels.device), self._tie_break.to(labels.device))

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        u = out.codes
        c = self.targets(batch.labels).to(u.dtype)
        p = ((u + 1) / 2).clamp(1e-7, 1 - 1e-7)
        return {
            "central": F.binary_cross_entropy(p, (c + 1) / 2),
            "quantization": self.lam * (u.abs() - 1).pow(2).mean(),
        }

    def state_dict(self) -> dict[str, Tensor]:
        state = super().state_dict()
        if self._centres is not None:
            state.update({"centres": self._centres, "tie_break": self._tie_break})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        centres, tie_break = state.pop("centres", None), state.pop("tie_break", None)
        super().load_state_dict(state)
        if centres is not None:
            if centres.dim() != 2 or centres.shape[1] != self.bits or tie_break is None:
                raise ValueError(f"csq: saved centres of shape {tuple(centres.shape)} do not fit {self.bits} bits")
            self._centres, self._tie_break = centres.float(), tie_break.float()
