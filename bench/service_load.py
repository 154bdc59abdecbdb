"""Load test of ``hashlearn serve`` on loopback: requests/s, p50/p99 latency and errors under 1-32 clients.

Builds a collection (the first N images of a prepared dataset, encoded by a run), starts
``hashlearn serve`` on 127.0.0.1, then for each number of concurrent clients runs a bounded loop of
``POST /search`` with real images (dataset images not in the collection) and one of
``POST /search/codes`` (the codes of those images), each for ``--seconds``. Writes
``docs/results/service-load.md`` and ``.json``. Traffic goes to 127.0.0.1 only and stops by itself.

    python bench/service_load.py --run runs/demo/dpsh/32bits --dataset fashion-mnist --n 20000 \\
        --clients 1,8,32 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shlex
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_page import build_collection, start_server  # noqa: E402


def batch_counters(text: str) -> dict:
    """``{worker: (sum, count)}`` of the micro-batch size histograms in a /metrics scrape."""
    out: dict = {}
    for line in text.splitlines():
        for part, slot in (("_sum{", 0), ("_count{", 1)):
            if line.startswith("hashlearn_batch_size" + part):
                worker = line.split('worker="')[1].split('"')[0]
                out.setdefault(worker, [0.0, 0.0])[slot] = float(line.split()[-1])
    return out


async def run_level(url: str, clients: int, seconds: float, make_request) -> dict:
    import httpx
    import numpy as np

    latencies, errors, statuses = [], 0, {}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        before = batch_counters((await client.get("metrics")).text)

        async def worker(w: int):
            nonlocal errors
            i = w
            while time.perf_counter() < deadline:
                method, path, kwargs = make_request(i)
                i += clients
                start = time.perf_counter()
                try:
                    r = await client.request(method, path, **kwargs)
                    code = r.status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                latencies.append(time.perf_counter() - start)
                statuses[code] = statuses.get(code, 0) + 1
                if code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - started
        after = batch_counters((await client.get("metrics")).text)
    lat = np.array(latencies) * 1e3
    mean_batch = {}
    for name, (total, count) in after.items():
        t0, c0 = before.get(name, (0.0, 0.0))
        mean_batch[name] = (total - t0) / (count - c0) if count > c0 else None
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "errors": errors,
        "statuses": {str(k): v for k, v in statuses.items()},
        "mean_batch": mean_batch,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--n", type=int, default=20_000, help="images in the collection")
    parser.add_argument("--queries", type=int, default=200, help="distinct query images (not in the collection)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", default="docs/results/service-load.md")
    parser.add_argument("--render", action="store_true", help="only rewrite --out from the .json beside it")
    if "--render" in sys.argv[1:]:
        only = argparse.ArgumentParser()
        only.add_argument("--render", action="store_true")
        only.add_argument("--out", default="docs/results/service-load.md")
        out = Path(only.parse_args().out)
        write_report(out, json.loads(out.with_suffix(".json").read_text()))
        return 0
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    if max(levels) > 64 or args.seconds > 120:
        raise SystemExit("bounded: at most 64 clients and 120 s a level")

    from hashlearn.train import load_data

    total = len(load_data(args.dataset).images)
    queries = list(range(total - args.queries, total))
    work = build_collection(args.run, args.dataset, args.n, queries=queries)
    files = [(work / "queries" / f"{j}.png").read_bytes() for j in range(len(queries))]
    server, url = start_server(args.run, work / "collection")
    load_before = os.getloadavg()
    rows = []
    try:
        import httpx

        codes = [httpx.post(url + "search", files={"file": ("q.png", f)}, data={"k": "1"}, timeout=60).json()["code"]
                 for f in files[:50]]

        def by_image(i):
            return "POST", "search", {"files": {"file": (f"q{i}.png", files[i % len(files)], "image/png")},
                                      "data": {"k": str(args.k)}}

        def by_code(i):
            return "POST", "search/codes", {"json": {"codes": [codes[i % len(codes)]], "k": args.k}}

        for mode, make in (("image", by_image), ("codes", by_code)):
            for clients in levels:
                row = asyncio.run(run_level(url, clients, args.seconds, make))
                row["mode"] = mode
                print(json.dumps(row), flush=True)
                rows.append(row)
        stats = httpx.get(url + "stats", timeout=60).json()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    load_after = os.getloadavg()
    command = "python " + shlex.join(["bench/service_load.py", *sys.argv[1:]])
    report = {
        "command": command,
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_before": load_before,
        "load_after": load_after,
        "run": args.run,
        "method": stats["method"],
        "bits": stats["bits"],
        "dataset": stats["dataset"],
        "backbone": stats["backbone"],
        "image_size": stats["image_size"],
        "collection_size": stats["items"],
        "k": args.k,
        "queries": len(files),
        "seconds_per_level": args.seconds,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    write_report(out, report)
    print(f"wrote {out} and {out.with_suffix('.json')}")
    errors = sum(r["errors"] for r in rows)
    return 1 if errors else 0


def write_report(out: Path, report: dict) -> None:
    """``out`` (Markdown) from the measurements of ``report`` (what the ``.json`` beside it holds)."""
    rows, command = report["rows"], report["command"]
    load_before, load_after = report["load_before"], report["load_after"]
    stats = {key: report[key] for key in ("method", "bits", "backbone", "image_size", "dataset")}
    stats["items"] = report["collection_size"]
    files = range(report.get("queries", 200))
    args = argparse.Namespace(run=report["run"], k=report["k"], seconds=report.get("seconds_per_level", 30))
    lines = [
        "# hashlearn serve under load",
        "",
        "Written by `bench/service_load.py`; reproduce with:",
        "",
        "```",
        command,
        "```",
        "",
        f"{report['date']}, {report['machine']}; load average {load_before[0]:.1f} before and {load_after[0]:.1f} "
        f"after (1 min; the server, the clients and other jobs share the cores). One server process "
        f"(`--workers 1`) on 127.0.0.1 serving the run `{args.run}` ({stats['method']}, {stats['bits']} bits, "
        f"{stats['backbone']} at {stats['image_size']} px, trained on {stats['dataset']}) over a collection of "
        f"{stats['items']:,} of its images; queries are {len(files)} other images of the dataset (PNG uploads) "
        f"or their codes; k = {args.k}; each level runs {args.seconds:g} s with that many concurrent clients "
        "(httpx, one connection each), each sending its next request when the last is answered.",
        "",
        "| queries | clients | requests | requests/s | p50 ms | p99 ms | errors | mean encode batch "
        "| mean search batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        enc, sea = r["mean_batch"].get("encode"), r["mean_batch"].get("search")
        lines.append(
            f"| {r['mode']} | {r['clients']} | {r['requests']:,} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['errors']} | {'—' if enc is None else f'{enc:.1f}'} | "
            f"{'—' if sea is None else f'{sea:.1f}'} |"
        )
    lines += [
        "",
        "Mean batch = jobs per micro-batch during the level (from `/metrics`: `hashlearn_batch_size`): how many "
        "concurrent requests were encoded, or searched, together. On a machine whose load average is far above "
        "its cores, the server's threads wait for time slices, so these figures bound what the code does from "
        "below and vary from run to run; compare levels within one run.",
        "",
    ]
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
