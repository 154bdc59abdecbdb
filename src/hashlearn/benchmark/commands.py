"""Command ``benchmark`` (argparse only at import time)."""

from __future__ import annotations

import argparse
import shlex

from hashlearn._argtypes import int_arg


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated method names, got {text!r}")
    return names


def register(sub) -> None:
    p = sub.add_parser(
        "benchmark",
        help="run a grid of training runs (methods × bits × datasets × backbones × seeds) and write its leaderboard",
        description="Train what the grid of CONFIG is missing (one `hashlearn train` output folder per method, "
        "dataset, backbone and seed, all code lengths inside; finished runs are skipped, killed ones "
        "resume), then write leaderboard-NAME.md/.json (mean ± std over seeds) with the curves of each "
        "method's best run, and print the table. CONFIG is a YAML file or the name of a config shipped "
        "in hashlearn/configs/benchmarks/ (e.g. cifar10-1; an unknown name lists them).",
    )
    p.add_argument("config", metavar="CONFIG", help="a benchmark YAML file, or a shipped config's name")
    p.add_argument(
        "--only",
        type=_names,
        metavar="METHOD,...",
        help="train only these methods (labels or method names); the leaderboard still shows every "
        "finished run of the grid",
    )
    p.add_argument(
        "--nproc",
        type=int_arg(1, 1024),
        default=1,
        metavar="N",
        help="train each deep run data-parallel on N processes (torchrun: gloo on the CPU, one GPU each "
        "with NCCL); the config's batch_size is the global batch",
    )
    p.add_argument(
        "--jobs",
        type=int_arg(1, 1024),
        default=1,
        metavar="N",
        help="train N cells at once, each in a `hashlearn train` process of its own with train.threads = "
        "cores / N (unless the config sets it) and its output in a log beside the cell's folder (.../seed0.log); "
        "a failed cell does not stop the others (on a small CPU, N one-thread runs are faster than one run on N "
        "threads); not with --nproc",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print each cell, which code lengths are done, and the command that trains the others",
    )
    p.add_argument("--out", help="folder of the run folders (default: the config's out, else runs/benchmarks/NAME)")
    p.add_argument(
        "--results",
        metavar="DIR",
        help="where leaderboard-NAME.md/.json and the curves go (default: the run folders' folder)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="runs that are not finished start over instead of resuming from their checkpoint",
    )
    p.add_argument("--quiet", action="store_true", help="no training progress (one line per cell stays)")
    p.add_argument(
        "--readme",
        metavar="FILE",
        help="only rewrite FILE's section between <!-- leaderboard:NAME start --> and <!-- "
        "leaderboard:NAME end --> from the leaderboard JSON in --results (a sentence saying the grid "
        "has not been run when it does not exist); trains nothing",
    )
    p.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args) -> int:
    from pathlib import Path

    from hashlearn.benchmark.grid import load_grid
    from hashlearn.benchmark.leaderboard import leaderboard_paths, update_readme
    from hashlearn.benchmark.run import run_benchmark
    from hashlearn.errors import InputError

    grid = load_grid(args.config, out=args.out)
    results = Path(args.results) if args.results else grid.out
    if args.readme:
        if args.only or args.dry_run or args.nproc != 1 or args.jobs != 1 or args.no_resume:
            raise InputError(
                "--readme only rewrites the README section; give it without --only, --nproc, --jobs, --dry-run and "
                "--no-resume"
            )
        _, json_path = leaderboard_paths(grid.name, results)
        changed = update_readme(args.readme, grid.name, args.config, json_path)
        state = "from " + str(json_path) if json_path.is_file() else f"(no {json_path} yet: the grid has not been run)"
        print(f"{args.readme}: leaderboard:{grid.name} section {'rewritten' if changed else 'unchanged'} {state}")
        return 0
    words = [args.config]
    for option, value in (("--only", ",".join(args.only or [])), ("--out", args.out), ("--results", args.results)):
        if value:
            words += [option, value]
    for option, number in (("--nproc", args.nproc), ("--jobs", args.jobs)):
        if number != 1:
            words += [option, str(number)]
    run_benchmark(
        grid,
        only=args.only,
        nproc=args.nproc,
        jobs=args.jobs,
        dry_run=args.dry_run,
        resume=not args.no_resume,
        progress=not args.quiet,
        results_dir=results,
        command="hashlearn benchmark " + shlex.join(words),
    )
    return 0
