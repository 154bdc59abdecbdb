"""Screenshot of ``hashlearn serve``'s page (docs/serve-page.png, shown by the README).

Writes the first N images of a prepared dataset as PNG files, encodes them with a run and builds a
collection (``hashlearn encode`` + ``hashlearn index build``, as a user would), starts ``hashlearn serve`` on
loopback, and has headless Chromium (Debian's ``/usr/bin/chromium``, driven by playwright) upload a
query image that is not in the collection and photograph the answer.

    python bench/serve_page.py --run runs/demo/dpsh/32bits --dataset fashion-mnist --n 3000 \\
        --out docs/serve-page.png
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def png(pixels, path: Path) -> None:
    from PIL import Image

    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(path)


def build_collection(run: str, dataset: str, n: int, queries=()) -> Path:
    """A temporary folder with ``images/`` (the first ``n`` images of ``dataset`` as PNG files),
    ``collection/`` (encoded by ``run``, labelled) and ``queries/`` (the dataset images ``queries``)."""
    import numpy as np

    from hashlearn.cli import main as hashlearn
    from hashlearn.train import load_data

    ds = load_data(dataset)
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    (work / "images").mkdir()
    (work / "queries").mkdir()
    labels = []
    for i in range(n):
        png(np.asarray(ds.images[i]), work / "images" / f"{i:05d}.png")
        labels.append(ds.class_names[int(ds.labels[i])])
    for j, i in enumerate(queries):
        png(np.asarray(ds.images[i]), work / "queries" / f"{j}.png")
    (work / "labels.txt").write_text("\n".join(labels) + "\n")
    assert hashlearn(["encode", "--run", run, "--images", str(work / "images"), "--out", str(work / "codes.npz")]) == 0
    assert hashlearn(["index", "build", "--codes", str(work / "codes.npz"), "--labels", str(work / "labels.txt"),
                      "--out", str(work / "collection")]) == 0
    return work


def start_server(run: str, collection: Path, *extra: str):
    """``hashlearn serve`` on a free loopback port: ``(process, url)`` once it answers /health."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "hashlearn", "serve", "--run", run, "--collection",
                               str(collection), "--port", str(port), "--log-level", "warning", *extra],
                              env=dict(os.environ, HASHLEARN_TOKEN=""))
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        if server.poll() is not None:
            raise SystemExit(f"hashlearn serve exited with {server.returncode}")
        try:
            if httpx.get(url + "health", timeout=5).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("hashlearn serve did not answer /health")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--n", type=int, default=3000, help="images in the collection")
    parser.add_argument("--query", type=int, default=-1, help="index of the query image (default: the last one)")
    parser.add_argument("--out", default="docs/serve-page.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    work = build_collection(args.run, args.dataset, args.n, queries=[args.query])
    query = work / "queries" / "0.png"
    server, url = start_server(args.run, work / "collection")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url)
            page.wait_for_selector("#browse .card img")
            page.set_input_files("#file", str(query))
            page.wait_for_selector("#grid .card")
            page.wait_for_function("[...document.images].every((i) => i.complete)")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    print(f"wrote {args.out}: {args.dataset} ({args.n} images) with {args.run}, query = image {args.query}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
