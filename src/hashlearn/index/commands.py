"""``hashlearn index build|add|remove|info|export`` and ``hashlearn search``."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    index = sub.add_parser("index", help="build and manage a collection of codes on disk")
    isub = index.add_subparsers(dest="index_command", metavar="ACTION", parser_class=type(index))
    index.set_defaults(func=lambda args: _help(index))

    p = isub.add_parser("build", help="create a collection from a codes file")
    _codes_args(p)
    p.add_argument("--out", required=True, metavar="COLLECTION", help="collection directory to create")
    p.add_argument("--bits", type=int, help="code length (default: from the codes)")
    p.set_defaults(func=cmd_build)

    p = isub.add_parser("add", help="append codes to a collection (atomic)")
    p.add_argument("collection", metavar="COLLECTION")
    _codes_args(p)
    p.set_defaults(func=cmd_add)

    p = isub.add_parser("remove", help="remove codes by id (atomic)")
    p.add_argument("collection", metavar="COLLECTION")
    p.add_argument("--ids", required=True, help="ids: a .npy file or a comma-separated list")
    p.set_defaults(func=cmd_remove)

    p = isub.add_parser("info", help="describe a collection")
    p.add_argument("collection", metavar="COLLECTION")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = isub.add_parser("export", help="write a collection as a FAISS binary index")
    p.add_argument("collection", metavar="COLLECTION")
    p.add_argument("--faiss", required=True, metavar="OUT.index")
    p.add_argument("--kind", choices=["flat", "hnsw", "ivf"], default="flat")
    p.set_defaults(func=cmd_export)

    s = sub.add_parser("search", help="nearest codes in a collection or codes file")
    db = s.add_mutually_exclusive_group(required=True)
    db.add_argument("--collection", metavar="DIR")
    db.add_argument("--codes", metavar="FILE.npz", help="a hashlearn codes file (hashlearn.codes.save_codes)")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--query-codes", metavar="Q.npy", help="query codes, packed or 0/1 or ±1")
    q.add_argument("--image", metavar="IMAGE", help="a query image, encoded by the model of --run")
    s.add_argument("--run", metavar="RUN", help="training run directory (with --image)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--radius", type=int, help="range search: every code within this distance")
    s.add_argument("--method", choices=["auto", "flat", "mih"], default="auto")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_search)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _codes_args(p) -> None:
    p.add_argument("--codes", required=True, metavar="C.npy", help="codes (.npy: packed uint8 or 0/1/±1; or .npz)")
    p.add_argument("--ids", metavar="I.npy", help="ids (.npy), default: next free ids")
    p.add_argument("--paths", metavar="P.txt", help="one image path per line")
    p.add_argument("--labels", metavar="L.txt", help="one label per line")


def _load_array(path: str, what: str):
    import numpy as np

    from hashlearn.errors import InputError, NotFoundError

    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise NotFoundError(f"{what} file not found: {path}") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{what} file {path} is not a .npy array ({exc})") from None
    return arr


def _lines(path):
    if path is None:
        return None
    from pathlib import Path

    from hashlearn.errors import NotFoundError

    if not Path(path).exists():
        raise NotFoundError(f"file not found: {path}")
    return Path(path).read_text().splitlines()


def _read_codes(args, bits=None):
    """``(codes array, bits or None, ids or None, paths or None)`` from ``--codes`` (.npy or
    .npz), ``--ids`` and ``--paths``.

    A hashlearn codes file whose ids are strings (``hashlearn encode --images`` writes
    image paths) gets integer ids from the collection and keeps the strings as paths.
    """
    import numpy as np

    ids = None
    paths = _lines(args.paths)
    if args.codes.endswith(".npz"):
        from hashlearn.codes import load_codes

        cs = load_codes(args.codes)
        codes, bits, ids = cs.packed, cs.bits, cs.ids
        if not np.issubdtype(ids.dtype, np.integer):
            paths = paths if paths is not None else [str(i) for i in ids]
            ids = None
    else:
        codes = _load_array(args.codes, "codes")
    if getattr(args, "ids", None):
        ids = _load_array(args.ids, "ids")
    return np.asarray(codes), bits, ids, paths


def _infer_bits(codes, bits):
    from hashlearn.errors import InputError

    if bits:
        return bits
    if codes.ndim != 2:
        raise InputError(f"codes: expected a 2-D array, got shape {codes.shape}")
    if codes.dtype.name == "uint8" and codes.size and codes.max() > 1:
        return codes.shape[1] * 8  # packed bytes
    return codes.shape[1]


def cmd_build(args) -> int:
    from hashlearn.index.collection import Collection

    codes, bits, ids, paths = _read_codes(args)
    bits = _infer_bits(codes, args.bits or bits)
    coll = Collection.create(args.out, bits)
    try:
        added = coll.add(codes, ids=ids, paths=paths, labels=_lines(args.labels))
    except Exception:
        coll.close()
        import shutil

        shutil.rmtree(args.out, ignore_errors=True)  # a failed build leaves nothing behind
        raise
    print(f"built {args.out}: {len(added)} codes of {bits} bits")
    return 0


def cmd_add(args) -> int:
    from hashlearn.index.collection import Collection

    codes, _, ids, paths = _read_codes(args)
    with Collection.open(args.collection) as coll:
        added = coll.add(codes, ids=ids, paths=paths, labels=_lines(args.labels))
        print(f"added {len(added)} codes to {args.collection} (now {len(coll)})")
    return 0


def cmd_remove(args) -> int:
    import numpy as np

    from hashlearn.errors import InputError
    from hashlearn.index.collection import Collection

    if args.ids.endswith(".npy"):
        ids = _load_array(args.ids, "ids")
    else:
        try:
            ids = np.array([int(x) for x in args.ids.split(",") if x.strip()], dtype=np.int64)
        except ValueError:
            raise InputError(f"--ids: expected a .npy file or comma-separated integers, got {args.ids!r}") from None
    with Collection.open(args.collection) as coll:
        n = coll.remove(ids)
        print(f"removed {n} codes from {args.collection} (now {len(coll)})")
    return 0


def cmd_info(args) -> int:
    import json

    from hashlearn.index.collection import Collection

    with Collection.open(args.collection) as coll:
        info = coll.info()
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def cmd_export(args) -> int:
    from hashlearn.index.adapters import write_faiss
    from hashlearn.index.collection import Collection

    with Collection.open(args.collection) as coll:
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
        if qbits != bits:
            raise InputError(f"the model of {args.run} makes {qbits}-bit codes; the database has {bits}-bit codes")
        return packed
    codes = _load_array(args.query_codes, "query codes")
    if codes.ndim == 1:
        codes = codes[None, :]
    return codes


def cmd_search(args) -> int:
    import json

    import numpy as np

    from hashlearn.errors import InputError
    from hashlearn.index.hamming import HammingIndex

    if args.k < 1 and args.radius is None:
        raise InputError(f"-k must be at least 1, got {args.k}")
    coll = None
    names = None
    if args.collection:
        from hashlearn.index.collection import Collection

        coll = Collection.open(args.collection)
        index = coll.to_index(method=args.method)
    else:
        from hashlearn.codes import load_codes

        cs = load_codes(args.codes)
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
        runs = [(dist[lims[i] : lims[i + 1]], ids[lims[i] : lims[i + 1]]) for i in range(len(lims) - 1)]
    else:
        dist, ids = index.search(queries, args.k)
        runs = [(dist[i][ids[i] >= 0], ids[i][ids[i] >= 0]) for i in range(len(dist))]
    meta = coll.metadata(np.concatenate([r[1] for r in runs])) if coll else {}
    for qi, (d, i) in enumerate(runs):
        hits = []
        for rank, (dd, ii) in enumerate(zip(d.tolist(), i.tolist(), strict=True)):
            hit = {"rank": rank + 1, "id": ii if names is None else str(names[ii]), "distance": dd}
            if ii in meta:
                hit.update(path=meta[ii]["path"], label=meta[ii]["label"])
            hits.append(hit)
        results.append({"query": qi, "results": hits})
    if coll:
        coll.close()
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
    return 0
