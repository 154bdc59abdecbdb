"""Head building blocks several methods share (one implementation each).

:class:`ScaleHead` is DMSH's per-scale head (conv on maps, MLP or single linear layer on pooled
vectors); DPSH's ``head="mlp"`` uses the same MLP, so the two can be compared at equal head
capacity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.errors import InputError


class ScaleHead(nn.Module):
    """One scale's head: conv head on feature maps, an MLP on pooled vectors, or a single
    linear layer (``kind="linear"``).

    ``normalize`` rescales the tap's features before the head (``"bn"``: a BatchNorm over
    channels; ``"l2"``: unit L2 norm over channels), since backbone stages have very
    different magnitudes. :meth:`embed` returns the per-scale embedding (the input of the
    scale's hash layer ``fc``) that feature-level fusion concatenates.
    """

    def __init__(self, channels: int, bits: int, mid: int, pooled: bool, activation: str = "tanh",
                 kind: str | None = None, normalize: str = "none"):
        super().__init__()
        kind = kind or ("mlp" if pooled else "conv")
        self.kind = kind
        self.pooled = kind != "conv"
        self.activation = activation
        self.normalize = normalize
        self.norm = None
        if normalize == "bn":
            self.norm = nn.BatchNorm1d(channels) if self.pooled else nn.BatchNorm2d(channels)
        if kind == "linear":
            self.body = nn.Identity()
            self.out_dim = channels
        elif kind == "mlp":
            self.body = nn.Sequential(
                nn.Linear(channels, mid), nn.BatchNorm1d(mid), nn.ReLU(inplace=True),
                nn.Linear(mid, mid), nn.ReLU(inplace=True),
            )
            self.out_dim = mid
        else:
            self.body = nn.Sequential(
                nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                nn.Conv2d(mid, mid, 3, padding=1), nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
            self.out_dim = mid
        self.fc = nn.Linear(self.out_dim, bits)

    def embed(self, x: Tensor) -> Tensor:
        if self.pooled and x.dim() == 4:
            x = x.mean(dim=(2, 3))
        if not self.pooled and x.dim() == 2:
            x = x[:, :, None, None]  # a pooled tap (``pool``) is a 1×1 map: the 3×3 conv sees its centre only
        if not self.pooled and x.dim() != 4:
            raise InputError(f"conv scale head expects a feature map (B, C, H, W) or a vector (B, C), "
                             f"got {tuple(x.shape)}")
        if self.norm is not None:
            x = self.norm(x)
        elif self.normalize == "l2":
            x = F.normalize(x, dim=1)
        return self.body(x)

    def code(self, e: Tensor) -> Tensor:
        u = self.fc(e)
        return torch.tanh(u) if self.activation == "tanh" else u

    def forward(self, x: Tensor) -> Tensor:
        return self.code(self.embed(x))
