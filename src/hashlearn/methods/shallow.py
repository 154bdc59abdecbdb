"""Shallow (feature-vector) hashing baselines, scikit-learn style.

``ITQ(bits=64, random_state=0).fit(X).encode(X)`` → ±1 ``int8`` codes (n, bits), with
``sign(0) = +1``. Hyper-parameters are set in ``__init__`` (no work there), ``fit`` learns the
attributes ending in ``_`` and returns ``self``. Inputs are 2-D finite float arrays, usually
pooled CNN features (:func:`hashlearn.nn.extract_features`).

* :class:`LSH` — random Gaussian projections of the centred data (Charikar 2002; as in
  Gong & Lazebnik's comparisons).
* :class:`PCAH` — signs of the top-``bits`` principal components.
* :class:`ITQ` — PCA then an orthogonal rotation minimising the quantization loss
  ``‖B − VR‖_F²`` by alternating ``B = sgn(VR)`` and orthogonal Procrustes
  (Gong & Lazebnik, CVPR 2011, Eq. 2).
* :class:`SH` — spectral hashing (Weiss, Torralba & Fergus, NIPS 2008): PCA, then analytic
  1-D Laplacian eigenfunctions on the range of each direction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hashlearn.codes import sign
from hashlearn.errors import HashlearnError, InputError
from hashlearn.methods import register_method


def _sign_int8(z: np.ndarray) -> np.ndarray:
    """±1 int8 with sign(0) = +1 (:func:`hashlearn.codes.sign`)."""
    return sign(z)


def _pca(Xc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k principal directions (d, k) and their variances, with a deterministic sign.

    Each direction is flipped so its largest-magnitude coefficient is positive.
    """
    n, d = Xc.shape
    if d <= n:
        cov = (Xc.T @ Xc) / max(n - 1, 1)
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1][:k]
        values, vectors = values[order], vectors[:, order]
    else:
        _, s, vt = np.linalg.svd(Xc, full_matrices=False)
        vectors, values = vt[:k].T, (s[:k] ** 2) / max(n - 1, 1)
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    return vectors * signs, values


class ShallowHasher:
    """Shared validation and the fit/encode protocol of the shallow methods."""

    #: PCA-based methods cannot give more bits than input dimensions
    bits_at_most_dims = False

    def __init__(self, bits: int = 64, random_state: int | None = None):
        self.bits = bits
        self.random_state = random_state

    # -- sklearn-like plumbing ------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_bits(self) -> int:
        bits = self.bits
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1:
            raise InputError(f"{type(self).__name__}: bits must be a positive integer, got {bits!r}")
        return int(bits)

    def _check_X(self, X: Any, *, fitting: bool) -> np.ndarray:
        name = type(self).__name__
        try:
            X = np.asarray(X)
        except Exception:
            raise InputError(f"{name}: X must be a 2-D numeric array") from None
        if X.ndim != 2:
            raise InputError(f"{name}: X must be 2-D (n_samples, n_features), got shape {X.shape}")
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise InputError(f"{name}: X must be numeric, got dtype {X.dtype}")
        X = X.astype(np.float64, copy=False)
        if not np.isfinite(X).all():
            raise InputError(f"{name}: X contains NaN or infinity")
        if fitting:
            bits = self._check_bits()
            if X.shape[0] < 2:
                raise InputError(f"{name}: fit needs at least 2 samples, got {X.shape[0]}")
            if self.bits_at_most_dims and bits > X.shape[1]:
                raise InputError(
                    f"{name}: bits={bits} exceeds the {X.shape[1]} input dimensions (PCA gives at most one bit a "
                    f"dimension); use fewer bits, or LSH/SH"
                )
        else:
            if not hasattr(self, "n_features_in_"):
                raise HashlearnError(f"{name} is not fitted yet; call fit(X) first")
            if X.shape[1] != self.n_features_in_:
                raise InputError(f"{name}: X has {X.shape[1]} features, but the model was fitted on "
                                 f"{self.n_features_in_}")
        return X

    def fit(self, X: Any, y: Any = None) -> ShallowHasher:
        X = self._check_X(X, fitting=True)
        self.n_features_in_ = X.shape[1]
        self.mean_ = X.mean(axis=0)
        self._fit(X - self.mean_)
        return self

    def encode(self, X: Any) -> np.ndarray:
        """±1 ``int8`` codes, shape (n, bits)."""
        X = self._check_X(X, fitting=False)
        return _sign_int8(self._project(X - self.mean_))

    def fit_encode(self, X: Any, y: Any = None) -> np.ndarray:
        return self.fit(X, y).encode(X)

    # subclasses
    def _fit(self, Xc: np.ndarray) -> None:
        raise NotImplementedError

    def _project(self, Xc: np.ndarray) -> np.ndarray:
        """Real values whose signs are the codes."""
        raise NotImplementedError


@register_method("lsh", paper="Charikar, STOC 2002 (random-projection LSH)", kind="shallow")
class LSH(ShallowHasher):
    """Locality-sensitive hashing: signs of random Gaussian projections of centred data."""

    def _fit(self, Xc: np.ndarray) -> None:
        rng = np.random.default_rng(self.random_state)
        self.projection_ = rng.standard_normal((Xc.shape[1], self.bits))

    def _project(self, Xc: np.ndarray) -> np.ndarray:
        return Xc @ self.projection_


@register_method("pcah", paper="PCA hashing (e.g. Wang, Kumar & Chang, CVPR 2010)", kind="shallow")
class PCAH(ShallowHasher):
    """PCA hashing: signs of the top-``bits`` principal components."""

    bits_at_most_dims = True

    def _fit(self, Xc: np.ndarray) -> None:
        self.components_, self.explained_variance_ = _pca(Xc, self.bits)

    def _project(self, Xc: np.ndarray) -> np.ndarray:
        return Xc @ self.components_


@register_method("itq", paper="Gong & Lazebnik, CVPR 2011", kind="shallow")
class ITQ(ShallowHasher):
    """Iterative quantization: PCA + orthogonal rotation minimising ``‖B − VR‖_F²``.

    ``quantization_loss_`` holds ``‖sgn(VR) − VR‖_F²`` for the initial random rotation and
    after each of the ``n_iter`` Procrustes updates (non-increasing).
    """

    bits_at_most_dims = True

    def __init__(self, bits: int = 64, n_iter: int = 50, random_state: int | None = None):
        super().__init__(bits, random_state)
        self.n_iter = n_iter

    def _fit(self, Xc: np.ndarray) -> None:
        if not isinstance(self.n_iter, (int, np.integer)) or self.n_iter < 0:
            raise InputError(f"ITQ: n_iter must be a non-negative integer, got {self.n_iter!r}")
        self.components_, self.explained_variance_ = _pca(Xc, self.bits)
        V = Xc @ self.components_
        rng = np.random.default_rng(self.random_state)
        R, _ = np.linalg.qr(rng.standard_normal((self.bits, self.bits)))
        losses = []
        for _ in range(self.n_iter):
            VR = V @ R
            B = np.where(VR >= 0, 1.0, -1.0)
            losses.append(float(((B - VR) ** 2).sum()))
            # Procrustes: B^T V = S Ω Ŝ^T  →  R = Ŝ S^T
            S, _, St_hat = np.linalg.svd(B.T @ V)
            R = St_hat.T @ S.T
        VR = V @ R
        losses.append(float(((np.where(VR >= 0, 1.0, -1.0) - VR) ** 2).sum()))
        self.rotation_ = R
        self.quantization_loss_ = np.asarray(losses)

    def _project(self, Xc: np.ndarray) -> np.ndarray:
        return Xc @ self.components_ @ self.rotation_


@register_method("sh", paper="Weiss, Torralba & Fergus, NIPS 2008", kind="shallow")
class SH(ShallowHasher):
    """Spectral hashing with analytic eigenfunctions of the 1-D Laplacian on a uniform range.

    After PCA to ``min(bits, dims)`` directions with range ``[a, b]`` each, the candidate
    bits are the (direction ``i``, mode ``j ≥ 1``) pairs with eigenvalue ∝ ``(j / (b_i − a_i))²``;
    the ``bits`` smallest are kept (ties: lower direction, then lower mode). A bit is
    ``sgn(sin(π/2 + jπ/(b_i − a_i) · (x_i − a_i)))``.

    Learned: ``components_``, ``mins_``/``maxs_`` (range per direction), ``modes_`` (bits, 2)
    integer (direction, j) pairs, ``eigenvalues_`` (``(j/(b−a))²`` of each chosen pair).
    """

    def _fit(self, Xc: np.ndarray) -> None:
        bits = self.bits
        n_pca = min(bits, Xc.shape[1])
        self.components_, _ = _pca(Xc, n_pca)
        V = Xc @ self.components_
        eps = np.finfo(np.float64).eps
        self.mins_ = V.min(axis=0) - eps
        self.maxs_ = V.max(axis=0) + eps
        ranges = self.maxs_ - self.mins_
        # enough modes per direction that the widest direction alone could supply every bit
        max_mode = np.ceil((bits + 1) * ranges / ranges.max()).astype(int)
        cand = [(i, j, (j / ranges[i]) ** 2) for i in range(n_pca) for j in range(1, max(max_mode[i], 1) + 1)]
        cand.sort(key=lambda c: (c[2], c[0], c[1]))
        if len(cand) < bits:  # degenerate (near-constant) directions: add higher modes of the widest
            extra = range(max_mode[0] + 1, max_mode[0] + 1 + bits - len(cand))
            cand += [(0, j, (j / ranges[0]) ** 2) for j in extra]
        chosen = cand[:bits]
        self.modes_ = np.array([(i, j) for i, j, _ in chosen], dtype=np.int64)
        self.eigenvalues_ = np.array([e for _, _, e in chosen])

    def _project(self, Xc: np.ndarray) -> np.ndarray:
        V = Xc @ self.components_
        dims, js = self.modes_[:, 0], self.modes_[:, 1]
        omega = js * np.pi / (self.maxs_[dims] - self.mins_[dims])
        return np.sin(np.pi / 2 + omega * (V[:, dims] - self.mins_[dims]))


__all__ = ["ShallowHasher", "LSH", "PCAH", "ITQ", "SH"]
