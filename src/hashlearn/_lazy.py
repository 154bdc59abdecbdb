"""Lazy package exports: ``from hashlearn.eval import evaluate`` imports numba only then.

Used by packages whose ``commands.py`` the CLI imports at start-up, so that
``hashlearn --help`` loads no heavy library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable[[str], Any], Callable[[], list]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` exporting ``{name: module}``."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value  # later look-ups skip __getattr__
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list:
        return sorted(set(namespace) | set(exports))

    return sorted(exports), __getattr__, __dir__
