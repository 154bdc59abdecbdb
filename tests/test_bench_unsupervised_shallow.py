"""`bench/unsupervised.py shallow`: pooled pretrained features from cached maps at a cut, and the shallow
baselines fitted on them, written where `report` reads deep runs."""

import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hashlearn.errors import InputError
from hashlearn.eval import evaluate
from hashlearn.methods.shallow import load_hasher
from hashlearn.nn import create_backbone, extract_activations
from hashlearn.train.model import pooled_features, pooled_features_from_cache

pytestmark = pytest.mark.usefixtures("one_thread")
BENCH = Path(__file__).resolve().parents[1] / "bench" / "unsupervised.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_unsupervised", BENCH)
    module = importlib.util.module_from_spec(spec)
    environ = dict(os.environ)
    try:
        # the script sets NUMBA_NUM_THREADS for its own process; numba refuses a later compile in this one
        # when that variable differs from the thread count it started with
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(environ)
    return module


def toy_images(n: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def test_lite0_features_from_cached_stage5_maps_equal_the_whole_backbone(tmp_path):
    images = toy_images(6, 32)
    net = create_backbone("efficientnet_lite0")  # ImageNet weights, default taps (stage3 lies below the cut)
    cache = extract_activations(net, images, "stage5", 64, key="toy", cache_dir=tmp_path, progress=False)
    rows = np.array([4, 0, 2])
    from_cache = pooled_features_from_cache(net, cache, rows, ["pool"], batch_size=2)["pool"]
    whole = pooled_features(net, images[rows], ["pool"], 64)["pool"]
    assert from_cache.shape == whole.shape == (3, 1280) and from_cache.dtype == np.float32
    # the maps are float16: equal up to their rounding, and far closer than two different images are
    np.testing.assert_allclose(from_cache, whole, rtol=2e-2, atol=2e-2)
    assert np.abs(from_cache - whole).max() < 0.1 * np.abs(whole[0] - whole[1]).max()
    assert net.taps == tuple(net.default_taps) and not net.training  # its selected taps are given back


def test_maps_of_other_weights_below_the_cut_are_refused(tmp_path):
    images = toy_images(4, 16)
    cache = extract_activations("smallcnn", images, "block2", 16, key="toy", cache_dir=tmp_path, progress=False,
                                weights="none", seed=0)
    other = create_backbone("smallcnn", weights="none", seed=1)
    with pytest.raises(InputError, match="other weights below 'block2'"):
        pooled_features_from_cache(other, cache, [0, 1], ["pool"])


@pytest.fixture(scope="module")
def toy_run(bench, tmp_path_factory):
    """160 images of 3 classes; split parts as cifar10-1's (train and val inside the database; more
    training images than bits, as PCA needs); the shallow step's features from a smallcnn's cached block2
    maps, then every method at 16/32/64 bits."""
    root = tmp_path_factory.mktemp("shallow")
    images = toy_images(160, 16, seed=1)
    labels = np.arange(160) % 3
    dataset = SimpleNamespace(images=images, labels=labels)
    parts = {"query": np.arange(140, 160), "train": np.arange(0, 100), "val": np.arange(100, 110),
             "database": np.arange(0, 140)}
    net = create_backbone("smallcnn", weights="none", seed=0, taps=["pool"])
    cache = extract_activations(net, images, "block2", 16, key="toy", cache_dir=root / "cache", progress=False)
    out = root / "runs"
    rows, features, info = bench.pretrained_features(net, cache, parts, out, batch_size=16, progress=False)
    results = bench.fit_shallow(dataset, parts, rows, features, info, out)
    return SimpleNamespace(out=out, rows=rows, features=features, info=info, results=results, parts=parts,
                           labels=labels, net=net, cache=cache, images=images)


def test_features_are_saved_once_with_where_they_came_from(bench, toy_run, monkeypatch):
    assert np.array_equal(toy_run.rows, np.arange(160))  # every image of the parts, sorted
    assert toy_run.features.dtype == np.float16 and toy_run.features.shape == (160, 256)
    saved = np.load(toy_run.out / bench.FEATURES)
    assert saved.dtype == np.float16 and np.array_equal(saved, toy_run.features)
    info = json.loads((toy_run.out / bench.FEATURE_INFO).read_text())
    assert info["cache_key"] == toy_run.cache.key and info["tap"] == "pool" and info["cut"] == "block2"
    assert info["n"] == 160 and info["shape"] == [160, 256]
    expected = pooled_features(toy_run.net, toy_run.images, ["pool"], 16)["pool"]
    np.testing.assert_allclose(saved.astype(np.float32), expected, rtol=2e-2, atol=2e-2)

    def recompute(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr("hashlearn.train.model.pooled_features_from_cache", recompute)
    _, again, _ = bench.pretrained_features(toy_run.net, toy_run.cache, toy_run.parts, toy_run.out, progress=False)
    assert np.array_equal(again, saved)


def test_every_method_and_code_length_is_read_by_report(bench, toy_run):
    from hashlearn.eval.results import row_from_metrics

    found, absent = bench.shallow_metrics(toy_run.out)
    assert absent == [] and len(found) == 12
    assert [(m["method"], m["bits"]) for m in found[:4]] == [(v, 16) for v in bench.SHALLOW]
    for m in found:
        row = row_from_metrics(m, variant=m["method"], cut=bench.CUT)
        assert row["train_seconds"] == m["training_seconds"] >= 0 and row["variant"] in bench.SHALLOW
        assert 0 <= row["mAP@all"] <= 1 and 0 <= row["mAP@1000"] <= 1 and row["chance_mAP@all"] > 0
        assert m["sizes"] == {"query": 20, "train": 100, "val": 10, "database": 140} and m["ties"] == "expected"
        assert m["method_hparams"]["random_state"] == 0 and m["data_limit"] is None
    note = bench._shallow_note(found, absent, toy_run.out)
    assert "missing" not in note and "100 training images" in note and "256-d" in note
    assert "missing" in bench._shallow_note([], absent, toy_run.out)
    lines = bench._rank_lines([row_from_metrics(m, variant=m["method"]) for m in found])
    assert all("itq" in line and "not measured: dsah" in line for line in lines)


def test_saved_model_and_features_give_the_reported_map(bench, toy_run):
    itq32 = toy_run.out / "itq" / "32bits"
    metrics = json.loads((itq32 / "metrics.json").read_text())
    model = load_hasher(itq32 / "model.npz")
    x = toy_run.features.astype(np.float32)
    q, db = toy_run.parts["query"], toy_run.parts["database"]
    query_codes = model.encode(x[q])
    assert query_codes.shape == (20, 32) and metrics["method_hparams"] == {"bits": 32, "n_iter": 50, "random_state": 0}
    result = evaluate(query_codes, model.encode(x[db]), toy_run.labels[q], toy_run.labels[db])
    assert result["mAP@all"] == pytest.approx(metrics["mAP@all"], abs=1e-12)


def test_runs_made_with_a_limit_are_not_reported(bench, toy_run, tmp_path):
    dataset = SimpleNamespace(labels=toy_run.labels)
    bench.fit_shallow(dataset, toy_run.parts, toy_run.rows, toy_run.features, toy_run.info, tmp_path,
                      methods=("lsh",), all_bits=(16,), limit=5)
    assert json.loads((tmp_path / "lsh" / "16bits" / "metrics.json").read_text())["data_limit"] == 5
    found, absent = bench.shallow_metrics(tmp_path)
    assert found == [] and "lsh 16" in absent
