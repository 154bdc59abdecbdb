"""Binary class centres ("hash centres", "orthogonal codes") shared by CSQ and OrthoHash.

* :func:`hadamard` — a Hadamard matrix ``H ∈ {−1, +1}^{n×n}``, ``H H^T = n I``, for
  ``n = 2^a`` (Sylvester) and ``n = 2^a (q + 1)`` with ``q`` a prime ``≡ 3 (mod 4)`` (Paley's
  first construction, then Sylvester doubling): every usual code length (12, 16, 24, 32, 48,
  64, 96, 128) has one. Any two rows differ in exactly ``n/2`` places.
* :func:`hash_centres` — CSQ's Algorithm 1 (Yuan et al., CVPR 2020): the rows of
  ``[H_k; −H_k]`` when a Hadamard matrix of order ``k`` exists and ``C ≤ 2k``, otherwise
  Bernoulli(½) centres, redrawn (up to ``tries`` times) until their smallest pairwise Hamming
  distance exceeds ``k/4`` and the mean reaches ``k/2`` (the official code's acceptance test).
* :func:`orthogonal_centres` — OrthoHash's codebook (Hoe et al., NeurIPS 2021): ``C`` mutually
  orthogonal ±1 codes (rows of ``H_k``) when ``C ≤ k`` and ``H_k`` exists, else Bernoulli(½)
  codes (nearly orthogonal for large ``k``, the paper's fallback).
* :func:`multilabel_centres` — CSQ's centre of a multi-label image: the sign of the sum of its
  labels' centres, a tie (a zero) broken by a fixed random ±1 vector.

Centres are tensors (a method's checkpointed state) drawn from a seeded generator.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hashlearn.errors import InputError


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q ** 0.5) + 1))


def _paley(q: int) -> np.ndarray:
    """Paley construction I: a Hadamard matrix of order ``q + 1`` for a prime ``q ≡ 3 (mod 4)``."""
    residues = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if x in residues else -1 for x in range(1, q)])
    jacobsthal = chi[(np.arange(q)[None, :] - np.arange(q)[:, None]) % q]  # Q_ij = χ(j − i)
    skew = np.zeros((q + 1, q + 1), dtype=np.int64)
    skew[0, 1:] = 1
    skew[1:, 0] = -1
    skew[1:, 1:] = jacobsthal
    return np.eye(q + 1, dtype=np.int64) + skew


def hadamard(n: int) -> np.ndarray | None:
    """A Hadamard matrix of order ``n`` (int64 ±1), or None when this module cannot build one."""
    if n < 1:
        return None
    if n & (n - 1) == 0:  # a power of two: Sylvester's construction (scipy.linalg.hadamard's, CSQ's)
        H = np.array([[1]], dtype=np.int64)
        while len(H) < n:
            H = np.block([[H, H], [H, -H]])
        return H
    doublings = 0
    m = n
    while m % 2 == 0 and m > 2:
        if m % 4 == 0 and _is_prime(m - 1) and (m - 1) % 4 == 3:
            break
        m //= 2
        doublings += 1
    if m == 1 or m == 2:
        H = np.array([[1]], dtype=np.int64) if m == 1 else np.array([[1, 1], [1, -1]], dtype=np.int64)
    elif _is_prime(m - 1) and (m - 1) % 4 == 3:
        H = _paley(m - 1)
    else:
        return None
    for _ in range(doublings):
        H = np.block([[H, H], [H, -H]])
    return H


def _bernoulli(classes: int, bits: int, generator: torch.Generator) -> Tensor:
    return torch.where(torch.rand(classes, bits, generator=generator) < 0.5, -1.0, 1.0)


def hamming(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise Hamming distances ``(k − a b^T) / 2`` of ±1 rows."""
    return 0.5 * (a.shape[1] - a @ b.T)


def hash_centres(classes: int, bits: int, kind: str = "auto", seed: int = 0, tries: int = 20) -> Tensor:
    """``(classes, bits)`` float ±1 centres (CSQ, Algorithm 1). ``kind``: ``"auto"`` (Hadamard when
    possible), ``"hadamard"`` (an error when impossible) or ``"bernoulli"``."""
    H = hadamard(bits)
    if kind == "hadamard" and (H is None or classes > 2 * bits):
        raise InputError(f"csq: no Hadamard centres for {classes} classes at {bits} bits (need a Hadamard matrix of "
                         f"order {bits} and classes <= {2 * bits}); use centres='bernoulli'")
    if kind != "bernoulli" and H is not None and classes <= 2 * bits:
        return torch.from_numpy(np.concatenate([H, -H])[:classes]).float()
    g = torch.Generator().manual_seed(int(seed))
    best, best_min = None, -1.0
    for _ in range(max(int(tries), 1)):
        centres = _bernoulli(classes, bits, g)
        d = hamming(centres, centres)[torch.triu_indices(classes, classes, 1).unbind()]
        low = float(d.min()) if len(d) else float(bits)
        if low > best_min:
            best, best_min = centres, low
        if len(d) == 0 or (low > bits / 4 and float(d.mean()) >= bits / 2):
            return centres
    return best


def orthogonal_centres(classes: int, bits: int, kind: str = "auto", seed: int = 0) -> Tensor:
    """``(classes, bits)`` float ±1 codes, mutually orthogonal when a Hadamard matrix of order
    ``bits`` exists and ``classes <= bits`` (``kind="hadamard"`` requires it), else Bernoulli(½)."""
    H = hadamard(bits)
    if kind == "hadamard" and (H is None or classes > bits):
        raise InputError(f"orthohash: no {classes} orthogonal ±1 codes of {bits} bits from a Hadamard matrix (need "
                         f"one of order {bits} and classes <= bits); use codebook='bernoulli'")
    if kind != "bernoulli" and H is not None and classes <= bits:
        return torch.from_numpy(H[:classes]).float()
    return _bernoulli(classes, bits, torch.Generator().manual_seed(int(seed)))


def multilabel_centres(labels: Tensor, centres: Tensor, tie_break: Tensor) -> Tensor:
    """Each row's centre: ``centres[y]`` for class ids ``(B,)``; for multi-hot ``(B, C)``, the
    sign of ``Σ_c y_c c_c`` (the sign of the mean of its labels' centres) with a zero taken from
    ``tie_break`` (a fixed ±1 vector)."""
    if labels.dim() == 1:
        return centres[labels.long()]
    total = labels.float() @ centres
    total = torch.where(total == 0, tie_break.expand_as(total), total)
    return torch.where(total > 0, 1.0, -1.0)
