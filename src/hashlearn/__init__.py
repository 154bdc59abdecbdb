"""hashlearn: learning-to-hash image retrieval.

Importing the package is cheap: heavy libraries (torch, numba, matplotlib) are imported
only by the modules that need them. ``hashlearn.load_run(path)`` loads a trained hasher
(``.encode(images)`` → packed codes, ``.bits``, ``.method``, ``.config``, ``.info``).
"""

__version__ = "0.1.0"

from hashlearn.errors import HashlearnError, InputError  # noqa: E402

__all__ = ["__version__", "HashlearnError", "InputError", "load_run"]


def __getattr__(name: str):
    if name == "load_run":  # imported on first use: ``import hashlearn`` stays light
        from hashlearn.train.model import load_run

        return load_run
    raise AttributeError(f"module 'hashlearn' has no attribute {name!r}")
