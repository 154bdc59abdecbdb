"""SSDH-U — Semantic Structure-based unsupervised Deep Hashing (Yang, Deng, Liu, Liu, Tao, Gao, IJCAI 2018);
spec §8 (deep unsupervised baselines of DSAH/BCDH). Label-free.

Pseudo-similarity from the histogram of cosine distances ``d_ij = 1 − cos(x_i, x_j)`` of the
pretrained features (:class:`~hashlearn.methods.label_free.FeatureStore`, read once at the start):
with ``μ, σ`` the mean and std of ``d`` over the pairs of ``sample`` training images (seeded),
``t_low = μ − low_std·σ`` and ``t_high = μ + high_std·σ`` ("two thresholds from mean ± std",
spec §8 [RECALL]; the paper fits two half-Gaussians around the histogram's peak — the spreads are
settings), and

    S_ij = +1 if d_ij ≤ t_low,   −1 if d_ij ≥ t_high,   0 (ignored) otherwise.

Loss (one named part): ``similarity`` = ``mean_{i≠j, S_ij≠0} (S_ij − cos(u_i, u_j))²`` on the relaxed
codes ``u = tanh(FC(x))`` (a zero when the batch has no confident pair). The thresholds are
checkpointed with the features.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, Method, MethodOutput, check_int, check_number
from hashlearn.methods.label_free import FeatureStore, PooledHead, cosine_matrix


def distance_thresholds(features: Tensor, low_std: float, high_std: float, sample: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """``(μ − low_std·σ, μ + high_std·σ)`` of the cosine distances between distinct rows of a
    seeded sample of ``sample`` rows."""
    x = features.float()
    if len(x) > sample:
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:sample]
        x = x[pick]
    d = 1 - cosine_matrix(x)
    iu = torch.triu_indices(len(x), len(x), offset=1)
    v = d[iu[0], iu[1]].double()
    mu, sd = float(v.mean()), float(v.std()) if len(v) > 1 else 0.0
    return mu - low_std * sd, mu + high_std * sd


def pseudo_similarity(features: Tensor, t_low: float, t_high: float) -> Tensor:
    """``S`` ∈ {−1, 0, +1} ``(B, B)`` from cosine distances and the two thresholds."""
    d = 1 - cosine_matrix(features.float())
    return (d <= t_low).float() - (d >= t_high).float()


@register_method(
    "ssdh-u",
    paper="Yang, Deng, Liu, Liu, Tao, Gao. Semantic Structure-based Unsupervised Deep Hashing. IJCAI 2018",
    kind="deep",
)
class SSDHU(Method):
    """Label-free: ternary pseudo-similarity from the pretrained feature-distance histogram."""

    name = "ssdh-u"
    supervised = False

    def __init__(self, bits: int, low_std: float = 1.0, high_std: float = 1.0, sample: int = 2000, seed: int = 0):
        super().__init__(bits)
        self.low_std = check_number(self.name, "low_std", low_std, minimum=0)
        self.high_std = check_number(self.name, "high_std", high_std, minimum=0)
        self.sample = check_int(self.name, "sample", sample, minimum=2)
        self.seed = check_int(self.name, "seed", seed, minimum=0)
        self._store = FeatureStore()
        self._thresholds: Tensor | None = None

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        return PooledHead(tap, tap_channels[tap], self.bits, activation="tanh")

    def on_train_start(self, state: Any) -> None:
        if self._store.fill(state, "pool") and self._thresholds is None:
            self._thresholds = torch.tensor(distance_thresholds(self._store.features, self.low_std, self.high_std,
                                                                self.sample, self.seed), dtype=torch.float64)

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        x = self._store.batch(batch.index, out)
        t_low, t_high = (self._thresholds.tolist() if self._thresholds is not None
                         else distance_thresholds(x, self.low_std, self.high_std, self.sample, self.seed))
        s = pseudo_similarity(x, t_low, t_high)
        s.fill_diagonal_(0)
        mask = (s != 0).float()
        c = cosine_matrix(out.codes)
        return {"similarity": (mask * (s - c).pow(2)).sum() / mask.sum().clamp(min=1)}

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"features.{k}": v for k, v in self._store.state_dict().items()}
        if self._thresholds is not None:
            state["thresholds"] = self._thresholds
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        unknown = set(state) - {"features.features", "thresholds"}
        if unknown:
            raise KeyError(f"method state {sorted(unknown)[0]!r} belongs to no part of SSDH-U")
        self._store.load_state_dict({k.partition(".")[2]: v for k, v in state.items() if k.startswith("features.")})
        self._thresholds = state.get("thresholds")
