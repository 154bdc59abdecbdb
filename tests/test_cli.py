"""The command-line shell: help, version, one-line usage errors, fast start."""

import subprocess
import sys
import time

import pytest

from hashlearn import __version__
from hashlearn.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_unknown_command_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "no-such-command" in err and len(err.splitlines()) == 1


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys, contextlib, io\n"
        "from hashlearn.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'numba', 'matplotlib', 'faiss', 'pymilvus') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    assert out.stdout.strip() == ""
    assert seconds < 5.0
