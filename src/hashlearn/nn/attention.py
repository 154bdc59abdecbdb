"""Spatial attention (ATH's spatial-attention module, spec §2), a reusable layer.

On a feature map ``F ∈ R^{B×C×H×W}`` (spec §2, Fang, Fu, Liu, MedIA 2021; the abstract names the
max-pooling, the element-wise maximum and the element-wise mean)::

    F'    = MaxPool_{k_p×k_p, stride 1, pad k_p//2}(F)     # spatial max-pooling, size kept
    M_max = max_c F'(c, :, :)        ∈ R^{B×1×H×W}       # element-wise maximum along channels
    M_avg = mean_c F'(c, :, :)       ∈ R^{B×1×H×W}       # element-wise mean along channels
    A     = σ(Conv_{k×k, 2→1, no bias}([M_avg ; M_max]))  ∈ (0, 1)^{B×1×H×W}
    F_out = A ⊙ F                                         # broadcast over the channels

``SpatialAttention(x)`` returns ``(F_out, A)``: the re-weighted features and the map (what
``hashlearn attention`` draws). ``pool_size`` (k_p, default 3) and ``kernel_size`` (k, default 3)
are the spec's [INFER] choices; ``pool_size=1`` gives the sibling ASH module (no max-pooling).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hashlearn.errors import InputError


class SpatialAttention(nn.Module):
    """``x (B, C, H, W) → (A ⊙ x, A)`` with ``A (B, 1, H, W)`` in (0, 1); see the module docstring."""

    def __init__(self, kernel_size: int = 3, pool_size: int = 3):
        super().__init__()
        for name, value in (("kernel_size", kernel_size), ("pool_size", pool_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
                raise InputError(f"spatial attention: {name} must be an odd integer >= 1, got {value!r}")
        self.kernel_size = kernel_size
        self.pool_size = pool_size
        self.pool = nn.MaxPool2d(pool_size, stride=1, padding=pool_size // 2) if pool_size > 1 else nn.Identity()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def attention_map(self, x: Tensor) -> Tensor:
        """``A = σ(conv([mean_c maxpool(x); max_c maxpool(x)]))``, ``(B, 1, H, W)``."""
        if x.dim() != 4:
            raise InputError(f"spatial attention expects a feature map (B, C, H, W), got shape {tuple(x.shape)}")
        pooled = self.pool(x)
        m_max = pooled.amax(dim=1, keepdim=True)
        m_avg = pooled.mean(dim=1, keepdim=True)
        return torch.sigmoid(self.conv(torch.cat([m_avg, m_max], dim=1)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.attention_map(x)
        return x * a, a

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, pool_size={self.pool_size}"
