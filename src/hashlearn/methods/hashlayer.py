"""The hash layer most single-code deep hashing methods put on the backbone, and label helpers
they share (HashNet, DHN, DSH, DCH, CSQ, DSDH, GreedyHash, OrthoHash, IDHN).

:class:`HashLayerHead`: the pooled feature of one tap → ``FC(C → k)`` → optional BatchNorm
(OrthoHash's code balance) → an activation: ``"none"`` (DSDH, DSH, GreedyHash), ``"tanh"``
(DHN, DCH, CSQ), ``"scaled_tanh"`` (HashNet's ``tanh(β z)``, with ``β`` set by the method's
continuation schedule through :attr:`HashLayerHead.beta`) or ``"softsign"`` (IDHN's
``z / (1 + |z|)``). ``classes`` > 0 adds a linear classifier on the codes (GreedyHash); the
codes it reads are chosen by the method (:attr:`HashLayerHead.classify`), its logits go to the
extras as ``"logits"``. Every activation keeps the sign of ``z``, so the binary code is
``sign(z)`` whatever ``β`` is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods.base import MethodOutput, pool

ACTIVATIONS = ("none", "tanh", "scaled_tanh", "softsign")


class HashLayerHead(nn.Module):
    def __init__(self, tap: str, channels: int, bits: int, activation: str = "none", batchnorm: bool = False,
                 classes: int = 0, classify: Callable[[Tensor], Tensor] | None = None, bias: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise InputError(f"hash layer: activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.tap = tap
        self.fc = nn.Linear(channels, bits)
        self.bn = nn.BatchNorm1d(bits) if batchnorm else None
        self.activation = activation
        #: HashNet's β of ``tanh(β z)`` (the method's schedule sets it); unused by other activations
        self.beta = 1.0
        self.classifier = nn.Linear(bits, classes, bias=bias) if classes else None
        self.classify = classify

    def forward(self, features: dict[str, Tensor]) -> MethodOutput:
        z = self.fc(pool(features[self.tap]))
        if self.bn is not None:
            z = self.bn(z)
        if self.activation == "tanh":
            u = torch.tanh(z)
        elif self.activation == "scaled_tanh":
            u = torch.tanh(self.beta * z)
        elif self.activation == "softsign":
            u = F.softsign(z)
        else:
            u = z
        extras: dict = {}
        if self.classifier is not None:
            extras["logits"] = self.classifier(self.classify(u) if self.classify is not None else u)
        return MethodOutput(codes=u, extras=extras)


def label_matrix(labels: Tensor, classes: int | None = None) -> Tensor:
    """Labels as a float ``(N, C)`` matrix: one-hot rows for class ids ``(N,)`` (``C = classes``,
    or the largest id + 1), multi-hot rows unchanged."""
    if labels.dim() == 2:
        return labels.float()
    n_classes = int(classes) if classes else int(labels.max()) + 1 if len(labels) else 1
    return F.one_hot(labels.long(), n_classes).float()


def count_classes(labels: Tensor) -> int:
    """The number of classes the training labels show: the width of multi-hot labels, or the
    largest class id + 1."""
    return int(labels.shape[1]) if labels.dim() == 2 else int(labels.max()) + 1


def tap_of(tap_channels: dict[str, int]) -> tuple[str, int]:
    """The one tap a single-tap head reads, and its channels."""
    (tap,) = tap_channels
    return tap, tap_channels[tap]
