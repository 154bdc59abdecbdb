"""One trainer for every hashing method (see :mod:`hashlearn.train.trainer`).

* :func:`train` — ``hashlearn train`` as a function (one run folder per code length);
* :func:`load_config` — typed settings (:class:`RunConfig`): defaults ← YAML file ← ``key=value``;
* :func:`load_run` — the one way a trained hasher is loaded from a run folder or a model file of
  :func:`export_run` (``hashlearn export``; never unpickled);
  :func:`new_hasher` — an untrained one; both give a :class:`Hasher` (``fit`` / ``encode``);
* :class:`Trainer` — the loop (checkpoint/resume, validation-based selection, hooks, feeds);
* :func:`encode_images` / :func:`encode_files` / :func:`encode_dataset` — codes from a run;
  :func:`check_codes_match_run` — a code file made by another run is refused.

Heavy imports (torch) happen on first use, so ``import hashlearn.train`` is cheap.
"""

from __future__ import annotations

from hashlearn._lazy import lazy_exports

_EXPORTS = {
    "train": "hashlearn.train.run",
    "load_data": "hashlearn.train.run",
    "RunConfig": "hashlearn.train.config",
    "load_config": "hashlearn.train.config",
    "apply_overrides": "hashlearn.train.config",
    "save_config": "hashlearn.train.config",
    "validate_config": "hashlearn.train.config",
    "Trainer": "hashlearn.train.trainer",
    "TrainState": "hashlearn.train.trainer",
    "HashModel": "hashlearn.train.trainer",
    "make_validation_evaluator": "hashlearn.train.trainer",
    "Hasher": "hashlearn.train.model",
    "FitJob": "hashlearn.train.model",
    "load_run": "hashlearn.train.model",
    "new_hasher": "hashlearn.train.model",
    "encode_images": "hashlearn.train.encode",
    "encode_files": "hashlearn.train.encode",
    "encode_dataset": "hashlearn.train.encode",
    "check_codes_match_run": "hashlearn.train.encode",
    "export_run": "hashlearn.train.export",
    "run_demo": "hashlearn.train.demo",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
