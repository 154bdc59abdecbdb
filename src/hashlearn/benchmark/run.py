"""``hashlearn benchmark`` as a function: train what a grid is missing, then write its leaderboard.

Each cell (one method entry on one dataset and backbone entry, one seed) is one call of
:func:`hashlearn.train.train` (the one trainer) with the code lengths it is missing, writing the
cell's folder; code lengths whose run folder already holds ``metrics.json`` of the same settings
are skipped and said to be. A killed run resumes from its ``checkpoint.pt`` as ``hashlearn train``
resumes it (``resume=False``: starts over). Cells that cut the same backbone at the same tap share
the activation cache (its key is the same). With ``nproc > 1`` a deep method's cell runs under
PyTorch's launcher (``torchrun --nproc-per-node N -m hashlearn train ...``, the trainer's
data-parallel mode; the command line :func:`~hashlearn.benchmark.grid.train_argv` gives the same
settings); a shallow method's cell runs in this process (it is fitted, not trained in batches).
"""

from __future__ import annotations

import datetime
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from hashlearn.benchmark.grid import Cell, Grid, bits_status, check_cells, train_argv
from hashlearn.errors import HashlearnError


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _bits(bits: list[int]) -> str:
    return ", ".join(str(b) for b in bits)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(nproc: int, port: int | None = None) -> list[str]:
    """PyTorch's launcher starting ``nproc`` processes on this machine (``torchrun`` as a module)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port or _free_port()),
        "-m",
        "hashlearn",
    ]


def is_deep(cell: Cell) -> bool:
    from hashlearn.train.model import method_kind

    return method_kind(cell.method.method)[1] == "deep"


def command_text(cell: Cell, bits: list[int], nproc: int = 1, resume: bool = True, progress: bool = True) -> str:
    """The shell command that trains ``bits`` of ``cell`` (what ``--dry-run`` prints)."""
    argv = train_argv(cell.config, bits, cell.out, resume=resume, progress=progress)
    lead = f"torchrun --nproc-per-node {nproc} -m hashlearn" if nproc > 1 and is_deep(cell) else "hashlearn"
    return f"{lead} {shlex.join(argv)}"


def plan(cells: list[Cell]) -> list[tuple[Cell, dict[int, str]]]:
    """Each cell with the status of each of its code lengths (:func:`~hashlearn.benchmark.grid.bits_status`)."""
    return [(cell, {bits: bits_status(cell, bits) for bits in cell.config.bits}) for cell in cells]


def train_cell(cell: Cell, bits: list[int], nproc: int = 1, resume: bool = True, progress: bool = True) -> None:
    """Train ``bits`` of ``cell``: one ``hashlearn train`` (in this process, or under ``torchrun``)."""
    if nproc > 1 and is_deep(cell):
        argv = train_argv(cell.config, bits, cell.out, resume=resume, progress=progress)
        done = subprocess.run([*launcher(nproc), *argv])
        if done.returncode != 0:
            raise HashlearnError(
                f"{cell.name}: the data-parallel run failed (exit {done.returncode}; its output is "
                f"above): torchrun --nproc-per-node {nproc} -m hashlearn {shlex.join(argv)}"
            )
        return
    from hashlearn.train import train

    try:
        train(cell.config.copy(bits=list(bits)), out=cell.out, resume=resume, progress=progress)
    except HashlearnError as exc:
        raise type(exc)(f"{cell.name}: {exc}") from None


def run_benchmark(
    grid: Grid,
    *,
    only: list[str] | None = None,
    nproc: int = 1,
    dry_run: bool = False,
    resume: bool = True,
    progress: bool = True,
    results_dir: str | Path | None = None,
    command: str = "",
) -> dict | None:
    """Train every missing run of ``grid`` (the methods of ``only``), then write the leaderboard of all its
    finished runs into ``results_dir`` (default: the grid's ``out``), print its table and return its JSON
    document. ``dry_run``: print each cell's status and command instead, and return None."""
    cells = grid.select(only)
    check_cells(cells, nproc)  # every model of the grid, before anything loads or trains
    planned = plan(cells)
    if dry_run:
        print_plan(planned, nproc, resume, progress)
        return None
    started, stamp = time.perf_counter(), datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    trained, skipped = [], 0
    for i, (cell, status) in enumerate(planned, 1):
        done = [b for b, s in status.items() if s == "done"]
        todo = [b for b, s in status.items() if s != "done"]
        head = f"[{i}/{len(planned)}] {cell.name}"
        skipped += len(done)
        if not todo:
            _say(f"{head}: skipped, finished at {_bits(done)} bits ({cell.out})")
            continue
        why = [f"{b} bits {s}" for b, s in status.items() if s.startswith(("changed", "resume"))]
        _say(
            f"{head}: training {_bits(todo)} bits"
            + (f" (skipped {_bits(done)} bits: finished)" if done else "")
            + (f" ({'; '.join(why)})" if why else "")
            + f" -> {cell.out}"
        )
        train_cell(cell, todo, nproc, resume, progress)
        trained += [str(cell.run_dir(b)) for b in todo]
    wall = time.perf_counter() - started
    if trained:
        from hashlearn.benchmark.leaderboard import log_call

        log_call(
            grid,
            {
                "started": stamp,
                "wall_seconds": round(wall, 1),
                "runs_trained": len(trained),
                "runs_skipped": skipped,
                "nproc": nproc,
                "command": command,
            },
        )
    _say(
        f"hashlearn benchmark {grid.name}: trained {len(trained)} run(s), skipped {skipped} finished run(s), "
        f"{wall:.0f} s"
    )
    from hashlearn.benchmark.leaderboard import compact_table, leaderboard_paths, write_leaderboard

    results_dir = Path(results_dir) if results_dir is not None else grid.out
    doc = write_leaderboard(grid, results_dir, command=command)
    md, js = leaderboard_paths(grid.name, results_dir)
    print(f"{doc['title']}")
    print("\n".join(compact_table(doc)))
    print(f"leaderboard: {md} and {js}")
    return doc


def print_plan(
    planned: list[tuple[Cell, dict[int, str]]], nproc: int = 1, resume: bool = True, progress: bool = True
) -> None:
    """Each cell: its code lengths' status and the command that trains the missing ones."""
    runs = sum(len(s) for _, s in planned)
    done = sum(v == "done" for _, s in planned for v in s.values())
    for cell, status in planned:
        todo = [b for b, s in status.items() if s != "done"]
        print(f"{cell.name}: " + ", ".join(f"{b} bits {s}" for b, s in status.items()))
        if todo:
            print(f"  $ {command_text(cell, todo, nproc, resume, progress)}")
    print(f"{len(planned)} cells, {runs} runs: {done} done, {runs - done} to train")
