"""The demo's offline path, shortened: digits (bundled with scikit-learn), small subsets."""

import contextlib
import io
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from hashlearn.cli import build_parser, main


def chance_map(query_labels, database_labels) -> float:
    """Expected mAP@all of a random ranking: for a query with R relevant items among N,
    E[AP] = (1/N) sum_n (1 + (R-1)(n-1)/(N-1)) / n (an item at rank n is relevant with
    probability R/N, and then R-1 of the other N-1 items are spread over the n-1 ranks above it)."""
    n_db = len(database_labels)
    n = np.arange(1, n_db + 1)
    aps = []
    for label in query_labels:
        r = int((database_labels == label).sum())
        aps.append(0.0 if r == 0 else float(np.mean((1 + (r - 1) * (n - 1) / max(n_db - 1, 1)) / n)))
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One quick demo on digits, run from its own folder with ``--out demo`` (a relative path, as a user
    types it): ``{"out", "stdout", "stderr"}``; the module's tests run in that folder."""
    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HASHLEARN_DATA", raising=False)
        mp.chdir(root)
        stdout, stderr = io.StringIO(), io.StringIO()
        # --quick: 300 images per split; 15 epochs (a few seconds): one epoch learns nothing on digits
        argv = ["demo", "--dataset", "digits", "--quick", "--epochs", "15", "--threads", "1", "--out", "demo"]
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            assert main(argv) == 0
        yield {"out": root / "demo", "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def serve_command(printed: str) -> list[str]:
    """The ``hashlearn serve`` command of the demo's last line, as words."""
    last = printed.strip().splitlines()[-1]
    assert last.startswith("browse the results: hashlearn serve ") and last.endswith(
        "  (then open http://127.0.0.1:8000/)"), last
    return shlex.split(last.removeprefix("browse the results: ").split("  (then open")[0])


def test_quick_demo_on_digits_learns_codes_well_above_chance(demo):
    from hashlearn.codes import load_codes
    from hashlearn.eval import evaluate
    from hashlearn.train.run import load_data

    out = demo["out"]
    assert "| dmsh | digits | 32 |" in demo["stdout"] and "| dpsh | digits | 32 |" in demo["stdout"]
    assert "dataset digits" in demo["stderr"] and "backbone smallcnn" in demo["stderr"]  # says what it uses
    for f in ("pr_curves.png", "queries.png", "summary.md", "demo.json"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "queries.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "demo.json").read_text())
    assert summary["dataset"] == "digits" and set(summary["results"]) == {"dmsh", "dpsh"}

    ds = load_data("digits")
    where = {str(i): n for n, i in enumerate(ds.ids)}
    for method in ("dmsh", "dpsh"):
        run = out / method / "32bits"
        assert (run / "metrics.json").exists()
        q, d = load_codes(run / "query_codes.npz"), load_codes(run / "database_codes.npz")
        ql = ds.labels[[where[str(i)] for i in q.ids]]
        dl = ds.labels[[where[str(i)] for i in d.ids]]
        chance = chance_map(ql, dl)
        # the formula agrees with the evaluator's exact expectation over all orders of one big tie
        ties = evaluate(np.zeros((len(ql), 32), np.int8), np.zeros((len(dl), 32), np.int8), ql, dl, ties="expected")
        assert abs(ties["mAP@all"] - chance) < 1e-9
        reported = summary["results"][method]["mAP@all"]
        # what the demo reports is what its saved codes give ...
        assert abs(evaluate(q.packed, d.packed, ql, dl, bits=q.bits)["mAP@all"] - reported) < 1e-9
        # ... and it learned something: well above a random ranking (about 0.11 here; measured 0.47 / 0.71)
        assert reported > 2.5 * chance, (method, reported, chance)


def test_the_printed_serve_command_opens_a_labelled_collection_of_the_first_runs_database(demo):
    from hashlearn.codes import load_codes
    from hashlearn.data import read_image
    from hashlearn.index import Collection
    from hashlearn.serve.service import ServeSettings, Service
    from hashlearn.train.encode import encode_files
    from hashlearn.train.run import load_data

    words = serve_command(demo["stdout"])
    assert words[:2] == ["hashlearn", "serve"]
    args = build_parser().parse_args(words[1:])
    # paths as the user gave --out (relative), naming what the demo wrote: the first method's run
    assert (args.run, args.collection) == ("demo/dmsh/32bits", "demo/collection")
    assert Path(args.run, "best.pt").is_file() and Path(args.collection, "collection.sqlite").is_file()

    ds = load_data("digits")
    database = load_codes(Path(args.run) / "database_codes.npz")
    with Collection.open(args.collection, readonly=True) as coll:
        codes, ids = coll.read()
        meta = coll.metadata(ids)
        files = [Path(coll.resolve_path(meta[int(i)]["path"])) for i in ids]
    # --quick: a sample of 200 of the run's 300 database images, ids 0.. in file order
    assert len(database.ids) == 300 and ids.tolist() == list(range(200))
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(200)]
    assert sorted(p.name for p in (demo["out"] / "collection-images").iterdir()) == [f.name for f in files]
    assert json.loads((demo["out"] / "demo.json").read_text())["collection"]["items"] == 200
    # each item is a database image of the run, labelled with its class name
    where = {str(i): n for n, i in enumerate(ds.ids)}
    pixels = ds.images[[where[str(i)] for i in database.ids]]
    classes = ds.labels[[where[str(i)] for i in database.ids]]
    for i, f in zip(ids, files, strict=True):
        same = (pixels == read_image(f, mode="L").reshape(pixels.shape[1:])).all(axis=(1, 2, 3))
        assert same.any() and meta[int(i)]["label"] in {ds.class_names[c] for c in classes[same]}, f
    # encoded by that run: its codes are what `hashlearn encode --images` makes of the files
    packed, _, _ = encode_files(args.run, files)
    assert (packed == codes).all()

    service = Service(ServeSettings(run=args.run, collection=args.collection, token=""))
    try:
        for i in (0, 117):
            query = service.decode(files[i].read_bytes(), files[i].name)
            found = service.search(service.encode(query).result(), 5, None).result()["results"]
            assert found[0]["distance"] == 0 and found[0]["path"] == files[i].name
            # at distance 0 the lowest id comes first: image i, unless images of lower ids share its code
            assert found[0]["id"] == min(j for j in range(200) if (codes[j] == codes[i]).all())
        assert service.thumbnail(117)[:4] == b"\x89PNG"
    finally:
        service.close()


def snapshot(folder: Path) -> dict:
    """Every file's bytes, but SQLite's -wal/-shm files, which a reader may create (the database is the same)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def test_a_rerun_replaces_the_demos_collection_and_nothing_else(demo, tmp_path):
    from hashlearn.index import Collection

    out = tmp_path / "demo"
    shutil.copytree(demo["out"], out)
    (out / "notes.txt").write_text("mine")
    rerun = ["demo", "--dataset", "digits", "--quick", "--methods", "dpsh", "--limit", "60", "--collection", "30",
             "--threads", "1", "--out", str(out)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert main(rerun) == 0
    assert serve_command(stdout.getvalue())[2:] == ["--run", str(out / "dpsh" / "32bits"),
                                                    "--collection", str(out / "collection")]
    with Collection.open(out / "collection", readonly=True) as coll:
        assert len(coll) == 30
    assert sorted(p.name for p in (out / "collection-images").iterdir()) == [f"{i:05d}.png" for i in range(30)]
    assert (out / "notes.txt").read_text() == "mine" and (out / "dmsh" / "32bits" / "best.pt").is_file()


def test_a_rerun_refuses_a_collection_or_images_the_demo_did_not_write(demo, tmp_path, capsys):
    from hashlearn.index import Collection

    argv = ["demo", "--dataset", "digits", "--quick", "--threads", "1", "--out"]
    out = tmp_path / "added-image"
    shutil.copytree(demo["out"], out)
    (out / "collection-images" / "holiday.jpg").write_bytes(b"jpeg")
    before = snapshot(out)
    assert main([*argv, str(out)]) == 2
    assert "holiday.jpg" in capsys.readouterr().err and snapshot(out) == before

    out = tmp_path / "added-item"  # the collection changed since the demo built it (an item added)
    shutil.copytree(demo["out"], out)
    with Collection.open(out / "collection") as coll:
        coll.add(np.zeros((1, 4), np.uint8), ids=[1000], paths=["/home/me/photo.png"])
    before = snapshot(out)
    assert main([*argv, str(out)]) == 2
    assert "not the collection the demo built" in capsys.readouterr().err and snapshot(out) == before
    with Collection.open(out / "collection", readonly=True) as coll:
        assert len(coll) == 201
