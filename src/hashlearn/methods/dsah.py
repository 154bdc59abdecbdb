"""DSAH — Deep Self-Adaptive Hashing (Lin, Chen, Zhang, Tian, Chen, CIKM 2021); spec §3. Label-free.

**Initial similarity (AND initialisation, spec §3).** From the pretrained pooled features of the
N training images (:func:`~hashlearn.methods.label_free.pretrained_features`, read once in
``on_train_start``), with squared Euclidean distances:

* ``kNN_{K1}(i)``: the ``K1`` nearest images of i, i itself first (ties: smaller index first);
* overlap ``o_ij = |kNN_{K1}(i) ∩ kNN_{K1}(j)|``; ``T(i)`` = the ``K2`` images with the largest
  overlap (ties: smaller index first; i itself is among them, its overlap is ``K1``);
* ``N(i) = ∩_{j ∈ T(i)} kNN_{K1}(j)`` (``rule="intersection"``, the default, the run scripts'
  ``S_K1_500_K2_500_I``) or ``∪`` (``rule="union"``); ``W_ij = W_ji = +1`` for ``j ∈ N(i)``,
  also for ``j ∈ kNN_{K1}(i)`` when ``include_own_knn``; ``W_ii = +1``; every other entry −1.

The released generator (``W_create.py``) starts ``N(i)`` as an empty set and intersects into it,
so it always yields no positives (spec §3, "bug warning"); ``rule="released"`` reproduces that
(``W = −1`` off the diagonal) for comparison only. The rule used is written to the run's config.

**Storage.** ``W`` is never a dense float matrix: :class:`PackedSimilarity` keeps one bit per pair
(``N × ⌈N/8⌉`` bytes: 3.1 MB for 5,000 images, 313 MB for 50,000), whatever the number of
positives; a batch reads its ``±1`` block ``W[idx, idx]`` by bit look-ups. The overlap is
computed in row blocks with sparse products, and the AND update (below) streams ``H Hᵀ`` in row
blocks, so no ``N × N`` float array is ever made. ``similarity_nbytes`` and ``positives`` are
recorded in :attr:`DSAH.stats` (the bench's results file states them).

**Rounds (AND).** Every ``round_epochs`` epochs (not after the last epoch), with ``H`` the tanh
codes of all training images (eval mode) and ``S = H Hᵀ``: ``μ, σ`` = mean and std (ddof 1) of
``S`` over the current positives (``W = +1``), then ``W[S ≥ μ + γσ] = +1`` — positives are only
added. ``and_update=False`` is the AND ablation. (The paper's CIFAR script runs 1 round × 30
epochs, where no update takes effect; ``round_epochs = 10`` is its NUS-WIDE script's round.)

**Loss** (spec §3, [CODE]) for a batch with tanh codes ``h``, ``ĥ = h/‖h‖``, ``c = ĥĥᵀ``:

* PIC weights ``P = softmax(c/T)`` over all ``B²`` entries at once; ``A = −log P`` (``pic=1``,
  default), ``−log(1 − P)`` (``pic=2``) or ``1`` (``pic=0``, the ablation); gradients flow through
  ``A`` as in the released code (``pic_detach=True`` stops them);
* ``similarity`` = ``α · mean_{ij} A_ij (c_ij − W_ij)²``;
* ``quantization`` = ``β · mean_{i,d} (sgn(h_id) − ĥ_id)²`` (the released code compares the ±1
  code with the *normalised* code; ``quant_on_raw=True`` uses ``h``). ``β = 0`` as in the
  CIFAR-10 script (the part is then a logged zero).

**Head** [CODE]: pooled tap → FC(C → ``hidden``) (``fc8_trans``, no activation; 0 = none) →
FC(→ k) → tanh, truncated-normal initialisation with std ``init_std`` (0.001). The paper's
VGG-19 backbone, its dropout, and Adam with ε = 1 are the trainer's/backbone's settings here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import (
    Batch,
    Method,
    MethodOutput,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_tap,
)
from hashlearn.methods.label_free import PooledHead, pretrained_features

RULES = ("intersection", "union", "released")


# --- the initial similarity: Adaptive Neighbour Discovery ------------------------------------------------------
def knn_lists(features: np.ndarray | Tensor, k: int, block: int = 512) -> np.ndarray:
    """``(N, k)`` int64: the ``k`` nearest rows of every row by squared Euclidean distance, the row
    itself first, then by distance, ties by smaller index."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    n = len(x)
    k = min(int(k), n)
    sq = (x * x).sum(1)
    out = np.empty((n, k), dtype=np.int64)
    cols = torch.arange(n)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        d = sq[r0:r1, None] + sq[None, :] - 2 * x[r0:r1] @ x.T
        d[torch.arange(r1 - r0), cols[r0:r1]] = -float("inf")  # the image itself first
        # stable sort: equal distances keep the smaller index first
        order = torch.sort(d, dim=1, stable=True).indices[:, :k]
        out[r0:r1] = order.numpy()
    return out


def _indicator(rows: np.ndarray, n: int):
    """The sparse 0/1 matrix with ones at ``(i, rows[i, :])``."""
    from scipy import sparse

    m, k = rows.shape
    return sparse.csr_matrix((np.ones(m * k, dtype=np.int32), rows.reshape(-1), np.arange(0, m * k + 1, k)),
                             shape=(m, n))


def anc_neighbours(features: np.ndarray | Tensor, k1: int, k2: int, rule: str = "intersection",
                   block: int = 512) -> list[np.ndarray]:
    """``N(i)`` of Adaptive Neighbour Discovery for every training image (see the module text):
    a list of sorted index arrays. ``rule="released"`` gives the released code's empty sets."""
    if rule not in RULES:
        raise InputError(f"dsah: rule must be one of {RULES}, got {rule!r}")
    knn = knn_lists(features, k1, block)
    n, k1 = knn.shape
    if rule == "released":
        return [np.zeros(0, dtype=np.int64) for _ in range(n)]
    k2 = min(int(k2), n)
    a = _indicator(knn, n)
    at = a.T.tocsr()
    out: list[np.ndarray] = []
    tiebreak = (n - 1 - np.arange(n, dtype=np.int64))[None, :]
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        overlap = (a[r0:r1] @ at).toarray().astype(np.int64)  # o_ij = |kNN(i) ∩ kNN(j)|
        key = overlap * n + tiebreak  # unique: larger overlap first, then smaller index
        top = np.argpartition(-key, k2 - 1, axis=1)[:, :k2]
        counts = (_indicator(top, n) @ a).toarray()  # how many of T(i)'s kNN lists hold each image
        hit = counts == k2 if rule == "intersection" else counts > 0
        out.extend(np.flatnonzero(row) for row in hit)
    return out


class PackedSimilarity:
    """A symmetric ±1 similarity over N items, one bit per pair (1 = +1): ``N × ⌈N/8⌉`` bytes."""

    def __init__(self, n: int):
        self.n = int(n)
        self.bits = torch.zeros(self.n, (self.n + 7) // 8, dtype=torch.uint8)

    @property
    def nbytes(self) -> int:
        return int(self.bits.numel())

    def set(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """Mark ``(rows[t], cols[t])`` and ``(cols[t], rows[t])`` as +1."""
        r = np.concatenate([rows, cols]).astype(np.int64)
        c = np.concatenate([cols, rows]).astype(np.int64)
        packed = self.bits.numpy()
        np.bitwise_or.at(packed, (r, c >> 3), (1 << (c & 7)).astype(np.uint8))

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` as bool ``(r1 − r0, N)``."""
        return np.unpackbits(self.bits[r0:r1].numpy(), axis=1, count=self.n, bitorder="little").astype(bool)

    def set_rows(self, r0: int, mask: np.ndarray) -> None:
        self.bits[r0:r0 + len(mask)] = torch.from_numpy(np.packbits(mask, axis=1, bitorder="little"))

    def block(self, index: Tensor) -> Tensor:
        """``W[index, index]`` as float ±1 ``(B, B)``."""
        idx = index.long().cpu()
        rows = self.bits[idx][:, idx >> 3]  # (B, B) bytes
        bit = (rows >> (idx & 7).to(torch.uint8)[None, :]) & 1
        return bit.float() * 2 - 1

    def dense(self) -> Tensor:
        """The whole matrix as float ±1 (tests and small N only)."""
        return torch.from_numpy(self.rows(0, self.n)).float() * 2 - 1

    def positives(self) -> int:
        """The number of +1 entries (diagonal included)."""
        table = torch.tensor([bin(v).count("1") for v in range(256)], dtype=torch.int64)
        return int(table[self.bits.long()].sum())


def initial_similarity(features, k1: int, k2: int, rule: str = "intersection", include_own_knn: bool = False,
                       block: int = 512) -> PackedSimilarity:
    """The AND initialisation ``W`` (see the module text) as a :class:`PackedSimilarity`."""
    n = len(features)
    neighbours = anc_neighbours(features, k1, k2, rule, block)
    w = PackedSimilarity(n)
    rows = np.concatenate([np.full(len(nb), i, dtype=np.int64) for i, nb in enumerate(neighbours)] + [np.arange(n)])
    cols = np.concatenate([*neighbours, np.arange(n)])
    w.set(rows, cols)
    if include_own_knn:
        knn = knn_lists(features, k1, block)
        w.set(np.repeat(np.arange(n), knn.shape[1]), knn.reshape(-1))
    return w


def and_update(w: PackedSimilarity, codes: Tensor, gamma: float, block: int = 1024) -> tuple[float, float, int]:
    """One AND round: ``S = H Hᵀ`` streamed in row blocks; ``μ, σ`` (ddof 1) of ``S`` over the
    current positives; ``W[S ≥ μ + γσ] = +1``. Returns ``(μ, σ, positives added)``."""
    h = codes.double().cpu()
    n = w.n
    total, total_sq, count = 0.0, 0.0, 0
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        s = (h[r0:r1] @ h.T).numpy()
        pos = w.rows(r0, r1)
        vals = s[pos]
        total += float(vals.sum())
        total_sq += float((vals * vals).sum())
        count += int(vals.size)
    mean = total / max(count, 1)
    var = (total_sq - count * mean * mean) / max(count - 1, 1)
    std = float(np.sqrt(max(var, 0.0)))
    threshold = mean + gamma * std
    added = 0
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        s = (h[r0:r1] @ h.T).numpy()
        pos = w.rows(r0, r1)
        new = pos | (s >= threshold)
        added += int(new.sum() - pos.sum())
        w.set_rows(r0, new)
    return mean, std, added


# --- the loss -----------------------------------------------------------------------------------------------
def pic_weights(c: Tensor, pic: int, temperature: float = 1.0, detach: bool = False) -> Tensor:
    """DSAH's Pairwise Information Content weights for a cosine matrix ``c`` ``(B, B)``:
    ``P = softmax(c / T)`` over all ``B²`` entries; ``A = −log P`` (1), ``−log(1 − P)`` (2), 1 (0)."""
    if pic == 0:
        return torch.ones_like(c)
    logits = (c.detach() if detach else c) / temperature
    log_p = torch.log_softmax(logits.reshape(-1), dim=0).reshape(c.shape)
    if pic == 1:
        return -log_p
    return -torch.log1p(-log_p.exp())


def dsah_loss(h: Tensor, w: Tensor, pic: int = 1, temperature: float = 1.0, alpha: float = 1.0, beta: float = 0.0,
              pic_detach: bool = False, quant_on_raw: bool = False) -> dict[str, Tensor]:
    """DSAH's named parts for tanh codes ``h`` ``(B, k)`` and the batch similarity ``w`` (±1)."""
    hn = F.normalize(h, dim=1, eps=1e-12)
    c = hn @ hn.T
    a = pic_weights(c, pic, temperature, pic_detach)
    b = torch.where(h >= 0, torch.ones_like(h), -torch.ones_like(h)).detach()
    target = h if quant_on_raw else hn
    return {"similarity": alpha * (a * (c - w).pow(2)).mean(),
            "quantization": beta * (b - target).pow(2).mean()}


@register_method(
    "dsah",
    paper="Lin, Chen, Zhang, Tian, Chen. Deep Self-Adaptive Hashing for Image Retrieval. CIKM 2021",
    kind="deep",
)
class DSAH(Method):
    """Label-free: neighbourhood similarity from pretrained features, enlarged each round (AND), PIC-weighted."""

    name = "dsah"
    supervised = False

    def __init__(self, bits: int, k1: int = 500, k2: int = 500, rule: str = "intersection",
                 include_own_knn: bool = False, and_update: bool = True, round_epochs: int = 10, gamma: float = 0.0,
                 pic: int = 1, temperature: float = 1.0, alpha: float = 1.0, beta: float = 0.0,
                 pic_detach: bool = False, quant_on_raw: bool = False, hidden: int = 1000, init_std: float = 0.001,
                 tap: str | None = None):
        super().__init__(bits)
        who = self.name
        self.k1 = check_int(who, "k1", k1, minimum=1)
        self.k2 = check_int(who, "k2", k2, minimum=1)
        self.rule = check_choice(who, "rule", rule, RULES)
        self.include_own_knn = check_bool(who, "include_own_knn", include_own_knn)
        self.and_update = check_bool(who, "and_update", and_update)
        self.round_epochs = check_int(who, "round_epochs", round_epochs, minimum=1)
        self.gamma = check_number(who, "gamma", gamma)
        self.pic = check_int(who, "pic", pic, minimum=0)
        if self.pic > 2:
            raise InputError(f"dsah: pic must be 0, 1 or 2, got {pic!r}")
        self.temperature = check_number(who, "temperature", temperature, minimum=1e-12)
        self.alpha = check_number(who, "alpha", alpha, minimum=0)
        self.beta = check_number(who, "beta", beta, minimum=0)
        self.pic_detach = check_bool(who, "pic_detach", pic_detach)
        self.quant_on_raw = check_bool(who, "quant_on_raw", quant_on_raw)
        self.hidden = check_int(who, "hidden", hidden, minimum=0)
        self.init_std = check_number(who, "init_std", init_std, minimum=1e-12)
        self.tap = check_tap(who, tap)
        self._w: PackedSimilarity | None = None
        #: what the similarity cost and holds (written by the hooks; the bench reads it from the log)
        self._stats: dict[str, Any] = {}

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    def taps(self, default_taps: list[str]) -> list[str]:
        return [self.tap] if self.tap else ["pool"]

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        return PooledHead(tap, tap_channels[tap], self.bits, hidden=self.hidden, activation="tanh",
                          init_std=self.init_std)

    def _record(self, state: Any, **values) -> None:
        self._stats.update(values)
        trainer = getattr(state, "trainer", None)
        out_dir = getattr(trainer, "out_dir", None)
        if out_dir is not None and getattr(trainer, "main", True):
            import json

            with open(out_dir / "dsah_similarity.jsonl", "a") as f:
                f.write(json.dumps({"epoch": int(getattr(state, "epoch", 0)), **values}) + "\n")

    def on_train_start(self, state: Any) -> None:
        if self._w is not None:  # resumed: the checkpointed similarity
            return
        feats = pretrained_features(state, self.tap or "pool")
        if feats is None:
            return
        import time

        t0 = time.perf_counter()
        self._w = initial_similarity(feats.numpy(), self.k1, self.k2, self.rule, self.include_own_knn)
        self._record(state, event="initial", rule=self.rule, k1=self.k1, k2=self.k2,
                     include_own_knn=self.include_own_knn, n=self._w.n, positives=self._w.positives(),
                     similarity_nbytes=self._w.nbytes, seconds=round(time.perf_counter() - t0, 3))

    def on_epoch_end(self, state: Any) -> None:
        if self._w is None or not self.and_update or not hasattr(state, "encode_train"):
            return
        epoch = int(getattr(state, "epoch", 0))
        epochs = int(getattr(getattr(getattr(state, "trainer", None), "tc", None), "epochs", 0) or 0)
        if epoch % self.round_epochs or (epochs and epoch >= epochs):
            return  # not the end of a round, or the last epoch (an update would change nothing)
        mean, std, added = and_update(self._w, state.encode_train(), self.gamma)
        self._record(state, event="and_update", mean=mean, std=std, threshold=mean + self.gamma * std,
                     added=added, positives=self._w.positives(), similarity_nbytes=self._w.nbytes)

    def batch_similarity(self, out: MethodOutput, batch: Batch) -> Tensor:
        """``W[idx, idx]`` (±1); outside the trainer (no similarity built), the same rule on the
        batch's own head inputs, with ``K1, K2 ≤ B/4``."""
        if self._w is not None:
            return self._w.block(batch.index).to(out.codes.device)
        x = out.extras["inputs"]
        n = len(x)
        k = max(2, n // 4)  # a batch-sized neighbourhood: K1 = 500 would make every batch pair a neighbour
        local = initial_similarity(x.detach().cpu().numpy(), min(self.k1, k), min(self.k2, k), self.rule,
                                   self.include_own_knn)
        return local.dense().to(out.codes.device)

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        return dsah_loss(out.codes, self.batch_similarity(out, batch), self.pic, self.temperature, self.alpha,
                         self.beta, self.pic_detach, self.quant_on_raw)

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self._w is None else {"similarity.bits": self._w.bits,
                                           "similarity.n": torch.tensor(self._w.n)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        unknown = set(state) - {"similarity.bits", "similarity.n"}
        if unknown:
            raise KeyError(f"method state {sorted(unknown)[0]!r} belongs to no part of DSAH")
        if "similarity.bits" in state:
            self._w = PackedSimilarity(int(state["similarity.n"]))
            self._w.bits = state["similarity.bits"].to(torch.uint8).cpu().clone()
