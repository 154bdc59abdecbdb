"""Hamming search speed: hashlearn (flat scan, MIH) side by side with faiss-cpu IndexBinaryFlat.

Writes docs/results/search-speed.md. Every ratio is measured in one run, peers alternating,
each timing the median of ``--repeats``; exactness is checked against FAISS's distances.

    python bench/search.py            # full run (about 10 minutes on 2 cores)
    python bench/search.py --quick    # 100k codes, for a smoke test
    python bench/search.py --only breakeven   # re-measure and rewrite only the break-even section
    python bench/search.py --only calibrate   # fit the cost-model constants of ``auto`` (prints them)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

THREADS = 2
Q = 1000
K = 100


def set_threads(n: int) -> None:
    import faiss
    import numba

    faiss.omp_set_num_threads(n)
    numba.set_num_threads(n)


def random_words(rng, n, nw):
    return rng.integers(0, 2**63, (n, nw), dtype=np.int64).view(np.uint64) ^ (
        rng.integers(0, 2, (n, nw), dtype=np.uint64) << np.uint64(63)
    )


def make_codes(kind: str, n: int, bits: int, seed: int):
    """Packed codes: ``uniform`` random, or ``clustered``: noisy copies of 100 centre codes,
    each bit flipped with probability 1/8 (AND of three random words)."""
    rng = np.random.default_rng(seed)
    nw = bits // 64
    if kind == "uniform":
        words = random_words(rng, n, nw)
    else:
        centres = random_words(np.random.default_rng(12345), 100, nw)
        words = np.empty((n, nw), dtype=np.uint64)
        step = 1_000_000
        for a in range(0, n, step):
            b = min(n, a + step)
            noise = random_words(rng, b - a, nw) & random_words(rng, b - a, nw) & random_words(rng, b - a, nw)
            words[a:b] = centres[rng.integers(0, 100, b - a)] ^ noise
    return words.view(np.uint8).reshape(n, nw * 8)


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def memory_bandwidth_gbs() -> float:
    """Read bandwidth with both threads: a parallel sum over 1 GiB (best of 3)."""
    import numba

    @numba.njit(parallel=True, cache=False)
    def total(a):
        s = np.uint64(0)
        for i in numba.prange(a.shape[0]):
            s += a[i]
        return s

    a = np.ones(128 * 1024 * 1024, dtype=np.uint64)
    total(a[:1000])
    best = min(timed(lambda: total(a), 1)[0] for _ in range(3))
    return a.nbytes / best / 1e9


def bench_config(kind, n, bits, repeats, with_mih, log):
    import faiss

    from hashlearn.index import HammingIndex
    from hashlearn.index._scan import query_block

    db = make_codes(kind, n, bits, seed=1)
    q = make_codes(kind, Q, bits, seed=2)
    t = time.perf_counter()
    fx = faiss.IndexBinaryFlat(bits)
    fx.add(db)
    faiss_build = time.perf_counter() - t
    t = time.perf_counter()
    flat = HammingIndex(bits, method="flat")
    flat.add(db)
    flat_build = time.perf_counter() - t
    flat.search(q[:4], K)  # compile / load the cached kernel
    row = {"kind": kind, "n": n, "bits": bits, "faiss_build_s": faiss_build, "flat_build_s": flat_build}
    tf, tm = [], []
    for _ in range(repeats):  # alternate the peers
        s, (fd, fi) = timed(lambda: fx.search(q, K), 1)
        tf.append(s)
        s, (hd, hi) = timed(lambda: flat.search(q, K), 1)
        tm.append(s)
    row["faiss_s"] = float(np.median(tf))
    row["flat_s"] = float(np.median(tm))
    row["exact"] = bool((fd == hd).all())
    # ids may differ only inside a tie; hashlearn orders ties by id
    row["ratio"] = row["faiss_s"] / row["flat_s"]
    nbytes = bits // 8
    row["logical_gbs"] = n * nbytes * Q / row["flat_s"] / 1e9
    row["qblock"] = query_block(Q, K)
    row["dram_gbs"] = n * nbytes * -(-Q // row["qblock"]) / row["flat_s"] / 1e9
    lat_f, lat_h = [], []
    for i in range(50):
        lat_f.append(timed(lambda i=i: fx.search(q[i : i + 1], K), 1)[0])
        lat_h.append(timed(lambda i=i: flat.search(q[i : i + 1], K), 1)[0])
    row["lat_faiss_ms"] = (np.percentile(lat_f, 50) * 1e3, np.percentile(lat_f, 99) * 1e3)
    row["lat_flat_ms"] = (np.percentile(lat_h, 50) * 1e3, np.percentile(lat_h, 99) * 1e3)
    if with_mih:
        mih = HammingIndex(bits, method="mih")
        mih.add(db)
        t = time.perf_counter()
        tables = mih.mih_tables()
        row["mih_build_s"] = time.perf_counter() - t
        row["mih_m"] = tables.m
        row["mih_bytes_per_code"] = (tables.nbytes + db.nbytes) / n
        mih.search(q[:4], K)
        s, (md, mi) = timed(lambda: mih.search(q, K), repeats)
        row["mih_s"] = s
        row["mih_exact"] = bool((md == hd).all() and (mi == hi).all())
        row["mih_speedup"] = row["flat_s"] / s
        lat_m = [timed(lambda i=i: mih.search(q[i : i + 1], K), 1)[0] for i in range(50)]
        row["lat_mih_ms"] = (np.percentile(lat_m, 50) * 1e3, np.percentile(lat_m, 99) * 1e3)
    log(row)
    return row


def break_even(repeats, log):
    """Smallest n at which MIH beats the flat scan (Q=200, k=100), per code length and data."""
    from hashlearn.index import HammingIndex

    out = []
    for bits in (32, 64, 128, 256):
        for kind in ("clustered", "uniform"):
            found = None
            for n in (10_000, 30_000, 100_000, 300_000, 1_000_000):
                db = make_codes(kind, n, max(bits, 64), seed=3)[:, : bits // 8]
                q = make_codes(kind, 200, max(bits, 64), seed=4)[:, : bits // 8]
                flat = HammingIndex(bits, method="flat")
                flat.add(db)
                mih = HammingIndex(bits, method="mih")
                mih.add(db)
                mih.search(q[:4], K)
                flat.search(q[:4], K)
                tf = timed(lambda flat=flat, q=q: flat.search(q, K), repeats)[0]
                tm = timed(lambda mih=mih, q=q: mih.search(q, K), repeats)[0]
                auto = HammingIndex(bits)  # method="auto": what its search of these queries picks
                auto.add(db)
                est = auto.estimate_costs(k=K, queries=q)
                auto.search(q, K)
                row = {
                    "bits": bits,
                    "kind": kind,
                    "n": n,
                    "flat_s": tf,
                    "mih_s": tm,
                    "auto": auto.last_method,
                    "est_flat_ms": est["linear_ns"] / 1e6,
                    "est_mih_ms": est["mih_ns"] / 1e6,
                }
                row["load"] = os.getloadavg()
                log(row)
                out.append(row)
                if tm < tf and found is None:
                    found = n
                if found is not None and n >= 3 * found:
                    break
    return out


CALIBRATION = [  # (bits, codes, n): both sides of the break-even, probe-bound and verify-bound
    (32, "clustered", 30_000),
    (32, "uniform", 30_000),
    (32, "uniform", 300_000),
    (32, "uniform", 1_000_000),
    (64, "clustered", 10_000),
    (64, "clustered", 100_000),
    (64, "clustered", 1_000_000),
    (64, "uniform", 100_000),
    (64, "uniform", 1_000_000),
    (128, "clustered", 300_000),
    (128, "uniform", 30_000),
    (256, "clustered", 100_000),
    (256, "uniform", 10_000),
]


def calibrate(log):
    """Fit the constants of ``hashlearn.index.hamming``'s cost model on one thread (k = 100).

    Scan: time per query = SCAN_QUERY_NS + SCAN_NS_PER_WORD x n x words. MIH: PROBE_NS x probes in
    tables of at most CACHED_SUBSTRING_BITS-bit substrings + PROBE_MISS_NS x other probes + VERIFY_NS
    x bucket entries, the counts being those the cost model estimates from its sample; least squares
    on relative error, non-negative.
    """
    import numba
    from scipy.optimize import nnls

    from hashlearn.index import HammingIndex

    numba.set_num_threads(1)
    nq = 32
    flat_rows, mih_rows = [], []
    for bits, kind, n in CALIBRATION:
        db = make_codes(kind, n, max(bits, 64), seed=3)[:, : bits // 8]
        q = make_codes(kind, nq, max(bits, 64), seed=4)[:, : bits // 8]
        flat = HammingIndex(bits, method="flat")
        flat.add(db)
        mih = HammingIndex(bits, method="mih")
        mih.add(db)
        flat.search(q[:4], K)
        mih.search(q[:4], K)
        tf = min(timed(lambda flat=flat, q=q: flat.search(q, K), 1)[0] for _ in range(3)) / nq * 1e9
        tm = min(timed(lambda mih=mih, q=q: mih.search(q, K), 1)[0] for _ in range(3)) / nq * 1e9
        cached = missed = cand = 0.0
        for g in range(0, nq, 8):  # the counts the cost model estimates, 8 queries at a time
            est = mih._sampled_costs(mih._to_words(q[g : g + 8], "queries"), K, None)
            cached += est["probes_cached"] / (nq // 8)
            missed += (est["probes"] - est["probes_cached"]) / (nq // 8)
            cand += est["candidates"] / (nq // 8)
        flat_rows.append((n * ((bits + 63) // 64), tf))
        mih_rows.append((cached, missed, cand, tm))
        log(
            {
                "bits": bits,
                "kind": kind,
                "n": n,
                "flat_ns": tf,
                "mih_ns": tm,
                "probes_cached": cached,
                "probes_missed": missed,
                "candidates": cand,
            }
        )
    numba.set_num_threads(THREADS)
    fa = np.array(flat_rows)
    a = np.c_[np.ones(len(fa)), fa[:, 0]] / fa[:, 1:2]
    scan_query, scan_word = nnls(a, np.ones(len(fa)))[0]
    ma = np.array(mih_rows)
    probe, miss, verify = nnls(ma[:, :3] / ma[:, 3:4], np.ones(len(ma)))[0]
    fitted = {
        "SCAN_QUERY_NS": scan_query,
        "SCAN_NS_PER_WORD": scan_word,
        "PROBE_NS": probe,
        "PROBE_MISS_NS": miss,
        "VERIFY_NS": verify,
    }
    print("fitted constants (src/hashlearn/index/hamming.py):")
    for name, value in fitted.items():
        print(f"  {name} = {value:.3g}")
    return fitted


LATENCY_BATCHES = (1, 2, 4, 8, 16)


def latency(n, bits, kind, trials, log):
    """p50/p99 latency of one search call of 1-16 queries (k = K): FAISS IndexBinaryFlat, hashlearn
    flat, mih and auto, interleaved call by call; queries drawn like the codes (never reused)."""
    import faiss

    from hashlearn.index import HammingIndex

    db = make_codes(kind, n, bits, seed=1)
    q = make_codes(kind, trials * sum(LATENCY_BATCHES) + 64, bits, seed=2)
    fx = faiss.IndexBinaryFlat(bits)
    fx.add(db)
    peers = {"FAISS": lambda x, k: fx.search(x, k)}
    indexes = {}
    for method in ("flat", "mih", "auto"):
        index = HammingIndex(bits, method=method)
        index.add(db)
        indexes[method] = index
        peers[method] = index.search
    indexes["mih"].mih_tables()
    for b in LATENCY_BATCHES:  # compile, build MIH tables, make auto's first choices
        for search in peers.values():
            search(q[:b], K)
    probe = HammingIndex(bits)
    probe.add(db)
    estimate_ms = [timed(lambda i=i: probe.estimate_costs(k=K, queries=q[i : i + 1]), 1)[0] * 1e3 for i in range(20)]
    decisions_before = indexes["auto"].auto_decisions
    rows, at = [], 64
    for b in LATENCY_BATCHES:
        times = {name: [] for name in peers}
        picked = set()
        for _ in range(trials):
            batch = q[at : at + b]
            at += b
            for name, search in peers.items():
                times[name].append(timed(lambda search=search, batch=batch: search(batch, K), 1)[0] * 1e3)
            picked.add(indexes["auto"].last_method)
        row = {"n": n, "bits": bits, "kind": kind, "queries": b, "trials": trials, "auto_used": sorted(picked)}
        for name, t in times.items():
            row[name] = (float(np.percentile(t, 50)), float(np.percentile(t, 99)))
        log(row)
        rows.append(row)
    extra = {"estimate_ms_p50": float(np.median(estimate_ms)),
             "auto_estimates_during_timing": indexes["auto"].auto_decisions - decisions_before,
             "auto_calls_timed": trials * len(LATENCY_BATCHES), "mih_m": indexes["mih"].mih_tables().m,
             "threads": THREADS}
    return rows, extra


def write_latency(path: Path, rows, extra, command, load_before, load_after, elapsed):
    r0 = rows[0]
    lines = [
        "# Hamming search latency: single queries and small batches",
        "",
        "Written by `bench/search.py --only latency`; reproduce with:",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores: load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after (1 min; "
        + ("other jobs ran on the cores, so absolute times are inflated and noisy; "
           if max(load_before[0], load_after[0]) > (os.cpu_count() or 1) else "a quiet machine; ")
        + "the peers are interleaved call by call, so they share the same conditions). "
        f"Threads: {extra['threads']} for every peer. {r0['n']:,} {r0['kind']} {r0['bits']}-bit codes "
        f"(noisy copies of 100 centre codes, each bit flipped with probability 1/8), queries drawn the same "
        f"way and never reused, k = {K}, {r0['trials']} calls per cell. Run took {elapsed / 60:.1f} min.",
        "",
        "| queries per call | FAISS `IndexBinaryFlat` p50 / p99 ms | hashlearn `flat` | `mih` "
        f"(m = {extra['mih_m']}) | `auto` | `auto` used |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['queries']} | {fmt_ms(r['FAISS'])} | {fmt_ms(r['flat'])} | {fmt_ms(r['mih'])} | "
                     f"{fmt_ms(r['auto'])} | {', '.join(r['auto_used'])} |")
    lines += [
        "",
        f"`auto` decides once per k (and again when the number of codes changes by more than 10 % or the "
        f"k-th distances drift): during the {extra['auto_calls_timed']} timed `auto` calls it re-estimated "
        f"{extra['auto_estimates_during_timing']} times. One estimate (what every call paid before) costs "
        f"{extra['estimate_ms_p50']:.2f} ms (median of 20, one query) here. Fewer queries than threads "
        f"(one query on 2 threads) scan with the database split between the threads.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    import json

    path.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows, **extra,
                                                     "load_before": load_before, "load_after": load_after},
                                                    indent=1) + "\n")


def fmt_ms(pair):
    return f"{pair[0]:.2f} / {pair[1]:.2f}"


BREAKEVEN_HEADING = "## Break-even: MIH vs flat"


def breakeven_section(be, command) -> str:
    """The break-even section, with its own date, command and load (it can be re-run alone)."""
    if not be:
        return f"{BREAKEVEN_HEADING}\n\nNot measured (`--no-break-even`).\n"
    wrong = sum(r["auto"] != ("mih" if r["mih_s"] < r["flat_s"] else "flat") for r in be)
    lines = [
        f"{BREAKEVEN_HEADING} (Q = 200, k = 100)",
        "",
        f"Measured {datetime.date.today().isoformat()} with `{command}`; load average before / after: "
        + " / ".join(f"{x:.2f}" for x in be[0]["load"][:1] + be[-1]["load"][:1])
        + f" on {os.cpu_count()} cores (1-minute averages; they include this benchmark's own threads). "
        f"Threads: {THREADS}.",
        "",
        "`auto` = the method `HammingIndex(bits).search(queries, k)` chose for these very queries "
        "(`index.last_method`): it samples 16,384 codes and 8 queries to estimate the k-th neighbour's "
        "distance and the bucket entries MIH would verify, then compares the cost model's estimates "
        "(per query, one core; columns *est.*). **bold** = auto picked the slower method; the slow-down "
        f"is the ratio of the two measured times. Auto picked the faster method in {len(be) - wrong} of {len(be)}.",
        "",
        "| bits | codes | n | flat s | MIH s | faster | `auto` picks | est. flat / MIH ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in be:
        faster = "mih" if r["mih_s"] < r["flat_s"] else "flat"
        pick = r["auto"]
        if pick != faster:
            slow = max(r["mih_s"], r["flat_s"]) / min(r["mih_s"], r["flat_s"])
            pick = f"**{pick}** ({slow:.2f}x slower)"
        est = (
            f"{r['est_flat_ms']:.3f} / {r['est_mih_ms']:.3f}" if np.isfinite(r["est_mih_ms"]) else "(n < 16,384: flat)"
        )
        lines.append(
            f"| {r['bits']} | {r['kind']} | {r['n']:,} | {r['flat_s']:.4f} | {r['mih_s']:.4f} | "
            f"{faster} | {pick} | {est} |"
        )
    return "\n".join(lines) + "\n"


def update_breakeven(path: Path, be, command) -> None:
    """Replace only the break-even section of an existing report (the rest is kept as it is)."""
    text = path.read_text() if path.exists() else "# Hamming search speed\n\n"
    start = text.find(BREAKEVEN_HEADING)
    if start < 0:
        head, tail = text.rstrip("\n") + "\n\n", ""
    else:
        end = text.find("\n## ", start + 1)
        head, tail = text[:start], ("" if end < 0 else text[end + 1 :])
    path.write_text(head + breakeven_section(be, command) + ("\n" + tail if tail else ""))


def write_report(path, rows, be, bandwidth, command, elapsed, load_before):
    lines = [
        "# Hamming search speed",
        "",
        "Written by `bench/search.py`; reproduce with:",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average before the "
        f"run {load_before[0]:.2f} / {load_before[1]:.2f} (1 / 5 min; other jobs on the machine slow FAISS and "
        f"hashlearn unequally, so compare runs made on a quiet machine). Every ratio is measured side by side in "
        f"this one run, peers alternating, "
        f"median of the repeats. Threads: {THREADS} for both. Q = {Q} queries, k = {K}. "
        f"faiss-cpu `IndexBinaryFlat`. Measured read bandwidth (parallel sum over 1 GiB): "
        f"**{bandwidth:.1f} GB/s**. Run took {elapsed / 60:.1f} min.",
        "",
        "Clustered codes: noisy copies of 100 centre codes (each bit flipped with probability 1/8); "
        "queries drawn the same way. Exact = hashlearn's distances equal FAISS's, element by element "
        "(ids can differ only inside a tie; hashlearn orders ties by id).",
        "",
        "## Linear scan vs FAISS",
        "",
        "| codes | n | bits | FAISS s | hashlearn flat s | **speed-up** | queries/s (hashlearn) | exact | "
        "GB/s logical / DRAM | latency p50/p99 ms FAISS | hashlearn |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['n']:,} | {r['bits']} | {r['faiss_s']:.3f} | {r['flat_s']:.3f} | "
            f"**{r['ratio']:.2f}x** | {Q / r['flat_s']:,.0f} | {r['exact']} | "
            f"{r['logical_gbs']:.0f} / {r['dram_gbs']:.2f} | {fmt_ms(r['lat_faiss_ms'])} | {fmt_ms(r['lat_flat_ms'])} |"
        )
    lines += [
        "",
        "GB/s logical = database bytes x queries / time (what a per-query scan would stream); DRAM = bytes "
        f"actually read from memory, once per block of {rows[0]['qblock']} queries (each block is then "
        "byte-transposed and compared 32 codes per vector step). The scan is compute-bound (XOR, byte popcount, "
        f"compare), far below the {bandwidth:.1f} GB/s the memory delivers: blocking queries is what frees it "
        "from bandwidth.",
        "",
        "## Multi-index hashing vs the linear scan",
        "",
        "| codes | n | bits | m | flat s | MIH s | **MIH speed-up** | exact (= flat, ids too) | "
        "MIH build s | bytes/code (codes + tables) | latency p50/p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "mih_s" in r:
            lines.append(
                f"| {r['kind']} | {r['n']:,} | {r['bits']} | {r['mih_m']} | {r['flat_s']:.3f} | {r['mih_s']:.3f} | "
                f"**{r['mih_speedup']:.1f}x** | {r['mih_exact']} | {r['mih_build_s']:.2f} | "
                f"{r['mih_bytes_per_code']:.0f} | {fmt_ms(r['lat_mih_ms'])} |"
            )
    lines += [
        "",
        "Memory per code: the flat index holds the codes only (bits/8 bytes, plus an 8-byte id); MIH adds "
        "m positions (4 bytes each) and the bucket offsets. Build time of the flat index is the copy "
        "of the codes: "
        + ", ".join(
            f"{r['n']:,}x{r['bits']}: {r['flat_build_s']:.2f} s (FAISS {r['faiss_build_s']:.2f} s)" for r in rows
        )
        + ".",
        "",
    ]
    lines.append(breakeven_section(be, command))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="docs/results/search-speed.md")
    parser.add_argument("--no-break-even", action="store_true")
    parser.add_argument(
        "--only",
        choices=["breakeven", "calibrate", "latency"],
        help="breakeven: re-measure only the break-even section and rewrite it in --out, keeping the "
        "other sections; calibrate: fit and print the cost-model constants (writes nothing); latency: "
        "1-16 queries per call, p50/p99, written to --latency-out",
    )
    parser.add_argument("--latency-n", type=int, default=10_000_000, help="codes for --only latency")
    parser.add_argument("--latency-trials", type=int, default=100, help="calls per cell for --only latency")
    parser.add_argument("--latency-out", default="docs/results/search-latency.md")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"threads of every peer (default {THREADS})")
    args = parser.parse_args(argv)
    THREADS = args.threads
    set_threads(THREADS)
    started = time.perf_counter()
    load_before = os.getloadavg()

    def log(row):
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    given = sys.argv[1:] if argv is None else argv
    command = "python " + " ".join(shlex.quote(a) for a in ["bench/search.py", *given])
    if args.only == "calibrate":
        calibrate(log)
        return 0
    if args.only == "latency":
        rows, extra = latency(args.latency_n, 64, "clustered", args.latency_trials, log)
        write_latency(Path(args.latency_out), rows, extra, command, load_before, os.getloadavg(),
                      time.perf_counter() - started)
        print(f"wrote {args.latency_out}")
        return 0
    if args.only == "breakeven":
        update_breakeven(Path(args.out), break_even(args.repeats, log), command)
        print(f"rewrote the break-even section of {args.out}")
        return 0
    bandwidth = memory_bandwidth_gbs()
    print(f"bandwidth {bandwidth:.1f} GB/s", flush=True)
    if args.quick:
        configs = [(100_000, 64, True), (100_000, 256, False)]
    else:
        configs = [(1_000_000, 64, True), (10_000_000, 64, True), (1_000_000, 256, False)]
    rows = []
    for n, bits, with_mih in configs:
        for kind in ("clustered", "uniform"):
            rows.append(bench_config(kind, n, bits, args.repeats, with_mih, log))
    be = [] if args.no_break_even else break_even(args.repeats, log)
    write_report(Path(args.out), rows, be, bandwidth, command, time.perf_counter() - started, load_before)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
