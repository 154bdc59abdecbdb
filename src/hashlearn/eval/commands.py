"""``hashlearn evaluate``: retrieval metrics for codes from any tool.

Only argparse/stdlib at import time; numpy and numba are imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Evaluate Hamming ranking of database codes for query codes, with labels deciding relevance.

Codes: .npy arrays of shape (n, bits) with 0/1 or -1/+1 values, or packed uint8
(n, ceil(bits/8)) with --bits, or a .npz written by hashlearn (packed codes + bits).
Labels: .npy class indices (n,) or multi-hot (n, C); multi-hot items are relevant when they
share a label, and NDCG/ACG/weighted mAP are added (graded by the number of shared labels).

Ties in Hamming distance: 'expected' (default) is the exact expected value over all orders
of tied items; 'index' breaks ties by database index. A query with no relevant item in its
top R scores 0 (--skip-empty drops such queries). Within radius r, a query that retrieves
nothing has precision 0. mAP@all ranks all N database items.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="mAP@R, precision@N, precision/recall within a Hamming radius, NDCG/ACG for codes + labels",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--query-codes", required=True, metavar="Q.npy", help="query codes (.npy or hashlearn .npz)")
    p.add_argument("--db-codes", required=True, metavar="D.npy", help="database codes (.npy or hashlearn .npz)")
    p.add_argument("--query-labels", required=True, metavar="QL.npy", help="query labels: (n,) classes or (n, C)")
    p.add_argument("--db-labels", required=True, metavar="DL.npy", help="database labels: (n,) classes or (n, C)")
    p.add_argument("--bits", type=int, default=None, help="code length, when the codes are packed uint8")
    p.add_argument(
        "--topk",
        default="1000,all",
        metavar="R[,R...]",
        help="cutoffs R for mAP@R (and NDCG/ACG@R), 'all' = all N items (default: 1000,all)",
    )
    p.add_argument("--radius", type=int, default=2, help="Hamming radius for P/R/F1 within radius (default: 2)")
    p.add_argument(
        "--ties",
        choices=("expected", "index"),
        default="expected",
        help="tie rule for equal distances (default: expected)",
    )
    p.add_argument(
        "--skip-empty",
        action="store_true",
        help="average mAP@R only over queries with a relevant item in their top R (default: they score 0)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--curves", action="store_true", help="with --json, include the PR and precision@N curves")
    p.add_argument(
        "--plot",
        metavar="OUT.png",
        default=None,
        help="write the precision-recall (over radii) and precision@N curves as a PNG",
    )
    p.add_argument("--report", metavar="OUT", default=None, help="write OUT.md and OUT.json reports")
    p.add_argument("--name", default="codes", help="method name used in the plot legend and reports")
    p.set_defaults(func=run)


def _load_codes(path_text: str, what: str):

    from hashlearn.errors import NotFoundError

    path = Path(path_text)
    if not path.is_file():
        raise NotFoundError(f"{what}: file not found: {path}")
    if path.suffix == ".npz":
        from hashlearn.codes import load_codes

        codes = load_codes(path)
        return codes.packed, codes.bits
    return _load_npy(path, what), None


def _load_npy(path: Path, what: str):
    import numpy as np

    from hashlearn.errors import InputError, NotFoundError

    if not path.is_file():
        raise NotFoundError(f"{what}: file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{what}: cannot read {path} as a .npy array ({reason})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{what}: {path} holds several arrays (.npz); give a single .npy array")
    return arr


def run(args) -> int:
    from hashlearn.errors import InputError

    query_codes, q_bits = _load_codes(args.query_codes, "--query-codes")
    db_codes, d_bits = _load_codes(args.db_codes, "--db-codes")
    query_labels = _load_npy(Path(args.query_labels), "--query-labels")
    db_labels = _load_npy(Path(args.db_labels), "--db-labels")
    bits = args.bits
    for file_bits in (q_bits, d_bits):
        if file_bits is not None:
            if bits is not None and bits != file_bits:
                raise InputError(f"--bits {bits} does not match the {file_bits}-bit codes file")
            bits = file_bits

    from hashlearn.eval.metrics import evaluate

    result = evaluate(
        query_codes,
        db_codes,
        query_labels,
        db_labels,
        topk=args.topk,
        radius=args.radius,
        ties=args.ties,
        skip_empty=args.skip_empty,
        bits=bits,
    )
    if args.plot:
        from hashlearn.eval.plots import plot_curves

        plot_curves({args.name: result}, args.plot)
    if args.report:
        from hashlearn.eval.result import write_report

        write_report({args.name: result}, args.report)
    if args.json:
        print(result.to_json(curves=args.curves))
    else:
        sys.stdout.write(result.to_table())
        if args.plot:
            print(f"plot: {args.plot}")
    return 0
