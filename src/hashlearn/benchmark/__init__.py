"""Benchmarks: a grid of training runs from one YAML config and its leaderboard (``hashlearn benchmark``).

It orchestrates the steps below it: each run is one call of :func:`hashlearn.train.train`, each
leaderboard one :func:`hashlearn.eval.results.write_results` over the runs' ``metrics.json``.

* :func:`load_grid` — a config (a file, or a shipped one by name: :func:`shipped_configs`), every key checked;
* :func:`run_benchmark` — train what is missing (resumable; ``nproc`` processes per run, or ``jobs`` cells at
  once), write the leaderboard;
* :func:`write_leaderboard`, :func:`update_readme` — the results files, and a README section made from them.
"""

from __future__ import annotations

from hashlearn._lazy import lazy_exports

_EXPORTS = {
    "load_grid": "hashlearn.benchmark.grid",
    "shipped_configs": "hashlearn.benchmark.grid",
    "Grid": "hashlearn.benchmark.grid",
    "Cell": "hashlearn.benchmark.grid",
    "run_benchmark": "hashlearn.benchmark.run",
    "plan": "hashlearn.benchmark.run",
    "write_leaderboard": "hashlearn.benchmark.leaderboard",
    "update_readme": "hashlearn.benchmark.leaderboard",
    "readme_section": "hashlearn.benchmark.leaderboard",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
