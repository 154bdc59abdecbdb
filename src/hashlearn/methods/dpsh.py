"""DPSH — Deep Pairwise-Supervised Hashing (Li, Wang, Kang, IJCAI 2016); spec §8.

The paper's relaxed objective (spec §8), with ``b_i = sgn(u_i)`` and ``Θ_ij = ½ u_i^T u_j``::

    L = −Σ_{s_ij ∈ S} (s_ij Θ_ij − log(1 + e^{Θ_ij})) + η Σ_i ‖b_i − u_i‖²

on a linear hash layer over the backbone's last pooled feature. Per step, ``i`` runs over the
batch and, with ``pairs="all"`` (the default, as published and as its re-implementations
train), ``j`` over all N training images through ``U``, the memory of every image's last
relaxed code (:class:`~hashlearn.methods.memory.PerImageMemory`, updated at the batch's indices
after each step). ``pairs="batch"`` (``j`` in the batch only) and ``pairs="memory"`` (batch +
``memory_size`` recent codes) are settings.

:meth:`DPSH.loss` returns two named parts:

* ``likelihood`` = ``mean_{(i,j)∈P} [log(1 + e^{Θ_ij}) − s_ij Θ_ij]``, P the pairs of
  ``pairs`` (pairs of an image with itself and not-yet-seen images left out);
* ``quantization`` = ``η · mean_{i,d} (u_id − sgn(u_id))²`` over the batch.

Normalisation: both terms are means (over pairs, over code entries) where the paper sums, so
``η`` here is not the paper's ``η = 10``: dividing the paper's objective by its B·N pairs gives
``η = η_paper · k / N`` (k bits, N training images; 10 · 32 / 5000 ≈ 0.06). ``η = 0.1`` is the
usual value with this normalisation (DeepHash-pytorch's ``alpha``).

``head``: ``"linear"`` (the paper: one hash layer on the pooled feature) or ``"mlp"`` (DMSH's
pooled scale head, FC(C → mid) → BN → ReLU → FC(mid → mid) → ReLU → FC(mid → k), width
``mid_channels``), so DPSH and DMSH can be compared at equal head capacity.
"""

from __future__ import annotations

from torch import Tensor, nn

from hashlearn.methods import register_method
from hashlearn.methods.base import (
    Batch,
    MethodOutput,
    check_choice,
    check_int,
    check_number,
    check_tap,
    pool,
    quantization_loss,
)
from hashlearn.methods.heads import ScaleHead
from hashlearn.methods.losses import PairwiseLikelihood
from hashlearn.methods.pairwise import PairwiseMethod


class DPSHHead(nn.Module):
    def __init__(self, tap: str, channels: int, bits: int, activation: str = "none", head: str = "linear",
                 mid_channels: int = 256):
        super().__init__()
        self.tap = tap
        # "linear": the paper's hash layer; "mlp": DMSH's pooled scale head (equal head capacity)
        self.fc = nn.Linear(channels, bits) if head == "linear" else ScaleHead(
            channels, bits, mid_channels, pooled=True, activation="none", kind="mlp")
        self.activation = activation

    def forward(self, features: dict[str, Tensor]) -> MethodOutput:
        u = self.fc(pool(features[self.tap]))
        if self.activation == "tanh":
            u = u.tanh()
        return MethodOutput(codes=u)


class PooledLinearHead:
    """The head settings DPSH and DTSH share (one tap, pooled; ``head``: linear or DMSH's MLP), their
    checks and the head they build; a method mixes it in before :class:`Method`."""

    def set_head(self, activation: str, tap: str | None, head: str, mid_channels: int) -> None:
        self.activation = check_choice(self.name, "activation", activation, ("none", "tanh"))
        self.head = check_choice(self.name, "head", head, ("linear", "mlp"))
        self.mid_channels = check_int(self.name, "mid_channels", mid_channels, minimum=1)
        self.tap = check_tap(self.name, tap)

    def taps(self, default_taps: list[str]) -> list[str]:
        return [self.tap] if self.tap else ["pool"]

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        return DPSHHead(tap, tap_channels[tap], self.bits, self.activation, self.head, self.mid_channels)


@register_method(
    "dpsh",
    paper="Li, Wang, Kang. Feature learning based deep supervised hashing with pairwise labels. IJCAI 2016",
    kind="deep",
)
class DPSH(PooledLinearHead, PairwiseMethod):
    """Pairwise likelihood on inner products of relaxed codes + quantization (baseline)."""

    name = "dpsh"

    def __init__(self, bits: int, eta: float = 0.1, pairs: str = "all", memory_size: int = 0,
                 activation: str = "none", tap: str | None = None, head: str = "linear", mid_channels: int = 256):
        super().__init__(bits, pairs=pairs, memory_size=memory_size)
        self.eta = check_number(self.name, "eta", eta, minimum=0)
        self.set_head(activation, tap, head, mid_channels)
        self._likelihood = PairwiseLikelihood()

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        u = out.codes
        return {
            "likelihood": self._likelihood(u, batch.labels, self.reference(u, batch)),
            "quantization": self.eta * quantization_loss(u),
        }
