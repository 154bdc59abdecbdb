"""``hashlearn demo``: the README's first command, offline, on a real dataset, in minutes on a CPU.

Dataset, in this order (``--dataset`` forces one):

1. CIFAR-10 when ``$HASHLEARN_DATA`` holds it — protocol ``cifar10-1`` (1,000 queries,
   5,000 training images of which 10 % validation, 59,000 database), small CNN at 32 px;
2. Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``)
   — the same per-class protocol (100 queries and 500 training images per class, database =
   all non-query images, 69,000), small CNN at 28 px from scratch;
3. scikit-learn's 8×8 digits (bundled with scikit-learn) — 20 queries and 80 training images
   per class, database = the rest.

What it trains is data, in ``hashlearn/configs/demo.yaml`` (no method is named in code): the
methods and their arguments (by default the multi-scale method and its single-scale baseline),
the code length, epochs, the backbone (small CNN, width 16) and each dataset's protocol. It
trains each with the same trainer and backbone, selects each on validation mAP, encodes the
queries and the whole database (``--database N`` encodes a seeded random N of it instead, for
slower machines), evaluates, prints the table (with the chance level of a random ranking), and
writes ``pr_curves.png`` (precision–recall and precision@N) and ``queries.png`` (5 queries with
their top-10 results, right/wrong marked). ``--quick`` shortens everything (subsets, one epoch)
for tests.

Last, it makes the first method's run browsable: a seeded sample of the database it encoded
(``--collection N``, default 2,000; all when fewer) is written as PNG files to
``collection-images/`` and built, with the codes the run saved for them and the class names as
labels, into the collection ``collection/`` (:meth:`Collection.build`, as ``hashlearn index
build`` does; a collection item carries its image's path, so nothing is encoded twice). The last
line printed is the ``hashlearn serve`` command that opens it. A re-run replaces that collection
and those images, and refuses (before training) when they hold anything the demo did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from hashlearn.errors import HashlearnError, InputError

#: database images encoded and searched (a seeded random subset of the protocol's database; 0 = all)
DEMO_DATABASE = 0


def demo_plan() -> dict:
    """``configs/demo.yaml``: ``bits``, ``epochs``, ``methods`` ({name: method_args}), ``settings``
    (train settings of every run) and ``datasets`` ({name: protocol, protocol_args, augment,
    description}, in the order tried)."""
    from hashlearn.train.config import packaged_config

    return packaged_config("demo")


#: database images in the browsable collection of the first method's run (a seeded random sample; all
#: when fewer; 0 = no collection), and with --quick
DEMO_COLLECTION, QUICK_COLLECTION = 2000, 200

#: what a demo writes into its --out folder (besides one folder per method and the collection's two folders)
DEMO_FILES = ("pr_curves.png", "queries.png", "summary.md", "demo.json")
COLLECTION_DIR, COLLECTION_IMAGES = "collection", "collection-images"
_IMAGE_NAME = re.compile(r"\d{5,}\.png")  # the names the demo gives the collection's images


def check_demo_out(out: Path, methods) -> None:
    """``demo --out`` must be new, empty or an earlier demo output: the demo never writes its
    files (or method folders) into a folder of other things, and replaces only the collection
    and images it wrote itself (:func:`check_own_collection`)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if (out / "demo.json").is_file():
        check_own_collection(out)
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in DEMO_FILES and p.name not in methods)
    if others:
        raise InputError(f"--out {out}: the folder exists, is not empty and is not a hashlearn demo output (it holds "
                         f"{others[0]!r}{' and more' if len(others) > 1 else ''}); pick a new or empty folder")


def _only_own_files(folder: Path, names: re.Pattern, not_ours: str, move: str) -> bool:
    """Whether ``folder`` exists; refuse (one line) a link, a non-folder, or an entry that is not a plain
    file named as the demo names them (``names``)."""
    if not (folder.exists() or folder.is_symlink()):
        return False
    if folder.is_symlink() or not folder.is_dir():
        raise InputError(f"{folder}: {not_ours}{move}")
    other = next((e.name for e in os.scandir(folder)
                  if not (names.fullmatch(e.name) and e.is_file(follow_symlinks=False))), None)
    if other is not None:
        raise InputError(f"{folder}: holds {other!r}, which the demo did not write{move}")
    return True


def check_own_collection(out: Path) -> None:
    """Refuse (one line) when ``OUT/collection-images`` holds anything but image files the demo names
    (``00000.png``, ...) or ``OUT/collection`` is not, item for item, the collection that ``OUT/demo.json``
    records: a re-run deletes those two folders, and a command deletes only what it wrote."""
    from hashlearn.index.collection import _BUILD_FILES

    images, coll = out / COLLECTION_IMAGES, out / COLLECTION_DIR
    move = "; move it away or pick another --out (a re-run replaces only what the demo wrote)"
    _only_own_files(images, _IMAGE_NAME, "not a folder of the demo's images", move)
    if not _only_own_files(coll, _BUILD_FILES, "not the collection the demo built", move):
        return
    try:
        recorded = json.loads((out / "demo.json").read_text()).get("collection") or {}
    except (OSError, ValueError, AttributeError):
        recorded = {}
    try:
        same = recorded.get("sha256") is not None and collection_digest(coll) == recorded["sha256"]
    except HashlearnError:
        same = False
    if not same:
        raise InputError(f"{coll}: not the collection the demo built (its items differ from what demo.json "
                         f"records){move}")


def collection_digest(path) -> str:
    """sha256 of a collection's items in id order: ids, codes, paths and labels."""
    from hashlearn.index.collection import Collection

    with Collection.open(path, readonly=True) as coll:
        packed, ids = coll.read()
        order = np.argsort(ids, kind="stable")
        packed, ids = packed[order], ids[order]
        meta = coll.metadata(ids)
    digest = hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(packed).tobytes())
    digest.update(json.dumps([[meta[int(i)]["path"], meta[int(i)]["label"]] for i in ids]).encode())
    return digest.hexdigest()


def remove_own_collection(out: Path) -> None:
    """Delete the collection and images an earlier demo wrote into ``out`` (checked again first)."""
    check_own_collection(out)
    coll, images = out / COLLECTION_DIR, out / COLLECTION_IMAGES
    if coll.is_dir():
        (coll / "collection.sqlite").unlink(missing_ok=True)  # its items first: the rest is no collection
        for entry in os.scandir(coll):
            os.unlink(entry.path)
        coll.rmdir()
    if images.is_dir():
        for entry in os.scandir(images):
            os.unlink(entry.path)
        images.rmdir()


def build_collection(out: Path, ds, codes, positions, size: int, seed: int) -> dict:
    """``OUT/collection-images`` (a seeded random ``size`` of the images at dataset ``positions``, all
    when fewer, as PNG files ``00000.png``, ...) and ``OUT/collection`` (their ``codes``, the run's
    :class:`~hashlearn.codes.CodeSet` of those positions, with ids 0, 1, ... in file order, the
    files' names as paths and the class names as labels, as ``hashlearn encode --images`` and
    ``hashlearn index build --labels`` would make it). Returns what ``demo.json`` records."""
    from PIL import Image

    from hashlearn.index.collection import Collection

    remove_own_collection(out)
    pick = np.sort(np.random.default_rng(seed).choice(len(positions), size=min(size, len(positions)),
                                                     replace=False))
    images = out / COLLECTION_IMAGES
    images.mkdir()
    names, labels = [], []
    for n, i in enumerate(positions[pick]):
        pixels = np.asarray(ds.images[i])
        names.append(f"{n:05d}.png")
        Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(images / names[-1])
        labels.append(_label_name(ds, i))
    Collection.build(out / COLLECTION_DIR, codes.bits, codes.packed[pick], ids=np.arange(len(pick)), paths=names,
                     labels=labels, root=images).close()
    return {"items": len(pick), "sha256": collection_digest(out / COLLECTION_DIR)}


def _label_name(ds, position: int) -> str:
    """The class name(s) of image ``position`` (multi-label: the names of its classes, comma-separated)."""
    label = np.asarray(ds.labels[position])
    names = getattr(ds, "class_names", None)
    names = [] if names is None else list(names)
    classes = np.flatnonzero(label).tolist() if label.ndim else [int(label)]
    return ",".join(names[c] if c < len(names) else str(c) for c in classes)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pick_dataset(forced: str | None = None):
    """``(name, ImageDataset)``: CIFAR-10 if available, else Fashion-MNIST, else digits."""
    from hashlearn.data import default_source
    from hashlearn.train.run import load_data

    known = list(demo_plan()["datasets"])
    candidates = [forced] if forced else known
    last_error = None
    for name in candidates:
        if name not in known:
            raise HashlearnError(f"demo dataset must be one of {', '.join(known)}, got {name!r}")
        if not forced:
            if name == "cifar10" and default_source("cifar10") is None:
                continue
            if name == "fashion-mnist" and not Path("/usr/share/datasets/fashion-mnist").is_dir() \
                    and default_source("fashion-mnist") is None:
                continue
        try:
            return name, load_data(name)
        except HashlearnError as exc:
            last_error = exc
            _say(f"demo: {name} not usable ({exc}); trying the next dataset")
    raise HashlearnError(f"no demo dataset could be loaded ({last_error})")


def auto_threads() -> int | None:
    """1 when the CPU is already busy (load average ≥ cores): OpenMP threads that wait on each
    other are several times slower than one thread on a shared machine; else torch's default."""
    try:
        busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        busy = False
    return 1 if busy else None


def demo_config(dataset: str, method: str, bits: int, epochs: int, limit: int | None, seed: int,
                threads: int | None = None):
    """The :class:`~hashlearn.train.config.RunConfig` of one demo run (``configs/demo.yaml``)."""
    from hashlearn.train.config import deep_merge, load_config

    plan = demo_plan()
    data = plan["datasets"][dataset]
    base = deep_merge(plan.get("settings") or {}, {
        "method": method, "dataset": dataset, "protocol": data["protocol"],
        "protocol_args": data.get("protocol_args") or {}, "bits": [bits], "seed": seed, "data": {"limit": limit},
        "train": {"epochs": epochs, "threads": threads}, "augment": data.get("augment") or {},
        "method_args": (plan.get("methods") or {}).get(method) or {},
    })
    return load_config(base=base)


def run_demo(out: str | Path = "runs/demo", dataset: str | None = None, quick: bool = False,
             epochs: int | None = None, limit: int | None = None, methods=None, bits: int | None = None,
             seed: int = 0, database: int | None = DEMO_DATABASE, threads: int | str | None = "auto",
             collection: int | None = None) -> dict:
    """Run the demo; returns ``{"dataset", "results": {method: metrics}, "files": [...], "collection",
    "serve", "seconds"}``. ``methods`` / ``bits`` / ``epochs`` default to ``configs/demo.yaml``'s;
    ``collection`` (images in the browsable collection) to :data:`DEMO_COLLECTION` (``quick``:
    :data:`QUICK_COLLECTION`), 0 for none."""
    from hashlearn.eval import evaluate, plot_curves
    from hashlearn.train.run import make_split, summary_markdown, train
    from hashlearn.train.runfolder import probe_writable, write_json_atomic, write_text_atomic

    t0 = time.perf_counter()
    out = Path(out)
    plan = demo_plan()
    methods = list(plan["methods"]) if methods is None else list(methods)
    bits = int(plan["bits"]) if bits is None else bits
    if not methods:
        raise InputError("--methods: no method given")
    from hashlearn.methods import get_method

    for method in methods:
        get_method(method)  # an unknown name fails before any work
    check_demo_out(out, methods)
    name, ds = pick_dataset(dataset)
    out.mkdir(parents=True, exist_ok=True)
    probe_writable(out)
    import torch

    threads = auto_threads() if threads == "auto" else (int(threads) if threads else None)
    epochs = epochs or (1 if quick else int(plan["epochs"]))
    if quick and limit is None:
        limit = 300
    data = plan["datasets"][name]
    description = data["description"]
    split = make_split(ds, data["protocol"], seed, data.get("protocol_args") or {})
    if database and len(split.database) > database:
        # a seeded random subset of the protocol's database keeps the demo within minutes on 2 cores
        rng = np.random.default_rng(seed)
        split.database = np.sort(rng.choice(split.database, size=database, replace=False))
        description += f" (random {database:,} of them)"
    _say(f"hashlearn demo: dataset {name} ({len(ds)} images, {ds.images.shape[1]}x{ds.images.shape[2]}"
         f"x{ds.images.shape[3]}); protocol {description}; backbone smallcnn (width 16, from scratch) at "
         f"{ds.images.shape[1]} px; {bits} bits; {epochs} epoch(s); methods {', '.join(methods)}"
         + (f"; at most {limit} images per split" if limit else "")
         + f"; torch threads {threads or torch.get_num_threads()}; output {out}")
    results, evals = {}, {}
    for method in methods:
        cfg = demo_config(name, method, bits, epochs, limit, seed, threads)
        _say(f"--- {method}")
        (metrics,) = train(cfg, dataset=ds, split=split, out=out / method, resume=False, progress=True)
        results[method] = metrics
    files = []
    # re-evaluate from the saved codes for the plots (EvalResult objects carry the curves)
    from hashlearn.codes import load_codes

    for method, m in results.items():
        run = Path(m["run_dir"])
        q, d = load_codes(run / "query_codes.npz"), load_codes(run / "database_codes.npz")
        q_idx, d_idx = _positions(ds, q.ids), _positions(ds, d.ids)
        evals[method] = (evaluate(q.packed, d.packed, ds.labels[q_idx], ds.labels[d_idx], bits=q.bits,
                                  topk=(1000, "all")), q, d, q_idx, d_idx)
    files.append(plot_curves({k: v[0] for k, v in evals.items()}, out / "pr_curves.png"))
    first = next(iter(evals))
    files.append(_query_picture(ds, *evals[first][1:], out / "queries.png", title=first))
    table = summary_markdown(list(results.values()))
    write_text_atomic(out / "summary.md", table + "\n")
    size = (QUICK_COLLECTION if quick else DEMO_COLLECTION) if collection is None else collection
    browse = serve = None
    if size:
        t1 = time.perf_counter()
        run = out / first / Path(results[first]["run_dir"]).name
        browse = build_collection(out, ds, evals[first][2], evals[first][4], size, seed)
        browse.update(run=str(run.relative_to(out)), seconds=round(time.perf_counter() - t1, 2))
        serve = f"hashlearn serve --run {shlex.quote(str(run))} --collection {shlex.quote(str(out / COLLECTION_DIR))}"
    else:
        remove_own_collection(out)  # one of an earlier demo was encoded by runs this demo has replaced
    seconds = time.perf_counter() - t0
    summary = {"dataset": name, "protocol": description, "bits": bits, "epochs": epochs, "limit": limit,
               "seconds": round(seconds, 1),
               "results": {k: {kk: v[kk] for kk in v if kk.startswith(("mAP@", "P@r", "training_seconds"))}
                           for k, v in results.items()},
               "files": [str(f) for f in files], "collection": browse, "serve": serve}
    write_json_atomic(out / "demo.json", summary)
    print(f"\nhashlearn demo — {name}, {description}, {bits} bits, smallcnn, {epochs} epoch(s)\n")
    print(table)
    print(f"\nplots: {files[0]}, {files[1]}\nruns:  {', '.join(str(out / m) for m in results)}")
    if browse:
        print(f"collection: {out / COLLECTION_DIR} ({browse['items']:,} database images of {first}'s run, labelled; "
              f"image files in {out / COLLECTION_IMAGES})")
    print(f"done in {seconds:.0f} s; outputs in {out.resolve()}")
    if serve:
        print(f"\nbrowse the results: {serve}  (then open http://127.0.0.1:8000/)")
    return summary


def _positions(ds, ids) -> np.ndarray:
    where = {str(i): n for n, i in enumerate(np.asarray(ds.ids))}
    return np.array([where[str(i)] for i in ids], dtype=np.int64)


def _query_picture(ds, q, d, q_idx, d_idx, path: Path, title: str, n_queries: int = 5, k: int = 10) -> Path:
    from hashlearn.codes import hamming_distances
    from hashlearn.eval import plot_query_results

    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(q_idx), size=min(n_queries, len(q_idx)), replace=False))
    dist = hamming_distances(q.packed[pick], d.packed)
    top = np.argsort(dist, axis=1, kind="stable")[:, :k]  # ties: database order
    qi, ri = q_idx[pick], d_idx[top]
    ql, rl = np.asarray(ds.labels[qi]), np.asarray(ds.labels[ri.ravel()]).reshape(ri.shape + ds.labels.shape[1:])
    correct = (rl == ql[:, None]) if ql.ndim == 1 else ((rl & ql[:, None, :]).sum(-1) > 0)
    result_images = np.asarray(ds.images[np.sort(ri.ravel())])[np.argsort(np.argsort(ri.ravel()))]
    result_images = result_images.reshape(ri.shape + ds.images.shape[1:])
    return plot_query_results(np.asarray(ds.images[np.sort(qi)])[np.argsort(np.argsort(qi))], result_images,
                              correct, path, distances=np.take_along_axis(dist, top, axis=1))


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run_demo()
