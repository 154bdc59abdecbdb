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
