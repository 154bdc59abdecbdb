"""DPSH — Deep Pairwise-Supervised Hashing (Li, Wang, Kang, IJCAI 2016); spec §8.

``L = mean_{i≠j} [log(1 + e^{Θ_ij}) − s_ij Θ_ij] + η · mean_{i,d} (u_id − sgn(u_id))²``,
``Θ_ij = ½ u_i^T u_j``, with a linear hash layer on the backbone's last pooled feature.

Normalisation: both terms are means (over pairs, over code entries), so ``η`` here is
not the paper's ``η = 10`` (the paper sums the likelihood over all pairs and the
quantization over samples); ``η = 0.1`` is the usual value with mean normalisation.
"""

from __future__ import annotations

from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, MethodOutput, PairwiseMethod, pool, quantization_loss


class DPSHHead(nn.Module):
    def __init__(self, tap: str, channels: int, bits: int, activation: str = "none"):
        super().__init__()
        self.tap = tap
        self.fc = nn.Linear(channels, bits)
        self.activation = activation

    def forward(self, features: dict[str, Tensor]) -> MethodOutput:
        u = self.fc(pool(features[self.tap]))
        if self.activation == "tanh":
            u = u.tanh()
        return MethodOutput(codes=u)


@register_method(
    "dpsh",
    paper="Li, Wang, Kang. Feature learning based deep supervised hashing with pairwise labels. IJCAI 2016",
    kind="deep",
)
class DPSH(PairwiseMethod):
    """Pairwise likelihood on inner products of relaxed codes + quantization (baseline)."""

    def __init__(self, bits: int, eta: float = 0.1, activation: str = "none", memory: int = 0, tap: str | None = None):
        super().__init__(bits, memory=memory)
        if activation not in ("none", "tanh"):
            raise InputError(f"dpsh: activation must be 'none' or 'tanh', got {activation!r}")
        self.eta = float(eta)
        self.activation = activation
        self.tap = tap

    def taps(self, default_taps: list[str]) -> list[str]:
        return [self.tap] if self.tap else ["pool"]

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        return DPSHHead(tap, tap_channels[tap], self.bits, self.activation)

    def loss(self, out: MethodOutput, batch: Batch) -> Tensor:
        pair = self.pair_loss(out.codes, batch.labels)
        quant = quantization_loss(out.codes)
        self.last_parts = {"pair": float(pair.detach()), "quant": float(quant.detach())}
        return pair + self.eta * quant
