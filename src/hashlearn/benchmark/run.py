"""``hashlearn benchmark`` as a function: train what a grid is missing, then write its leaderboard.

Each cell (one method entry on one dataset and backbone entry, one seed) is one call of
:func:`hashlearn.train.train` (the one trainer) with the code lengths it is missing, writing the
cell's folder; code lengths whose run folder already holds ``metrics.json`` of the same settings
are skipped and said to be. A killed run resumes from its ``checkpoint.pt`` as ``hashlearn train``
resumes it (``resume=False``: starts over). Cells that cut the same backbone at the same tap share
the activation cache (its key is the same; its lock keeps two processes from filling it twice). With
``nproc > 1`` a deep method's cell runs under PyTorch's launcher (``torchrun --nproc-per-node N -m
hashlearn train ...``, the trainer's data-parallel mode; the command line
:func:`~hashlearn.benchmark.grid.train_argv` gives the same settings); a shallow method's cell runs in
this process (it is fitted, not trained in batches).

With ``jobs > 1`` each cell is one ``python -m hashlearn train ...`` process of that same command line,
``jobs`` of them at once, each with ``train.threads = cores // jobs`` (unless the grid sets it) and its
output appended to its log beside its folder (:func:`cell_log`): on a small CPU several one-thread runs
are faster than one run on every core. The process holds a lock on that log, so a second ``hashlearn
benchmark`` cannot train the same cell meanwhile; stopping this one (Ctrl-C, SIGTERM) stops them, and
their runs resume next time.
"""

from __future__ import annotations

import datetime
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hashlearn.benchmark.grid import Cell, Grid, bits_status, check_cells, train_argv
from hashlearn.errors import HashlearnError, InputError

#: thread pools outside torch that would otherwise start one thread per core in each process
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _bits(bits: list[int]) -> str:
    return ", ".join(str(b) for b in bits)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def cell_log(cell: Cell) -> Path:
    """The log of ``cell`` when it trains in a process of its own (``jobs > 1``), appended to: beside its folder
    (``.../seed0.log``), as ``hashlearn train`` takes only its own files in an output folder it has not yet
    written."""
    return cell.out.with_name(cell.out.name + ".log")


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages, None where the system has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def job_threads(jobs: int, cells: int) -> int:
    """``train.threads`` of each of ``jobs`` cell processes when ``cells`` cells are to train: the cores
    shared among the processes that run at once (at least one thread each)."""
    return max(1, cpu_cores() // max(1, min(jobs, cells)))


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


def cell_argv(
    cell: Cell, bits: list[int], resume: bool = True, progress: bool = True, threads: int | None = None
) -> list[str]:
    """``hashlearn train`` arguments that train ``bits`` of ``cell``; ``threads``: its ``train.threads`` when
    the grid does not set that itself."""
    config = cell.config
    if threads is not None and config.train.threads is None:
        config = config.copy()
        config.train.threads = threads
    return train_argv(config, bits, cell.out, resume=resume, progress=progress)


def command_text(
    cell: Cell,
    bits: list[int],
    nproc: int = 1,
    resume: bool = True,
    progress: bool = True,
    threads: int | None = None,
) -> str:
    """The shell command that trains ``bits`` of ``cell`` (what ``--dry-run`` prints)."""
    argv = cell_argv(cell, bits, resume, progress, threads)
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


@dataclass
class Job:
    """A cell to train: ``head`` (its ``[i/n] name``), the code lengths it misses, the line said at its start."""

    head: str
    cell: Cell
    todo: list[int]
    line: str


@dataclass
class _Running:
    job: Job
    log: object  # the open cell_log, locked
    started: float


def _terminated(signum, frame):  # noqa: ARG001 - signal handler API
    raise KeyboardInterrupt


def train_in_processes(jobs: list[Job], at_once: int, threads: int, resume: bool, progress: bool) -> list[str]:
    """Train each job's cell in a ``python -m hashlearn train`` process of its own, ``at_once`` at a time, each
    given ``train.threads = threads`` (unless its settings say) and logging to :func:`cell_log`; one line
    when a cell starts and one when it ends. A failed cell does not stop the others. Ctrl-C or SIGTERM stops
    every process before it returns. Returns one ``name (why; log)`` text per failed cell."""
    import fcntl

    pending, running, failed = list(jobs), {}, []

    def start(job: Job) -> None:
        cell = job.cell
        log_path = cell_log(cell)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a")  # noqa: SIM115 - held (and locked) while the process runs
        try:
            fcntl.flock(log, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the child's copies hold it even if this one dies
        except BlockingIOError:
            log.close()
            failed.append(f"{cell.name} (another process is training it: it holds {log_path})")
            _say(f"{job.head}: not started, another process is training it (it holds {log_path})")
            return
        argv = [sys.executable, "-m", "hashlearn", *cell_argv(cell, job.todo, resume, progress, threads)]
        log.write(f"== {_now()} hashlearn benchmark started: {shlex.join(argv)}\n")
        log.flush()
        own = cell.config.train.threads or threads
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for name in THREAD_ENV:
            env.setdefault(name, str(min(own, cpu_cores())))
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        except BaseException:
            log.close()
            raise
        running[proc] = _Running(job, log, time.perf_counter())
        _say(f"{job.line} (log: {log_path})")

    def finish(proc: subprocess.Popen, what: str) -> float:
        r = running.pop(proc)
        seconds = time.perf_counter() - r.started
        r.log.write(f"== {_now()} {what} after {seconds:.0f} s\n")
        r.log.close()
        return seconds

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _terminated)
    try:
        while pending or running:
            while pending and len(running) < at_once:
                start(pending.pop(0))
            for proc in [p for p in running if p.poll() is not None]:
                job, code = running[proc].job, proc.returncode
                seconds = finish(proc, f"exit {code}")
                if code == 0:
                    _say(f"{job.head}: ok, {seconds:.0f} s")
                else:
                    log_path = cell_log(job.cell)
                    failed.append(f"{job.cell.name} (exit {code}; log: {log_path})")
                    _say(f"{job.head}: failed (exit {code}), {seconds:.0f} s; its output: {log_path}")
            time.sleep(0.1)
    finally:
        if running:  # stopped: no process of ours outlives us
            for sig in (signal.SIGINT, signal.SIGTERM):
                if threading.current_thread() is threading.main_thread():
                    handlers.setdefault(sig, signal.getsignal(sig))
                    signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
            for proc in running:
                if proc.poll() is None:
                    proc.terminate()
            names = [r.job.cell.name for r in running.values()]
            for proc in list(running):
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                finish(proc, "stopped by hashlearn benchmark")
            _say(f"stopped {len(names)} cell(s) ({'; '.join(names)}): their runs resume at the next call")
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return failed


def run_benchmark(
    grid: Grid,
    *,
    only: list[str] | None = None,
    nproc: int = 1,
    jobs: int = 1,
    dry_run: bool = False,
    resume: bool = True,
    progress: bool = True,
    results_dir: str | Path | None = None,
    command: str = "",
) -> dict | None:
    """Train every missing run of ``grid`` (the methods of ``only``), then write the leaderboard of all its
    finished runs into ``results_dir`` (default: the grid's ``out``), print its table and return its JSON
    document. ``jobs > 1``: that many cells at once, each in a process of its own (:func:`train_in_processes`);
    when some failed, the leaderboard of what finished is still written, then one error names them.
    ``dry_run``: print each cell's status and command instead, and return None."""
    if jobs > 1 and nproc > 1:
        raise InputError(
            f"--jobs {jobs} with --nproc {nproc}: --jobs trains several cells at once, --nproc one cell on "
            "several processes; give one of them"
        )
    cells = grid.select(only)
    check_cells(cells, nproc)  # every model of the grid, before anything loads or trains
    planned = plan(cells)
    to_train = sum(any(s != "done" for s in status.values()) for _, status in planned)
    threads = job_threads(jobs, to_train) if jobs > 1 else None
    if dry_run:
        print_plan(planned, nproc, resume, progress, threads)
        return None
    started, stamp, load_start = time.perf_counter(), _now(), load_average()
    attempted: list[Job] = []
    failed: list[str] = []
    skipped, stopped = 0, None
    try:
        for i, (cell, status) in enumerate(planned, 1):
            done = [b for b, s in status.items() if s == "done"]
            todo = [b for b, s in status.items() if s != "done"]
            head = f"[{i}/{len(planned)}] {cell.name}"
            skipped += len(done)
            if not todo:
                _say(f"{head}: skipped, finished at {_bits(done)} bits ({cell.out})")
                continue
            why = [f"{b} bits {s}" for b, s in status.items() if s.startswith(("changed", "resume"))]
            line = (
                f"{head}: training {_bits(todo)} bits"
                + (f" (skipped {_bits(done)} bits: finished)" if done else "")
                + (f" ({'; '.join(why)})" if why else "")
                + f" -> {cell.out}"
            )
            attempted.append(Job(head, cell, todo, line))
            if jobs == 1:
                _say(line)
                train_cell(cell, todo, nproc, resume, progress)
        if jobs > 1:
            _say(f"training {len(attempted)} cell(s), {jobs} at a time, {threads} thread(s) each")
            failed = train_in_processes(attempted, jobs, threads, resume, progress)
    except BaseException as exc:
        stopped = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        raise
    finally:
        wall = time.perf_counter() - started
        trained = sum(bits_status(job.cell, b) == "done" for job in attempted for b in job.todo)
        if attempted:
            from hashlearn.benchmark.leaderboard import log_call

            record = {
                "started": stamp,
                "wall_seconds": round(wall, 1),
                "runs_trained": trained,
                "runs_skipped": skipped,
                "nproc": nproc,
                "jobs": jobs,
                "cpu_count": cpu_cores(),
                "load_average_start": load_start,
                "load_average_end": load_average(),
                "command": command,
            }
            if failed:
                record["cells_failed"] = len(failed)
            if stopped:
                record["stopped"] = stopped
            log_call(grid, record)
    _say(
        f"hashlearn benchmark {grid.name}: trained {trained} run(s), skipped {skipped} "
        f"finished run(s), {wall:.0f} s"
        + (f", {jobs} cells at a time" if jobs > 1 else "")
        + (f"; {len(failed)} cell(s) failed" if failed else "")
    )
    from hashlearn.benchmark.leaderboard import compact_table, leaderboard_paths, write_leaderboard

    results_dir = Path(results_dir) if results_dir is not None else grid.out
    doc = write_leaderboard(grid, results_dir, command=command)
    md, js = leaderboard_paths(grid.name, results_dir)
    print(f"{doc['title']}")
    print("\n".join(compact_table(doc)))
    print(f"leaderboard: {md} and {js}")
    if failed:
        raise HashlearnError(
            f"{len(failed)} of {len(attempted)} cell(s) failed (the leaderboard above has what finished): "
            + "; ".join(failed)
        )
    return doc


def print_plan(
    planned: list[tuple[Cell, dict[int, str]]],
    nproc: int = 1,
    resume: bool = True,
    progress: bool = True,
    threads: int | None = None,
) -> None:
    """Each cell: its code lengths' status and the command that trains the missing ones (``threads``: each
    one's ``train.threads`` when it trains in a process of its own, as with ``--jobs``)."""
    runs = sum(len(s) for _, s in planned)
    done = sum(v == "done" for _, s in planned for v in s.values())
    for cell, status in planned:
        todo = [b for b, s in status.items() if s != "done"]
        print(f"{cell.name}: " + ", ".join(f"{b} bits {s}" for b, s in status.items()))
        if todo:
            print(f"  $ {command_text(cell, todo, nproc, resume, progress, threads)}")
    print(f"{len(planned)} cells, {runs} runs: {done} done, {runs - done} to train")
