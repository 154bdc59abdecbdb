"""``hashlearn data list | prepare | info | split``.

Only argparse and the standard library at import time; numpy, PIL and the loaders are
imported by the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="list, prepare (decode once into a cache) and inspect datasets")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(data))
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    p = sub.add_parser("list", help="known datasets (with their default protocol), protocols and prepared datasets")
    p.add_argument("--cache", metavar="DIR", help="cache folder (default: $HASHLEARN_CACHE or ~/.cache/hashlearn)")
    p.set_defaults(func=_list)

    p = sub.add_parser("protocols", help="known split protocols (query / train / val / database rules)")
    p.set_defaults(func=_protocols)

    p = sub.add_parser("prepare", help="decode a dataset once into uint8 .npy memmaps + manifest.json")
    p.add_argument("name", help="dataset name (see `hashlearn data list`)")
    p.add_argument("--source", metavar="PATH", help="folder or archive to read (default: under $HASHLEARN_DATA)")
    p.add_argument("--size", type=int, metavar="N", help="resize: shorter side to N, then centre crop NxN")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable images (and report them) instead of failing"
    )
    p.add_argument("--cache", metavar="DIR", help="cache folder (default: $HASHLEARN_CACHE or ~/.cache/hashlearn)")
    p.add_argument(
        "--as",
        dest="as_name",
        metavar="NAME",
        help="store under this name (default: the dataset's name; for folder/csv/image-list, the source's base name)",
    )
    p.add_argument(
        "--mode",
        choices=("auto", "RGB", "L"),
        help="colour mode for generic folder/csv sources (default auto: L when every image is grey, else RGB)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace a prepared dataset of the same name that came from another source"
    )
    p.set_defaults(func=_prepare)

    p = sub.add_parser("info", help="counts per split and per class of a prepared dataset")
    p.add_argument("name")
    p.add_argument("--size", type=int, metavar="N", help="the --size it was prepared with")
    p.add_argument("--cache", metavar="DIR")
    p.add_argument("--verify", action="store_true", help="also recompute the sha256 of every array")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser("split", help="apply a protocol to a prepared dataset and save the split")
    p.add_argument("name")
    p.add_argument(
        "--protocol", help="protocol name (see `hashlearn data protocols`; default: the dataset's default protocol)"
    )
    p.add_argument(
        "--set",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a protocol parameter, e.g. --set query_per_class=10 (YAML value; repeatable)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, metavar="N")
    p.add_argument("--cache", metavar="DIR")
    p.add_argument("--out", required=True, metavar="FILE", help="split file to write (.json or .npz)")
    p.set_defaults(func=_split)


def _list(args: argparse.Namespace) -> int:
    from hashlearn.data import DATASETS, PROTOCOLS, default_protocol, default_source, prepared_names, read_manifest
    from hashlearn.data.protocols import DEFAULT_PROTOCOL_RULE
    from hashlearn.errors import HashlearnError

    print("datasets:                    [default protocol]")
    for name in DATASETS:
        info = DATASETS.info(name)
        src = default_source(name)
        where = f"  [source: {src}]" if src else ""
        protocol = info.get("protocol") or "by content"
        print(f"  {name:26s} {info['summary']}  [{protocol}]{where}")
    print("protocols:")
    for name in PROTOCOLS:
        print(f"  {name:26s} {PROTOCOLS.info(name)['summary']}")
    print(f"default protocol (train without --protocol): {DEFAULT_PROTOCOL_RULE}")
    prepared = prepared_names(args.cache)
    if not prepared:
        print("prepared: none")
        return 0
    print("prepared:")
    for key in prepared:
        try:
            manifest = read_manifest(key, args.cache)
            about = f"{manifest.get('dataset')}, {manifest.get('count', 0):,} images"
            protocol = default_protocol(key, cache_dir=args.cache)
        except HashlearnError as exc:  # a damaged cache is listed, not fatal
            about, protocol = f"unreadable: {exc}", "?"
        print(f"  {key:26s} {about}  [{protocol}]")
    return 0


def _protocols(args: argparse.Namespace) -> int:
    from hashlearn.data import PROTOCOLS, protocol_params

    for name in PROTOCOLS:
        params = ", ".join(protocol_params(name)) or "none"
        print(f"{name:16s} {PROTOCOLS.info(name)['summary']} (parameters: {params})")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from hashlearn.data import prepare, read_manifest

    options = {"mode": args.mode} if args.mode else {}
    started = time.perf_counter()
    ds = prepare(
        args.name,
        source=args.source,
        cache_dir=args.cache,
        size=args.size,
        skip_bad=args.skip_bad,
        as_name=args.as_name,
        force=args.force,
        progress=sys.stderr.isatty(),
        **options,
    )
    seconds = time.perf_counter() - started
    shape = "x".join(str(s) for s in ds.image_shape)
    print(f"prepared {ds.name}: {len(ds):,} images {shape}, {ds.n_classes} classes, "
          f"splits {ds.split_counts()} in {seconds:.1f} s -> {ds.info['cache']}")  # fmt: skip
    if args.as_name is None and ds.name.lower() != args.name.lower():
        print(f"named {ds.name!r} after the source; use it as --dataset {ds.name} (choose another name with --as NAME)")
    detected = (read_manifest(ds.name, args.cache, args.size).get("info") or {}).get("detected_mode")
    if detected == "L":
        print("every image is single-channel (grey): stored as 1 channel (--mode RGB stores 3)")
    skipped = ds.info.get("skipped") or []
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable image(s): "
            + ", ".join(skipped[:5])
            + (" ..." if len(skipped) > 5 else "")
        )
    return 0


def _info(args: argparse.Namespace) -> int:
    from hashlearn.data import open_prepared

    ds = open_prepared(args.name, cache_dir=args.cache, size=args.size, verify=args.verify)
    summary = ds.summary()
    summary["cache"] = ds.info["cache"]
    summary["source"] = ds.info.get("source")
    summary["skipped"] = len(ds.info.get("skipped") or [])
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    kind = "multi-label" if ds.multilabel else "single-label"
    print(f"{ds.name}: {len(ds):,} images {'x'.join(map(str, ds.image_shape))}, {ds.n_classes} classes, {kind}")
    print(f"  cache:  {summary['cache']}" + ("  (sha256 verified)" if args.verify else ""))
    print(f"  source: {summary['source']}")
    if summary["skipped"]:
        print(f"  skipped when prepared: {summary['skipped']} unreadable image(s)")
    splits = list(summary["per_split"])
    width = max(len(c) for c in ds.class_names) + 2
    print("  " + "class".ljust(width) + "".join(s.rjust(9) for s in splits) + "total".rjust(9))
    for c in ds.class_names:
        row = [summary["per_split_class"][s][c] for s in splits]
        print("  " + c.ljust(width) + "".join(f"{v:9d}" for v in row) + f"{summary['per_class'][c]:9d}")
    print("  " + "total".ljust(width) + "".join(f"{summary['per_split'][s]:9d}" for s in splits) + f"{len(ds):9d}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from hashlearn.data import default_protocol, get_protocol, open_prepared
    from hashlearn.data.protocols import check_split_path

    check_split_path(args.out)  # a bad --out fails before any work
    params = _parse_params(args.params)
    protocol_name = args.protocol
    if protocol_name is not None:
        protocol = get_protocol(protocol_name, **params)  # a bad name or parameter fails before the dataset opens
    ds = open_prepared(args.name, cache_dir=args.cache, size=args.size)
    if protocol_name is None:
        protocol_name = default_protocol(ds)
        print(f"protocol {protocol_name} (the default for {ds.name}; choose another with --protocol)")
        protocol = get_protocol(protocol_name, **params)
    split = protocol.split(ds, seed=args.seed)
    path = split.save(args.out)
    sizes = ", ".join(f"{k} {v:,}" for k, v in split.sizes.items())
    print(f"{split.protocol} on {ds.name} (seed {split.seed}): {sizes}; sha256 {split.checksum[:12]} -> {path}")
    return 0


def _parse_params(items: list[str]) -> dict:
    """``["query_per_class=10", ...]`` → ``{"query_per_class": 10}`` (values read as YAML scalars)."""
    import yaml

    from hashlearn.errors import InputError

    params = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. --set query_per_class=10")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if isinstance(value, dict) or (isinstance(value, list) and key.strip() != "classes"):
            raise InputError(f"--set {item!r}: a protocol parameter is a number, true/false, null or a name "
                             f"(classes: a list of class names or indices)")
        params[key.strip()] = value
    return params
