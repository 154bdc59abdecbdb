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

A fitted hasher is stored as arrays, never pickled: :meth:`ShallowHasher.get_state` gives its
constructor parameters (plain JSON values) and learned arrays, :meth:`ShallowHasher.from_state`
rebuilds it after checking every array's dtype and shape, and :func:`save_hasher` /
:func:`load_hasher` keep both in one ``.npz`` (loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hashlearn._atomic import atomic_target
from hashlearn.codes import sign
from hashlearn.errors import HashlearnError, InputError, NotFoundError
from hashlearn.methods import METHODS, register_method

#: what :func:`save_hasher` writes into the ``__meta__`` entry of the file
STATE_FORMAT = "hashlearn-shallow/1"


def _sign_int8(z: np.ndarray) -> np.ndarray:
    """±1 int8 with sign(0) = +1 (:func:`hashlearn.codes.sign`)."""
    return sign(z)


def _pca(Xc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k principal directions (d, k) and their variances, with a deterministic sign.

    Each direction is flipped so its largest-magnitude coefficient is positive.
    """
    n, d = Xc.shape
    if k > min(n, d):
        raise InputError(f"PCA of {n} samples with {d} features has at most {min(n, d)} directions, {k} asked for: "
                         f"fit on more samples, or use fewer bits")
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


def itq_rotation(V: np.ndarray, n_iter: int, random_state: int | None) -> tuple[np.ndarray, np.ndarray]:
    """ITQ's rotation of projected data ``V`` (n, b) (Gong & Lazebnik, CVPR 2011, Eq. 2): from a
    random orthogonal ``R``, ``n_iter`` rounds of ``B = sgn(VR)`` then orthogonal Procrustes.
    Returns ``R`` and ``‖sgn(VR) − VR‖_F²`` before each round and after the last (non-increasing)."""
    bits = V.shape[1]
    rng = np.random.default_rng(random_state)
    R, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    losses = []
    for _ in range(n_iter):
        VR = V @ R
        B = np.where(VR >= 0, 1.0, -1.0)
        losses.append(float(((B - VR) ** 2).sum()))
        # Procrustes: B^T V = S Ω Ŝ^T  →  R = Ŝ S^T
        S, _, St_hat = np.linalg.svd(B.T @ V)
        R = St_hat.T @ S.T
    VR = V @ R
    losses.append(float(((np.where(VR >= 0, 1.0, -1.0) - VR) ** 2).sum()))
    return R, np.asarray(losses)


class ShallowHasher:
    """Shared validation and the fit/encode protocol of the shallow methods."""

    #: PCA-based methods cannot give more bits than input dimensions
    bits_at_most_dims = False
    #: learned arrays and their shapes: ``d`` input dimensions, ``b`` bits, other letters free
    #: (the same letter is the same size everywhere), ``None`` any size
    learned: dict[str, tuple] = {"mean_": ("d",)}

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

    # -- state as plain arrays (never pickled) --------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """``{"method", "params", "arrays"}``: the registered name, the constructor parameters
        (plain JSON values) and the learned arrays (``n_features_in_`` included)."""
        if not hasattr(self, "n_features_in_"):
            raise HashlearnError(f"{type(self).__name__} is not fitted yet; call fit(X) first")
        arrays = {"n_features_in_": np.asarray(self.n_features_in_, dtype=np.int64)}
        arrays.update({k: np.asarray(getattr(self, k)) for k in self.learned})
        return {"method": _registered_name(type(self)), "params": _plain_params(self.get_params()), "arrays": arrays}

    @classmethod
    def from_state(cls, state: dict[str, Any], where: str = "state") -> ShallowHasher:
        """The fitted hasher described by ``state`` (as :meth:`get_state` returns it).

        Every array is checked (numeric, finite, the shapes :attr:`learned` names), so a damaged
        or hand-made state is an :class:`InputError` naming ``where``, never a wrong encoder."""
        if not isinstance(state, dict):
            raise InputError(f"{where}: expected a mapping with 'params' and 'arrays'")
        params, arrays = state.get("params"), state.get("arrays")
        if not isinstance(params, dict) or not isinstance(arrays, dict):
            raise InputError(f"{where}: expected a mapping with 'params' and 'arrays'")
        import inspect

        try:
            inspect.signature(cls).bind(**params)
        except TypeError as exc:
            raise InputError(f"{where}: parameters {params} do not fit {cls.__name__} ({exc})") from None
        model = cls(**params)
        bits = model._check_bits()
        sizes = {"b": bits}
        values = {}
        for name, shape in {"n_features_in_": (), **cls.learned}.items():
            if name not in arrays:
                raise InputError(f"{where}: the learned array {name!r} is missing")
            arr = np.asarray(arrays[name])
            if arr.dtype.kind not in "iuf":
                raise InputError(f"{where}: {name} must be a numeric array, got dtype {arr.dtype}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InputError(f"{where}: {name} contains NaN or infinity")
            if name == "n_features_in_" and arr.dtype.kind == "f":
                raise InputError(f"{where}: n_features_in_ must be an integer")
            if shape is not None:
                if arr.ndim != len(shape):
                    raise InputError(f"{where}: {name} must have {len(shape)} dimension(s), got shape {arr.shape}")
                for size, want in zip(arr.shape, shape, strict=True):
                    if isinstance(want, int):
                        ok = size == want
                    else:
                        ok = sizes.setdefault(want, size) == size
                    if not ok:
                        raise InputError(f"{where}: {name} has shape {arr.shape}, which does not fit the others "
                                         f"({bits} bits)")
            values[name] = arr
        n_features = int(values.pop("n_features_in_"))
        if n_features < 1 or sizes.get("d", n_features) != n_features:
            raise InputError(f"{where}: n_features_in_={n_features} does not fit mean_ of shape "
                             f"{values['mean_'].shape}")
        model.n_features_in_ = n_features
        for name, arr in values.items():
            setattr(model, name, arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float64))
        model._check_state(where)
        return model

    def _check_state(self, where: str) -> None:
        """Checks beyond dtypes and shapes (subclasses)."""

    def _check_bits(self) -> int:
        bits = self.bits
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1:
            raise InputError(f"{type(self).__name__}: bits must be a positive integer, got {bits!r}")
        return int(bits)

    def _check_random_state(self) -> None:
        rs = self.random_state
        if rs is not None and (isinstance(rs, bool) or not isinstance(rs, (int, np.integer)) or rs < 0):
            raise InputError(f"{type(self).__name__}: random_state must be None or a non-negative integer, got {rs!r}")

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
            self._check_random_state()
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

    learned = {"mean_": ("d",), "projection_": ("d", "b")}

    def _fit(self, Xc: np.ndarray) -> None:
        rng = np.random.default_rng(self.random_state)
        self.projection_ = rng.standard_normal((Xc.shape[1], self.bits))

    def _project(self, Xc: np.ndarray) -> np.ndarray:
        return Xc @ self.projection_


@register_method("pcah", paper="PCA hashing (e.g. Wang, Kumar & Chang, CVPR 2010)", kind="shallow")
class PCAH(ShallowHasher):
    """PCA hashing: signs of the top-``bits`` principal components."""

    bits_at_most_dims = True
    learned = {"mean_": ("d",), "components_": ("d", "b"), "explained_variance_": ("b",)}

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
    learned = {"mean_": ("d",), "components_": ("d", "b"), "explained_variance_": ("b",), "rotation_": ("b", "b"),
               "quantization_loss_": None}

    def __init__(self, bits: int = 64, n_iter: int = 50, random_state: int | None = None):
        super().__init__(bits, random_state)
        self.n_iter = n_iter

    def _fit(self, Xc: np.ndarray) -> None:
        if not isinstance(self.n_iter, (int, np.integer)) or self.n_iter < 0:
            raise InputError(f"ITQ: n_iter must be a non-negative integer, got {self.n_iter!r}")
        self.components_, self.explained_variance_ = _pca(Xc, self.bits)
        self.rotation_, self.quantization_loss_ = itq_rotation(Xc @ self.components_, self.n_iter, self.random_state)

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

    learned = {"mean_": ("d",), "components_": ("d", "k"), "mins_": ("k",), "maxs_": ("k",), "modes_": ("b", 2),
               "eigenvalues_": ("b",)}

    def _check_state(self, where: str) -> None:
        if self.modes_.dtype.kind not in "iu":
            raise InputError(f"{where}: modes_ must be integers")
        dims, js = self.modes_[:, 0], self.modes_[:, 1]
        if (dims < 0).any() or (dims >= self.components_.shape[1]).any() or (js < 1).any():
            raise InputError(f"{where}: modes_ names directions or modes that do not exist")
        if not (self.maxs_ > self.mins_).all():
            raise InputError(f"{where}: maxs_ must be greater than mins_")

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


def _registered_name(cls: type) -> str:
    for name in METHODS.names():
        if METHODS.get(name) is cls:
            return name
    raise HashlearnError(f"{cls.__name__} is not a registered method")


def _plain_params(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        if isinstance(v, np.generic):
            v = v.item()
        if v is not None and not isinstance(v, (bool, int, float, str)):
            raise HashlearnError(f"parameter {k}={v!r} is not a plain value and cannot be stored")
        out[k] = v
    return out


def save_hasher(model: ShallowHasher, path: str | Path) -> Path:
    """Write a fitted hasher to ``path`` (``.npz``: its arrays + a JSON ``__meta__`` string), atomically."""
    state = model.get_state()
    meta = json.dumps({"format": STATE_FORMAT, "method": state["method"], "params": state["params"]})
    path = Path(path)
    with atomic_target(path) as tmp:
        np.savez(tmp, __meta__=np.array(meta), **state["arrays"])
    return path


def load_hasher(path: str | Path) -> ShallowHasher:
    """The hasher :func:`save_hasher` wrote to ``path``. Read with ``allow_pickle=False``: a file
    holding pickled objects is refused, never unpickled."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"model file not found: {path}")
    what = f"{path}: not a hashlearn shallow model"
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise InputError(f"{what} (a single array, not an .npz archive)")
        with f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InputError):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{what} ({reason[:200]})") from None
    odd = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
    if odd:
        raise InputError(f"{what} (entry {odd[0]!r} is not an array)")
    raw = arrays.pop("__meta__", None)
    if raw is None or raw.dtype.kind != "U" or raw.ndim != 0:
        raise InputError(f"{what} (no __meta__ entry)")
    try:
        meta = json.loads(str(raw))
    except (ValueError, RecursionError):
        raise InputError(f"{what} (its __meta__ entry is not JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise InputError(f"{what} (format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                         f"expected {STATE_FORMAT!r})")
    name = meta.get("method")
    if not isinstance(name, str) or name not in METHODS or METHODS.info(name).get("kind") != "shallow":
        raise InputError(f"{path}: {name!r} is not a shallow hashing method")
    cls = METHODS.get(name)
    return cls.from_state({"params": meta.get("params"), "arrays": arrays}, where=str(path))


__all__ = ["ShallowHasher", "LSH", "PCAH", "ITQ", "SH", "save_hasher", "load_hasher"]
