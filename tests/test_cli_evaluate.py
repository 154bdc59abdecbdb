"""``hashlearn evaluate`` end to end through ``hashlearn.cli.main``: output and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hashlearn.cli import main
from hashlearn.codes import save_codes


@pytest.fixture
def files(tmp_path):
    """Small single-label codes and labels as .npy files; returns a dict of paths + arrays."""
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 2, (3, 16))
    ql, dl = rng.integers(0, 3, 20), rng.integers(0, 3, 120)
    q = centres[ql] ^ (rng.random((20, 16)) < 0.1)
    d = centres[dl] ^ (rng.random((120, 16)) < 0.1)
    paths = {}
    for name, arr in {"q": q.astype(np.int8), "d": d.astype(np.int8), "ql": ql, "dl": dl}.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], arr)
    paths["arrays"] = {"q": q, "d": d, "ql": ql, "dl": dl}
    paths["tmp"] = tmp_path
    return paths


def argv(files, *extra, **override):
    names = {"q": "--query-codes", "d": "--db-codes", "ql": "--query-labels", "dl": "--db-labels"}
    out = ["evaluate"]
    for key, flag in names.items():
        out += [flag, str(override.get(key, files[key]))]
    return out + list(extra)


def one_line_error(capsys, args, *needles):
    code = main(args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_json_output_has_the_documented_keys(files, capsys):
    assert main(argv(files, "--json", "--topk", "10,all")) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("mAP@10", "mAP@all", "P@r2", "R@r2", "F1@r2", "bits", "n_query", "n_db", "ties", "topk", "radius"):
        assert key in out, key
    assert out["bits"] == 16 and out["n_query"] == 20 and out["n_db"] == 120 and out["ties"] == "expected"
    from hashlearn.eval import evaluate

    a = files["arrays"]
    assert out["mAP@all"] == pytest.approx(evaluate(a["q"], a["d"], a["ql"], a["dl"]).map["all"])


def test_table_output_and_settings(files, capsys):
    assert main(argv(files, "--ties", "index", "--radius", "3", "--skip-empty")) == 0
    out = capsys.readouterr().out
    assert "mAP@1000" in out and "mAP@all" in out and "P@r3" in out and "ties: index" in out
    assert "skipped" in out


def test_pm1_and_packed_and_npz_codes(files, capsys, tmp_path):
    a = files["arrays"]
    np.save(tmp_path / "qpm.npy", a["q"].astype(np.int8) * 2 - 1)
    np.save(tmp_path / "qpk.npy", np.packbits(a["q"].astype(np.uint8), axis=1))
    np.save(tmp_path / "dpk.npy", np.packbits(a["d"].astype(np.uint8), axis=1))
    save_codes(tmp_path / "dz.npz", a["d"], 16)
    assert main(argv(files, "--json")) == 0
    base = json.loads(capsys.readouterr().out)["mAP@all"]
    assert main(argv(files, "--json", q=tmp_path / "qpm.npy")) == 0
    assert json.loads(capsys.readouterr().out)["mAP@all"] == base
    assert main(argv(files, "--json", "--bits", "16", q=tmp_path / "qpk.npy", d=tmp_path / "dpk.npy")) == 0
    assert json.loads(capsys.readouterr().out)["mAP@all"] == base
    assert main(argv(files, "--json", d=tmp_path / "dz.npz")) == 0
    assert json.loads(capsys.readouterr().out)["mAP@all"] == base


def test_multi_label_adds_graded_metrics(files, capsys, tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "mql.npy", (rng.random((20, 5)) < 0.4).astype(np.uint8))
    np.save(tmp_path / "mdl.npy", (rng.random((120, 5)) < 0.4).astype(np.uint8))
    assert main(argv(files, "--json", "--topk", "50", ql=tmp_path / "mql.npy", dl=tmp_path / "mdl.npy")) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"NDCG@50", "ACG@50", "wmAP@50", "mAP@50"} <= set(out)
    assert out["relevance"] == "share at least one label"


def test_plot_and_report_files(files, capsys, tmp_path):
    png, report = tmp_path / "out" / "curves.png", tmp_path / "out" / "report"
    assert main(argv(files, "--plot", str(png), "--report", str(report))) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mAP@all" in (tmp_path / "out" / "report.md").read_text()
    assert "codes" in json.loads((tmp_path / "out" / "report.json").read_text())


def test_missing_file(files, capsys, tmp_path):
    one_line_error(capsys, argv(files, q=tmp_path / "nope.npy"), "--query-codes", "not found", "nope.npy")


def test_unreadable_npy(files, capsys, tmp_path):
    bad = tmp_path / "bad.npy"
    bad.write_text("this is not numpy")
    one_line_error(capsys, argv(files, dl=bad), "--db-labels", "bad.npy")


def test_pickled_object_array_is_refused(files, capsys, tmp_path):
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)
    one_line_error(capsys, argv(files, ql=obj), "--query-labels")


def test_wrong_shape(files, capsys, tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(20, dtype=np.uint8))
    one_line_error(capsys, argv(files, q=tmp_path / "flat.npy"), "--query-codes", "flat.npy", "2-D")


def test_bit_length_mismatch(files, capsys, tmp_path):
    np.save(tmp_path / "d8.npy", files["arrays"]["d"][:, :8].astype(np.int8))
    one_line_error(capsys, argv(files, d=tmp_path / "d8.npy"), "bit-length mismatch", "16-bit", "8-bit", "d8.npy")


def test_label_count_mismatch(files, capsys, tmp_path):
    np.save(tmp_path / "dl_short.npy", files["arrays"]["dl"][:-1])
    one_line_error(capsys, argv(files, dl=tmp_path / "dl_short.npy"), "--db-labels", "dl_short.npy", "119", "120")


def test_label_kind_mismatch(files, capsys, tmp_path):
    np.save(tmp_path / "dl_hot.npy", np.eye(3, dtype=np.uint8)[files["arrays"]["dl"]])
    one_line_error(capsys, argv(files, dl=tmp_path / "dl_hot.npy"), "label kinds differ")


def test_non_binary_codes(files, capsys, tmp_path):
    np.save(tmp_path / "q3.npy", files["arrays"]["q"] * 3)
    one_line_error(capsys, argv(files, q=tmp_path / "q3.npy"), "--query-codes", "q3.npy", "binary")


def test_packed_codes_with_wrong_bits(files, capsys, tmp_path):
    np.save(tmp_path / "qpk.npy", np.packbits(files["arrays"]["q"].astype(np.uint8), axis=1))
    one_line_error(capsys, argv(files, "--bits", "32", q=tmp_path / "qpk.npy"), "--query-codes", "qpk.npy")


def test_bad_topk_and_usage_errors(files, capsys):
    one_line_error(capsys, argv(files, "--topk", "10,zero"), "topk")
    with pytest.raises(SystemExit) as info:
        main(argv(files, "--ties", "random"))
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_evaluate_help_does_not_import_numba_or_torch():
    code = (
        "import sys, contextlib, io\n"
        "from hashlearn.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as buf:\n"
        "    try: main(['evaluate', '--help'])\n"
        "    except SystemExit: pass\n"
        "assert '--query-codes' in buf.getvalue() and 'expected' in buf.getvalue()\n"
        "print(','.join(m for m in ('numba', 'torch', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_eval_commands_module_imports_only_the_standard_library():
    code = (
        "import sys, argparse\n"
        "import hashlearn.eval.commands as c\n"
        "c.register(argparse.ArgumentParser().add_subparsers())\n"
        "print(','.join(m for m in ('numpy', 'numba', 'torch', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_plot_extension_is_checked_before_the_computation(files, capsys, monkeypatch):
    import hashlearn.eval.metrics

    def no_computation(*args, **kwargs):
        raise AssertionError("evaluate ran before the bad --plot was refused")

    monkeypatch.setattr(hashlearn.eval.metrics, "evaluate", no_computation)
    err = one_line_error(capsys, argv(files, "--plot", str(files["tmp"] / "out.xyz")), "out.xyz", "png", "pdf", "svg")
    assert "'.xyz'" in err


def test_plot_without_extension_is_a_png(files, capsys):
    assert main(argv(files, "--plot", str(files["tmp"] / "curves"))) == 0
    assert f"plot: {files['tmp'] / 'curves.png'}" in capsys.readouterr().out
    assert (files["tmp"] / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_and_report_into_a_read_only_folder(files, capsys, monkeypatch, make_readonly):
    import hashlearn.eval.metrics

    ro = files["tmp"] / "ro"
    ro.mkdir()
    make_readonly(ro)
    monkeypatch.setattr(hashlearn.eval.metrics, "evaluate", lambda *a, **k: pytest.fail("evaluate ran"))
    one_line_error(capsys, argv(files, "--plot", str(ro / "pr.png")), "--plot", "pr.png")
    one_line_error(capsys, argv(files, "--report", str(ro / "sub" / "report")), "--report", "report")
    assert list(ro.iterdir()) == []


def test_npz_bit_lengths_that_differ_name_both_files(files, capsys, tmp_path):
    rng = np.random.default_rng(3)
    save_codes(tmp_path / "q32.npz", rng.integers(0, 2, (20, 32)).astype(np.int8), 32)
    save_codes(tmp_path / "d40.npz", rng.integers(0, 2, (120, 40)).astype(np.int8), 40)
    err = one_line_error(capsys, argv(files, q=tmp_path / "q32.npz", d=tmp_path / "d40.npz"),
                         "q32.npz", "32-bit", "d40.npz", "40-bit")
    assert "--bits" not in err.replace("--query-codes", "").replace("--db-codes", "")
    one_line_error(capsys, argv(files, "--bits", "16", q=tmp_path / "q32.npz"), "q32.npz", "32-bit", "16")


def test_packed_uint8_codes_are_packed_even_when_every_byte_is_0_or_1(files, capsys, tmp_path):
    rng = np.random.default_rng(4)
    np.save(tmp_path / "q.npy", rng.integers(0, 2, (20, 8)).astype(np.uint8))  # 64-bit packed codes
    np.save(tmp_path / "d.npy", rng.integers(0, 2, (120, 8)).astype(np.uint8))
    assert main(argv(files, "--json", q=tmp_path / "q.npy", d=tmp_path / "d.npy")) == 0
    assert json.loads(capsys.readouterr().out)["bits"] == 64
    # the same files as 0/1 codes: only when --bits says so (= the number of columns)
    assert main(argv(files, "--json", "--bits", "8", q=tmp_path / "q.npy", d=tmp_path / "d.npy")) == 0
    assert json.loads(capsys.readouterr().out)["bits"] == 8


@pytest.mark.parametrize("bad, needles", [
    ("topk", ("--topk", "abc")),
    ("radius", ("--radius", "-1")),
    ("empty", ("--query-codes", "empty.npy", "no codes")),
    ("nan", ("--query-codes", "nan.npy", "NaN")),
    ("strlabels", ("--query-labels", "str.npy", "numeric")),
    ("folder", ("--db-codes", "afolder", "is a folder")),
    ("folderlabels", ("--db-labels", "afolder", "is a folder")),
    ("garbage", ("--query-codes", "garbage.npy")),
    ("nanlabels", ("--query-labels", "nanl.npy", "whole numbers")),
])
def test_more_bad_input_is_one_line(files, capsys, tmp_path, bad, needles):
    (tmp_path / "afolder").mkdir()
    np.save(tmp_path / "empty.npy", np.zeros((0, 16), np.int8))
    np.save(tmp_path / "nan.npy", np.where(files["arrays"]["q"] > 0, 1.0, np.nan))
    np.save(tmp_path / "str.npy", np.array(["cat"] * 20))
    (tmp_path / "garbage.npy").write_bytes(b"\xff\xfe\x00 not numpy")
    np.save(tmp_path / "nanl.npy", np.full(20, np.nan))
    args = {
        "topk": argv(files, "--topk", "abc"),
        "radius": argv(files, "--radius", "-1"),
        "empty": argv(files, q=tmp_path / "empty.npy"),
        "nan": argv(files, q=tmp_path / "nan.npy"),
        "strlabels": argv(files, ql=tmp_path / "str.npy"),
        "folder": argv(files, d=tmp_path / "afolder"),
        "folderlabels": argv(files, dl=tmp_path / "afolder"),
        "garbage": argv(files, q=tmp_path / "garbage.npy"),
        "nanlabels": argv(files, ql=tmp_path / "nanl.npy"),
    }[bad]
    one_line_error(capsys, args, *needles)
