"""GreedyHash-U — GreedyHash's unsupervised variant (Su, Zhang, Huang, Tian, NeurIPS 2018); spec §8.
Label-free.

The hash layer's output ``h = FC(x)`` is binarised in the forward pass, ``b = sgn(h)``, with the
straight-through gradient (:func:`~hashlearn.methods.greedyhash.sign_straight_through`), and the
codes are asked to keep the cosine similarities of the pretrained features ``x``
(:class:`~hashlearn.methods.label_free.FeatureStore`):

* ``similarity`` = ``mean_{(i,j)} (cos(b_i, b_j) − cos(x_i, x_j))²`` over the pairs of ``pairs``:
  ``"halves"`` (image i of the batch's first half with image i of its second half, as the authors'
  unsupervised code pairs them [RECALL]) or ``"all"`` (every i ≠ j);
* ``penalty`` = ``α · mean_{i,d} | |h_id| − 1 |³`` (GreedyHash's cubic term; α = 0.1 [RECALL]).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, Method, MethodOutput, check_choice, check_number
from hashlearn.methods.greedyhash import cubic_penalty, sign_straight_through
from hashlearn.methods.label_free import FeatureStore, PooledHead, cosine_matrix

PAIRS = ("halves", "all")


def cosine_preserving_loss(b: Tensor, x: Tensor, pairs: str = "halves") -> Tensor:
    """``mean (cos(b_i, b_j) − cos(x_i, x_j))²`` over the halves' pairs or every ``i ≠ j``."""
    if pairs == "halves" and len(b) >= 2:
        half = len(b) // 2
        cb = torch.nn.functional.cosine_similarity(b[:half], b[half:2 * half], dim=1)
        cx = torch.nn.functional.cosine_similarity(x[:half], x[half:2 * half], dim=1)
        return (cb - cx).pow(2).mean()
    off = ~torch.eye(len(b), dtype=torch.bool, device=b.device)
    return (cosine_matrix(b) - cosine_matrix(x)).pow(2)[off].mean()


@register_method(
    "greedyhash-u",
    paper="Su, Zhang, Huang, Tian. Greedy Hash: Towards Fast Optimization for Accurate Hash Coding in CNN. "
          "NeurIPS 2018 (unsupervised variant)",
    kind="deep",
)
class GreedyHashU(Method):
    """Label-free: sign with straight-through gradient, cosine similarity of the pretrained features preserved."""

    name = "greedyhash-u"
    supervised = False

    def __init__(self, bits: int, alpha: float = 0.1, pairs: str = "halves"):
        super().__init__(bits)
        self.alpha = check_number(self.name, "alpha", alpha, minimum=0)
        self.pairs = check_choice(self.name, "pairs", pairs, PAIRS)
        self._store = FeatureStore()

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        return PooledHead(tap, tap_channels[tap], self.bits)

    def on_train_start(self, state: Any) -> None:
        self._store.fill(state, "pool")

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        h = out.codes
        return {"similarity": cosine_preserving_loss(sign_straight_through(h), self._store.batch(batch.index, out),
                                                     self.pairs),
                "penalty": self.alpha * cubic_penalty(h)}

    def state_dict(self) -> dict[str, Tensor]:
        return {f"features.{k}": v for k, v in self._store.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        unknown = set(state) - {"features.features"}
        if unknown:
            raise KeyError(f"method state {sorted(unknown)[0]!r} belongs to no part of GreedyHash-U")
        self._store.load_state_dict({k.partition(".")[2]: v for k, v in state.items()})
