"""Bad options, damaged run folders and unwritable places: one line naming the input, exit 2,
no traceback, and nothing already on disk changed."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from hashlearn.cli import main

PROTO = ["--dataset", "digits", "--protocol", "per-class",
         "--set", "protocol_args={query_per_class: 3, train_per_class: 12}", "--quiet", "--seed", "1"]
DEEP = ["--method", "dpsh", "--backbone", "smallcnn", "--set", "backbone_args={width: 4}", "--epochs", "1",
        "--batch-size", "16", "--bits", "8", *PROTO]
SHALLOW = ["--method", "itq", "--bits", "8", *PROTO]


def cli(argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of ``hashlearn ARGV`` (argparse usage errors included)."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err.strip()


def one_line(err: str) -> str:
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    for name, args in (("deep", DEEP), ("shallow", SHALLOW)):
        assert main(["train", *args, "--out", str(root / name)]) == 0
    return root


@pytest.mark.parametrize("args, needle", [
    (["--bits", "abc"], "--bits"),
    (["--bits", "1"], "--bits"),
    (["--bits", "1.5"], "--bits"),
    (["--bits", "2048"], "--bits"),
    (["--bits", "8,8"], "--bits"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--epochs", "-1"], "--epochs"),
    (["--limit", "0"], "--limit"),
    (["--batch-size", "1"], "--batch-size"),
    (["--seed", "-1"], "--seed"),
    (["--set", "bits=1.5"], "bits"),
    (["--set", "bits=[8, x]"], "bits"),
    (["--set", "optim.lr=.nan"], "optim.lr"),
    (["--set", "optim.lr=abc"], "optim.lr"),
    (["--set", "train.epochs=-1"], "train.epochs"),
    (["--set", "train.epochs=2.5"], "train.epochs"),
    (["--set", "data.limit=0"], "data.limit"),
    (["--set", "train=5"], "train"),
    (["--set", "optim.name=adamw"], "optim.name"),
    (["--set", "eval.ties=random"], "eval.ties"),
    (["--set", "eval.topk=[0]"], "eval.topk"),
    (["--set", "frozen=maybe"], "frozen"),
    (["--set", "method_args=5"], "method_args"),
    (["--set", "method_args.bits=16"], "method_args.bits"),
    (["--set", "method_args.nope=1"], "method_args"),
    (["--set", "method_args.eta=abc"], "method_args"),
    (["--set", "backbone_args.nope=1"], "backbone_args"),
    (["--set", "protocol_args.nope=1"], "nope"),
    (["--set", "method_args.taps=5"], "method_args"),
])
def test_bad_training_options_are_one_line(args, needle, tmp_path, capsys):
    rc, err = cli(["train", *DEEP, *args, "--out", str(tmp_path / "out")], capsys)
    assert rc == 2
    assert needle in one_line(err)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.pt"))


@pytest.mark.parametrize("args", [["--bits", "1"], ["--epochs", "-1"], ["--limit", "0"], ["--threads", "abc"],
                                  ["--database", "-5"], ["--methods", ","]])
def test_bad_demo_options_are_one_line(args, tmp_path, capsys):
    rc, err = cli(["demo", "--quick", "--dataset", "digits", *args, "--out", str(tmp_path / "demo")], capsys)
    assert rc == 2 and one_line(err)
    assert not (tmp_path / "demo").exists()


def test_train_refuses_a_folder_that_is_not_a_training_output(tmp_path, capsys, runs):
    mine = tmp_path / "documents"
    mine.mkdir()
    (mine / "summary.md").write_text("my own notes\n")
    (mine / "thesis.tex").write_text("\\begin{document}")
    before = snapshot(mine)
    rc, err = cli(["train", *SHALLOW, "--out", str(mine)], capsys)
    assert rc == 2 and "not a hashlearn training output" in one_line(err)
    assert snapshot(mine) == before
    (mine / "thesis.tex").unlink()  # only a summary.md of one's own: still not a training output
    rc, err = cli(["train", *SHALLOW, "--out", str(mine)], capsys)
    assert rc == 2 and "not a hashlearn training output" in one_line(err)
    assert snapshot(mine) == {"summary.md": b"my own notes\n"}
    # a folder named like a run folder that holds other files
    (mine / "summary.md").unlink()
    (mine / "8bits").mkdir()
    (mine / "8bits" / "photo.jpg").write_bytes(b"jpeg")
    rc, err = cli(["train", *SHALLOW, "--out", str(mine)], capsys)
    assert rc == 2 and "not a hashlearn run folder" in one_line(err)
    assert snapshot(mine) == {"8bits/photo.jpg": b"jpeg"}
    # the run folder of one code length instead of the training output
    rc, err = cli(["train", *SHALLOW, "--out", str(runs / "shallow" / "8bits")], capsys)
    assert rc == 2 and "pass the folder above it" in one_line(err)


def test_demo_refuses_a_folder_that_is_not_a_demo_output(tmp_path, capsys):
    mine = tmp_path / "documents"
    mine.mkdir()
    (mine / "summary.md").write_text("my own notes\n")
    (mine / "notes.txt").write_text("x")
    rc, err = cli(["demo", "--quick", "--dataset", "digits", "--out", str(mine)], capsys)
    assert rc == 2 and "not a hashlearn demo output" in one_line(err)
    assert (mine / "summary.md").read_text() == "my own notes\n"


def test_writes_to_a_read_only_place_change_nothing(runs, tmp_path, capsys, make_readonly):
    out = tmp_path / "out"
    shutil.copytree(runs / "deep", out)
    (tmp_path / "codes.npz").write_bytes(b"old codes")
    before = snapshot(tmp_path)
    make_readonly(tmp_path)
    rc, err = cli(["encode", "--run", str(out / "8bits"), "--dataset", "digits", "--out",
                   str(tmp_path / "codes.npz")], capsys)
    assert rc == 2 and "--out" in one_line(err)
    rc, err = cli(["train", *DEEP, "--epochs", "2", "--out", str(out)], capsys)  # resume, read-only
    assert rc == 2 and str(out) in one_line(err)
    rc, err = cli(["train", *DEEP, "--out", str(tmp_path / "new")], capsys)
    assert rc == 2 and "new" in one_line(err)
    assert snapshot(tmp_path) == before


def test_encode_images_skip_bad(runs, tmp_path, capsys):
    from PIL import Image

    from hashlearn.codes import load_codes
    from hashlearn.data import load_dataset

    ds = load_dataset("digits")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(ds.images[i, :, :, 0]).save(folder / f"{i}.png")
    (folder / "1b.png").write_bytes(b"not a png")
    (folder / "2b.jpg").write_bytes((folder / "2.png").read_bytes()[:30])  # truncated
    run = str(runs / "deep" / "8bits")
    rc, err = cli(["encode", "--run", run, "--images", str(folder), "--out", str(tmp_path / "a.npz")], capsys)
    assert rc == 2 and "1b.png" in one_line(err) and not (tmp_path / "a.npz").exists()
    rc, err = cli(["encode", "--run", run, "--images", str(folder), "--out", str(tmp_path / "a.npz"), "--skip-bad"],
                  capsys)
    assert rc == 0
    assert "skipped 2 unreadable image(s) of 5" in err and "1b.png" in err and "2b.jpg" in err
    codes = load_codes(tmp_path / "a.npz")
    assert list(codes.ids) == ["0.png", "1.png", "2.png"] and codes.packed.shape == (3, 1)
    for bad in ("1b.png", "2b.jpg"):
        (folder / bad).unlink()
    (folder / "x.png").write_bytes(b"")
    for name in ("0.png", "1.png", "2.png"):
        (folder / name).unlink()
    rc, err = cli(["encode", "--run", run, "--images", str(folder), "--out", str(tmp_path / "b.npz"), "--skip-bad"],
                  capsys)
    assert rc == 2 and "none of the 1 image files" in err.splitlines()[-1]


def _damage(run: Path, how: str) -> None:
    if how == "no best.pt":
        (run / "best.pt").unlink()
    elif how == "no config.yaml":
        (run / "config.yaml").unlink()
    elif how == "no run.json":
        (run / "run.json").unlink()
    elif how == "truncated best.pt":
        (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:100])
    elif how == "best.pt of another model":
        torch.save({"model": {"head.fc.weight": torch.zeros(3, 3)}}, run / "best.pt")
    elif how == "config.yaml is a list":
        (run / "config.yaml").write_text("- 1\n- 2\n")
    elif how == "config.yaml bits 4":
        (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("bits: 8", "bits: 4"))
    elif how == "config.yaml unknown method args":
        text = (run / "config.yaml").read_text().replace("method_args: {}", "method_args: {nope: 1}")
        (run / "config.yaml").write_text(text)
    elif how == "run.json wrong types":
        info = json.loads((run / "run.json").read_text())
        info.update(image_size="big", taps="pool")
        (run / "run.json").write_text(json.dumps(info))
    elif how == "run.json a list":
        (run / "run.json").write_text("[1, 2]")
    elif how == "run.json bad tap":
        info = json.loads((run / "run.json").read_text())
        info["taps"] = ["nope"]
        (run / "run.json").write_text(json.dumps(info))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how, needle", [
    ("no best.pt", "best.pt"), ("no config.yaml", "config"), ("no run.json", "run.json"),
    ("truncated best.pt", "best.pt"), ("best.pt of another model", "best.pt"),
    ("config.yaml is a list", "config.yaml"), ("config.yaml bits 4", "bits"),
    ("config.yaml unknown method args", "method_args"), ("run.json wrong types", "run.json"),
    ("run.json a list", "run.json"), ("run.json bad tap", "nope"),
])
def test_damaged_run_folders_are_one_line(runs, tmp_path, capsys, how, needle):
    run = tmp_path / "8bits"
    shutil.copytree(runs / "deep" / "8bits", run)
    _damage(run, how)
    rc, err = cli(["encode", "--run", str(run), "--dataset", "digits", "--out", str(tmp_path / "c.npz")], capsys)
    assert rc == 2 and needle in one_line(err)


@pytest.mark.parametrize("how, needle", [
    ("model.npz truncated", "model.npz"), ("model.npz of other bits", "model.npz"), ("no model.npz", "model.npz"),
])
def test_damaged_shallow_runs_are_one_line(runs, tmp_path, capsys, how, needle):
    from hashlearn.methods.shallow import ITQ, save_hasher

    run = tmp_path / "8bits"
    shutil.copytree(runs / "shallow" / "8bits", run)
    if how == "model.npz truncated":
        (run / "model.npz").write_bytes((run / "model.npz").read_bytes()[:200])
    elif how == "model.npz of other bits":
        import numpy as np

        save_hasher(ITQ(bits=16).fit(np.random.default_rng(0).normal(size=(40, 64))), run / "model.npz")
    else:
        (run / "model.npz").unlink()
    rc, err = cli(["encode", "--run", str(run), "--dataset", "digits", "--out", str(tmp_path / "c.npz")], capsys)
    assert rc == 2 and needle in one_line(err)


def test_resume_with_damaged_or_foreign_checkpoints(runs, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(runs / "deep", out)
    ckpt = out / "8bits" / "checkpoint.pt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])  # a truncated checkpoint
    rc, err = cli(["train", *DEEP, "--epochs", "2", "--out", str(out)], capsys)
    assert rc == 2 and "checkpoint.pt" in one_line(err) and "--no-resume" in err
    ckpt.write_bytes(good)
    rc, err = cli(["train", *DEEP, "--epochs", "2", "--lr", "0.5", "--out", str(out)], capsys)
    assert rc == 2 and "optim.lr" in one_line(err) and "--no-resume" in err
    # a half-written last log line (a kill during the write) does not stop the resume
    with open(out / "8bits" / "log.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')
    rc, err = cli(["train", *DEEP, "--epochs", "2", "--out", str(out)], capsys)
    assert rc == 0, err
    log = [json.loads(x) for x in (out / "8bits" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    # --no-resume with other settings starts over in the same (hashlearn) folder
    rc, err = cli(["train", *DEEP, "--lr", "0.5", "--no-resume", "--out", str(out)], capsys)
    assert rc == 0, err
    assert torch.load(out / "8bits" / "checkpoint.pt", weights_only=True)["config"]["optim"]["lr"] == 0.5
