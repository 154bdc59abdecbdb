"""``hashlearn index build|add|remove|info|verify|repair|compact|export`` and ``hashlearn search``."""

from __future__ import annotations

import argparse

CODES_FORMAT_HELP = (
    "A codes file is a hashlearn .npz (as train and encode write; it holds its bits) or a .npy array. "
    "The format of a .npy is decided by its dtype and shape (and --bits), never by its values: with --bits B, "
    "ceil(B/8) uint8 columns are packed codes and B columns are one 0/1 or -1/+1 value per bit; without "
    "--bits, a uint8 array is packed codes (bits = 8 x columns) and any other dtype (bool, int8, ..., float) "
    "holds one value per bit (bits = columns). Give --bits for uint8 0/1 arrays (as hashlearn.codes.to_01 makes)."
)


K_MAX = 2**31 - 1  # larger -k is a typo, not a request: refused rather than clamped
PLOT_QUERIES, PLOT_RESULTS = 10, 20  # what search --plot draws at most
ROOT_SAMPLE = 20  # relative paths checked on disk to choose the folder they are relative to

ROOT_HELP = (
    "folder that relative image paths are relative to (e.g. the folder given to encode --images), recorded in"
    " the collection so that search shows paths that open from anywhere (default: whichever of these holds the"
    " first files: the folder of --paths (or of a codes file whose ids are paths), the current folder{more})"
)


def register(sub) -> None:
    index = sub.add_parser("index", help="build and manage a collection of codes on disk")
    isub = index.add_subparsers(dest="index_command", metavar="ACTION", parser_class=type(index))
    index.set_defaults(func=lambda args: _help(index))

    p = isub.add_parser(
        "build",
        help="create a collection from a codes file",
        description="Create a collection. --out must not exist or be an empty folder; the collection is built in a"
        " temporary sibling folder and renamed into place, so a failed or killed build leaves --out as it was. "
        + CODES_FORMAT_HELP,
    )
    _codes_args(p)
    p.add_argument("--out", required=True, metavar="COLLECTION", help="collection folder to create (new or empty)")
    p.add_argument("--bits", type=int, help="code length (default: from the codes file, see above)")
    p.add_argument("--root", metavar="DIR", help=ROOT_HELP.format(more=""))
    p.set_defaults(func=cmd_build)

    p = isub.add_parser("add", help="append codes to a collection (atomic)", description=CODES_FORMAT_HELP)
    p.add_argument("collection", metavar="COLLECTION")
    _codes_args(p)
    p.add_argument("--root", metavar="DIR", help=ROOT_HELP.format(more=", the collection's recorded root"))
    _lock_arg(p)
    p.set_defaults(func=cmd_add)

    p = isub.add_parser("remove", help="remove codes by id (atomic)")
    p.add_argument("collection", metavar="COLLECTION")
    p.add_argument("--ids", required=True, help="ids: a .npy file or a comma-separated list (0 to 2**63-1)")
    _lock_arg(p)
    p.set_defaults(func=cmd_remove)

    p = isub.add_parser(
        "info",
        help="describe a collection and check it (exit 2 when damaged)",
        description="Counts and sizes; checks every segment's length and every batch's checksum (as fast as a"
        " search reads the codes). Exit status 2 when anything is damaged.",
    )
    p.add_argument("collection", metavar="COLLECTION")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="check the segments' lengths only, not the checksums")
    p.set_defaults(func=cmd_info)

    p = isub.add_parser(
        "verify",
        help="check every checksum of a collection (exit 0 when sound, 2 when damaged)",
        description="Check SQLite's integrity, every segment's length and every batch's sha256, and that every"
        " item points at a committed row. Prints what is damaged; exit status 2 when anything is.",
    )
    p.add_argument("collection", metavar="COLLECTION")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = isub.add_parser(
        "repair",
        help="drop the damaged parts of a collection (reports how many codes that drops)",
        description="Drop every checksummed batch (up to 65,536 codes written by one add or compact) whose bytes"
        " are missing, truncated or changed, and the items that point at nothing; rewrite the rest as compact"
        " does. A sound collection is left as it is. A damaged SQLite database cannot be repaired.",
    )
    p.add_argument("collection", metavar="COLLECTION")
    _lock_arg(p)
    p.set_defaults(func=cmd_repair)

    p = isub.add_parser(
        "compact",
        help="rewrite the live codes, reclaiming removed rows (atomic, crash-safe)",
        description="Rewrite the live codes into new segments and switch to them in one transaction; removed"
        " codes and the leftovers of killed writers are deleted. A kill leaves the collection as it was or as"
        " compacted, with the same codes and metadata.",
    )
    p.add_argument("collection", metavar="COLLECTION")
    _lock_arg(p)
    p.set_defaults(func=cmd_compact)

    p = isub.add_parser("export", help="write a collection as a FAISS binary index")
    p.add_argument("collection", metavar="COLLECTION")
    p.add_argument("--faiss", required=True, metavar="OUT.index")
    p.add_argument("--kind", choices=["flat", "hnsw", "ivf"], default="flat")
    p.set_defaults(func=cmd_export)

    s = sub.add_parser(
        "search",
        help="nearest codes in a collection or codes file",
        description="Exact Hamming search. Query codes: a hashlearn .npz codes file, or a .npy array whose width"
        " decides its layout against the database's bits (ceil(bits/8) uint8 columns: packed; bits columns:"
        " one 0/1 or -1/+1 value per bit). Each query's results end with how many codes share the k-th distance"
        " and how many of them were shown ('10 of 422 at distance 0'; in --json: kth_distance, tied_at_kth,"
        " tied_in_results). Image paths are shown as they open from the current folder (relative ones joined"
        " to the folder recorded by index build --root).",
    )
    db = s.add_mutually_exclusive_group(required=True)
    db.add_argument("--collection", metavar="DIR")
    db.add_argument(
        "--codes", metavar="FILE.npz", help="a hashlearn codes file (.npz, as train and encode write; not a .npy)"
    )
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--query-codes", metavar="Q", help="query codes: a .npz codes file, or a .npy (packed, 0/1 or ±1)")
    q.add_argument("--image", metavar="IMAGE", help="a query image, encoded by the model of --run")
    s.add_argument("--run", metavar="RUN", help="training run directory or exported model file (.hlm) (with --image)")
    s.add_argument(
        "-k", type=int, default=10,
        help="neighbours per query (default 10; at most 2^31-1; more than the database holds: all of it)",
    )
    s.add_argument("--radius", type=int, help="range search: every code within this distance")
    s.add_argument("--method", choices=["auto", "flat", "mih"], default="auto")
    s.add_argument(
        "--ties",
        choices=("index", "random"),
        default="index",
        help="order of codes at equal distance: 'index' (default) by id; 'random' a seeded random order, the"
        " codes at the k-th distance drawn from its whole tie group",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of --ties random (default 0)")
    s.add_argument(
        "--root",
        metavar="DIR",
        help="folder that relative image paths are relative to (default: the collection's recorded root; for"
        " --codes, with --root the string ids are shown as paths under it)",
    )
    s.add_argument(
        "--plot",
        metavar="OUT.png",
        help=f"draw the query image (with --image; a placeholder for codes) and its results, from their stored"
        f" paths (missing files: grey tiles); at most {PLOT_QUERIES} queries and {PLOT_RESULTS} results each"
        " (.png, .pdf, .svg, ...; no extension: .png)",
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_search)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _codes_args(p) -> None:
    p.add_argument(
        "--codes", required=True, metavar="C", help="codes: a hashlearn .npz, or a .npy (packed uint8, or 0/1/±1)"
    )
    p.add_argument("--ids", metavar="I.npy", help="ids (.npy, integers 0 to 2**63-1), default: next free ids")
    p.add_argument("--paths", metavar="P.txt", help="one image path per line (UTF-8)")
    p.add_argument("--labels", metavar="L.txt", help="one label per line (UTF-8)")


def _lock_arg(p) -> None:
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for another writer of the collection (default 5)",
    )


def _check_file(path: str, what: str) -> None:
    from pathlib import Path

    from hashlearn.errors import InputError, NotFoundError

    p = Path(path)
    if not p.exists():
        raise NotFoundError(f"{what} file not found: {path}")
    if p.is_dir():
        raise InputError(f"{what} file {path}: is a folder, not a file")


def _file_kind(path: str, what: str) -> str:
    """``"npz"`` (a zip archive), ``"npy"`` or ``"other"``, from the file's first bytes."""
    _check_file(path, what)
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"PK"):
        return "npz"
    if head == b"\x93NUMPY":
        return "npy"
    return "other"


def _load_array(path: str, what: str):
    """A ``.npy`` array (never pickled objects); one-line errors for anything else."""
    import numpy as np

    from hashlearn.errors import InputError

    if _file_kind(path, what) == "npz":
        raise InputError(f"{what} file {path}: a .npz archive, expected a .npy array")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{what} file {path} is not a .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{what} file {path} is not a .npy array")
    return arr


def _load_codes_file(path: str, what: str):
    """A hashlearn codes file (``hashlearn.codes.load_codes``), with one-line errors for a file that is
    not one (a damaged zip, missing or malformed members, ids that do not match the codes)."""
    import zipfile

    import numpy as np

    from hashlearn.codes import load_codes
    from hashlearn.errors import HashlearnError, InputError

    _check_file(path, what)
    try:
        cs = load_codes(path)
    except HashlearnError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, IndexError, AttributeError, EOFError, OSError) as exc:
        raise InputError(f"{what} file {path}: not a hashlearn codes file ({type(exc).__name__}: {exc})") from None
    ids = np.asarray(cs.ids)
    if ids.ndim != 1 or len(ids) != len(cs.packed):
        raise InputError(f"{what} file {path}: {ids.shape[0] if ids.ndim else 0} ids for {len(cs.packed)} codes")
    return cs


def _lines(path, what: str):
    """Lines of a UTF-8 text file (``None`` when no file is given)."""
    if path is None:
        return None
    from hashlearn.errors import InputError

    _check_file(path, what)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{what} file {path}: not UTF-8 text (line {line}, byte {exc.start})") from None
    return text.splitlines()


def _read_codes(args):
    """``(codes array, bits of a .npz or None, ids or None, paths or None, image root or None)`` from
    ``--codes`` (.npy or .npz), ``--ids`` and ``--paths``.

    A hashlearn codes file whose ids are strings (``hashlearn encode --images`` writes
    image paths) gets integer ids from the collection and keeps the strings as paths; the folder
    they are relative to is the file's recorded ``image_root`` (``encode --images`` records it).
    """
    import numpy as np

    from hashlearn.errors import InputError

    ids = image_root = None
    paths = _lines(args.paths, "paths")
    kind = _file_kind(args.codes, "codes")
    if kind == "npz":
        cs = _load_codes_file(args.codes, "codes")
        codes, bits, ids = cs.packed, cs.bits, cs.ids
        if not np.issubdtype(ids.dtype, np.integer):
            if paths is None:
                paths, image_root = [str(i) for i in ids], cs.meta.get("image_root")
            ids = None
    elif kind == "npy":
        codes, bits = _load_array(args.codes, "codes"), None
    else:
        raise InputError(f"codes file {args.codes}: neither a .npy array nor a hashlearn .npz codes file")
    if getattr(args, "ids", None):
        ids = _load_array(args.ids, "ids")
    return np.asarray(codes), bits, ids, paths, image_root


def _infer_bits(codes, file_bits, bits, path="codes"):
    """The code length: a .npz says it; otherwise ``--bits``; otherwise the dtype and width decide
    (never the values): ``uint8`` is packed (8 bits a column), any other numeric dtype one value per
    bit. The layout of a .npy against the bits is then :func:`hashlearn.codes.as_packed`'s rule."""
    from hashlearn.errors import InputError
    from hashlearn.index.hamming import MAX_BITS

    if file_bits is not None:
        if bits and bits != file_bits:
            raise InputError(f"--bits {bits}, but the codes file {path} holds {file_bits}-bit codes")
        return file_bits
    if bits:
        return bits
    if codes.ndim != 2:
        raise InputError(f"codes file {path}: expected a 2-D array (codes, bits or bytes), got shape {codes.shape}")
    if codes.dtype.kind not in "biuf":
        raise InputError(f"codes file {path}: expected numeric binary codes, got dtype {codes.dtype}")
    if codes.dtype.name == "uint8":
        if codes.shape[1] * 8 > MAX_BITS:
            raise InputError(
                f"codes file {path}: a uint8 array of {codes.shape[1]} columns is read as packed {codes.shape[1] * 8}"
                f"-bit codes (more than {MAX_BITS}); give --bits if it holds one 0/1 value per bit"
            )
        return codes.shape[1] * 8  # packed bytes
    return codes.shape[1]


def _folder_arg(path: str, option: str) -> str:
    """An existing folder named by ``option``, absolute."""
    import os

    from hashlearn.errors import InputError, NotFoundError

    if not os.path.exists(path):
        raise NotFoundError(f"{option} {path}: folder not found")
    if not os.path.isdir(path):
        raise InputError(f"{option} {path}: not a folder")
    return os.path.abspath(path)


def _paths_root(args, paths, recorded=None, image_root=None):
    """``(root, note)``: the folder that the relative ``paths`` are relative to.

    ``--root`` when given; otherwise, of the codes file's recorded ``image_root``, the folder of the
    ``--paths`` file (or of a codes file whose ids are paths), the current folder and the
    collection's ``recorded`` root, the first in
    which the most of the first relative paths exist. ``note`` says when some of them are not found
    there; ``root`` is ``None`` when no path is relative and no ``--root`` is given.
    """
    import os

    if args.root:
        candidates = [_folder_arg(args.root, "--root")]
    else:
        source = args.paths if args.paths is not None else args.codes
        candidates = [image_root, os.path.dirname(os.path.abspath(source)), os.getcwd(), recorded]
        candidates = list(dict.fromkeys(c for c in candidates if c))
    relative = [p for p in (paths or [])[: 10 * ROOT_SAMPLE] if p and not os.path.isabs(p)][:ROOT_SAMPLE]
    if not relative:
        return (candidates[0] if args.root else None), None
    found = [sum(os.path.exists(os.path.join(c, p)) for p in relative) for c in candidates]
    best = max(range(len(candidates)), key=lambda i: (found[i], -i))
    root, note = candidates[best], None
    if found[best] < len(relative):
        note = (
            f"note: {len(relative) - found[best]} of the first {len(relative)} relative image paths are not found"
            f" under {root}; if they are relative to another folder, give it as --root"
        )
    return root, note


def cmd_build(args) -> int:
    import sys

    from hashlearn.index.collection import Collection

    codes, file_bits, ids, paths, image_root = _read_codes(args)
    bits = _infer_bits(codes, file_bits, args.bits, args.codes)
    labels = _lines(args.labels, "labels")
    root, note = _paths_root(args, paths, image_root=image_root)
    with Collection.build(args.out, bits, codes, ids=ids, paths=paths, labels=labels, root=root) as coll:
        n = len(coll)
    if note:
        print(note, file=sys.stderr)
    where = f"; image paths relative to {root}" if root else ""
    print(f"built {args.out}: {n} codes of {bits} bits{where}")
    return 0


def cmd_add(args) -> int:
    import sys

    from hashlearn.errors import InputError
    from hashlearn.index.collection import Collection

    codes, file_bits, ids, paths, image_root = _read_codes(args)
    labels = _lines(args.labels, "labels")
    with Collection.open(args.collection, readonly=False, lock_timeout=args.lock_timeout) as coll:
        if file_bits is not None and file_bits != coll.bits:
            raise InputError(
                f"codes file {args.codes} holds {file_bits}-bit codes; the collection has {coll.bits}-bit codes"
            )
        root, note = _paths_root(args, paths, recorded=coll.root, image_root=image_root)
        added = coll.add(codes, ids=ids, paths=paths, labels=labels, root=root)
        if note:
            print(note, file=sys.stderr)
        print(f"added {len(added)} codes to {args.collection} (now {len(coll)})")
    return 0


def _parse_ids(text: str):
    """``--ids``: comma-separated integers, or a .npy file."""
    import re

    from hashlearn.errors import InputError

    if re.fullmatch(r"[\s\d,+-]*\d[\s\d,+-]*", text):
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            pass
    elif text.endswith(".npy") or "," not in text:
        return _load_array(text, "ids")
    raise InputError(f"--ids: expected a .npy file or comma-separated integers, got {text[:80]!r}")


def cmd_remove(args) -> int:
    from hashlearn.index.collection import Collection
    from hashlearn.index.hamming import check_ids

    ids = _parse_ids(args.ids)
    ids = check_ids(ids if isinstance(ids, list) else ids.ravel(), unique=False, name="--ids")
    with Collection.open(args.collection, readonly=False, lock_timeout=args.lock_timeout) as coll:
        n = coll.remove(ids)
        print(f"removed {n} codes from {args.collection} (now {len(coll)})")
    return 0


def cmd_info(args) -> int:
    import json

    from hashlearn.index.collection import Collection, DamagedCollectionError

    with Collection.open(args.collection, readonly=True, check=False) as coll:
        info = coll.info(checksums=not args.quick)
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            if key == "damage":
                for line in value:
                    print(f"damaged: {line}")
                continue
            print(f"{key}: {value}")
    if info["damage"]:
        more = f" (and {len(info['damage']) - 1} more)" if len(info["damage"]) > 1 else ""
        raise DamagedCollectionError(
            f"{args.collection}: damaged collection: {info['damage'][0]}{more}; `hashlearn index repair` drops it"
        )
    return 0


def cmd_verify(args) -> int:
    import json

    from hashlearn.index.collection import Collection, DamagedCollectionError

    with Collection.open(args.collection, readonly=True, check=False) as coll:
        report = coll.verify()
    if args.json:
        print(json.dumps(report))
    else:
        what = f"{report['codes']} codes, {report['segments']} segments, {report['batches']} checksummed batches"
        if not report["checksums"]:
            what += " (format 1: no checksums yet; lengths checked; the next add or compact adds them)"
        for line in report["problems"]:
            print(f"damaged: {line}")
        if report["sound"]:
            print(f"{args.collection}: sound ({what})")
    if not report["sound"]:
        problems = report["problems"]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        if problems[0].startswith("collection.sqlite: "):
            advice = "its SQLite database is damaged: restore it from a copy or rebuild the collection"
        else:
            advice = f"{report['affected_codes']} codes affected; `hashlearn index repair` drops them"
        raise DamagedCollectionError(f"{args.collection}: damaged: {problems[0]}{more}; {advice}")
    return 0


def cmd_repair(args) -> int:
    from hashlearn.index.collection import Collection

    with Collection.open(args.collection, readonly=False, check=False, lock_timeout=args.lock_timeout) as coll:
        report = coll.repair()
    if not report["rewritten"]:
        print(f"{args.collection}: no damage found; nothing dropped ({report['live']} codes)")
        return 0
    for line in report["damage"]:
        print(f"dropped: {line}")
    print(
        f"repaired {args.collection}: dropped {report['dropped']} codes, {report['live']} codes remain"
        f" in {report['segments_after']} segments"
    )
    return 0


def cmd_compact(args) -> int:
    from hashlearn.index.collection import Collection

    with Collection.open(args.collection, readonly=False, lock_timeout=args.lock_timeout) as coll:
        report = coll.compact()
    print(
        f"compacted {args.collection}: {report['live']} codes in {report['segments_after']} segments"
        f" ({report['rows_before']} rows before); segment files {report['segment_bytes_before']} ->"
        f" {report['segment_bytes_after']} bytes"
    )
    return 0


def cmd_export(args) -> int:
    from hashlearn.index.adapters import write_faiss
    from hashlearn.index.collection import Collection

    with Collection.open(args.collection, readonly=True) as coll:
        index = coll.to_index()
    write_faiss(index, args.faiss, kind=args.kind)
    print(f"wrote {args.faiss}: FAISS IndexBinary {args.kind}, {len(index)} codes")
    return 0


def _query_codes(args, bits):
    from hashlearn.errors import HashlearnError, InputError

    if args.image:
        if not args.run:
            raise InputError("--image needs --run RUN (the trained model that encodes it)")
        try:
            from hashlearn.train import encode_images
        except ImportError:
            raise HashlearnError(
                "searching by image needs hashlearn.train.encode_images, which this installation lacks"
            ) from None
        packed, qbits = encode_images(args.run, [args.image])
        if getattr(args, "codes", None):  # codes made by another model would make a meaningless answer
            from hashlearn.train import check_codes_match_run

            check_codes_match_run(args.codes, args.run)
        if qbits != bits:
            raise InputError(f"the model of {args.run} makes {qbits}-bit codes; the database has {bits}-bit codes")
        return packed
    path = args.query_codes
    kind = _file_kind(path, "query codes")
    if kind == "npz":
        cs = _load_codes_file(path, "query codes")
        if cs.bits != bits:
            raise InputError(f"query codes file {path} holds {cs.bits}-bit codes; the database has {bits}-bit codes")
        codes = cs.packed
    elif kind == "npy":
        codes = _load_array(path, "query codes")
    else:
        raise InputError(f"query codes file {path}: neither a .npy array nor a hashlearn .npz codes file")
    if codes.ndim == 1:
        codes = codes[None, :]
    if codes.ndim != 2:
        raise InputError(f"query codes file {path}: expected a 2-D array (queries, bits or bytes), got {codes.shape}")
    if codes.shape[0] == 0 or codes.shape[1] == 0:
        raise InputError(f"query codes file {path}: holds no codes (shape {codes.shape})")
    if codes.dtype.kind not in "biuf":
        raise InputError(f"query codes file {path}: expected numeric binary codes, got dtype {codes.dtype}")
    return codes


def _shown_path(path, root):
    """A stored image path as it opens from the current folder: relative ones joined to ``root``
    (when there is one), then relative to the current folder when under it, else absolute."""
    import os

    if path is None:
        return None
    if not os.path.isabs(path):
        if root is None:
            return path
        path = os.path.join(root, path)
    path = os.path.normpath(path)
    rel = os.path.relpath(path)
    return rel if rel != os.pardir and not rel.startswith(os.pardir + os.sep) else path


def _tie_line(res: dict, ties: str, seed: int) -> str | None:
    """``10 of 422 at distance 0 ...`` for one query's kNN results (``None`` without results)."""
    if res.get("kth_distance") is None:
        return None
    shown, tied = res["tied_in_results"], res["tied_at_kth"]
    line = f"  {shown} of {tied} at distance {res['kth_distance']}"
    if shown < tied:
        if ties == "index":
            line += " (the lowest ids of the tie; --ties random draws them at random)"
        else:
            line += f" (drawn at random from the tie, --seed {seed})"
    return line


def _thumbnail(path):
    """A small image of ``path`` for a plot, or the text of the tile drawn instead."""
    import os

    from hashlearn.errors import HashlearnError

    if path is None:
        return "no path"
    if not os.path.isfile(path):
        return "missing"
    from hashlearn.data import read_image

    try:
        return read_image(path, size=96)
    except HashlearnError:
        return "unreadable"


def _plot_search(args, results, plot):
    """Draw the first queries and their first results (``search --plot``); returns the file."""
    import sys

    from hashlearn.eval.plots import plot_query_results

    shown = results[:PLOT_QUERIES]
    if len(results) > PLOT_QUERIES:
        print(f"plot: the first {PLOT_QUERIES} of {len(results)} queries", file=sys.stderr)
    if any(len(r["results"]) > PLOT_RESULTS for r in shown):
        print(f"plot: at most the top {PLOT_RESULTS} results of each query", file=sys.stderr)
    if args.image:
        image = _thumbnail(args.image)
        query_images, query_titles = [None if isinstance(image, str) else image], [_short(args.image)]
    else:
        query_images, query_titles = [None] * len(shown), [f"codes #{r['query']}" for r in shown]
    for i, res in enumerate(shown):
        if res.get("kth_distance") is not None and res["tied_in_results"] < res["tied_at_kth"]:
            query_titles[i] += f"\n{res['tied_in_results']} of {res['tied_at_kth']} tied at d={res['kth_distance']}"
    rows, dists, titles = [], [], []
    for res in shown:
        hits = res["results"][:PLOT_RESULTS]
        rows.append([_thumbnail(h.get("_file")) for h in hits])
        dists.append([h["distance"] for h in hits])
        titles.append([_short(h["label"]) if h.get("label") is not None else f"id {h['id']}" for h in hits])
    return plot_query_results(query_images, rows, None, plot, distances=dists, titles=titles, query_titles=query_titles)


def _short(text, width: int = 18) -> str:
    text = str(text)
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def cmd_search(args) -> int:
    import json

    import numpy as np

    from hashlearn.errors import InputError
    from hashlearn.index.hamming import HammingIndex, random_tie_order

    if args.radius is None and not 1 <= args.k <= K_MAX:
        raise InputError(f"-k must be between 1 and {K_MAX:,}, got {args.k}")
    if args.radius is not None and args.radius < 0:
        raise InputError(f"--radius must be at least 0, got {args.radius}")
    if args.seed < 0:
        raise InputError(f"--seed must be at least 0, got {args.seed}")
    plot = None
    if args.plot:
        from hashlearn.eval.plots import check_plot_path

        plot = check_plot_path(args.plot, "--plot")  # a typo must not cost the search
    root = _folder_arg(args.root, "--root") if args.root else None
    coll = None
    names = None
    info = None
    try:
        if args.collection:
            from hashlearn.index.collection import Collection

            coll = Collection.open(args.collection, readonly=True)
            index = coll.to_index(method=args.method)
            root = root or coll.root
        else:
            if _file_kind(args.codes, "codes") != "npz":
                raise InputError(
                    f"--codes {args.codes}: not a hashlearn codes file (.npz, as train and encode write); for a .npy"
                    " array, build a collection first: hashlearn index build --codes FILE --out DIR"
                )
            cs = _load_codes_file(args.codes, "codes")
            index = HammingIndex(cs.bits, method=args.method)
            if np.issubdtype(cs.ids.dtype, np.integer):
                index.add(cs.packed, cs.ids)
            else:
                # string ids (image paths, dataset ids): index by position, report the file's ids
                index.add(cs.packed)
                names = cs.ids
        queries = _query_codes(args, index.bits)
        results = []
        if args.radius is not None:
            lims, dist, ids = index.range_search(queries, args.radius)
            runs = []
            for qi in range(len(lims) - 1):
                d, i = dist[lims[qi] : lims[qi + 1]], ids[lims[qi] : lims[qi + 1]]
                if args.ties == "random":
                    order = random_tie_order(d, np.random.default_rng([args.seed, qi]))
                    d, i = d[order], i[order]
                runs.append((d, i))
        else:
            k = min(args.k, len(index))  # -k past the database size returns all of it
            dist, ids, info = index.search_ties(queries, k, ties=args.ties, seed=args.seed)
            runs = [(dist[i][ids[i] >= 0], ids[i][ids[i] >= 0]) for i in range(len(dist))]
        meta = coll.metadata(np.concatenate([r[1] for r in runs])) if coll else {}
    finally:
        if coll is not None:
            coll.close()
    for qi, (d, i) in enumerate(runs):
        hits = []
        for rank, (dd, ii) in enumerate(zip(d.tolist(), i.tolist(), strict=True)):
            hit = {"rank": rank + 1, "id": ii if names is None else str(names[ii]), "distance": dd}
            if ii in meta:
                hit.update(path=_shown_path(meta[ii]["path"], root), label=meta[ii]["label"])
                hit["_file"] = hit["path"]
            elif names is not None:
                hit["_file"] = _shown_path(hit["id"], root)
                if root is not None:
                    hit["path"] = hit["_file"]
            hits.append(hit)
        res = {"query": qi}
        if info is not None:
            shown = len(hits) > 0
            res.update(
                kth_distance=int(info["kth_distance"][qi]) if shown else None,
                tied_at_kth=int(info["tied_at_kth"][qi]),
                tied_in_results=int(info["tied_in_results"][qi]),
            )
        res["results"] = hits
        results.append(res)
    if plot is not None:
        plot = _plot_search(args, results, plot)
    for res in results:
        for hit in res["results"]:
            hit.pop("_file", None)
    if args.json:
        print(json.dumps(results if len(results) != 1 else results[0]))
        return 0
    for res in results:
        if len(results) > 1:
            print(f"query {res['query']}:")
        for hit in res["results"]:
            extra = "".join(f"  {key}={hit[key]}" for key in ("path", "label") if hit.get(key) is not None)
            print(f"{hit['rank']:>4}  id={hit['id']}  distance={hit['distance']}{extra}")
        if not res["results"]:
            print("  (no results)")
        tie = _tie_line(res, args.ties, args.seed)
        if tie:
            print(tie)
    if plot is not None:
        print(f"plot: {plot}")
    return 0
