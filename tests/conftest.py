"""Shared test fixtures: the shared data folder (or a skip) and a throw-away dataset cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def hashlearn_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every test session writes prepared datasets to a temporary $HASHLEARN_CACHE, never ~/.cache."""
    path = tmp_path_factory.mktemp("hashlearn-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HASHLEARN_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``Path($HASHLEARN_DATA)``; tests that use it are skipped when it is not set."""
    value = os.environ.get("HASHLEARN_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("HASHLEARN_DATA is not set to the shared data folder")
    return Path(value)


@pytest.fixture
def make_readonly():
    """``make_readonly(folder)`` makes ``folder`` read-only for this test (a read-only bind mount when
    running as root, whom file modes do not stop; ``chmod a-w`` otherwise), undone afterwards.
    Skips the test where neither is possible."""
    import stat
    import subprocess

    undo = []

    def _make(folder) -> Path:
        folder = Path(folder)
        if os.geteuid() != 0:
            mode = folder.stat().st_mode
            folder.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
            undo.append(lambda: folder.chmod(mode))
            return folder
        for cmd in (["mount", "--bind", str(folder), str(folder)],
                    ["mount", "-o", "remount,ro,bind", str(folder)]):
            done = subprocess.run(cmd, capture_output=True)
            if done.returncode != 0:
                if cmd[1] != "--bind":
                    subprocess.run(["umount", str(folder)], capture_output=True)
                pytest.skip(f"cannot make {folder} read-only here: {done.stderr.decode().strip()}")
        undo.append(lambda: subprocess.run(["umount", str(folder)], check=True))
        return folder

    yield _make
    for step in reversed(undo):
        step()


def reevaluated_map(run_dir, dataset) -> float:
    """mAP@all of a run folder's saved query/database codes against ``dataset``'s labels: what a
    run reports must be what its codes give (a check that can fail, unlike ``0 <= mAP <= 1``)."""
    from hashlearn.codes import load_codes
    from hashlearn.eval import evaluate

    run_dir = Path(run_dir)
    where = {str(i): n for n, i in enumerate(dataset.ids)}
    q, d = load_codes(run_dir / "query_codes.npz"), load_codes(run_dir / "database_codes.npz")
    ql = dataset.labels[[where[str(i)] for i in q.ids]]
    dl = dataset.labels[[where[str(i)] for i in d.ids]]
    return float(evaluate(q.packed, d.packed, ql, dl, bits=q.bits)["mAP@all"])


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is faster, and fair to the other processes on a shared CPU
    (a module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
