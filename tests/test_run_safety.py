"""Opening a run folder never runs code: a payload planted in any of its files (a pickle whose
``__reduce__`` creates a marker file, the same inside ``torch.save``, YAML python tags, junk) makes
``encode``, ``search --image --run`` and a resumed ``train`` end with one line (exit 2) or ignore
the file, and never create the marker."""

import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hashlearn.cli import main

PROTO = ["--dataset", "digits", "--protocol", "per-class",
         "--set", "protocol_args={query_per_class: 3, train_per_class: 12}", "--bits", "8", "--quiet", "--seed", "1"]
DEEP = ["--method", "dpsh", "--backbone", "smallcnn", "--set", "backbone_args={width: 4}", "--epochs", "1",
        "--batch-size", "16", *PROTO]
SHALLOW = ["--method", "itq", *PROTO]


class Payload:
    """Unpickling this creates ``marker`` (builtins.open(marker, "w")): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    for name, args in (("deep", DEEP), ("shallow", SHALLOW)):
        assert main(["train", *args, "--out", str(root / name)]) == 0
    from PIL import Image

    from hashlearn.data import load_dataset

    Image.fromarray(load_dataset("digits").images[0, :, :, 0]).save(root / "query.png")
    return root


def _torch_payload(path: Path, marker: Path) -> None:
    torch.save({"epoch": 1, "model": Payload(marker)}, path)


def _npz_object_payload(path: Path, marker: Path) -> None:
    arr = np.empty(1, dtype=object)
    arr[0] = Payload(marker)
    with zipfile.ZipFile(path, "w") as z, z.open("__meta__.npy", "w") as f:
        np.lib.format.write_array(f, arr, allow_pickle=True)


PLANTS = {
    "pickle": lambda p, m: p.write_bytes(pickle.dumps(Payload(m))),
    "torch": _torch_payload,
    "npz-object": _npz_object_payload,
    "yaml-python-tag": lambda p, m: p.write_text(f"!!python/object/apply:builtins.open ['{m}', 'w']\n"),
    "junk": lambda p, m: p.write_bytes(b"\x00\xffnot this file \x80" * 20),
}

# (kind, file, plant, rc of encode, rc of search --image, rc of the resumed train); 0 where the command
# does not read that file (train rewrites codes, metrics and a shallow model; encoding reads no checkpoint)
CASES = [
    ("deep", "best.pt", "pickle", 2, 2, 2),
    ("deep", "best.pt", "torch", 2, 2, 2),
    ("deep", "checkpoint.pt", "pickle", 0, 0, 2),
    ("deep", "checkpoint.pt", "torch", 0, 0, 2),
    ("deep", "config.yaml", "yaml-python-tag", 2, 2, 2),
    ("deep", "config.yaml", "junk", 2, 2, 2),
    ("deep", "run.json", "pickle", 2, 2, 2),
    ("deep", "run.json", "junk", 2, 2, 2),
    ("deep", "metrics.json", "pickle", 0, 0, 0),
    ("shallow", "model.npz", "pickle", 2, 2, 0),
    ("shallow", "model.npz", "npz-object", 2, 2, 0),
    ("shallow", "model.npz", "torch", 2, 2, 0),
    ("shallow", "model.pkl", "pickle", 2, 2, 0),  # an older run: model.pkl instead of model.npz
    ("shallow", "config.yaml", "yaml-python-tag", 2, 2, 2),
    ("shallow", "run.json", "junk", 2, 2, 2),
    ("shallow", "metrics.json", "junk", 0, 0, 0),
]


@pytest.mark.parametrize("kind, name, plant, rc_encode, rc_search, rc_train", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_a_planted_payload_never_runs(runs, tmp_path, capsys, kind, name, plant, rc_encode, rc_search, rc_train):
    out = tmp_path / "out"
    shutil.copytree(runs / kind, out)
    run = out / "8bits"
    marker = tmp_path / "marker"
    if name == "model.pkl":
        (run / "model.npz").unlink()
    PLANTS[plant](run / name, marker)
    db = tmp_path / "db.npz"
    shutil.copy(run / "database_codes.npz", db)
    capsys.readouterr()

    commands = [
        (["encode", "--run", str(run), "--dataset", "digits", "--out", str(tmp_path / "codes.npz")], rc_encode),
        (["search", "--run", str(run), "--codes", str(db), "--image", str(runs / "query.png"), "-k", "3"], rc_search),
        (["train", *(DEEP if kind == "deep" else SHALLOW), "--out", str(out)], rc_train),
    ]
    for argv, expected in commands:
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert not marker.exists(), f"{argv[0]} ran the payload planted in {name}"
        assert rc == expected, (argv[0], err)
        if expected == 2:
            assert len(err.splitlines()) == 1 and "Traceback" not in err, err
            assert name in err or "run.json" in err, err
        if name == "model.pkl" and argv[0] != "train":
            assert "pickle from an older hashlearn" in err and "never unpickles" in err


def test_run_files_are_arrays_and_weights_only_checkpoints(runs):
    """The shallow model is an .npz of numeric arrays plus a JSON string; checkpoints load with
    weights_only=True (no pickled objects anywhere)."""
    with np.load(runs / "shallow/8bits/model.npz", allow_pickle=False) as z:
        assert {z[k].dtype.kind for k in z.files} <= {"f", "i", "U"}
    assert not (runs / "shallow/8bits/model.pkl").exists()
    for name in ("checkpoint.pt", "best.pt"):
        ckpt = torch.load(runs / "deep/8bits" / name, weights_only=True)
        assert isinstance(ckpt["model"], dict)
    ckpt = torch.load(runs / "deep/8bits/checkpoint.pt", weights_only=True)
    assert ckpt["config"]["method"] == "dpsh" and ckpt["epoch"] == 1


def test_load_run_is_the_one_loader(runs):
    import hashlearn
    from hashlearn.codes import pack_bits
    from hashlearn.data import load_dataset
    from hashlearn.methods.shallow import ITQ
    from hashlearn.train import Hasher, load_run
    from hashlearn.train.trainer import HashModel

    assert hashlearn.load_run is load_run  # exported at the top level
    ds = load_dataset("digits")
    for kind, model_type in (("deep", HashModel), ("shallow", ITQ)):
        enc = hashlearn.load_run(runs / kind / "8bits")
        assert isinstance(enc, Hasher) and isinstance(enc.model, model_type) and enc.kind == kind
        assert enc.bits == 8 and enc.channels == 1 and enc.image_size == 8
        assert enc.method == ("dpsh" if kind == "deep" else "itq") and enc.config.method == enc.method
        assert enc.info["kind"] == kind and len(enc.fingerprint) == 64
        packed = enc.encode(ds.images[:5])
        assert packed.dtype == np.uint8 and packed.shape == (5, 1)
        signs = enc.signs(ds.images[:5])
        assert set(np.unique(signs)) <= {-1, 1} and np.array_equal(pack_bits(signs), packed)
