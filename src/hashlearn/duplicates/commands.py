"""``hashlearn duplicates DIR``: groups of near-duplicate images in a folder (standard library only here)."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Find groups of near-duplicate images (resized, recompressed, slightly cropped or edited copies) in DIR. "
    "Every image file is encoded with a hashing model -- by default the small model that ships with hashlearn "
    "(--model default; no download, no training) -- and images whose codes lie within --threshold bits of each "
    "other are joined into groups (exact Hamming range search; a chain of close pairs makes one group). Codes "
    "are cached under $HASHLEARN_CACHE/duplicates, so a second run encodes only new or changed files. "
    "Unreadable files, and images above the pixel limit ($HASHLEARN_MAX_IMAGE_PIXELS, default 100 megapixels), "
    "are skipped and listed. Nothing in DIR is ever written, moved or deleted."
)

JSON_HELP = (
    "print one JSON document on stdout instead of text: {folder, model, method, bits, model_fingerprint, "
    "threshold, images, encoded, cached, skipped: [{path, reason}], subfolders_not_searched, groups: "
    "[{size, max_distance, files: [{path, distance}]}]}; paths are relative to DIR, distance is to the "
    "group's first file"
)


def register(sub) -> None:
    p = sub.add_parser("duplicates", help="find groups of near-duplicate images in a folder",
                       description=DESCRIPTION)
    p.add_argument("folder", metavar="DIR", help="folder of images (read only)")
    p.add_argument("--threshold", "-t", type=int, default=None, metavar="R",
                   help="Hamming radius in bits: images within R bits are near-duplicates (default: the model's "
                        "own radius, written in its run.json; else bits/8)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", default=None, metavar="NAME",
                       help="a model that ships with hashlearn (default: default)")
    which.add_argument("--run", default=None, metavar="RUN", help="a run folder of hashlearn train instead "
                                                                  "(e.g. runs/bcdh/64bits), or a model file of "
                                                                  "hashlearn export (.hlm)")
    p.add_argument("--recursive", "-r", action="store_true", help="search subfolders too")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--html", default=None, metavar="REPORT.html",
                   help="also write a self-contained page with a thumbnail of every grouped image")
    p.add_argument("--no-cache", action="store_true", help="encode every file again and keep no codes")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary on stderr")
    p.set_defaults(func=run_duplicates)


def run_duplicates(args: argparse.Namespace) -> int:
    import json
    import sys

    from hashlearn.duplicates.find import check_folder, find_duplicates
    from hashlearn.duplicates.report import check_html_path, summary_lines, text_lines, write_html
    from hashlearn.errors import InputError

    check_folder(args.folder)
    if args.threshold is not None and args.threshold < 0:
        raise InputError(f"--threshold must be 0 or more bits, got {args.threshold}")
    if args.html is not None:
        check_html_path(args.html)
    report = find_duplicates(args.folder, threshold=args.threshold, model=args.model, run=args.run,
                             recursive=args.recursive, cache=not args.no_cache, progress=not args.quiet)
    if not args.quiet:
        for line in summary_lines(report):
            print(line, file=sys.stderr)
    if args.html is not None:
        path = write_html(report, args.html)
        if not args.quiet:
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(text_lines(report)))
    return 0
