"""Commands ``train``, ``encode``, ``methods``, ``demo``, ``attention`` and ``export`` (argparse only at import
time)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hashlearn._argtypes import int_arg, positive_float_arg


def _bits_arg(text: str) -> list[int]:
    from hashlearn.errors import InputError
    from hashlearn.train.config import parse_bits

    try:
        return parse_bits(text, where="bits")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("bits: ")) from None


def _one_bits_arg(text: str) -> int:
    bits = _bits_arg(text)
    if len(bits) != 1:
        raise argparse.ArgumentTypeError(f"expected one code length, got {text!r}")
    return bits[0]


def _threads_arg(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        return int_arg(1, 4096)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or an integer from 1 to 4096, got {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train (or fit) a hashing method at one or more code lengths and evaluate it",
        description="Train a deep method (or fit a shallow one) on a dataset's training split, select the "
                    "model on the validation split, encode queries and database, evaluate. One run folder "
                    "per code length: config.yaml, checkpoints, log.jsonl, codes, metrics.json.",
    )
    p.add_argument("--method", help="method name (see: hashlearn methods); required")
    p.add_argument("--dataset", help="dataset name (see: hashlearn data list)")
    p.add_argument("--protocol", help="split protocol (see: hashlearn data protocols), e.g. cifar10-1; "
                   "default: the dataset's default protocol (hashlearn data list)")
    p.add_argument("--split", metavar="FILE",
                   help="a split file written by `hashlearn data split` (.json/.npz); replaces --protocol")
    p.add_argument("--bits", type=_bits_arg, help="code length(s) from 8 to 1024, comma-separated, e.g. 12,24,32,48")
    p.add_argument("--backbone", help="backbone name, e.g. smallcnn, efficientnet_lite0, vgg19")
    p.add_argument("--weights", help="backbone weights: default | none | PATH")
    p.add_argument("--frozen", action="store_true", default=None,
                   help="nothing in the backbone trains: the heads train on its cached pooled features (cached "
                        "maps for a method that reads maps)")
    p.add_argument("--finetune-from", metavar="TAP",
                   help="fine-tune above the backbone tap TAP: the part below runs once over the dataset (its maps "
                        "are cached and shared), the part above trains with the heads (finetune_from)")
    p.add_argument("--epochs", type=int_arg(1, 100_000))
    p.add_argument("--batch-size", type=int_arg(2))
    p.add_argument("--lr", type=positive_float_arg(), help="learning rate of the heads (optim.lr)")
    p.add_argument("--image-size", type=int_arg(8, 1024))
    p.add_argument("--limit", type=int_arg(1), help="at most N images of each split (quick runs)")
    p.add_argument("--config", help="YAML file of settings (see hashlearn/configs/default.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set optim.lr=1e-3 --set method_args.focal_gamma=2 (repeatable)")
    p.add_argument("--out", help="output folder (default runs/METHOD-DATASET): new, empty, or an earlier "
                                  "training output, which is resumed")
    p.add_argument("--seed", type=int_arg(0, 2**32 - 1))
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("encode", help="encode a dataset or a folder of images with a trained run",
                       description="Write packed binary codes with their ids (hashlearn.codes.save_codes).")
    e.add_argument("--run", required=True, help="run folder of one code length (e.g. runs/demo/dmsh/32bits) or a "
                   "model file from hashlearn export (.hlm)")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="encode every image of this dataset")
    src.add_argument("--images", help="encode every image file under this folder (ids = relative paths)")
    e.add_argument("--out", required=True, help="output .npz")
    e.add_argument("--skip-bad", action="store_true",
                   help="with --images: skip unreadable images (listed on stderr) instead of failing")
    e.set_defaults(func=cmd_encode)

    m = sub.add_parser("methods", help="list the hashing methods (deep and shallow) and their papers")
    m.set_defaults(func=cmd_methods)

    d = sub.add_parser(
        "demo",
        help="end-to-end demo: train the methods of hashlearn/configs/demo.yaml on a real dataset, evaluate, plot",
        description="Runs offline: Fashion-MNIST (Debian dataset-fashion-mnist) or scikit-learn digits, or "
                    "CIFAR-10 when HASHLEARN_DATA holds it. Prints the mAP table; writes a precision-recall "
                    "plot and a picture of queries with their top-10 results, and builds a collection of database "
                    "images to browse with hashlearn serve (the command is printed last).",
    )
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--dataset", help="force a dataset: cifar10, fashion-mnist or digits")
    d.add_argument("--quick", action="store_true", help="a shortened run (small subsets, 1 epoch)")
    d.add_argument("--epochs", type=int_arg(1, 100_000), help="training epochs (default 6; 1 with --quick)")
    d.add_argument("--database", type=int_arg(0), default=0,
                   help="encode and search only a seeded random N of the protocol's database (default 0 = all)")
    d.add_argument("--limit", type=int_arg(1), help="at most N images of each split")
    d.add_argument("--collection", type=int_arg(0), metavar="N",
                   help="database images in the collection to browse (default 2000; 200 with --quick; 0: none)")
    d.add_argument("--methods", help="comma-separated methods (default: those of hashlearn/configs/demo.yaml)")
    d.add_argument("--bits", type=_one_bits_arg, help="code length from 8 to 1024 (default: demo.yaml's, 32)")
    d.add_argument("--threads", type=_threads_arg, default="auto",
                   help="torch CPU threads: auto (1 when the CPU is already busy, else torch's default) or N")
    d.add_argument("--seed", type=int_arg(0, 2**32 - 1), default=0)
    d.set_defaults(func=cmd_demo)

    from hashlearn.train import attention_map, export  # `attention`, `export` (standard library at import)

    attention_map.register(sub)
    export.register(sub)


def _config_from_args(args):
    from hashlearn.train.config import load_config

    overrides = list(args.set or [])
    direct = {
        "method": args.method, "dataset": args.dataset, "protocol": args.protocol, "backbone": args.backbone,
        "weights": args.weights, "image_size": args.image_size, "seed": args.seed,
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "optim.lr": args.lr,
        "data.limit": args.limit, "finetune_from": args.finetune_from,
        "split": str(Path(args.split).expanduser().resolve()) if getattr(args, "split", None) else None,
    }
    pre = [f"{k}={v}" for k, v in direct.items() if v is not None]
    if args.bits:
        pre.append(f"bits={list(args.bits)}")
    if args.frozen:
        pre.append("frozen=true")
    if args.quiet:
        pre.append("train.progress=false")
    return load_config(args.config, pre + overrides)


def cmd_train(args) -> int:
    from hashlearn.train.run import summary_markdown, train

    config = _config_from_args(args)
    results = train(config, out=args.out, resume=not args.no_resume)
    if results:  # data-parallel: only rank 0 has results (and prints them)
        print(summary_markdown(results))
    return 0


def cmd_encode(args) -> int:
    import sys
    from pathlib import Path

    from hashlearn.errors import InputError, NotFoundError
    from hashlearn.train.encode import encode_dataset, encode_files, load_run, save_run_codes
    from hashlearn.train.runfolder import probe_writable

    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; give a file name such as codes.npz")
    parent = next((p for p in (out.parent, *out.parent.parents) if p.exists()), Path("."))
    probe_writable(parent, "--out", target=out)  # a read-only place fails now, not after encoding everything
    if args.skip_bad and not args.images:
        raise InputError("--skip-bad applies to --images only")
    if args.images:
        from hashlearn.data.images import is_image_name

        root = Path(args.images)
        if not root.is_dir():
            raise NotFoundError(f"--images {root}: not a folder")
        files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p.name))
        if not files:
            raise InputError(f"--images {root}: no image files found")
    enc = load_run(args.run)
    if args.dataset:
        from hashlearn.train.run import load_data

        packed, bits, ids = encode_dataset(enc, load_data(args.dataset), progress=True)
    else:
        packed, kept, skipped = encode_files(enc, files, skip_bad=args.skip_bad)
        if skipped:
            print(f"skipped {len(skipped)} unreadable image(s) of {len(files)}:", file=sys.stderr)
            for _, reason in skipped:
                print(f"  {reason}", file=sys.stderr)
        if not kept:
            raise InputError(f"--images {root}: none of the {len(files)} image files could be read")
        bits = enc.bits
        ids = [str(p.relative_to(root)) for p in kept]
    meta = {"image_root": str(root.resolve())} if args.images else {}  # index build finds the images there
    path = save_run_codes(out, packed, bits, ids=ids, fingerprint=enc.fingerprint, meta=meta)
    print(f"{len(packed)} codes of {bits} bits -> {path}")
    return 0


def cmd_methods(args) -> int:
    """Plain text: one line per method (name, what it is, its paper), deep then shallow."""
    from hashlearn.methods import load_all

    registry = load_all()
    rows = [(n, registry.info(n)) for n in registry.names()]
    width = max((len(n) for n, _ in rows), default=4)
    for kind in ("deep", "shallow"):
        chosen = [(n, i) for n, i in rows if i.get("kind", "deep") == kind]
        if not chosen:
            continue
        print(f"{kind} methods:")
        for name, info in chosen:
            summary = _plain(info.get("summary", "")).rstrip(".")
            paper = _plain(info.get("paper", ""))
            print(f"  {name:<{width}}  {summary}" + (f". Paper: {paper}" if paper else ""))
    return 0


def _plain(text: str) -> str:
    """Docstring markup (``code``, `ref`, :role:`x`) as plain text."""
    import re

    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", str(text))
    return " ".join(text.replace("``", "").replace("`", "").split())


def cmd_demo(args) -> int:
    from hashlearn.train.demo import run_demo

    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    run_demo(out=args.out, dataset=args.dataset, quick=args.quick, epochs=args.epochs, limit=args.limit,
             methods=methods, bits=args.bits, seed=args.seed, database=args.database, threads=args.threads,
             collection=args.collection)
    return 0
