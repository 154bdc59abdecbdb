"""Speed of the evaluator against the usual research evaluation loop.

    .venv/bin/python bench/eval_speed.py            # writes docs/results/eval-speed.md

Workload (the issue's): 10,000 queries × 50,000 database items, 64-bit codes, 10 classes,
mAP@all with ``expected`` ties. Codes are clustered (noisy copies of one centre code per
class), so there are many ties in Hamming distance, as with learned codes.

The reference is the loop found in most deep-hashing code bases, written here: per query,
float Hamming distances ``(bits − B_q·B_dᵀ)/2`` from ±1 codes, a full argsort, cumulative
precision. It is timed on a subset of the queries and extrapolated per query (stated in
the results). Both are measured in the same process, run after run, so they see the same
machine load. The fast path with ``index`` ties must reproduce the reference mAP (the
reference uses a stable argsort, i.e. the same database-index tie rule).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def clustered_codes(n_query, n_db, bits, classes, flip, seed):
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (classes, bits), dtype=np.uint8)
    q_labels = rng.integers(0, classes, n_query)
    d_labels = rng.integers(0, classes, n_db)
    q = centres[q_labels] ^ (rng.random((n_query, bits)) < flip).astype(np.uint8)
    d = centres[d_labels] ^ (rng.random((n_db, bits)) < flip).astype(np.uint8)
    return q, d, q_labels, d_labels


def reference_map(q01, d01, q_labels, d_labels):
    """The usual research loop: float Hamming via inner products, full argsort, cumsum."""
    bits = q01.shape[1]
    qb = q01.astype(np.float64) * 2 - 1
    db = d01.astype(np.float64) * 2 - 1
    aps = np.zeros(len(qb))
    for i in range(len(qb)):
        hamming = 0.5 * (bits - db @ qb[i])
        order = np.argsort(hamming, kind="stable")
        relevant = (d_labels[order] == q_labels[i]).astype(np.float64)
        n_rel = relevant.sum()
        if n_rel == 0:
            continue
        precision_at = np.cumsum(relevant) / np.arange(1, len(relevant) + 1)
        aps[i] = (precision_at * relevant).sum() / n_rel
    return float(aps.mean())


def cli_start_seconds(args, repeats=5):
    script = Path(sys.executable).parent / "hashlearn"
    exe = [str(script), *args] if script.exists() else [sys.executable, "-m", "hashlearn.cli", *args]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(exe, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--db", type=int, default=50_000)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--flip", type=float, default=0.2, help="bit-flip probability around the class centre")
    p.add_argument("--ref-queries", type=int, default=400, help="queries the reference loop is timed on")
    p.add_argument("--runs", type=int, default=3, help="repeat the side-by-side measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "eval-speed.md"))
    args = p.parse_args(argv)

    import numba

    from hashlearn.eval import evaluate

    q, d, ql, dl = clustered_codes(args.queries, args.db, args.bits, args.classes, args.flip, args.seed)
    ref_idx = np.linspace(0, args.queries - 1, min(args.ref_queries, args.queries)).astype(int)

    # load/compile the kernels outside the timings
    evaluate(q[:50], d[:500], ql[:50], dl[:500], topk=("all",))
    evaluate(q[:50], d[:500], ql[:50], dl[:500], topk=("all",), ties="index")

    # how tied is the workload: mean size of the tie group of a database item, per query
    sample = (q[:20, None, :] != d[None, :, :]).sum(-1)
    tie_sizes = [np.bincount(row)[row].mean() for row in sample]

    runs = []
    for run in range(args.runs):
        t0 = time.perf_counter()
        fast = evaluate(q, d, ql, dl, topk=("all",), ties="expected")
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        fast_index = evaluate(q, d, ql, dl, topk=("all",), ties="index")
        t_fast_index = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = reference_map(q[ref_idx], d, ql[ref_idx], dl)
        t_ref_subset = time.perf_counter() - t0
        t_ref = t_ref_subset / len(ref_idx) * args.queries
        sub = evaluate(q[ref_idx], d, ql[ref_idx], dl, topk=("all",), ties="index").map["all"]
        runs.append(
            {
                "fast": t_fast,
                "fast_index": t_fast_index,
                "ref_subset": t_ref_subset,
                "ref": t_ref,
                "ratio": t_ref / t_fast,
                "ratio_index": t_ref / t_fast_index,
                "map_expected": fast.map["all"],
                "map_index": fast_index.map["all"],
                "ref_map_subset": ref,
                "fast_map_subset": sub,
            }
        )
        r = runs[-1]
        print(
            f"run {run + 1}: fast(expected) {t_fast:.2f}s, fast(index) {t_fast_index:.2f}s, "
            f"reference {t_ref:.1f}s (extrapolated from {len(ref_idx)} queries, {t_ref_subset:.2f}s), "
            f"ratio {r['ratio']:.0f}x; mAP subset ref {ref:.10f} vs fast {sub:.10f}",
            flush=True,
        )

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    help_top = cli_start_seconds(["--help"])
    help_eval = cli_start_seconds(["evaluate", "--help"])
    ratios = [r["ratio"] for r in runs]
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])])
    max_diff = max(abs(r["ref_map_subset"] - r["fast_map_subset"]) for r in runs)

    lines = [
        "# Evaluator speed: one-pass bucketed evaluation vs the usual research loop",
        "",
        "Generated by `bench/eval_speed.py` (do not edit by hand).",
        "",
        f"- date (UTC): {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')}",
        f"- command: `{command}`",
        f"- machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} logical cores "
        f"(shared with other jobs while measuring), Python {platform.python_version()}, numpy {np.__version__}, "
        f"numba {numba.__version__}",
        f"- load average (1/5/15 min) at the end of the runs: {load}",
        f"- numba threads: {numba.get_num_threads()} (threading layer: {numba.threading_layer()})",
        f"- workload: {args.queries:,} queries × {args.db:,} database items, {args.bits} bits, {args.classes} classes, "
        f"clustered codes (class centre with each bit flipped w.p. {args.flip}); mAP@all (all N items)",
        f"- ties: a database item shares its Hamming distance with {statistics.mean(tie_sizes):,.0f} items on average "
        "(so the tie rule matters)",
        f"- reference loop: per query float Hamming `(bits − B_q·B_dᵀ)/2`, full stable argsort, cumulative precision "
        f"(in this script); timed on {len(ref_idx)} evenly spaced queries and **extrapolated per query** to "
        f"{args.queries:,}",
        "",
        "| run | fast, expected ties (s) | fast, index ties (s) | reference, extrapolated (s) | speed-up (expected) "
        "| speed-up (index) |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['fast']:.2f} | {r['fast_index']:.2f} | {r['ref']:.1f} | {r['ratio']:.0f}× "
            f"| {r['ratio_index']:.0f}× |"
        )
    lines += [
        "",
        f"Speed-up (reference ÷ fast, expected ties): min {min(ratios):.0f}×, median {statistics.median(ratios):.0f}×, "
        f"max {max(ratios):.0f}× over {len(runs)} runs. The machine is shared, so single timings vary; the "
        "side-by-side ratio within a run is the figure to read.",
        "",
        f"- mAP@all, expected ties: {runs[0]['map_expected']:.6f}; index ties: {runs[0]['map_index']:.6f}",
        f"- agreement on the {len(ref_idx)} reference queries (index ties): "
        f"reference {runs[0]['ref_map_subset']:.12f}, fast {runs[0]['fast_map_subset']:.12f}, "
        f"largest difference over runs {max_diff:.1e}",
        "",
        "CLI start-up (subprocess `hashlearn …`, 5 runs, min / median seconds; the help path imports no numba "
        "or torch, but does import every step's `commands` module):",
        "",
        f"- `hashlearn --help`: {help_top[0]:.2f} / {help_top[1]:.2f}",
        f"- `hashlearn evaluate --help`: {help_eval[0]:.2f} / {help_eval[1]:.2f}",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
