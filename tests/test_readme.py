"""README.md's code blocks work as written: every ```python block runs (in order, in one
namespace, as a reader pasting them would), every ``hashlearn`` command line of its ```bash blocks
is accepted by the command's parser, the cheap ones run, and the ``make`` targets exist.
Nothing here trains a model or reads a dataset other than scikit-learn's bundled digits."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from hashlearn.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CHEAP = (["methods"], ["--help"])  # commands of the README that are run for real


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def command_lines(block: str) -> list[str]:
    """Shell command lines of a block: backslash continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = (line.split(" #")[0].strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_has_python_and_bash_blocks():
    assert blocks("python") and blocks("bash")
    assert not re.findall(r"^```(?!python|bash|$)\w+", README.read_text(), flags=re.M), "untested block language"


def test_every_python_block_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for i, code in enumerate(blocks("python")):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    # what the example prints, and that it is a real result: ITQ on digits is far above chance (0.1)
    assert re.search(r"mAP@100 0\.\d{3}, mAP@all 0\.\d{3}", out), out
    assert namespace["result"]["mAP@all"] > 0.3
    assert re.search(r"query 0: \d+ of \d+ at distance \d+", out), out


def test_python_blocks_import_only_what_they_use():
    for code in blocks("python"):
        body = "\n".join(line for line in code.splitlines() if not line.startswith(("import ", "from ")))
        for line in code.splitlines():
            match = re.match(r"from \S+ import (.+)|import (\S+)", line)
            if not match:
                continue
            for name in (match.group(1) or match.group(2)).split(","):
                name = name.split(" as ")[-1].strip()
                assert re.search(rf"\b{re.escape(name)}\b", body), f"README imports {name} and never uses it"


def hashlearn_commands() -> list[list[str]]:
    found = []
    for block in blocks("bash"):
        for line in command_lines(block):
            words = shlex.split(line)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
                words = words[1:]
            if words and words[0] == "hashlearn":
                found.append(words[1:])
    return found


def test_bash_blocks_hashlearn_commands_parse(capsys):
    commands = hashlearn_commands()
    assert len(commands) >= 10, commands
    for argv in commands:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"README: `hashlearn {shlex.join(argv)}` is refused: {capsys.readouterr().err.strip()}")
        assert getattr(args, "func", None), argv


@pytest.mark.parametrize("argv", CHEAP, ids=" ".join)
def test_cheap_readme_commands_run(argv, capsys):
    assert argv in hashlearn_commands() or argv == ["--help"]
    try:
        rc = main(argv)
    except SystemExit as exc:  # --help exits through argparse
        rc = exc.code
    assert rc == 0
    out = capsys.readouterr().out
    assert ("dmsh" in out and "itq" in out) if argv == ["methods"] else "search" in out


def test_make_targets_of_the_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w.-]+):", makefile, flags=re.M))
    for block in blocks("bash"):
        for line in command_lines(block):
            words = [w for w in shlex.split(line) if not re.fullmatch(r"[A-Z_]+=\S*", w)]
            if words and words[0] == "make":
                assert set(words[1:]) <= targets, (line, sorted(targets))
