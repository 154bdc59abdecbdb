"""Supervised shallow hashing baselines, scikit-learn style: ``SDH(bits=32).fit(X, y).encode(X)``.

``y`` holds class ids ``(n,)`` or multi-hot rows ``(n, C)``; ``fit`` without labels is an
:class:`~hashlearn.errors.InputError`. Like the unsupervised hashers (:mod:`hashlearn.methods.shallow`)
they keep only arrays (``model.npz``, never a pickle) and centre the data first.

* :class:`SDH` — Supervised Discrete Hashing (Shen, Shen, Liu, Shen, CVPR 2015)::

      min_{B,W,P} ‖Y − B W‖² + λ ‖W‖² + ν ‖B − φ(X) P‖²,   B ∈ {−1, +1}^{n×k}

  ``φ(x) = [exp(−‖x − a_j‖² / 2σ²)]_j`` on ``anchors`` (1,000) random training points, with a
  constant 1 appended (the bias of the authors' code); ``σ² = sigma²`` or, by default, the mean
  squared distance of the training points to the anchors (the authors' demo fixes ``σ = 0.4`` for
  normalised GIST; a data-driven width suits any features). ``n_iter`` rounds of: P-step (least squares),
  W-step (ridge regression, :func:`ridge_w`), B-step (discrete cyclic coordinate descent,
  :func:`dcc_b_step`, ``dcc_sweeps`` sweeps over the bits). ``λ = 1``, ``ν = 1e-5`` (the paper).
  Codes ``sgn(φ(x) P)``. ``objective_`` records the objective after every step.
* :class:`KSH` — Kernel-based Supervised Hashing (Liu, Wang, Ji, Jiang, Chang, CVPR 2012): the
  zero-mean RBF kernel vector ``k̄(x)`` on ``anchors`` (300) points (``exp(−‖x − a‖² / 2σ²)``,
  ``σ²`` the mean squared distance to the anchors, as the authors' code), ``h_r(x) = sgn(k̄(x)ᵀ a_r)``;
  on ``n_labelled`` (1,000) sampled labelled points with ``S ∈ {−1, +1}`` it minimises
  ``‖H Hᵀ − k S‖_F²`` greedily bit by bit: with the residue ``R_{r−1} = kS − Σ_{t<r} h_t h_tᵀ``,
  bit ``r`` maximises ``h_rᵀ R_{r−1} h_r``: spectral relaxation (the top generalised eigenvector of
  ``K̄ᵀRK̄ a = λ K̄ᵀK̄ a``), then gradient descent on the sigmoid-smoothed objective
  ``−φ(K̄a)ᵀ R φ(K̄a)``, ``φ(x) = 2/(1 + e^{−x}) − 1`` (``gd_iters`` = 500 steps, the authors'
  count, with backtracking instead of their fixed step); the gradient-descent solution replaces
  the spectral one only when it is strictly better in the discrete objective (as theirs).
* :class:`CCAITQ` — CCA-ITQ (Gong, Lazebnik, Gordo, Perronnin, TPAMI 2013): the top-``k``
  canonical directions of the features against the label matrix (regularised by ``reg``),
  each scaled by its canonical correlation (the paper's scaling), then ITQ's rotation
  (:func:`hashlearn.methods.shallow.itq_rotation`).

The discrete pieces (:func:`ridge_w`, :func:`dcc_b_step`, :func:`discrete_objective`) are the ones
DSDH's B-step uses too (:mod:`hashlearn.methods.dsdh`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.shallow import ShallowHasher, itq_rotation

# --- the discrete code step of SDH and DSDH ------------------------------------------------------

def _sgn(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


def ridge_w(B: np.ndarray, Y: np.ndarray, reg: float) -> np.ndarray:
    """``W = (BᵀB + reg·I)⁻¹ BᵀY`` ``(k, C)``: the minimiser of ``‖Y − BW‖² + reg ‖W‖²``."""
    k = B.shape[1]
    return np.linalg.solve(B.T @ B + reg * np.eye(k), B.T @ Y)


def discrete_objective(B: np.ndarray, W: np.ndarray, F: np.ndarray, Y: np.ndarray, mu: float, lam: float,
                       nu: float) -> float:
    """``μ ‖Y − BW‖² + λ ‖W‖² + ν ‖B − F‖²`` (SDH: μ = 1, F = φ(X)P; DSDH: F = U)."""
    return float(mu * ((Y - B @ W) ** 2).sum() + lam * (W ** 2).sum() + nu * ((B - F) ** 2).sum())


def dcc_b_step(B: np.ndarray, W: np.ndarray, F: np.ndarray, Y: np.ndarray, mu: float, nu: float,
               sweeps: int = 1) -> np.ndarray:
    """Discrete cyclic coordinate descent on ``μ ‖Y − BW‖² + ν ‖B − F‖²`` over ``B ∈ {±1}``.

    With ``Q = μ Y Wᵀ + ν F``, bit ``d`` (column ``b_d``) given the others is exactly minimised
    by ``b_d = sgn(q_d − μ B' W' w_d)`` (``B'``, ``W'``: the other columns / rows, ``w_d`` row ``d``
    of ``W``; SDH Eq. 12), so no update increases the objective. Returns a new ``B``."""
    B = np.array(B, dtype=np.float64, copy=True)
    Q = mu * (Y @ W.T) + nu * F
    k = B.shape[1]
    gram = W @ W.T  # (k, k): W' w_d = gram[rest, d]
    for _ in range(int(sweeps)):
        for d in range(k):
            rest = np.arange(k) != d
            B[:, d] = _sgn(Q[:, d] - mu * (B[:, rest] @ gram[rest, d]))
    return B


# --- shared plumbing ------------------------------------------------------------------------------

def label_rows(y: Any, n: int, who: str) -> np.ndarray:
    """Labels as a float ``(n, C)`` matrix: one-hot for class ids, multi-hot rows unchanged."""
    if y is None:
        raise InputError(f"{who}: fit needs the training labels y (class ids or multi-hot rows)")
    y = np.asarray(y)
    if y.shape[:1] != (n,) or y.ndim not in (1, 2) or y.dtype.kind not in "iubf":
        raise InputError(f"{who}: y must be {n} class ids or an ({n}, C) multi-hot matrix, got shape {y.shape}")
    if y.ndim == 2:
        return y.astype(np.float64)
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise InputError(f"{who}: class ids must be integers")
    ids = y.astype(np.int64)
    if ids.min() < 0:
        raise InputError(f"{who}: class ids must be >= 0")
    return np.eye(int(ids.max()) + 1)[ids]


def _sq_distances(X: np.ndarray, A: np.ndarray) -> np.ndarray:
    return np.maximum((X ** 2).sum(1)[:, None] + (A ** 2).sum(1)[None, :] - 2 * X @ A.T, 0.0)


def _rbf(X: np.ndarray, anchors: np.ndarray, sigma: float, chunk: int = 4096) -> np.ndarray:
    """``exp(−‖x − a_j‖² / 2σ²)`` ``(len(X), len(anchors))``, computed in chunks of rows."""
    out = np.empty((len(X), len(anchors)))
    for start in range(0, len(X), chunk):
        out[start:start + chunk] = np.exp(-_sq_distances(X[start:start + chunk], anchors) / (2 * sigma ** 2))
    return out


def _width(Xc: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """The RBF width ``σ`` with ``σ²`` = the mean squared distance of the points to the anchors."""
    return np.asarray(max(float(np.sqrt(_sq_distances(Xc, anchors).mean())), 1e-12))


def _anchors(Xc: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.choice(len(Xc), size=min(int(m), len(Xc)), replace=False)
    return Xc[np.sort(idx)]


def _check_positive_int(who: str, name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{who}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_nonneg(who: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not np.isfinite(value) or value < 0:
        raise InputError(f"{who}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


class SupervisedShallowHasher(ShallowHasher):
    """A shallow hasher whose ``fit`` needs labels: ``_fit(Xc, Y)`` with ``Y`` ``(n, C)``."""

    def fit(self, X: Any, y: Any = None) -> SupervisedShallowHasher:
        X = self._check_X(X, fitting=True)
        Y = label_rows(y, len(X), type(self).__name__)
        self.n_features_in_ = X.shape[1]
        self.mean_ = X.mean(axis=0)
        self._fit(X - self.mean_, Y)
        return self


# --- SDH ---------------------------------------------------------------------------------------------

@register_method("sdh", paper="Shen, Shen, Liu, Shen. Supervised Discrete Hashing. CVPR 2015", kind="shallow")
class SDH(SupervisedShallowHasher):
    """RBF-anchor features, codes B by discrete cyclic coordinate descent, ``sgn(φ(x) P)``."""

    learned = {"mean_": ("d",), "anchors_": ("m", "d"), "sigma_": (), "projection_": ("p", "b"), "objective_": None}

    def __init__(self, bits: int = 64, anchors: int = 1000, lam: float = 1.0, nu: float = 1e-5, n_iter: int = 5,
                 dcc_sweeps: int = 5, sigma: float | None = None, random_state: int | None = None):
        super().__init__(bits, random_state)
        self.anchors = anchors
        self.lam = lam
        self.nu = nu
        self.n_iter = n_iter
        self.dcc_sweeps = dcc_sweeps
        self.sigma = sigma

    def features(self, Xc: np.ndarray) -> np.ndarray:
        """``φ(x)``: the RBF kernel values on the anchors and a constant 1 ``(n, m + 1)``."""
        phi = _rbf(Xc, self.anchors_, float(self.sigma_))
        return np.hstack([phi, np.ones((len(phi), 1))])

    def _check_state(self, where: str) -> None:
        if self.projection_.shape[0] != len(self.anchors_) + 1:
            raise InputError(f"{where}: projection_ must have one row per anchor plus one")

    def _fit(self, Xc: np.ndarray, Y: np.ndarray) -> None:
        who = "SDH"
        m = _check_positive_int(who, "anchors", self.anchors)
        n_iter = _check_positive_int(who, "n_iter", self.n_iter)
        sweeps = _check_positive_int(who, "dcc_sweeps", self.dcc_sweeps)
        lam, nu = _check_nonneg(who, "lam", self.lam), _check_nonneg(who, "nu", self.nu)
        rng = np.random.default_rng(self.random_state)
        self.anchors_ = _anchors(Xc, m, rng)
        if self.sigma is None:
            self.sigma_ = _width(Xc, self.anchors_)
        else:
            self.sigma_ = np.asarray(_check_nonneg(who, "sigma", self.sigma))
            if float(self.sigma_) <= 0:
                raise InputError(f"{who}: sigma must be > 0 (or null for the data's width), got {self.sigma!r}")
        phi = self.features(Xc)
        B = _sgn(rng.standard_normal((len(Xc), self.bits)))
        trace = []
        for _ in range(n_iter):
            P = np.linalg.lstsq(phi, B, rcond=None)[0]            # P-step: least squares
            F = phi @ P
            W = ridge_w(B, Y, lam)                               # W-step
            trace.append(discrete_objective(B, W, F, Y, 1.0, lam, nu))
            B = dcc_b_step(B, W, F, Y, 1.0, nu, sweeps)          # B-step
            trace.append(discrete_objective(B, W, F, Y, 1.0, lam, nu))
        self.projection_ = np.linalg.lstsq(phi, B, rcond=None)[0]
        self.objective_ = np.asarray(trace)

    def _project(self, Xc: np.ndarray) -> np.ndarray:
        return self.features(Xc) @ self.projection_


# --- KSH ---------------------------------------------------------------------------------------------

def _smooth(x: np.ndarray) -> np.ndarray:
    return 2.0 / (1.0 + np.exp(-np.clip(x, -50, 50))) - 1.0


def ksh_bit(K: np.ndarray, R: np.ndarray, gd_iters: int) -> np.ndarray:
    """One KSH bit: the coefficient vector ``a`` (m,) maximising ``sgn(K a)ᵀ R sgn(K a)``
    (spectral initialisation, then gradient descent on the sigmoid-smoothed objective)."""
    n = len(K)
    KtK = K.T @ K + 1e-6 * np.eye(K.shape[1])
    # spectral relaxation: K^T R K a = λ K^T K a, aᵀ KᵀK a = n
    L = np.linalg.cholesky(KtK)
    Linv = np.linalg.inv(L)
    M = Linv @ (K.T @ R @ K) @ Linv.T
    values, vectors = np.linalg.eigh((M + M.T) / 2)
    a0 = Linv.T @ vectors[:, -1]
    a0 *= np.sqrt(n / max(float(a0 @ KtK @ a0), 1e-12))

    def smooth_cost(a):
        b = _smooth(K @ a)
        return -float(b @ R @ b), b

    a, (cost, b) = a0.copy(), smooth_cost(a0)
    step = 1.0
    for _ in range(int(gd_iters)):
        grad = -K.T @ ((R @ b) * (1 - b ** 2))
        norm = float(np.linalg.norm(grad))
        if norm < 1e-10:
            break
        while step > 1e-12:  # backtracking: the smoothed cost must fall
            trial = a - step * grad / norm
            trial_cost, trial_b = smooth_cost(trial)
            if trial_cost < cost:
                a, cost, b = trial, trial_cost, trial_b
                step *= 2.0
                break
            step /= 2.0
        else:
            break

    def discrete(a_):
        h = _sgn(K @ a_)
        return float(h @ R @ h)

    return a if discrete(a) > discrete(a0) else a0


@register_method("ksh", paper="Liu, Wang, Ji, Jiang, Chang. Supervised Hashing with Kernels. CVPR 2012",
                 kind="shallow")
class KSH(SupervisedShallowHasher):
    """Zero-mean RBF kernel on anchors, bits chosen greedily to fit ``k S`` on a labelled subset."""

    learned = {"mean_": ("d",), "anchors_": ("m", "d"), "sigma_": (), "kernel_mean_": ("m",),
               "coefficients_": ("m", "b")}

    def __init__(self, bits: int = 64, anchors: int = 300, n_labelled: int = 1000, gd_iters: int = 500,
                 random_state: int | None = None):
        super().__init__(bits, random_state)
        self.anchors = anchors
        self.n_labelled = n_labelled
        self.gd_iters = gd_iters

    def kernel(self, Xc: np.ndarray) -> np.ndarray:
        """``k̄(x)``: the RBF kernel on the anchors minus its training mean."""
        return _rbf(Xc, self.anchors_, float(self.sigma_)) - self.kernel_mean_

    def _fit(self, Xc: np.ndarray, Y: np.ndarray) -> None:
        who = "KSH"
        m = _check_positive_int(who, "anchors", self.anchors)
        n_labelled = _check_positive_int(who, "n_labelled", self.n_labelled, minimum=2)
        gd_iters = _check_positive_int(who, "gd_iters", self.gd_iters, minimum=0)
        rng = np.random.default_rng(self.random_state)
        self.anchors_ = _anchors(Xc, m, rng)
        self.sigma_ = _width(Xc, self.anchors_)
        self.kernel_mean_ = _rbf(Xc, self.anchors_, float(self.sigma_)).mean(axis=0)
        labelled = np.sort(rng.choice(len(Xc), size=min(n_labelled, len(Xc)), replace=False))
        K = self.kernel(Xc[labelled])
        Yl = Y[labelled]
        S = np.where(Yl @ Yl.T > 0, 1.0, -1.0)
        R = self.bits * S
        coefficients = np.zeros((K.shape[1], self.bits))
        for r in range(self.bits):
            a = ksh_bit(K, R, gd_iters)
            h = _sgn(K @ a)
            R = R - np.outer(h, h)
            coefficients[:, r] = a
        self.coefficients_ = coefficients

    def _project(self, Xc: np.ndarray) -> np.ndarray:
        return self.kernel(Xc) @ self.coefficients_


# --- CCA-ITQ -----------------------------------------------------------------------------------------

def cca_directions(Xc: np.ndarray, Y: np.ndarray, k: int, reg: float) -> tuple[np.ndarray, np.ndarray]:
    """The top-``k`` canonical directions ``W_x`` (d, k) of ``Xc`` against ``Y`` and their
    canonical correlations (k,): ``C_xy C_yy⁻¹ C_yx w = r² C_xx w``, ``C = cov + reg·I``."""
    Yc = Y - Y.mean(axis=0)
    n = len(Xc)
    Cxx = Xc.T @ Xc / n + reg * np.eye(Xc.shape[1])
    Cyy = Yc.T @ Yc / n + reg * np.eye(Y.shape[1])
    Cxy = Xc.T @ Yc / n
    values, vectors = np.linalg.eigh(Cxx)
    inv_sqrt = vectors @ np.diag(1.0 / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T
    M = inv_sqrt @ Cxy @ np.linalg.solve(Cyy, Cxy.T) @ inv_sqrt
    r2, v = np.linalg.eigh((M + M.T) / 2)
    order = np.argsort(r2)[::-1][:k]
    W = inv_sqrt @ v[:, order]
    signs = np.sign(W[np.argmax(np.abs(W), axis=0), np.arange(W.shape[1])])
    signs[signs == 0] = 1
    return W * signs, np.sqrt(np.clip(r2[order], 0.0, None))


@register_method("cca-itq", paper="Gong, Lazebnik, Gordo, Perronnin. Iterative Quantization: A Procrustean Approach "
                 "to Learning Binary Codes for Large-scale Image Retrieval. TPAMI 2013 (CCA-ITQ)", kind="shallow")
class CCAITQ(SupervisedShallowHasher):
    """CCA projection against the labels (scaled by the correlations), then ITQ's rotation."""

    bits_at_most_dims = True
    learned = {"mean_": ("d",), "components_": ("d", "b"), "correlations_": ("b",), "rotation_": ("b", "b"),
               "quantization_loss_": None}

    def __init__(self, bits: int = 64, reg: float = 1e-4, n_iter: int = 50, random_state: int | None = None):
        super().__init__(bits, random_state)
        self.reg = reg
        self.n_iter = n_iter

    def _fit(self, Xc: np.ndarray, Y: np.ndarray) -> None:
        reg = _check_nonneg("CCAITQ", "reg", self.reg)
        n_iter = _check_positive_int("CCAITQ", "n_iter", self.n_iter, minimum=0)
        W, r = cca_directions(Xc, Y, self.bits, reg)
        self.components_ = W * r  # each direction scaled by its canonical correlation
        self.correlations_ = r
        self.rotation_, self.quantization_loss_ = itq_rotation(Xc @ self.components_, n_iter, self.random_state)

    def _project(self, Xc: np.ndarray) -> np.ndarray:
        return Xc @ self.components_ @ self.rotation_


__all__ = ["SDH", "KSH", "CCAITQ", "ridge_w", "dcc_b_step", "discrete_objective", "cca_directions", "ksh_bit"]
