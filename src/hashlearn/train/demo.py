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
"""

from __future__ import annotations

import os
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


#: what a demo writes into its --out folder (besides one folder per method)
DEMO_FILES = ("pr_curves.png", "queries.png", "summary.md", "demo.json")


def check_demo_out(out: Path, methods) -> None:
    """``demo --out`` must be new, empty or an earlier demo output: the demo never writes its
    files (or method folders) into a folder of other things."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if (out / "demo.json").is_file():
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in DEMO_FILES and p.name not in methods)
    if others:
        raise InputError(f"--out {out}: the folder exists, is not empty and is not a hashlearn demo output (it holds "
                         f"{others[0]!r}{' and more' if len(others) > 1 else ''}); pick a new or empty folder")


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
             seed: int = 0, database: int | None = DEMO_DATABASE, threads: int | str | None = "auto") -> dict:
    """Run the demo; returns ``{"dataset", "results": {method: metrics}, "files": [...], "seconds"}``.
    ``methods`` / ``bits`` / ``epochs`` default to ``configs/demo.yaml``'s."""
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
    seconds = time.perf_counter() - t0
    summary = {"dataset": name, "protocol": description, "bits": bits, "epochs": epochs, "limit": limit,
               "seconds": round(seconds, 1),
               "results": {k: {kk: v[kk] for kk in v if kk.startswith(("mAP@", "P@r", "training_seconds"))}
                           for k, v in results.items()},
               "files": [str(f) for f in files]}
    write_json_atomic(out / "demo.json", summary)
    print(f"\nhashlearn demo — {name}, {description}, {bits} bits, smallcnn, {epochs} epoch(s)\n")
    print(table)
    print(f"\nplots: {files[0]}, {files[1]}\nruns:  {', '.join(str(out / m) for m in results)}\n"
          f"done in {seconds:.0f} s; outputs in {out.resolve()}")
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
