"""Every command with every kind of bad input: exit 2, one line on stderr, no traceback, and every
file that was there before is byte-identical afterwards.

The table below is the one place these cases live; each row is ``(case id, argv, needs, names)``.
Paths in argv are written relative to a scratch "world" folder (``{w}``) that holds valid inputs
(codes files, a collection, trained run folders) beside bad ones. A row marked ``ro`` makes
``{w}/ro`` read-only first (a read-only bind mount when running as root); the line must contain
``names`` (the option or file at fault). Planted pickles in run folders: tests/test_run_safety.py.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from hashlearn.cli import main
from hashlearn.codes import save_codes


def _png_header_bomb(path: Path, side: int = 30000) -> None:
    """A valid PNG header claiming ``side × side`` pixels with almost no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    # one compressed stream of zero rows: tiny on disk, side*side bytes when decoded
    raw = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * side
    body = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _cifar_batches(folder: Path, *, label: int | None = 0, drop_labels: bool = False) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    d = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [label, 1, 2, 3]}
    if drop_labels:
        del d[b"labels"]
    for name in ("data_batch_1", "test_batch"):
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    old_cache = os.environ.get("HASHLEARN_CACHE")
    os.environ["HASHLEARN_CACHE"] = str(w / "cache")
    rng = np.random.default_rng(0)
    # codes: 32-bit ±1 database and queries, as .npy and as hashlearn .npz; a 40-bit .npz
    db = rng.integers(0, 2, (60, 32)).astype(np.int8)
    np.save(w / "db.npy", db)
    np.save(w / "q.npy", db[:3])
    np.save(w / "q_empty.npy", np.zeros((0, 32), dtype=np.int8))
    np.save(w / "labels_db.npy", rng.integers(0, 3, 60))
    np.save(w / "labels_q.npy", rng.integers(0, 3, 3))
    save_codes(w / "db.npz", db, 32, ids=np.arange(60))
    save_codes(w / "q.npz", db[:3], 32, ids=np.arange(3))
    save_codes(w / "q40.npz", rng.integers(0, 2, (3, 40)).astype(np.int8), 40, ids=np.arange(3))
    np.save(w / "ids_dup.npy", np.array([0, 1, 1] + list(range(3, 60))))
    np.save(w / "ids_neg.npy", np.arange(-1, 59))
    np.save(w / "ids_huge.npy", np.arange(2**63, 2**63 + 60, dtype=np.uint64))
    (w / "labels_short.txt").write_text("a\nb\n")
    (w / "notes").mkdir()
    (w / "notes" / "notes.txt").write_text("keep me\n")
    (w / "ro").mkdir()
    (w / "ro" / "keep.txt").write_text("keep me too\n")
    (w / "not_an_array.npy").write_text("hello")
    # images: a flat folder (no class subfolders), a bomb, a good image
    from PIL import Image

    (w / "flat").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(w / "flat" / f"{i}.png")
    _png_header_bomb(w / "bomb.png")
    (w / "bombdir" / "a").mkdir(parents=True)
    _png_header_bomb(w / "bombdir" / "a" / "bomb.png")
    _cifar_batches(w / "cifar99", label=99)
    _cifar_batches(w / "cifar_nolabels", drop_labels=True)
    # a collection and two tiny trained runs (deep and shallow)
    assert main(["index", "build", "--codes", str(w / "db.npy"), "--out", str(w / "coll")]) == 0
    common = ["--dataset", "digits", "--protocol", "per-class",
              "--set", "protocol_args={query_per_class: 5, train_per_class: 20}", "--bits", "16", "--quiet"]
    assert main(["train", "--method", "dpsh", *common, "--epochs", "1", "--set", "backbone_args={width: 4}",
                 "--out", str(w / "run_deep")]) == 0
    assert main(["train", "--method", "itq", *common, "--out", str(w / "run_itq")]) == 0
    yield w
    if old_cache is None:
        os.environ.pop("HASHLEARN_CACHE", None)
    else:
        os.environ["HASHLEARN_CACHE"] = old_cache


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = "dir"
    return out


EVAL = ["evaluate", "--query-codes", "{w}/q.npy", "--db-codes", "{w}/db.npy",
        "--query-labels", "{w}/labels_q.npy", "--db-labels", "{w}/labels_db.npy"]
TRAIN = ["train", "--method", "dpsh", "--dataset", "digits", "--epochs", "1", "--quiet"]
DEEP, SHALLOW = "{w}/run_deep/16bits", "{w}/run_itq/16bits"

# (case id, argv, needs, names): needs "ro" makes {w}/ro read-only first; the one line must contain names.
CASES = [
    # evaluate
    ("evaluate-plot-unknown-extension", [*EVAL, "--plot", "{w}/out.xyz"], "", "out.xyz"),
    ("evaluate-plot-readonly", [*EVAL, "--plot", "{w}/ro/pr.png"], "ro", "pr.png"),
    ("evaluate-report-readonly", [*EVAL, "--report", "{w}/ro/report"], "ro", "report"),
    ("evaluate-32-vs-40-bits", ["evaluate", "--query-codes", "{w}/q40.npz", "--db-codes", "{w}/db.npz",
                                "--query-labels", "{w}/labels_q.npy", "--db-labels", "{w}/labels_db.npy"], "", "q40.npz"),
    ("evaluate-empty-queries", ["evaluate", "--query-codes", "{w}/q_empty.npy", "--db-codes", "{w}/db.npy",
                                "--query-labels", "{w}/labels_q.npy", "--db-labels", "{w}/labels_db.npy"], "", "q_empty.npy"),
    ("evaluate-not-an-array", ["evaluate", "--query-codes", "{w}/not_an_array.npy", "--db-codes", "{w}/db.npy",
                               "--query-labels", "{w}/labels_q.npy", "--db-labels", "{w}/labels_db.npy"], "", "not_an_array.npy"),
    ("evaluate-topk-abc", [*EVAL, "--topk", "abc"], "", "--topk"),
    ("evaluate-radius-negative", [*EVAL, "--radius", "-1"], "", "--radius"),
    # data
    ("prepare-flat-folder", ["data", "prepare", "folder", "--source", "{w}/flat", "--as", "flat"], "", "flat"),
    ("prepare-as-parent", ["data", "prepare", "digits", "--as", "../../x"], "", "--as"),
    ("prepare-as-absolute", ["data", "prepare", "digits", "--as", "/tmp/x"], "", "--as"),
    ("prepare-cifar-label-99", ["data", "prepare", "cifar10", "--source", "{w}/cifar99", "--as", "c99"], "", "99"),
    ("prepare-cifar-no-labels", ["data", "prepare", "cifar10", "--source", "{w}/cifar_nolabels", "--as", "cnl"], "", "labels"),
    ("prepare-cache-readonly", ["data", "prepare", "digits", "--cache", "{w}/ro"], "ro", "ro"),
    ("prepare-size-huge", ["data", "prepare", "digits", "--size", "100000", "--as", "huge"], "", "--size"),
    ("prepare-bomb", ["data", "prepare", "folder", "--source", "{w}/bombdir", "--as", "bomb"], "", "bomb.png"),
    ("split-out-readonly", ["data", "split", "digits", "--protocol", "per-class", "--out", "{w}/ro/split.json"], "ro", "split.json"),
    ("prepare-missing-source", ["data", "prepare", "folder", "--source", "{w}/nowhere", "--as", "x"], "", "nowhere"),
    # train
    ("train-bits-abc", [*TRAIN, "--bits", "abc", "--out", "{w}/t1"], "", "--bits"),
    ("train-bits-1", [*TRAIN, "--bits", "1", "--out", "{w}/t2"], "", "--bits"),
    ("train-bits-1.5", [*TRAIN, "--bits", "1.5", "--out", "{w}/t3"], "", "--bits"),
    ("train-lr-nan", [*TRAIN, "--bits", "16", "--lr", "nan", "--out", "{w}/t4"], "", "--lr"),
    ("train-lr-negative", [*TRAIN, "--bits", "16", "--lr", "-0.1", "--out", "{w}/t4b"], "", "--lr"),
    ("train-epochs-negative", [*TRAIN, "--bits", "16", "--epochs", "-1", "--out", "{w}/t5"], "", "--epochs"),
    ("train-limit-0", [*TRAIN, "--bits", "16", "--limit", "0", "--out", "{w}/t6"], "", "--limit"),
    ("train-out-readonly", [*TRAIN, "--bits", "16", "--out", "{w}/ro/run"], "ro", "ro"),
    ("train-out-user-folder", [*TRAIN, "--bits", "16", "--out", "{w}/notes"], "", "notes"),
    # encode
    ("encode-out-readonly", ["encode", "--run", DEEP, "--images", "{w}/flat", "--out", "{w}/ro/c.npz"], "ro", "c.npz"),
    ("encode-bomb", ["encode", "--run", DEEP, "--images", "{w}/bombdir", "--out", "{w}/bomb_codes.npz"], "", "bomb.png"),
    ("encode-not-a-run", ["encode", "--run", "{w}/notes", "--images", "{w}/flat", "--out", "{w}/x.npz"], "", "notes"),
    # index
    ("build-into-user-folder", ["index", "build", "--codes", "{w}/db.npy", "--out", "{w}/notes"], "", "notes"),
    ("build-label-mismatch", ["index", "build", "--codes", "{w}/db.npy", "--labels", "{w}/labels_short.txt",
                              "--out", "{w}/notes"], "", "notes"),
    ("build-label-mismatch-new", ["index", "build", "--codes", "{w}/db.npy", "--labels", "{w}/labels_short.txt",
                                  "--out", "{w}/newcoll"], "", "labels"),
    ("build-duplicate-ids", ["index", "build", "--codes", "{w}/db.npy", "--ids", "{w}/ids_dup.npy",
                             "--out", "{w}/newcoll"], "", "ids"),
    ("build-negative-ids", ["index", "build", "--codes", "{w}/db.npy", "--ids", "{w}/ids_neg.npy",
                            "--out", "{w}/newcoll"], "", "ids"),
    ("build-huge-ids", ["index", "build", "--codes", "{w}/db.npy", "--ids", "{w}/ids_huge.npy",
                        "--out", "{w}/newcoll"], "", "ids"),
    ("build-into-existing-collection", ["index", "build", "--codes", "{w}/db.npy", "--out", "{w}/coll"], "", "coll"),
    ("build-readonly", ["index", "build", "--codes", "{w}/db.npy", "--out", "{w}/ro/coll"], "ro", "ro"),
    ("add-negative-ids", ["index", "add", "{w}/coll", "--codes", "{w}/db.npy", "--ids", "{w}/ids_neg.npy"], "", "ids"),
    ("remove-huge-id", ["index", "remove", "{w}/coll", "--ids", "99999999999999999999999"], "", "99999999999999999999999"),
    ("remove-not-numbers", ["index", "remove", "{w}/coll", "--ids", "a,b"], "", "--ids"),
    ("info-not-a-collection", ["index", "info", "{w}/notes"], "", "notes"),
    # search
    ("search-codes-npy", ["search", "--codes", "{w}/db.npy", "--query-codes", "{w}/q.npy"], "", "db.npy"),
    ("search-k-huge", ["search", "--collection", "{w}/coll", "--query-codes", "{w}/q.npy", "-k", "100000000000"], "", "-k"),
    ("search-empty-queries", ["search", "--collection", "{w}/coll", "--query-codes", "{w}/q_empty.npy"], "", "q_empty.npy"),
    ("search-40-bit-queries", ["search", "--collection", "{w}/coll", "--query-codes", "{w}/q40.npz"], "", "40"),
    ("search-image-bomb", ["search", "--codes", "{w}/db.npz", "--image", "{w}/bomb.png", "--run", SHALLOW], "", "bomb.png"),
    ("search-image-missing", ["search", "--codes", "{w}/db.npz", "--image", "{w}/nope.png", "--run", SHALLOW], "", "nope.png"),
]


@pytest.mark.parametrize("argv,needs,names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, argv, needs, names, capsys, make_readonly):
    if needs == "ro":
        make_readonly(world / "ro")
    argv = [a.replace("{w}", str(world)) for a in argv]
    before = _snapshot(world)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"exit {rc}, stderr: {err!r}"
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert "Traceback" not in err
    assert names.lower() in lines[0].lower(), f"the line does not name {names!r}: {lines[0]!r}"
    after = _snapshot(world)
    assert {k: after.get(k) for k in before} == before, "files that were there before changed"
    # nothing new either, except SQLite's own sidecar files of a collection that was read
    assert [k for k in after if k not in before and not k.endswith(("-wal", "-shm"))] == []


def test_search_reads_the_npz_codes_that_train_and_encode_write(world, capsys):
    capsys.readouterr()
    assert main(["search", "--collection", str(world / "coll"), "--query-codes", str(world / "q.npz"),
                 "-k", "1", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert [r["results"][0]["distance"] for r in out] == [0, 0, 0]
