"""ADSH — Asymmetric Deep Supervised Hashing (Jiang & Li, AAAI 2018); spec §6 (training algorithm) and
the baseline list. ExchNet (:mod:`hashlearn.methods.exchnet`) reuses everything here.

Asymmetric: a network ``u = tanh(F(x))`` codes the *queries*; the *database* codes ``V ∈ {−1,+1}^{n×k}``
are learned directly, one row per training image (the database the method learns is the training
set the trainer iterates). The objective, over a sampled subset Ω of the training images::

    min_{F, V}  Σ_{i∈Ω} Σ_{j=1}^{n} (u_i^T v_j − k S_ij)²  +  γ Σ_{i∈Ω} ‖v_{σ(i)} − u_i‖²

alternates (ADSH's Algorithm 1, with the trainer's hooks):

* **outer iteration** ``t = 1..T_out``: sample ``|Ω| = num_samples`` training images uniformly
  (seeded by ``(seed, t)``: identical on every data-parallel rank), reset ``U_Ω``;
* **network steps**: ``inner_epochs`` (T_in) trainer epochs over Ω only (:meth:`ADSH.epoch_images`
  tells the trainer which images an epoch runs over); each step's relaxed codes are written into
  ``U_Ω`` (the default ``Method.on_batch_end``, all-gathered across ranks, as ADSH's code keeps
  ``U[batch] = u``);
* **database codes**: after the last inner epoch, :func:`update_database_codes` — discrete cyclic
  coordinate descent, bit by bit::

      Q = k S_Ω^T U_Ω + γ Ū          (Ū: U_Ω scattered into the n rows, zeros elsewhere)
      for d = 1..k:  V[:, d] = sgn(Q[:, d] − V_{¬d} U_{Ω,¬d}^T U_{Ω,d})

  each column update is the exact minimiser of the objective over that column with the others
  fixed, so a sweep never increases it (``tests/test_methods_exchnet.py``). sgn(0) = +1.

So a run of ``train.epochs = T_out · T_in`` trainer epochs does T_out outer iterations (ADSH's
defaults: T_out = 50, T_in = 3, |Ω| = 2000, γ = 200).

Head (``head``): ``"linear"`` — the paper's hash layer on the pooled feature of ``tap`` (default the
backbone's pooled output) — or ``"mlp"`` (DMSH's pooled MLP head, width ``mid_channels``), for
comparisons at more head capacity.

Similarity: ``s_ij = 1[y_i^T y_j > 0]`` mapped to ``S = 2s − 1`` (``similarity="signed"``, the paper's
S ∈ {−1, +1}) or ``S = s(1 + r) − r`` with ``r = Σ s / Σ (1 − s)`` over Ω × n (``"rebalanced"``,
the soft constraint of the public re-implementations, used by ExchNet's).

Loss (named parts, the re-implementations' normalisation: divided by ``n · B``)::

    similarity   = Σ_{i∈B} Σ_j (u_i^T v_j − k S_ij)² / (n B)
    quantization = γ Σ_{i∈B} ‖v_{σ(i)} − u_i‖² / (n B)

State (tensors only, checkpointed with the run by ``Method.state_dict``, memory ``database``): ``V``,
the current Ω and ``U_Ω``, the outer iteration and ``r``. A resumed run continues the same outer
iteration with the same Ω.

Evaluation: :meth:`ADSH.database_codes` gives ``V`` (rows = training images in the trainer's
order); ``eval.retrieval: asymmetric`` (the default ``auto`` for this method) ranks the database by
the query codes' distance to ``V`` for the database images that are training images, and to the
network's codes for the others (see :func:`hashlearn.train.run.asymmetric_database`). ``V`` is the
last epoch's, while the trainer keeps the weights of the best validation epoch (validation is
symmetric: validation codes against the network's training codes); with ``train.eval_every =
train.epochs`` the two are of the same epoch, which is how ``bench/exchnet.py`` runs them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import (
    Batch,
    Method,
    MethodOutput,
    check_choice,
    check_int,
    check_number,
    check_tap,
    pool,
    similarity,
)
from hashlearn.methods.heads import ScaleHead

SIMILARITIES = ("signed", "rebalanced")


def signed_similarity(s: Tensor, kind: str, r: float | Tensor | None = None) -> Tensor:
    """``S`` from ``s ∈ {0, 1}``: ``2s − 1`` (``"signed"``) or ``s(1 + r) − r`` (``"rebalanced"``;
    ``r = Σ s / Σ (1 − s)`` of ``s`` itself when not given)."""
    if kind == "signed":
        return 2 * s - 1
    if r is None:
        r = s.sum() / (1 - s).sum().clamp(min=1)
    return s * (1 + r) - r


def adsh_objective(V: Tensor, U: Tensor, S: Tensor, omega: Tensor, gamma: float, bits: int) -> Tensor:
    """ADSH's objective for fixed network codes: ``‖U V^T − k S‖² + γ ‖V[Ω] − U‖²``
    (``U`` ``(|Ω|, k)``, ``S`` ``(|Ω|, n)``, ``V`` ``(n, k)``)."""
    return (U @ V.T - bits * S).pow(2).sum() + gamma * (V[omega] - U).pow(2).sum()


def update_database_codes(V: Tensor, U: Tensor, S: Tensor, omega: Tensor, gamma: float, bits: int) -> Tensor:
    """One bit-by-bit sweep (discrete cyclic coordinate descent) of ADSH's V-step; returns the new V.

    ``V`` ``(n, k)`` ±1, ``U`` ``(|Ω|, k)`` the network's relaxed codes of the sampled images
    ``omega`` (their rows in V), ``S`` ``(|Ω|, n)`` the (signed or rebalanced) similarity."""
    V, U, S = V.clone().float(), U.float(), S.float()
    n, k = V.shape
    u_bar = torch.zeros_like(V)
    u_bar[omega] = U
    Q = bits * S.T @ U + gamma * u_bar
    for d in range(k):
        rest = torch.arange(k, device=V.device) != d
        v = Q[:, d] - V[:, rest] @ (U[:, rest].T @ U[:, d])
        V[:, d] = torch.where(v >= 0, 1.0, -1.0)
    return V


class DatabaseCodes:
    """ADSH's state as a memory of plain tensors: ``V`` (n, k) ±1, the sample ``omega`` (|Ω|,),
    its codes ``U`` (|Ω|, k) written by :meth:`update`, ``outer`` (the outer iteration) and ``r``."""

    def __init__(self) -> None:
        self.V: Tensor | None = None
        self.omega: Tensor | None = None
        self.U: Tensor | None = None
        self.outer = 0
        self.r: float | None = None
        self._pos: Tensor | None = None  # training index → row of U (−1: not in Ω)

    def init(self, n: int, bits: int, seed: int) -> None:
        """Random ±1 ``V`` (seeded: the same on every rank) unless restored from a checkpoint."""
        if self.V is not None:
            if self.V.shape != (n, bits):
                raise InputError(f"the learned database codes hold {tuple(self.V.shape)}, but the training set has "
                                 f"{n} images at {bits} bits; train again without resuming (--no-resume)")
            return
        g = torch.Generator().manual_seed(int(seed) * 7_919 + 17)
        self.V = torch.where(torch.rand(n, bits, generator=g) < 0.5, 1.0, -1.0)

    def sample(self, omega: Tensor, bits: int) -> None:
        self.omega = omega.long()
        self.U = torch.zeros(len(omega), bits)
        self._pos = None

    def positions(self, index: Tensor) -> Tensor:
        if self._pos is None or len(self._pos) != len(self.V):
            self._pos = torch.full((len(self.V),), -1, dtype=torch.long)
            self._pos[self.omega] = torch.arange(len(self.omega))
        return self._pos[index.long().cpu()]

    def update(self, index: Tensor, codes: Tensor, labels: Tensor) -> None:
        """``U[row of index] = codes`` for the batch images in Ω (others are ignored)."""
        if self.omega is None or self.V is None:
            return
        rows = self.positions(index)
        keep = rows >= 0
        self.U[rows[keep]] = codes.detach().float().cpu()[keep]

    def state_dict(self) -> dict[str, Tensor]:
        if self.V is None:
            return {}
        state = {"V": self.V, "outer": torch.tensor(self.outer)}
        if self.omega is not None:
            state.update(omega=self.omega, U=self.U)
        if self.r is not None:
            state["r"] = torch.tensor(float(self.r))
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not state:
            self.V = self.omega = self.U = self.r = None
            self.outer = 0
            return
        V = state.get("V")
        if not isinstance(V, Tensor) or V.dim() != 2:
            raise ValueError("database codes: V is missing or not a matrix")
        self.V = V.float().cpu()
        self.outer = int(state.get("outer", torch.tensor(0)))
        self.omega = state["omega"].long().cpu() if "omega" in state else None
        self.U = state["U"].float().cpu() if "U" in state else None
        if (self.omega is None) != (self.U is None) or (self.U is not None and len(self.U) != len(self.omega)):
            raise ValueError("database codes: omega and U do not fit together")
        self.r = float(state["r"]) if "r" in state else None
        self._pos = None


class ADSHHead(nn.Module):
    """The paper's hash layer ``u = tanh(W f + b)`` on the pooled feature of one tap (``head="linear"``),
    or DMSH's pooled MLP scale head (``"mlp"``: FC → BN → ReLU → FC → ReLU → FC, width ``mid``) before
    the tanh, to compare with heads of more capacity (ExchNet's branches, DPSH's ``head=mlp``)."""

    def __init__(self, tap: str, channels: int, bits: int, head: str = "linear", mid: int = 256):
        super().__init__()
        self.tap = tap
        self.fc = nn.Linear(channels, bits) if head == "linear" else ScaleHead(
            channels, bits, mid, pooled=True, activation="none", kind="mlp")

    def forward(self, features: dict[str, Tensor]) -> MethodOutput:
        return MethodOutput(codes=torch.tanh(self.fc(pool(features[self.tap]))))


def _seed_of(state: Any) -> int:
    return int(getattr(getattr(state, "trainer", None), "seed", 0) or 0)


@register_method(
    "adsh",
    paper="Jiang, Li. Asymmetric Deep Supervised Hashing. AAAI 2018",
    kind="deep",
)
class ADSH(Method):
    """Asymmetric deep supervised hashing: network for queries, learned database codes V."""

    name = "adsh"
    learns_database_codes = True

    def __init__(self, bits: int, num_samples: int = 2000, gamma: float = 200.0, inner_epochs: int = 3,
                 similarity: str = "signed", tap: str | None = None, head: str = "linear", mid_channels: int = 256):
        super().__init__(bits)
        who = self.name
        self.head = check_choice(who, "head", head, ("linear", "mlp"))
        self.mid_channels = check_int(who, "mid_channels", mid_channels, minimum=1)
        self.num_samples = check_int(who, "num_samples", num_samples, minimum=1)
        self.gamma = check_number(who, "gamma", gamma, minimum=0)
        self.inner_epochs = check_int(who, "inner_epochs", inner_epochs, minimum=1)
        self.similarity = check_choice(who, "similarity", similarity, SIMILARITIES)
        self.tap = check_tap(who, tap)
        self._memories["database"] = DatabaseCodes()
        self._train_labels: Tensor | None = None

    @property
    def codes_state(self) -> DatabaseCodes:
        return self._memories["database"]

    # --- network ---------------------------------------------------------------------------
    def taps(self, default_taps: list[str]) -> list[str]:
        return [self.tap] if self.tap else ["pool"]

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        return ADSHHead(tap, tap_channels[tap], self.bits, self.head, self.mid_channels)

    # --- the alternation ------------------------------------------------------------------
    def on_train_start(self, state: Any) -> None:
        self._train_labels = state.train_labels.cpu()
        self.codes_state.init(len(self._train_labels), self.bits, _seed_of(state))

    def outer_iteration(self, epoch: int) -> int:
        """The outer iteration (1-based) that trainer epoch ``epoch`` belongs to."""
        return (int(epoch) - 1) // self.inner_epochs + 1

    def on_epoch_start(self, state: Any) -> None:
        """At the first inner epoch of an outer iteration (or without a sample): sample Ω."""
        mem = self.codes_state
        t = self.outer_iteration(state.epoch)
        if mem.omega is not None and mem.outer == t:
            return  # resumed inside an outer iteration: keep its Ω and U
        n = len(self._train_labels)
        g = torch.Generator().manual_seed(_seed_of(state) * 1_000_003 + 7 * t + 1)
        omega = torch.randperm(n, generator=g)[:min(self.num_samples, n)].sort().values
        mem.sample(omega, self.bits)
        mem.outer = t
        if self.similarity == "rebalanced":
            s = similarity(self._train_labels[omega], self._train_labels)
            mem.r = float(s.sum() / (1 - s).sum().clamp(min=1))

    def epoch_images(self, state: Any) -> Tensor | None:
        """The training images this epoch's steps run over: Ω."""
        return self.codes_state.omega

    def on_epoch_end(self, state: Any) -> None:
        """After the last inner epoch of an outer iteration: one bit-by-bit sweep over V."""
        if state.epoch % self.inner_epochs == 0:
            self.update_codes()

    def sampled_similarity(self) -> Tensor:
        mem = self.codes_state
        s = similarity(self._train_labels[mem.omega], self._train_labels)
        return signed_similarity(s, self.similarity, mem.r)

    def update_codes(self) -> None:
        mem = self.codes_state
        if mem.omega is None:
            return
        mem.V = update_database_codes(mem.V, mem.U, self.sampled_similarity(), mem.omega, self.gamma, self.bits)

    def objective(self) -> float:
        """ADSH's objective of the current V and U_Ω (what the V-step minimises)."""
        mem = self.codes_state
        return float(adsh_objective(mem.V, mem.U, self.sampled_similarity(), mem.omega, self.gamma, self.bits))

    def database_codes(self) -> Tensor | None:
        """The learned ±1 codes of the training images (row i = training image i), or None."""
        return None if self.codes_state.V is None else self.codes_state.V.clone()

    # --- loss -------------------------------------------------------------------------------
    def hash_parts(self, u: Tensor, batch: Batch) -> dict[str, Tensor]:
        """ADSH's two terms for the batch codes ``u`` against V (see the module docstring)."""
        mem = self.codes_state
        labels = self._train_labels if self._train_labels is not None else batch.labels.cpu()
        n = len(labels)
        V = mem.V if mem.V is not None else torch.zeros(n, self.bits)
        V = V.to(u.device, u.dtype)
        s = similarity(batch.labels, labels.to(batch.labels.device)).to(u.device, u.dtype)
        S = signed_similarity(s, self.similarity, mem.r)
        scale = 1.0 / (n * len(u))
        return {
            "similarity": (u @ V.T - self.bits * S).pow(2).sum() * scale,
            "quantization": self.gamma * (V[batch.index.to(u.device).long()] - u).pow(2).sum() * scale,
        }

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        return self.hash_parts(out.codes, batch)
