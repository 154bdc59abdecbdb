"""Models that ship inside hashlearn, by name: ``--model NAME`` (``hashlearn duplicates``).

Each model is an ordinary run folder under this package (``config.yaml``, ``run.json``, the
weights: ``model.npz`` for a shallow head, numeric arrays + JSON read with
``allow_pickle=False``; ``best.pt`` for a deep one, read with ``weights_only=True``) plus its
``MODEL_CARD.md``. :func:`load_model` goes through :func:`hashlearn.train.load_run`, the one
loader, so a shipped model and a user's ``--run`` folder are loaded the same way. ``default``
is written by ``bench/default_model.py`` (see its card).

Only the standard library is imported here (the CLI lists names without loading torch).
"""

from __future__ import annotations

from pathlib import Path

from hashlearn.errors import InputError, NotFoundError

#: the folder that holds one run folder per shipped model
MODELS_DIR = Path(__file__).resolve().parent
#: what ``--model`` means when none is given
DEFAULT_MODEL = "default"
#: the model card of each shipped model
CARD_FILE = "MODEL_CARD.md"


def model_names() -> list[str]:
    """Names of the models that ship with this installation (folders holding a ``run.json``)."""
    return sorted(p.name for p in MODELS_DIR.iterdir() if p.is_dir() and (p / "run.json").is_file())


def model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The run folder of the shipped model ``name`` (:class:`NotFoundError` listing the names there are)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise InputError(f"model name {name!r} is not a plain name (for a run folder use --run PATH)")
    path = MODELS_DIR / name
    if not (path / "run.json").is_file():
        names = ", ".join(model_names()) or "none (this installation ships no model)"
        raise NotFoundError(f"no shipped model named {name!r}; models: {names} (for a run folder use --run PATH)")
    return path


def load_model(name: str = DEFAULT_MODEL):
    """The shipped model ``name`` as a :class:`hashlearn.train.Hasher` (``encode``, ``bits``, ``fingerprint``)."""
    from hashlearn.train import load_run

    return load_run(model_dir(name))


__all__ = ["MODELS_DIR", "DEFAULT_MODEL", "CARD_FILE", "model_names", "model_dir", "load_model"]
