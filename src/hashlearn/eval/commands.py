"""``hashlearn evaluate``: retrieval metrics for codes from any tool.

Only argparse/stdlib at import time; numpy and numba are imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Evaluate Hamming ranking of database codes for query codes, with labels deciding relevance.

Codes: the format comes from the file, never from the code values:
  * a .npz written by hashlearn carries packed codes and their bit count;
  * a uint8 .npy is packed (n, ceil(bits/8)), 8 x columns bits unless --bits says fewer;
    a uint8 .npy of 0/1 values needs --bits equal to its number of columns;
  * a bool, int8 or other integer/float .npy holds (n, bits) 0/1 or -1/+1 values.
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
    p.add_argument(
        "--bits",
        type=int,
        default=None,
        help="code length: for packed uint8 .npy codes shorter than 8 x columns, or = columns for uint8 0/1 codes",
    )
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
        help="write the precision-recall (over radii) and precision@N curves (.png, .pdf, .svg, ...; "
        "no extension: .png)",
    )
    p.add_argument("--report", metavar="OUT", default=None, help="write OUT.md and OUT.json reports")
    p.add_argument("--name", default="codes", help="method name used in the plot legend and reports")
    p.set_defaults(func=run)


def _load_codes(path_text: str, what: str, bits):
    """A codes file named by option ``what``; the format comes from the file (see DESCRIPTION)."""
    from hashlearn.codes.binary import load_codes

    return load_codes(Path(path_text), bits=bits, name=f"{what} {path_text}")


def _load_npy(path: Path, what: str):
    import zipfile

    import numpy as np

    from hashlearn.errors import InputError, NotFoundError

    if path.is_dir():
        raise InputError(f"{what} {path}: is a folder, not a .npy file")
    if not path.is_file():
        raise NotFoundError(f"{what}: file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{what}: cannot read {path} as a .npy array ({npy_reason(exc)})") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise InputError(f"{what}: {path} holds several arrays (.npz); give a single .npy array")
    if arr.dtype != bool and arr.dtype.kind not in "iuf":
        raise InputError(f"{what} {path}: expected numeric labels, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise InputError(f"{what} {path}: expected class indices (n,) or multi-hot (n, C), got shape {arr.shape}")
    return arr


def npy_reason(exc: Exception) -> str:
    """Why numpy could not load a file, in a few words (numpy's pickle advice does not apply)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "pickle" in text:
        return "not a .npy file, or it holds Python objects, which are never loaded"
    return text


def run(args) -> int:
    from hashlearn.errors import InputError
    from hashlearn.eval.metrics import parse_topk

    # Cheap checks first: a typo must not cost the whole computation.
    try:
        topk = parse_topk(args.topk)
    except InputError as exc:
        raise InputError(f"--{exc}") from None  # "topk: ..." → "--topk: ..."
    if args.radius < 0:
        raise InputError(f"--radius: expected a non-negative integer, got {args.radius}")
    if args.bits is not None and args.bits < 1:
        raise InputError(f"--bits: expected a positive number of bits, got {args.bits}")
    plot = None
    if args.plot:
        from hashlearn.eval.plots import check_plot_path

        plot = check_plot_path(args.plot, "--plot")
    if args.report:
        from hashlearn.eval.plots import check_writable
        from hashlearn.eval.result import report_paths

        for target in report_paths(args.report):
            check_writable(target, "--report")

    query = _load_codes(args.query_codes, "--query-codes", args.bits)
    db = _load_codes(args.db_codes, "--db-codes", args.bits)
    for codes, flag, file in ((query, "--query-codes", args.query_codes), (db, "--db-codes", args.db_codes)):
        if len(codes) == 0:
            raise InputError(f"{flag} {file}: holds no codes")
    if query.bits != db.bits:
        raise InputError(
            f"bit-length mismatch: --query-codes {args.query_codes} holds {query.bits}-bit codes but "
            f"--db-codes {args.db_codes} holds {db.bits}-bit codes"
        )
    query_labels = _load_npy(Path(args.query_labels), "--query-labels")
    db_labels = _load_npy(Path(args.db_labels), "--db-labels")
    for labels, label_file, label_flag, codes, codes_file, codes_flag in (
        (query_labels, args.query_labels, "--query-labels", query, args.query_codes, "--query-codes"),
        (db_labels, args.db_labels, "--db-labels", db, args.db_codes, "--db-codes"),
    ):
        if labels.ndim in (1, 2) and len(labels) != len(codes):
            raise InputError(
                f"{label_flag} {label_file} has {len(labels)} labels "
                f"but {codes_flag} {codes_file} has {len(codes)} codes"
            )

    from hashlearn.eval.metrics import evaluate

    bits = query.bits
    # bits=1: packed and unpacked widths coincide; hand the evaluator unambiguous bool codes
    q_codes, d_codes = (query.unpacked().astype(bool), db.unpacked().astype(bool)) if bits == 1 else (
        query.packed, db.packed)
    try:
        result = evaluate(
            q_codes,
            d_codes,
            query_labels,
            db_labels,
            topk=topk,
            radius=args.radius,
            ties=args.ties,
            skip_empty=args.skip_empty,
            bits=bits,
        )
    except InputError as exc:
        # the evaluator names its inputs "query labels" / "database labels": name the files instead
        text = str(exc)
        for role, flag, file in (("query labels", "--query-labels", args.query_labels),
                                 ("database labels", "--db-labels", args.db_labels)):  # fmt: skip
            if text.startswith(role + ":"):
                raise InputError(f"{flag} {file}{text[len(role):]}") from None
        raise
    if plot is not None:
        from hashlearn.eval.plots import plot_curves

        plot = plot_curves({args.name: result}, plot)
    if args.report:
        from hashlearn.eval.result import write_report

        write_report({args.name: result}, args.report)
    if args.json:
        print(result.to_json(curves=args.curves))
    else:
        sys.stdout.write(result.to_table())
        if plot is not None:
            print(f"plot: {plot}")
    return 0
