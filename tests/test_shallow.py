"""Shallow hashing baselines: LSH, PCAH, ITQ, SH."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from hashlearn.errors import HashlearnError, InputError
from hashlearn.methods import METHODS
from hashlearn.methods.shallow import ITQ, LSH, PCAH, SH

ALL = [LSH, PCAH, ITQ, SH]


def mean_average_precision(query_codes, query_labels, db_codes, db_labels):
    """Brute-force mAP@all over Hamming ranking (stable ties by database index)."""
    dist = (query_codes.shape[1] - query_codes.astype(int) @ db_codes.T.astype(int)) / 2
    aps = []
    for i in range(len(query_codes)):
        order = np.argsort(dist[i], kind="stable")
        rel = (db_labels[order] == query_labels[i]).astype(float)
        if rel.sum() == 0:
            aps.append(0.0)
            continue
        precision_at = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append(float((precision_at * rel).sum() / rel.sum()))
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=600, n_features=32, centers=8, cluster_std=2.0, random_state=0)
    return X, y


def test_registered_as_shallow():
    for name in ("lsh", "pcah", "itq", "sh"):
        assert METHODS.info(name)["kind"] == "shallow"
    assert METHODS.get("itq") is ITQ
    assert "Gong" in METHODS.info("itq")["paper"]


@pytest.mark.parametrize("cls", ALL)
def test_codes_shape_dtype_values(cls, blobs):
    X, _ = blobs
    codes = cls(bits=16, random_state=0).fit(X).encode(X[:50])
    assert codes.shape == (50, 16) and codes.dtype == np.int8
    assert set(np.unique(codes)) <= {-1, 1}


@pytest.mark.parametrize("cls", ALL)
def test_no_work_at_construction_and_fit_returns_self(cls, blobs):
    model = cls(bits=8, random_state=3)
    assert not any(k.endswith("_") and not k.startswith("_") for k in vars(model))
    assert model.fit(blobs[0]) is model
    assert model.n_features_in_ == 32


@pytest.mark.parametrize("cls", ALL)
def test_deterministic_with_random_state(cls, blobs):
    X, _ = blobs
    a = cls(bits=12, random_state=7).fit_encode(X)
    b = cls(bits=12, random_state=7).fit_encode(X)
    np.testing.assert_array_equal(a, b)


def test_lsh_seed_changes_projection(blobs):
    X, _ = blobs
    assert not np.array_equal(LSH(bits=12, random_state=1).fit_encode(X), LSH(bits=12, random_state=2).fit_encode(X))


def test_sign_of_zero_is_plus_one():
    X = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # the mean row projects to exactly 0
    codes = PCAH(bits=1).fit(X).encode(np.array([[0.0, 0.0]]))
    assert codes.tolist() == [[1]]


def test_itq_quantization_loss_never_increases_and_beats_pcah(blobs):
    X, _ = blobs
    itq = ITQ(bits=16, n_iter=50, random_state=0).fit(X)
    loss = itq.quantization_loss_
    assert len(loss) == 51
    assert np.all(np.diff(loss) <= 1e-9 * loss[0])
    pcah = PCAH(bits=16).fit(X)
    V = (X - pcah.mean_) @ pcah.components_
    pcah_loss = ((np.where(V >= 0, 1.0, -1.0) - V) ** 2).sum()
    assert loss[-1] < pcah_loss
    R = itq.rotation_
    np.testing.assert_allclose(R @ R.T, np.eye(16), atol=1e-10)


def test_itq_retrieval_map_high_vs_shuffled_control(blobs):
    X, y = blobs
    codes = ITQ(bits=32, random_state=0).fit_encode(X)
    q, db = slice(0, 100), slice(100, None)
    good = mean_average_precision(codes[q], y[q], codes[db], y[db])
    y_shuffled = np.random.default_rng(0).permutation(y)
    chance = mean_average_precision(codes[q], y_shuffled[q], codes[db], y_shuffled[db])
    assert good > 0.9
    assert chance < 0.2  # 8 balanced classes: chance ≈ 1/8


def test_sh_picks_modes_by_eigenvalue():
    # an axis-aligned grid: PCA directions are the axes, ranges 2.5 (x) and 1 (y).
    # eigenvalues (j/range)^2: x j=1 0.16, x j=2 0.64, y j=1 1.0, x j=3 1.44 → first three bits.
    gx, gy = np.meshgrid(np.linspace(0, 2.5, 11), np.linspace(0, 1.0, 5))
    X = np.column_stack([gx.ravel(), gy.ravel()])
    sh = SH(bits=3).fit(X)
    assert sh.modes_.tolist() == [[0, 1], [0, 2], [1, 1]]
    np.testing.assert_allclose(sh.eigenvalues_, [0.16, 0.64, 1.0], rtol=1e-6)
    # bit 0 (j=1 on x): sin(π/2 + π(x−a)/range) ≥ 0 exactly on the lower half of the x range
    codes = sh.encode(np.array([[0.2, 0.5], [2.3, 0.5]]))
    assert codes[:, 0].tolist() == [1, -1]
    # bit 1 (j=2): positive in the outer quarters, negative in the middle half
    codes = sh.encode(np.array([[0.1, 0.5], [1.25, 0.5], [2.4, 0.5]]))
    assert codes[:, 1].tolist() == [1, -1, 1]


def test_sh_allows_more_bits_than_dims():
    X = np.random.default_rng(0).normal(size=(200, 3))
    assert SH(bits=10).fit_encode(X).shape == (200, 10)


@pytest.mark.parametrize("cls", [PCAH, ITQ])
def test_pca_methods_reject_bits_above_dims(cls):
    X = np.random.default_rng(0).normal(size=(50, 4))
    with pytest.raises(InputError, match="bits=8 exceeds the 4 input dimensions"):
        cls(bits=8).fit(X)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(10), "2-D"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
    (np.array([["a", "b"], ["c", "d"]]), "numeric"),
    (np.zeros((1, 4)), "at least 2 samples"),
])
def test_bad_input_errors(bad, message):
    with pytest.raises(InputError, match=message):
        LSH(bits=2).fit(bad)


def test_bad_bits_and_unfitted_and_wrong_width():
    X = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(InputError, match="positive integer"):
        LSH(bits=0).fit(X)
    with pytest.raises(HashlearnError, match="not fitted"):
        ITQ(bits=2).encode(X)
    with pytest.raises(InputError, match="fitted on 4"):
        ITQ(bits=2).fit(X).encode(X[:, :3])


def test_repr_and_params():
    assert repr(ITQ(bits=8, random_state=1)) == "ITQ(bits=8, n_iter=50, random_state=1)"


# -- stored as arrays + JSON, never pickled ------------------------------------------------------

@pytest.mark.parametrize("cls", ALL)
def test_state_round_trip_gives_the_same_codes(cls, blobs, tmp_path):
    from hashlearn.methods.shallow import load_hasher, save_hasher

    X, _ = blobs
    model = cls(bits=12, random_state=4).fit(X)
    state = model.get_state()
    assert state["method"] == cls.__name__.lower() and state["params"]["bits"] == 12
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "if" for v in state["arrays"].values())
    again = cls.from_state(state)
    np.testing.assert_array_equal(again.encode(X), model.encode(X))
    path = save_hasher(model, tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert {z[k].dtype.kind for k in z.files} <= {"i", "f", "U"}
    loaded = load_hasher(path)
    assert type(loaded) is cls and loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.encode(X), model.encode(X))


def test_unfitted_model_has_no_state():
    with pytest.raises(HashlearnError, match="not fitted"):
        ITQ(bits=8).get_state()


@pytest.mark.parametrize("damage, message", [
    (lambda s: s["arrays"].pop("rotation_"), "rotation_.*missing"),
    (lambda s: s["arrays"].update(rotation_=np.eye(5)), "rotation_ has shape"),
    (lambda s: s["arrays"].update(mean_=np.full(32, np.nan)), "NaN"),
    (lambda s: s["arrays"].update(components_=np.array([["a"]])), "numeric"),
    (lambda s: s["arrays"].update(n_features_in_=np.array(7)), "n_features_in_"),
    (lambda s: s["params"].update(bits=8.0), "bits"),
    (lambda s: s["params"].update(nope=1), "do not fit ITQ"),
])
def test_damaged_state_is_refused(blobs, damage, message):
    state = ITQ(bits=8, random_state=0).fit(blobs[0]).get_state()
    damage(state)
    with pytest.raises(InputError, match=message):
        ITQ.from_state(state)


def test_sh_modes_must_name_existing_directions(blobs):
    state = SH(bits=6).fit(blobs[0]).get_state()
    state["arrays"]["modes_"] = state["arrays"]["modes_"].copy()
    state["arrays"]["modes_"][0, 0] = 99
    with pytest.raises(InputError, match="modes_"):
        SH.from_state(state)


def test_load_hasher_never_unpickles(tmp_path):
    import pickle

    from hashlearn.methods.shallow import load_hasher

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "pickle.npz").write_bytes(pickle.dumps(Payload()))
    arr = np.empty(1, dtype=object)
    arr[0] = Payload()
    np.savez(tmp_path / "objects.npz", __meta__=arr)
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "truncated.npz").write_bytes(b"PK\x03\x04junk")
    for name in ("pickle.npz", "objects.npz", "single.npy", "truncated.npz"):
        with pytest.raises(InputError, match="not a hashlearn shallow model"):
            load_hasher(tmp_path / name)
    assert not marker.exists()


def test_random_state_must_be_a_seed():
    with pytest.raises(InputError, match="random_state"):
        LSH(bits=8, random_state=-1).fit(np.zeros((4, 3)) + np.arange(3))


@pytest.mark.parametrize("name", ["pcah", "itq", "sh"])
def test_fewer_training_samples_than_pca_directions_is_refused_not_a_shorter_code(name):
    X = np.random.default_rng(0).normal(size=(8, 40))
    with pytest.raises(InputError, match="at most 8 directions"):
        {"pcah": PCAH, "itq": ITQ, "sh": SH}[name](bits=16).fit(X)
