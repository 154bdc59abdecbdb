"""Load test of ``hashlearn serve`` on loopback: requests/s, p50/p99 latency and errors under 1-32 clients.

Builds a collection (the first N images of a prepared dataset, encoded by a run), starts
``hashlearn serve`` on 127.0.0.1, then for each number of concurrent clients runs a bounded loop of
``POST /search`` with real images (dataset images not in the collection) and one of
``POST /search/codes`` (the codes of those images), each for ``--seconds``. Writes
``docs/results/service-load.md`` and ``.json``. Traffic goes to 127.0.0.1 only and stops by itself.

The clients are spread over ``--procs`` processes; each client has its own keep-alive connection and
sends requests prepared beforehand as bytes (HTTP/1.1 over asyncio streams), so that a client costs
little CPU next to the server it measures. The CPU time the server process and the client processes use
during each level is reported, to show which of them the machine's cores were busy with.

    python bench/service_load.py --run runs/demo/dpsh/32bits --dataset fashion-mnist --n 20000 \\
        --clients 1,8,32 --seconds 30 --procs 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_page import build_collection, start_server  # noqa: E402

START_DELAY_S = 1.0  # between handing a level to the client processes and its start: time to connect
TIMEOUT_S = 60.0  # a request not answered by then counts as an error (TimeoutError)


def batch_counters(text: str) -> dict:
    """``{worker: (sum, count)}`` of the micro-batch size histograms in a /metrics scrape."""
    out: dict = {}
    for line in text.splitlines():
        for part, slot in (("_sum{", 0), ("_count{", 1)):
            if line.startswith("hashlearn_batch_size" + part):
                worker = line.split('worker="')[1].split('"')[0]
                out.setdefault(worker, [0.0, 0.0])[slot] = float(line.split()[-1])
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads) so far, from /proc; None without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14 and 15 of proc(5)


def raw_request(request) -> bytes:
    """An ``httpx.Request`` as the bytes of an HTTP/1.1 request (httpx writes the body and its headers)."""
    body = request.read()
    lines = [f"{request.method} {request.url.raw_path.decode()} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response: ``(status, whether the connection stays open)``; its body is read and dropped."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if "content-length" not in headers:
        raise ValueError("response without Content-Length")
    await reader.readexactly(int(headers["content-length"]))
    return status, headers.get("connection") != "close"


async def run_clients(host: str, port: int, requests: list, ids: list, stride: int, start_at: float,
                      seconds: float) -> dict:
    """Clients ``ids`` (of ``stride`` in all), each on its own connection, from ``start_at`` (epoch seconds)
    for ``seconds``: client ``w`` sends ``requests[w]``, ``requests[w + stride]``, ... each once the last is
    answered. Returns their latencies, status counts, this process's CPU seconds and when the last ended."""
    latencies, statuses = [], {}

    async def connect():
        with contextlib.suppress(OSError):  # else the client's first request connects, or counts the error
            return await asyncio.open_connection(host, port)
        return None, None

    streams = await asyncio.gather(*(connect() for _ in ids))
    await asyncio.sleep(max(0.0, start_at - time.time()))
    deadline = time.perf_counter() + seconds - max(0.0, time.time() - start_at)
    cpu = os.times()

    async def client(w: int, reader, writer):
        i = w
        while time.perf_counter() < deadline:
            data = requests[i % len(requests)]
            i += stride
            start = time.perf_counter()
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write(data)
                    status, keep = await read_response(reader)
            except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:  # TimeoutError is an OSError
                status, keep = type(exc).__name__, False
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1
            if not keep and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(w, r, wr) for w, (r, wr) in zip(ids, streams, strict=True)))
    end = time.time()
    used = os.times()
    return {"latencies": latencies, "statuses": statuses, "end": end,
            "cpu_s": (used.user - cpu.user) + (used.system - cpu.system)}


def client_process(conn, host: str, port: int, requests: dict) -> None:
    """A client process: runs the levels that arrive on ``conn`` (``None`` ends it), answering each."""
    while (level := conn.recv()) is not None:
        mode, ids, stride, start_at, seconds = level
        conn.send(asyncio.run(run_clients(host, port, requests[mode], ids, stride, start_at, seconds)))


def run_level(url: str, conns: list, mode: str, clients: int, seconds: float, server_pid: int) -> dict:
    import httpx
    import numpy as np

    before = batch_counters(httpx.get(url + "metrics", timeout=60).text)
    start_at = time.time() + START_DELAY_S
    for p, conn in enumerate(conns):
        conn.send((mode, list(range(p, clients, len(conns))), clients, start_at, seconds))
    time.sleep(max(0.0, start_at - time.time()))
    server_cpu = cpu_seconds(server_pid)
    parts = [conn.recv() for conn in conns]
    elapsed = max(part["end"] for part in parts) - start_at
    server_used = cpu_seconds(server_pid)
    after = batch_counters(httpx.get(url + "metrics", timeout=60).text)
    latencies = np.array([s for part in parts for s in part["latencies"]]) * 1e3
    statuses: dict = {}
    for part in parts:
        for code, n in part["statuses"].items():
            statuses[str(code)] = statuses.get(str(code), 0) + n
    mean_batch = {}
    for name, (total, count) in after.items():
        t0, c0 = before.get(name, (0.0, 0.0))
        mean_batch[name] = (total - t0) / (count - c0) if count > c0 else None
    server_cpu_s = None if server_cpu is None or server_used is None else server_used - server_cpu
    client_cpu_s = sum(part["cpu_s"] for part in parts)
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "errors": sum(n for code, n in statuses.items() if code != "200"),
        "statuses": statuses,
        "mean_batch": mean_batch,
        "server_cpu_s": server_cpu_s,
        "client_cpu_s": client_cpu_s,
        "server_cpu_pct": None if server_cpu_s is None else 100 * server_cpu_s / elapsed,
        "client_cpu_pct": 100 * client_cpu_s / elapsed,
        "load_1min": os.getloadavg()[0],
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
    parser.add_argument("--procs", type=int, default=2, help="client processes (the clients are spread over them)")
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
    if max(levels) > 64 or args.seconds > 120 or not 1 <= args.procs <= 16:
        raise SystemExit("bounded: at most 64 clients, 120 s a level and 16 client processes")

    from hashlearn.train import load_data

    total = len(load_data(args.dataset).images)
    queries = list(range(total - args.queries, total))
    work = build_collection(args.run, args.dataset, args.n, queries=queries)
    files = [(work / "queries" / f"{j}.png").read_bytes() for j in range(len(queries))]
    server, url = start_server(args.run, work / "collection")
    load_before = os.getloadavg()
    rows, procs = [], []
    try:
        import httpx

        codes = [httpx.post(url + "search", files={"file": ("q.png", f)}, data={"k": "1"}, timeout=60).json()["code"]
                 for f in files[:50]]
        requests = {
            "image": [raw_request(httpx.Request("POST", url + "search", data={"k": str(args.k)},
                                               files={"file": (f"q{j}.png", f, "image/png")}))
                      for j, f in enumerate(files)],
            "codes": [raw_request(httpx.Request("POST", url + "search/codes", json={"codes": [c], "k": args.k}))
                      for c in codes],
        }
        host, port = httpx.URL(url).host, httpx.URL(url).port
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of this one's torch
        for _ in range(args.procs):
            conn, child = spawn.Pipe()
            proc = spawn.Process(target=client_process, args=(child, host, port, requests), daemon=True)
            proc.start()
            child.close()  # the child's end lives in the child only: if it dies, recv() here fails at once
            procs.append((proc, conn))
        conns = [conn for _, conn in procs]
        for mode in ("image", "codes"):
            for clients in levels:
                row = run_level(url, conns, mode, clients, args.seconds, server.pid)
                row["mode"] = mode
                print(json.dumps(row), flush=True)
                rows.append(row)
        stats = httpx.get(url + "stats", timeout=60).json()
    finally:
        for proc, conn in procs:
            with contextlib.suppress(OSError):  # a client process that died cannot be told
                conn.send(None)
            proc.join(30)
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
        "client_processes": args.procs,
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
    procs = report.get("client_processes")
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
        f"or their codes; k = {args.k}; each level runs {args.seconds:g} s with that many concurrent clients, "
        + (f"spread over {procs} client processes, each client with its own keep-alive connection (HTTP/1.1 "
           "requests prepared beforehand, sent over asyncio streams)" if procs else
           "in one process (httpx, one shared pool of connections)")
        + ", each sending its next request when the last is answered.",
        "",
        "| queries | clients | requests | requests/s | p50 ms | p99 ms | errors | mean encode batch "
        "| mean search batch | server CPU % | client CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        enc, sea = r["mean_batch"].get("encode"), r["mean_batch"].get("search")
        lines.append(
            f"| {r['mode']} | {r['clients']} | {r['requests']:,} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['errors']} | {_figure(enc)} | {_figure(sea)} | "
            f"{_figure(r.get('server_cpu_pct'), '.0f')} | {_figure(r.get('client_cpu_pct'), '.0f')} |"
        )
    lines += [
        "",
        "Server CPU % and client CPU % = CPU time (user + system, all threads) that the server process and the "
        f"client processes used during the level, in % of one core ({report['machine'].rsplit(', ', 1)[-1]} in "
        "all): where their sum nears the cores, the two compete for them, and whichever is near its share "
        "sets the pace.",
        "",
        "Mean batch = jobs per micro-batch during the level (from `/metrics`: `hashlearn_batch_size`): how many "
        "concurrent requests were encoded, or searched, together. On a machine whose load average is far above "
        "its cores, the server's threads wait for time slices, so these figures bound what the code does from "
        "below and vary from run to run; compare levels within one run.",
        "",
    ]
    out.write_text("\n".join(lines))


def _figure(value, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


if __name__ == "__main__":
    sys.exit(main())
