"""Pieces the label-free methods share (DSAH, BCDH, SSDH-U, GreedyHash-U, Bi-half).

A label-free method sets ``supervised = False``: the trainer then gives its loss
``Batch.labels = None`` and its hooks ``TrainState.train_labels = None``; labels serve only to
select the epoch on the validation split and to evaluate.

Several of them are guided by the *pretrained* features of the training images (DSAH's
neighbourhood similarity, SSDH-U's distance histogram, GreedyHash-U's and Bi-half's cosine
targets). :func:`pretrained_features` reads them once, in ``on_train_start``, through
``TrainState.head_inputs`` — what the head reads before any step, i.e. the ImageNet backbone's
pooled tap (frozen: the cached vectors; ``--finetune-from T``: the untrained-yet part above T on
the cached maps; end to end: the whole backbone). :class:`FeatureStore` keeps them as a method
tensor (float16, checkpointed), so a resumed run keeps the features of the *pretrained* network
rather than re-reading them from the fine-tuned one.

The heads of these methods also put their pooled, detached input in ``extras["inputs"]``: when a
method is used outside the trainer (no ``head_inputs``, e.g. the registry tests' stand-in
state), the loss falls back to the batch's own inputs as its pretrained features.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.methods.base import Batch, Method, MethodOutput, check_choice, pool


def pretrained_features(state: Any, tap: str) -> Tensor | None:
    """The pooled ``tap`` input of the head for every training image, ``(N, C)`` float32, in
    the trainer's order; None when ``state`` offers no ``head_inputs`` (outside the trainer)."""
    if not hasattr(state, "head_inputs"):
        return None
    rows = [pool(inputs[tap]).float().cpu() for inputs in state.head_inputs()]
    return torch.cat(rows) if rows else None


class FeatureStore:
    """Per-training-image pretrained features, float16, as a checkpointed method tensor."""

    def __init__(self) -> None:
        self.features: Tensor | None = None

    def fill(self, state: Any, tap: str) -> bool:
        """Read the features once (a resumed run keeps the loaded ones); False when unavailable."""
        if self.features is None:
            feats = pretrained_features(state, tap)
            if feats is not None:
                self.features = feats.half()
        return self.features is not None

    def batch(self, index: Tensor, out: MethodOutput) -> Tensor:
        """The batch's pretrained features (float32); the head's inputs when none are stored."""
        if self.features is None:
            return out.extras["inputs"].float()
        return self.features[index.cpu()].float().to(out.codes.device)

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.features is None else {"features": self.features}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.features = state.get("features")


class PooledHead(nn.Module):
    """Pooled ``tap`` → optional hidden FC (no activation, DSAH's ``fc8_trans``) → FC to ``bits``
    → ``activation`` (``tanh`` or ``none``); ``extras["inputs"]`` = the pooled input, detached."""

    def __init__(self, tap: str, channels: int, bits: int, hidden: int = 0, activation: str = "none",
                 init_std: float | None = None, normalize: bool = False):
        super().__init__()
        self.tap, self.activation, self.normalize = tap, activation, normalize
        layers: list[nn.Module] = []
        width = channels
        if hidden:
            layers.append(nn.Linear(channels, hidden))
            width = hidden
        layers.append(nn.Linear(width, bits))
        self.layers = nn.Sequential(*layers)
        if init_std is not None:
            for layer in self.layers:
                nn.init.trunc_normal_(layer.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
                nn.init.trunc_normal_(layer.bias, std=init_std, a=-2 * init_std, b=2 * init_std)

    def forward(self, features: dict[str, Tensor]) -> MethodOutput:
        x = pool(features[self.tap])
        z = self.layers(F.normalize(x, dim=1) if self.normalize else x)
        u = torch.tanh(z) if self.activation == "tanh" else z
        return MethodOutput(codes=u, extras={"inputs": x.detach()})


def cosine_matrix(x: Tensor) -> Tensor:
    """``cos(x_i, x_j)`` for the rows of ``x``, ``(B, B)``."""
    xn = F.normalize(x, dim=1, eps=1e-12)
    return xn @ xn.T


#: pairs of :func:`cosine_preserving_loss`
PAIRS = ("halves", "all")


def cosine_preserving_loss(b: Tensor, x: Tensor, pairs: str = "halves") -> Tensor:
    """``mean (cos(b_i, b_j) − cos(x_i, x_j))²`` over the halves' pairs or every ``i ≠ j``."""
    if pairs == "halves" and len(b) >= 2:
        half = len(b) // 2
        cb = F.cosine_similarity(b[:half], b[half:2 * half], dim=1)
        cx = F.cosine_similarity(x[:half], x[half:2 * half], dim=1)
        return (cb - cx).pow(2).mean()
    off = ~torch.eye(len(b), dtype=torch.bool, device=b.device)
    return (cosine_matrix(b) - cosine_matrix(x)).pow(2)[off].mean()


class CosinePreservingMethod(Method):
    """A label-free method whose codes keep the cosine similarities of the pretrained pooled features
    (GreedyHash-U, Bi-half): a linear head on the pooled tap, the features read at train start and
    checkpointed (:class:`FeatureStore`). A subclass sets how a batch's relaxed codes become the
    codes compared (:meth:`binary`) and may add loss parts (:meth:`extra_parts`)."""

    supervised = False

    def __init__(self, bits: int, pairs: str = "halves"):
        super().__init__(bits)
        self.pairs = check_choice(self.name, "pairs", pairs, PAIRS)
        self._store = FeatureStore()

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        return PooledHead(tap, tap_channels[tap], self.bits)

    def on_train_start(self, state: Any) -> None:
        self._store.fill(state, "pool")

    def binary(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_parts(self, h: Tensor) -> dict[str, Tensor]:
        return {}

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        h = out.codes
        similarity = cosine_preserving_loss(self.binary(h), self._store.batch(batch.index, out), self.pairs)
        return {"similarity": similarity, **self.extra_parts(h)}

    def state_dict(self) -> dict[str, Tensor]:
        return {f"features.{k}": v for k, v in self._store.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        unknown = set(state) - {"features.features"}
        if unknown:
            raise KeyError(f"method state {sorted(unknown)[0]!r} belongs to no part of {self.name}")
        self._store.load_state_dict({k.partition(".")[2]: v for k, v in state.items()})
