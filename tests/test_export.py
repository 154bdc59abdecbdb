"""``hashlearn export RUN --out model.hlm``: one file per trained run (safetensors weights, settings,
metrics, checksums) that ``load_run`` and every ``--run`` read back as the same hasher."""

import hashlib
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hashlearn import __version__
from hashlearn.cli import main
from hashlearn.errors import HashlearnError, InputError
from hashlearn.train import check_codes_match_run, load_run, train
from hashlearn.train.export import FORMAT_VERSION, export_run

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config, tiny_dataset, tiny_split  # noqa: E402

#: tiny runs: deep end to end, deep on a frozen (seeded random) backbone, ATH (attention inserted into the
#: backbone), shallow on pixels and on pooled backbone features
RUNS = {
    "deep": {"train.epochs": 1},
    "frozen": {"train.epochs": 1, "frozen": "true"},
    "ath": {"method": "ath", "train.epochs": 1},
    "itq": {"method": "itq"},
    "itq-features": {"method": "itq", "shallow.features": "backbone"},
}
MEMBERS = ["manifest.json", "config.yaml", "run.json", "metrics.json", "weights.safetensors"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{name: (run folder, exported .hlm)}``."""
    root = tmp_path_factory.mktemp("export")
    ds = tiny_dataset()
    split = tiny_split(ds)
    out = {}
    for name, overrides in RUNS.items():
        train(tiny_config(**overrides), dataset=ds, split=split, out=root / name)
        run = root / name / "8bits"
        model, card = export_run(run, root / f"{name}.hlm")
        assert card == root / f"{name}.md"
        out[name] = (run, model)
    return out


def images(n: int = 24) -> np.ndarray:
    """``n`` images of every class (another draw than the training set's)."""
    return tiny_dataset(seed=5).images[::5][:n]


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def rewrite(src: Path, dst: Path, change=None, manifest=None, keep_sums: bool = False, drop: str = "") -> Path:
    """A copy of the model file ``src`` at ``dst`` with member bytes changed (``change``: name → bytes), the
    member ``drop`` left out and manifest fields replaced; each member's sha256 in the manifest follows its
    bytes unless ``keep_sums``."""
    items = members(src)
    items.update(change or {})
    items.pop(drop, None)
    meta = json.loads(items["manifest.json"])
    meta.update(manifest or {})
    if not keep_sums:
        meta["members"] = {n: hashlib.sha256(b).hexdigest() for n, b in items.items() if n != "manifest.json"}
    items["manifest.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in items.items():
            zf.writestr(name, data)
    return dst


def one_line_error(path, match: str) -> str:
    with pytest.raises(HashlearnError, match=match) as info:
        load_run(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# -- the model file is the run ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(RUNS))
def test_the_model_file_encodes_as_its_run_and_keeps_its_fingerprint(runs, name):
    run, model = runs[name]
    original, exported = load_run(run), load_run(model)
    assert (exported.kind, exported.method, exported.bits) == (original.kind, original.method, 8)
    assert exported.run_dir == model and exported.image_size == original.image_size
    codes = exported.encode(images())
    assert codes.shape == (24, 1)
    np.testing.assert_array_equal(codes, original.encode(images()))
    if exported.kind == "deep":  # one epoch may give every image one code: the relaxed codes must be equal too
        import torch

        x = original.model.backbone.preprocess(images(), original.image_size)
        with torch.no_grad():
            relaxed = [h.model.eval()(x).codes for h in (original, exported)]
        assert torch.equal(*relaxed) and relaxed[0].std() > 0
    else:
        assert len(np.unique(codes, axis=0)) > 1
    assert exported.fingerprint == original.fingerprint
    check_codes_match_run(run / "database_codes.npz", model)  # the run's codes go with the model file


def test_the_file_is_a_zip_of_stored_members_and_nothing_in_it_is_a_pickle(runs, monkeypatch):
    import pickle

    import torch
    from safetensors.numpy import load

    for _, model in runs.values():
        with zipfile.ZipFile(model) as zf:
            assert zf.namelist() == MEMBERS
            assert {e.compress_type for e in zf.infolist()} == {zipfile.ZIP_STORED}
        for name, data in members(model).items():
            assert not data.startswith(b"\x80"), f"{name} starts like a pickle"
            assert b"PK\x03\x04" not in data[:4], f"{name} is a zip (torch.save / np.savez)"
        assert load(members(model)["weights.safetensors"])  # plain safetensors any reader opens

    def refuse(*args, **kwargs):
        raise AssertionError("a model file must load without torch.load or pickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    for name in RUNS:
        load_run(runs[name][1]).encode(images(2))


def test_the_manifest_describes_the_model_and_sums_every_member(runs):
    run, model = runs["frozen"]
    files = members(model)
    manifest = json.loads(files["manifest.json"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert manifest["format"] == "hashlearn-model" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["hashlearn_version"] == __version__
    assert (manifest["kind"], manifest["method"], manifest["bits"]) == ("deep", "dpsh", 8)
    assert manifest["backbone"]["name"] == "smallcnn" and len(manifest["backbone"]["weights_sha256"]) == 64
    assert manifest["backbone"]["weights_sha256"] != hashlib.sha256().hexdigest()  # frozen: the backbone is summed
    assert manifest["protocol"] == metrics["protocol_description"] and manifest["dataset"] == "tiny"
    assert manifest["metrics"]["mAP@all"] == metrics["mAP@all"]
    assert manifest["metrics"]["chance_mAP@all"] == metrics["chance_mAP@all"]
    assert manifest["run_fingerprint"] == metrics["fingerprint"]
    assert manifest["members"] == {n: hashlib.sha256(b).hexdigest() for n, b in files.items() if n != "manifest.json"}
    assert files["config.yaml"] == (run / "config.yaml").read_bytes()
    assert files["run.json"] == (run / "run.json").read_bytes()
    assert "run_dir" not in json.loads(files["metrics.json"])  # a path of the training machine stays there
    shallow = json.loads(members(runs["itq"][1])["manifest.json"])
    assert shallow["kind"] == "shallow" and shallow["backbone"] is None  # fitted on pixels


def test_the_model_card_is_written_beside_it_with_the_run_s_figures(runs):
    run, model = runs["deep"]
    card = model.with_suffix(".md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert card.startswith("# deep.hlm: dpsh, 8 bits")
    for text in (f"hashlearn export {run} --out {model}", f"hashlearn {__version__}", "smallcnn",
                 f"| mAP@all | {metrics['mAP@all']:.4f} |", "protocol `tiny`", "20 query",
                 hashlib.sha256(model.read_bytes()).hexdigest()):
        assert text in card, text


def test_the_same_run_gives_the_same_bytes(runs, tmp_path):
    run, model = runs["itq"]
    again, _ = export_run(run, tmp_path / "again.hlm")
    assert again.read_bytes() == model.read_bytes()


# -- damaged, foreign and incompatible files: one line ---------------------------------------------------

def test_a_flipped_byte_is_a_one_line_error_naming_the_file(runs, tmp_path):
    data = bytearray(runs["deep"][1].read_bytes())
    offset = data.index(b"head.fc.weight")  # inside weights.safetensors
    data[offset + 2] ^= 0x01
    damaged = tmp_path / "damaged.hlm"
    damaged.write_bytes(bytes(data))
    assert "damaged" in one_line_error(damaged, "damaged")


def test_a_member_changed_behind_the_manifest_is_refused_by_its_sha256(runs, tmp_path):
    model = runs["deep"][1]
    weights = bytearray(members(model)["weights.safetensors"])
    weights[-1] ^= 0x01  # a weight's last byte; the zip's CRC is made anew, the manifest's sha256 is not
    damaged = rewrite(model, tmp_path / "m.hlm", change={"weights.safetensors": bytes(weights)}, keep_sums=True)
    message = one_line_error(damaged, "sha256")
    assert "weights.safetensors" in message


@pytest.mark.parametrize("case, match", [
    ("truncated", "not a hashlearn model file"),
    ("text", "not a hashlearn model file"),
    ("extra member", "unexpected member 'model.pkl'"),
    ("no weights", "no weights.safetensors"),
    ("a listed member missing", "members differ from those its manifest lists"),
    ("another format", "not a hashlearn model file"),
])
def test_files_that_are_not_model_files_are_one_line(runs, tmp_path, case, match):
    model = runs["deep"][1]
    path = tmp_path / "x.hlm"
    if case == "truncated":
        path.write_bytes(model.read_bytes()[:-300])
    elif case == "text":
        path.write_text("not a model\n")
    elif case == "extra member":
        rewrite(model, path, change={"model.pkl": b"\x80\x04N."})
    elif case == "no weights":
        rewrite(model, path, drop="weights.safetensors")
    elif case == "a listed member missing":
        rewrite(model, path, drop="metrics.json", keep_sums=True)
    else:
        rewrite(model, path, manifest={"format": "something-else"})
    one_line_error(path, match)


@pytest.mark.parametrize("fields, match", [
    ({"format_version": FORMAT_VERSION + 1}, rf"format {FORMAT_VERSION + 1} .*upgrade hashlearn"),
    ({"format_version": 0}, "format 0 .*export the run again"),
    ({"hashlearn_version": "9.0.0"}, "written by hashlearn 9.0.0.*upgrade hashlearn"),
    ({"hashlearn_version": "0.0.3"}, "written by hashlearn 0.0.3.*export the run again"),
    ({"hashlearn_version": None}, "written by hashlearn None"),
])
def test_a_file_of_an_incompatible_version_is_refused_with_what_to_do(runs, tmp_path, fields, match):
    one_line_error(rewrite(runs["itq"][1], tmp_path / "v.hlm", manifest=fields), match)


def test_a_backbone_that_differs_from_the_recorded_one_is_refused(runs, tmp_path):
    model = runs["frozen"][1]
    backbone = dict(json.loads(members(model)["manifest.json"])["backbone"], weights_sha256="0" * 64)
    one_line_error(rewrite(model, tmp_path / "b.hlm", manifest={"backbone": backbone}), "backbone smallcnn")


def test_a_manifest_that_disagrees_with_the_config_is_refused(runs, tmp_path):
    one_line_error(rewrite(runs["deep"][1], tmp_path / "c.hlm", manifest={"bits": 16}), "at 16 bits")


# -- the commands ----------------------------------------------------------------------------------------

def folder_state(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_and_encode_from_the_command_line(runs, tmp_path, capsys):
    from PIL import Image

    from hashlearn.codes import load_codes
    from hashlearn.train.encode import codes_fingerprint

    run = runs["deep"][0]
    model = tmp_path / "cli.hlm"
    assert main(["export", str(run), "--out", str(model)]) == 0
    assert f"wrote {model}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.hlm", "cli.md"]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(images(4)):
        Image.fromarray(image[:, :, 0]).save(folder / f"{i}.png")
    for name, source in (("a.npz", run), ("b.npz", model)):
        assert main(["encode", "--run", str(source), "--images", str(folder), "--out", str(tmp_path / name)]) == 0
    a, b = load_codes(tmp_path / "a.npz"), load_codes(tmp_path / "b.npz")
    np.testing.assert_array_equal(a.packed, b.packed)
    assert codes_fingerprint(tmp_path / "b.npz") == codes_fingerprint(tmp_path / "a.npz")
    before = model.read_bytes()
    assert main(["export", str(run), "--out", str(model), "--force"]) == 0
    assert model.read_bytes() == before


def test_the_attention_command_takes_a_model_file(runs, tmp_path, capsys):
    from PIL import Image

    from hashlearn.train.attention_map import attention_of, check_attention_run

    run, model = runs["ath"]
    image = images(1)[0]
    np.testing.assert_array_equal(attention_of(load_run(model), image), attention_of(load_run(run), image))
    Image.fromarray(image[:, :, 0]).save(tmp_path / "x.png")
    assert main(["attention", "--run", str(model), "--image", str(tmp_path / "x.png"),
                 "--out", str(tmp_path / "map.png")]) == 0
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match=f"{runs['deep'][1]}: method dpsh has no attention map"):
        check_attention_run(runs["deep"][1])


def test_serve_reads_the_run_s_metrics_from_a_model_file(runs):
    from types import SimpleNamespace

    from hashlearn.serve.service import Service

    run, model = runs["deep"]
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("run_dir")
    assert Service._read_run_metrics(SimpleNamespace(hasher=load_run(model))) == metrics


@pytest.mark.parametrize("case, match", [
    ("missing run", "run folder not found"),
    ("not a run folder", "not a hashlearn run folder"),
    ("the folder above the run", r"pick one code length"),
    ("a file as run", "a file, not a run folder"),
    ("out exists", "exists; pass --force"),
    ("card exists", "exists; pass --force"),
    ("out folder missing", "does not exist"),
    ("out not .hlm", r"must end in \.hlm"),
    ("out is a folder", "is a folder"),
    ("weights from a file", "weights come from the file"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, capsys, case, match):
    run = runs["itq"][0]
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "notes" / "notes.txt").write_text("keep me\n")
    (work / "taken.hlm").write_bytes(b"user file")
    (work / "card.md").write_text("my notes")
    (work / "folder.hlm").mkdir()
    shutil.copytree(runs["deep"][0], work / "wrun")  # a deep run whose config names backbone weights in a file
    config = (work / "wrun" / "config.yaml").read_text().replace("weights: default", "weights: /elsewhere/w.pt")
    (work / "wrun" / "config.yaml").write_text(config)
    out = str(work / "new.hlm")
    args = {
        "missing run": [work / "nope", "--out", out],
        "not a run folder": [work / "notes", "--out", out],
        "the folder above the run": [run.parent, "--out", out],
        "a file as run": [runs["itq"][1], "--out", out],
        "out exists": [run, "--out", work / "taken.hlm"],
        "card exists": [run, "--out", work / "card.hlm"],
        "out folder missing": [run, "--out", work / "nowhere" / "m.hlm"],
        "out not .hlm": [run, "--out", work / "m.zip"],
        "out is a folder": [run, "--out", work / "folder.hlm"],
        "weights from a file": [work / "wrun", "--out", out],
    }[case]
    before = folder_state(work)
    assert main(["export", *map(str, args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hashlearn export: error:"), err
    assert re.search(match, err), err
    assert folder_state(work) == before and sorted(p.name for p in work.iterdir()) == sorted(
        ["notes", "taken.hlm", "card.md", "folder.hlm", "wrun"])
