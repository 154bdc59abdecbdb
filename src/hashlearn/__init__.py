"""hashlearn: learning-to-hash image retrieval.

Importing the package is cheap: heavy libraries (torch, numba, matplotlib) are imported
only by the modules that need them.
"""

__version__ = "0.1.0"

from hashlearn.errors import HashlearnError, InputError  # noqa: E402

__all__ = ["__version__", "HashlearnError", "InputError"]
