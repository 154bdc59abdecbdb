"""Datasets as modules: one module per family in hashlearn.data.datasets, found by load_all; the
shared plumbing (Load) builds every ImageDataset; the data package imports without a cycle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

import hashlearn.data as data_package
from hashlearn.cli import main
from hashlearn.data import DATASETS, load_all, load_dataset, prepare
from hashlearn.errors import InputError

FAMILIES = {"aircraft", "cub", "cifar10", "csv", "digits", "folder", "lists", "mnist", "mosaic"}


def test_every_dataset_lives_in_one_module_of_the_datasets_package():
    import pkgutil

    import hashlearn.data.datasets as package

    modules = {m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")}
    assert modules == FAMILIES
    owner = {name: DATASETS.get(name).__module__ for name in load_all()}
    assert {m.rsplit(".", 1)[-1] for m in owner.values()} == FAMILIES
    assert all(m.startswith("hashlearn.data.datasets.") for m in owner.values())
    assert owner["fashion-mnist"].endswith(".mnist") and owner["brain-mri"].endswith(".folder")
    assert owner["nus-wide"].endswith(".lists") and owner["cifar10-mosaic-synthetic"].endswith(".mosaic")


TOY_MODULE = '''
import numpy as np

from hashlearn.data.datasets import register_dataset


@register_dataset("toy-stripes", kind="single-label", classes=2, protocol="per-class")
def build_toy_stripes(load, *, shade: int = 200):
    """Toy stripes: two classes of 4x4 images (a test plug-in)."""
    images = np.zeros((4, 4, 4, 3), dtype=np.uint8)
    images[2:] = shade
    return load.from_arrays(images, labels=np.array([0, 0, 1, 1]), class_names=["dark", "light"],
                            ids=[f"toy:{i}" for i in range(4)], source="generated")
'''


@pytest.fixture
def toy_plugin(tmp_path: Path, monkeypatch):
    """A dataset module dropped into the datasets package's path (and nothing else changed)."""
    import hashlearn.data.datasets as package

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_stripes.py").write_text(TOY_MODULE)
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    monkeypatch.setattr(DATASETS, "_filled", set())
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))  # restored afterwards
    monkeypatch.setattr(DATASETS, "_info", dict(DATASETS._info))
    yield
    sys.modules.pop("hashlearn.data.datasets.toy_stripes", None)


def test_adding_a_dataset_is_adding_one_module(toy_plugin, tmp_path: Path, capsys):
    ds = load_dataset("toy-stripes", size=2)
    assert ds.name == "toy-stripes" and ds.images.shape == (4, 2, 2, 3)
    assert ds.images[3, 0, 0].tolist() == [200, 200, 200] and ds.info["source"] == "generated"
    assert load_dataset("toy-stripes", shade=9).images[3, 0, 0, 0] == 9
    with pytest.raises(
        InputError, match=r"dataset 'toy-stripes' does not take the option mode \(its options are shade\)"
    ):
        load_dataset("toy-stripes", mode="L")
    assert prepare("toy-stripes", cache_dir=tmp_path / "cache").image_shape == (4, 4, 3)
    assert main(["data", "list", "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "toy-stripes" in out and "Toy stripes: two classes" in out and "[per-class]" in out


def _data_imports() -> dict[str, set[str]]:
    """Every import between modules of hashlearn.data (top level or inside functions), by module."""
    root = Path(data_package.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(("hashlearn.data", *parts))
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            edges |= {t for t in targets if t in modules and t != "hashlearn.data"}  # the facade imports everything
        graph[name] = edges - {name}
    return graph


def test_the_data_modules_import_each_other_without_a_cycle():
    graph = _data_imports()
    assert "hashlearn.data.cache" in graph["hashlearn.data.datasets.mosaic"] or (
        "hashlearn.data.store" in graph["hashlearn.data.datasets.mosaic"]
    )
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    # the store (what the cache holds) knows nothing of the builders; the builders nothing of prepare
    assert not any(m.startswith("hashlearn.data.datasets") for m in graph["hashlearn.data.store"])
    assert all("hashlearn.data.cache" not in graph[m] for m in graph if m.startswith("hashlearn.data.datasets"))


def test_builders_build_through_the_shared_plumbing():
    """Only the plumbing (datasets/_base.py) and the mosaic maker construct an ImageDataset or run the
    decoding loop: the families parse their layouts and hand paths or pixels to Load."""
    folder = Path(data_package.__file__).parent / "datasets"
    for path in folder.glob("*.py"):
        text = path.read_text()
        if path.name in ("_base.py", "mosaic.py", "__init__.py"):
            continue
        for needle in ("ImageDataset(", "decode_files(", "resize_array(", "alloc("):
            assert needle not in text, f"{path.name} calls {needle} itself"


def test_load_reports_skipped_files_and_keeps_rows_aligned(tmp_path: Path):
    from PIL import Image

    from hashlearn.data.datasets import Load
    from hashlearn.data.sources import FileTree

    for name, shade in (("a.png", 10), ("b.png", 20)):
        Image.new("L", (3, 3), shade).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG no")
    tree = FileTree(tmp_path)
    load = Load(name="toy", skip_bad=True)
    ds = load.from_files(
        tree,
        ["a.png", "broken.png", "b.png"],
        labels=[0, 1, 1],
        class_names=["x", "y"],
        official_split=["train", "train", "test"],
        mode="auto",
    )
    assert ds.ids.tolist() == ["a.png", "b.png"] and ds.labels.tolist() == [0, 1]
    assert ds.official_split.tolist() == ["train", "test"] and ds.images.shape == (2, 3, 3, 1)
    assert ds.info["skipped"] == [str(tmp_path / "broken.png")] and ds.info["detected_mode"] == "L"
    with pytest.raises(InputError, match="mode must be one of auto, RGB, L, not 'CMYK'"):
        load.from_files(tree, ["a.png"], labels=[0], class_names=["x"], mode="CMYK")
    assert np.array_equal(
        Load(name="t", size=2)
        .from_arrays(np.full((1, 4, 4, 1), 7, np.uint8), labels=np.array([0]), class_names=["x"], ids=["0"], source="s")
        .images,
        np.full((1, 2, 2, 1), 7),
    )


def test_every_registered_default_protocol_exists():
    from hashlearn.data import PROTOCOLS, default_protocol

    fixed = {name: DATASETS.info(name).get("protocol") for name in DATASETS}
    assert all(p in PROTOCOLS for p in fixed.values() if p)
    assert fixed["cifar10"] == "cifar10-1" and fixed["nus-wide"] == "nus-wide" and fixed["coco"] == "per-label"
    assert default_protocol("digits") == "per-class" and default_protocol("cifar10-mosaic-synthetic") == "per-label"
    generic = {name for name in DATASETS if DATASETS.info(name).get("generic")}
    assert generic == {"folder", "csv", "image-list"} and not any(fixed[g] for g in generic)  # decided by content
