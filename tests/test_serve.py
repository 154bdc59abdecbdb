"""``hashlearn serve``: the HTTP API over a tiny trained run and a collection built by ``hashlearn index build``.

Answers are checked against what the index, the collection and the run give directly (brute-force
Hamming distances, the collection's stored codes and labels, the run's metrics.json), bad input against
its status and message, and durability against a real server killed with SIGKILL.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from hashlearn.cli import main  # noqa: E402
from hashlearn.serve.app import create_app  # noqa: E402
from hashlearn.serve.service import ServeSettings  # noqa: E402
from hashlearn.serve.workers import BatchWorker  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_train_tiny import tiny_config, tiny_dataset, tiny_split  # noqa: E402

BITS = 16
TOKEN = "s3cret-token"


def png_bytes(array: np.ndarray, mode: str | None = None, **save) -> bytes:
    image = Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    if mode:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, format=save.pop("format", "PNG"), **save)
    return out.getvalue()


def popcount_distances(query: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.bitwise_xor(codes, query[None, :]), axis=1).sum(axis=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny run (16-bit LSH on pixels: 51 distinct codes for 120 images, so distances and ties vary),
    its images as PNG files, and a collection of them built by the CLI."""
    from hashlearn.train import load_run, train

    root = tmp_path_factory.mktemp("serve")
    ds = tiny_dataset()
    train(tiny_config(**{"bits": f"[{BITS}]", "method": "lsh"}), dataset=ds, split=tiny_split(ds), out=root / "run")
    run = root / "run" / f"{BITS}bits"
    images = root / "images"
    images.mkdir()
    labels = []
    for i, (image, label) in enumerate(zip(ds.images, ds.labels, strict=True)):
        (images / f"im{i:03d}.png").write_bytes(png_bytes(image))
        labels.append(f"c{label}")
    (root / "labels.txt").write_text("\n".join(labels) + "\n")
    assert main(["encode", "--run", str(run), "--images", str(images), "--out", str(root / "codes.npz")]) == 0
    assert main(["index", "build", "--codes", str(root / "codes.npz"), "--labels", str(root / "labels.txt"),
                 "--out", str(root / "collection")]) == 0
    from hashlearn.index import Collection

    with Collection.open(root / "collection", readonly=True) as coll:
        codes, ids = coll.read()
    return {"root": root, "run": run, "images": images, "labels": labels, "dataset": ds, "codes": codes,
            "ids": ids, "hasher": load_run(run), "collection": root / "collection"}


def make_client(world, tmp_path=None, token=None, **settings) -> TestClient:
    collection = world["collection"]
    if tmp_path is not None:  # a private copy for tests that write
        collection = tmp_path / "collection"
        shutil.copytree(world["collection"], collection)
    app = create_app(ServeSettings(run=str(world["run"]), collection=str(collection), token=token or "", **settings))
    return TestClient(app)


@pytest.fixture(scope="module")
def client(world):
    with make_client(world) as c:
        yield c


def image_file(world, i: int) -> bytes:
    return (world["images"] / f"im{i:03d}.png").read_bytes()


def expected_answer(world, code: np.ndarray, k: int):
    """Ids and distances by (distance, id), the k-th distance and its tie group, by brute force."""
    d = popcount_distances(code, world["codes"])
    order = np.lexsort((world["ids"], d))[:k]
    kth = int(d[order[-1]])
    return world["ids"][order].tolist(), d[order].tolist(), kth, int((d == kth).sum())


def assert_error(response, status: int, *words):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and isinstance(body["error"], str) and "\n" not in body["error"]
    for word in words:
        assert word in body["error"], body["error"]
    return body["error"]


# -- search -----------------------------------------------------------------------------------------

def test_search_by_image_is_the_brute_force_answer_with_its_tie_group(world, client):
    code = world["hasher"].encode(world["dataset"].images[7:8])[0]
    r = client.post("/search", files={"file": ("q.png", image_file(world, 7), "image/png")}, data={"k": "10"})
    assert r.status_code == 200, r.text
    body = r.json()
    ids, dists, kth, tied = expected_answer(world, code, 10)
    assert [x["id"] for x in body["results"]] == ids
    assert [x["distance"] for x in body["results"]] == dists
    assert body["kth_distance"] == kth and body["tied_at_kth"] == tied
    assert body["tied_in_results"] == dists.count(kth)
    assert body["code"] == bytes(code).hex()
    assert [x["label"] for x in body["results"]] == [world["labels"][i] for i in ids]
    assert body["results"][0]["thumbnail_url"] == f"/items/{ids[0]}/thumbnail"
    assert body["collection_size"] == len(world["ids"]) and body["index_method"] == "flat"
    assert body["took_ms"] > 0 and body["name"] == "q.png"


def test_radius_keeps_only_results_within_it_and_reports_the_whole_tie_group(world, client):
    code = world["hasher"].encode(world["dataset"].images[3:4])[0]
    d = popcount_distances(code, world["codes"])
    r = client.post("/search", files={"file": ("q.png", image_file(world, 3))}, data={"k": "100", "radius": "1"})
    body = r.json()
    within = np.lexsort((world["ids"], d))[: 100]
    within = [int(world["ids"][i]) for i in within if d[i] <= 1]
    assert [x["id"] for x in body["results"]] == within
    last = max(x["distance"] for x in body["results"])
    assert body["kth_distance"] == last and body["tied_at_kth"] == int((d == last).sum())


def test_batch_answers_equal_single_answers(world, client):
    files = [("files", (f"q{i}.png", image_file(world, i), "image/png")) for i in (0, 40, 90)]
    r = client.post("/search/batch", files=files, data={"k": "5"})
    assert r.status_code == 200, r.text
    answers = r.json()["queries"]
    assert [a["name"] for a in answers] == ["q0.png", "q40.png", "q90.png"]
    for i, a in zip((0, 40, 90), answers, strict=True):
        single = client.post("/search", files={"file": ("x.png", image_file(world, i))}, data={"k": "5"}).json()
        assert a["results"] == single["results"] and a["code"] == single["code"]


def test_search_by_codes_equals_search_by_image(world, client):
    codes = [bytes(world["codes"][i]).hex() for i in (5, 60)]
    r = client.post("/search/codes", json={"codes": codes, "k": 7})
    assert r.status_code == 200, r.text
    for code, answer in zip(codes, r.json()["queries"], strict=True):
        ids, dists, kth, tied = expected_answer(world, np.frombuffer(bytes.fromhex(code), np.uint8), 7)
        assert [x["id"] for x in answer["results"]] == ids and answer["tied_at_kth"] == tied


# -- items, stats, health, metrics, OpenAPI, page -----------------------------------------------------

def test_item_metadata_code_and_thumbnail(world, client):
    r = client.get("/items/12")
    assert r.status_code == 200
    item = r.json()
    assert item["label"] == world["labels"][12] and item["path"] == "im012.png"
    assert item["code"] == bytes(world["codes"][12]).hex()
    thumb = client.get(item["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(thumb.content)))
    assert np.array_equal(pixels, world["dataset"].images[12][:, :, 0])  # 8x8: kept as it is


def test_items_are_browsed_in_id_order(world, client):
    page = client.get("/items", params={"offset": 10, "limit": 5}).json()
    assert page["total"] == len(world["ids"]) and [i["id"] for i in page["items"]] == [10, 11, 12, 13, 14]


def test_stats_describe_the_run_and_the_collection(world, client):
    stats = client.get("/stats").json()
    metrics = json.loads((world["run"] / "metrics.json").read_text())
    assert stats["items"] == len(world["ids"]) and stats["bits"] == BITS and stats["method"] == "lsh"
    assert stats["protocol"] == metrics["protocol"] and stats["dataset"] == metrics["dataset"] == "tiny"
    assert stats["metrics"]["mAP@all"] == metrics["mAP@all"]
    assert stats["pr_curve"]["pr_precision"] == metrics["curves"]["pr_precision"]
    assert stats["read_only"] is True


def test_health_and_prometheus_metrics(world):
    with make_client(world) as c:
        assert c.get("/health").json() == {"status": "ok", "items": len(world["ids"]), "bits": BITS}
        for _ in range(3):
            c.post("/search/codes", json={"codes": [bytes(world["codes"][0]).hex()], "k": 3})
        c.get("/items/999999")
        text = c.get("/metrics").text
    lines = text.splitlines()
    assert 'hashlearn_http_requests_total{method="POST",route="/search/codes",status="200"} 3' in lines
    assert 'hashlearn_http_requests_total{method="GET",route="/items/{item_id}",status="404"} 1' in lines
    assert 'hashlearn_http_request_duration_seconds_count{method="POST",route="/search/codes"} 3' in lines
    assert 'hashlearn_http_request_duration_seconds_bucket{method="POST",route="/search/codes",le="+Inf"} 3' in lines
    assert f"hashlearn_collection_items {len(world['ids'])}" in lines
    assert "# TYPE hashlearn_http_request_duration_seconds histogram" in lines


def test_openapi_document_names_every_endpoint(client):
    doc = client.get("/openapi.json").json()
    for path, method in [("/search", "post"), ("/search/batch", "post"), ("/search/codes", "post"),
                         ("/items", "get"), ("/items", "post"), ("/items/{item_id}", "get"),
                         ("/items/{item_id}", "delete"), ("/items/{item_id}/thumbnail", "get"), ("/stats", "get"),
                         ("/health", "get"), ("/metrics", "get")]:
        assert method in doc["paths"][path], (path, method)
    assert client.get("/docs").status_code == 404  # its page would load scripts from another host


def test_page_is_served_and_uses_only_this_service(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "hashlearn search" in r.text and "/search/codes" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # nothing from another host


# -- bad input ----------------------------------------------------------------------------------------

def test_files_that_are_not_readable_images_are_400(world, client):
    good = image_file(world, 0)
    for name, data, words in [("notes.txt", b"hello, not an image", ("cannot read image", "notes.txt")),
                              ("cut.png", good[: len(good) // 2], ("cannot read image", "cut.png")),
                              ("empty.png", b"", ("empty",))]:
        assert_error(client.post("/search", files={"file": (name, data)}), 400, *words)


def test_the_pixel_limit_refuses_large_images_from_their_header(world, tmp_path):
    big = Image.new("1", (11_000, 11_000))  # 121 megapixels, a few kB as PNG
    out = io.BytesIO()
    big.save(out, format="PNG")
    with make_client(world) as c:
        assert_error(c.post("/search", files={"file": ("bomb.png", out.getvalue())}), 400, "more than the limit")
    with make_client(world, max_pixels=100) as c:  # the run's 8x8 inputs fit; a 20x20 upload does not
        assert c.post("/search", files={"file": ("q.png", image_file(world, 0))}).status_code == 200
        wide = png_bytes(np.zeros((20, 20), np.uint8))
        assert_error(c.post("/search", files={"file": ("q.png", wide)}), 400, "20x20", "more than the limit")


def test_bodies_over_the_upload_limit_are_413(world):
    with make_client(world, max_upload_bytes=4000) as c:
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        assert_error(c.post("/search", files={"file": ("big.png", png_bytes(noise))}), 413, "upload limit")

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b"x" * 1000

        r = c.post("/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert_error(r, 413, "upload limit")
        ok = c.post("/search", files={"file": ("q.png", image_file(world, 0))})
        assert ok.status_code == 200


def test_16bit_palette_alpha_and_cmyk_images_are_decoded_as_the_loaders_decode_them(world, client):
    grey = world["dataset"].images[21][:, :, 0]
    want = client.post("/search", files={"file": ("q.png", png_bytes(grey))}, data={"k": "3"}).json()["code"]
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)  # round(v * 257 * 255 / 65535) = v
    out = io.BytesIO()
    sixteen.save(out, format="PNG")
    assert Image.open(io.BytesIO(out.getvalue())).mode.startswith("I")
    variants = {
        "16bit.png": out.getvalue(),
        "palette.png": png_bytes(grey, mode="P"),
        "alpha.png": png_bytes(grey, mode="LA"),
        "rgba.png": png_bytes(np.repeat(grey[:, :, None], 3, axis=2), mode="RGBA"),
    }
    for name, data in variants.items():
        r = client.post("/search", files={"file": (name, data)}, data={"k": "3"})
        assert r.status_code == 200, (name, r.text)
        assert r.json()["code"] == want, name
    cmyk = png_bytes(np.repeat(grey[:, :, None], 3, axis=2), mode="CMYK", format="JPEG", quality=95)
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    r = client.post("/search", files={"file": ("cmyk.jpg", cmyk)})
    assert r.status_code == 200 and len(r.json()["code"]) == BITS // 4


def test_k_and_radius_out_of_range_are_422_with_the_field_named(world, client):
    f = {"file": ("q.png", image_file(world, 0))}
    for data in ({"k": "0"}, {"k": "1001"}, {"k": "ten"}, {"k": "3", "radius": "-1"},
                 {"k": "3", "radius": str(BITS + 1)}):
        field = "radius" if "radius" in data else "k"
        assert_error(client.post("/search", files=f, data=data), 422, field)
    code = bytes(world["codes"][0]).hex()
    assert_error(client.post("/search/codes", json={"codes": [code], "k": 0}), 422, "k")
    assert_error(client.post("/search/codes", json={"codes": [code] * 33}), 422, "codes")
    assert_error(client.post("/search/codes", json={"codes": []}), 422, "codes")
    assert_error(client.post("/search/codes", json={"codes": ["zz" * 2]}), 400, "codes[0]", "hex")
    assert_error(client.post("/search/codes", json={"codes": ["ab"]}), 400, "codes[0]", "4 hex digits")
    assert_error(client.post("/search/codes", content=b"{not json", headers={"content-type": "application/json"}),
                 422)
    many = [("files", (f"q{i}.png", image_file(world, 0))) for i in range(33)]
    assert_error(client.post("/search/batch", files=many), 400, "at most 32")


def test_unknown_ids_endpoints_and_methods_are_json_errors(client):
    assert_error(client.get("/items/999999"), 404, "no item with id 999999")
    assert_error(client.get("/items/999999/thumbnail"), 404, "999999")
    assert_error(client.get("/items/-1"), 422, "item_id")
    assert_error(client.get(f"/items/{2**63}"), 422, "item_id")
    assert_error(client.get("/items/abc"), 422, "item_id")
    assert_error(client.get("/nothing/here"), 404, "no such endpoint")
    assert_error(client.put("/search"), 405, "PUT")
    assert_error(client.get("/items", params={"limit": 0}), 422, "limit")


# -- writes and the token -----------------------------------------------------------------------------

def test_without_a_token_the_service_is_read_only(world, client):
    f = {"files": ("n.png", image_file(world, 1))}
    assert_error(client.post("/items", files=f), 403, "read-only")
    assert_error(client.delete("/items/1"), 403, "read-only")
    assert_error(client.post("/items", files=f, headers={"Authorization": "Bearer anything"}), 403)
    assert client.get("/items/1").status_code == 200


def test_add_and_remove_need_the_right_token(world, tmp_path):
    new = np.full((8, 8), 200, np.uint8)
    with make_client(world, tmp_path, token=TOKEN) as c:
        f = {"files": ("new.png", png_bytes(new))}
        assert_error(c.post("/items", files=f), 401, "token")
        assert_error(c.post("/items", files=f, headers={"Authorization": "Bearer wrong"}), 401, "wrong token")
        assert_error(c.post("/items", files=f, headers={"Authorization": f"Bearer {TOKEN}x"}), 401)
        assert_error(c.delete("/items/3", headers={"Authorization": "Bearer wrong"}), 401)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = c.post("/items", files=f, data={"labels": "white"}, headers=auth)
        assert r.status_code == 201, r.text
        (added,) = r.json()["added"]
        n = len(world["ids"])
        assert added["id"] == n and added["label"] == "white" and r.json()["items"] == n + 1
        assert added["code"] == bytes(world["hasher"].encode(new[None, :, :, None])[0]).hex()
        # found by search at distance 0, its thumbnail read from the kept upload
        hit = c.post("/search/codes", json={"codes": [added["code"]], "k": n + 1}).json()["queries"][0]
        assert {"id": n, "distance": 0} in [{k: x[k] for k in ("id", "distance")} for x in hit["results"]]
        thumb = c.get(f"/items/{n}/thumbnail")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(thumb.content))), new)
        assert c.delete(f"/items/{n}", headers=auth).json() == {"removed": n, "items": n}
        assert_error(c.get(f"/items/{n}"), 404)
        assert_error(c.delete(f"/items/{n}", headers=auth), 404, "no item")
        ids = [x["id"] for x in c.post("/search/codes", json={"codes": [added["code"]], "k": n + 1})
               .json()["queries"][0]["results"]]
        assert n not in ids and len(ids) == n


def test_a_bad_image_among_uploads_adds_nothing(world, tmp_path):
    with make_client(world, tmp_path, token=TOKEN) as c:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        files = [("files", ("a.png", image_file(world, 0))), ("files", ("b.txt", b"nope"))]
        assert_error(c.post("/items", files=files, headers=auth), 400, "b.txt")
        assert_error(c.post("/items", files=[files[0]], data={"labels": ["x", "y"]}, headers=auth), 400, "labels")
        assert c.get("/health").json()["items"] == len(world["ids"])
    from hashlearn.index import Collection

    with Collection.open(tmp_path / "collection", readonly=True) as coll:
        assert len(coll) == len(world["ids"])


def test_writes_by_another_process_are_seen_by_the_next_search(world, tmp_path):
    from hashlearn.index import Collection

    with make_client(world, tmp_path) as c:
        code = np.full(BITS // 8, 0b10101010, np.uint8)
        before = c.post("/search/codes", json={"codes": [code.tobytes().hex()], "k": 1}).json()["queries"][0]
        with Collection.open(tmp_path / "collection") as other:  # another connection: as another process
            other.add(code[None, :], ids=[5000], labels=["outside"])
        after = c.post("/search/codes", json={"codes": [code.tobytes().hex()], "k": 1}).json()["queries"][0]
        assert before["results"][0]["distance"] > 0
        assert after["results"][0] == {"id": 5000, "distance": 0, "label": "outside", "path": None,
                                       "thumbnail_url": "/items/5000/thumbnail"}
        assert after["collection_size"] == len(world["ids"]) + 1
        assert_error(c.get("/items/5000/thumbnail"), 404, "no image path")


@pytest.mark.slow
def test_a_deep_run_encodes_uploads_as_load_run_does(world, tmp_path):
    from hashlearn.train import load_run, train

    ds = world["dataset"]
    train(tiny_config(**{"bits": f"[{BITS}]", "train.epochs": 1}), dataset=ds, split=tiny_split(ds), out=tmp_path / "r")
    run = tmp_path / "r" / f"{BITS}bits"
    want = load_run(run).encode(ds.images[:4])
    app = create_app(ServeSettings(run=str(run), collection=str(world["collection"]), token=""))
    with TestClient(app) as c:
        files = [("files", (f"{i}.png", image_file(world, i))) for i in range(4)]
        got = [a["code"] for a in c.post("/search/batch", files=files).json()["queries"]]
        assert c.get("/stats").json()["method"] == "dpsh"
    assert got == [bytes(row).hex() for row in want]


# -- micro-batching -----------------------------------------------------------------------------------

def test_waiting_jobs_of_one_key_run_as_one_batch():
    calls = []
    worker = BatchWorker("t", max_batch=4, max_wait_s=0.0)
    gate = threading.Event()
    worker.call(gate.wait)  # hold the thread while jobs queue up
    def times_ten(key, items):
        calls.append((key, list(items)))
        return [x * 10 for x in items]

    futures = [worker.batch(times_ten, "a" if i % 3 else "b", i) for i in range(7)]
    gate.set()
    assert [f.result(5) for f in futures] == [x * 10 for x in range(7)]
    worker.stop()
    assert calls == [("b", [0, 3, 6]), ("a", [1, 2, 4, 5])]


def test_a_forming_batch_waits_for_announced_requests_only():
    sizes = []
    worker = BatchWorker("t", max_batch=8, max_wait_s=0.5)

    def run(key, items):
        sizes.append(len(items))
        return items

    start = time.perf_counter()
    assert worker.batch(run, "k", 1).result(5) == 1  # nothing announced: no wait
    assert time.perf_counter() - start < 0.25
    with worker.expect():
        first = worker.batch(run, "k", 2)
        time.sleep(0.05)  # still "decoding": the batch waits for it
        second = worker.batch(run, "k", 3)
    assert (first.result(5), second.result(5)) == (2, 3)
    worker.stop()
    assert sizes == [1, 2]


def test_concurrent_searches_share_encode_batches(world):
    with make_client(world, batch_wait_ms=20) as c:
        data = image_file(world, 9)

        def one(_):
            return c.post("/search", files={"file": ("q.png", data)}, data={"k": "3"}).status_code

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(32))) == [200] * 32
        text = c.get("/metrics").text
    count = [ln for ln in text.splitlines() if ln.startswith('hashlearn_batch_size_count{worker="encode"}')]
    batches = int(count[0].split()[-1])
    assert batches - 1 < 32  # some of the 32 images were encoded together (1: the warm-up at start)


# -- the command line ---------------------------------------------------------------------------------

def test_serve_command_errors_are_one_line(world, tmp_path, capsys):
    assert main(["serve", "--run", str(tmp_path / "nope"), "--collection", str(world["collection"])]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert main(["serve", "--run", str(world["run"]), "--collection", str(tmp_path / "nope")]) == 2
    assert "no hashlearn collection" in capsys.readouterr().err
    from hashlearn.index import Collection

    Collection.build(tmp_path / "c8", 8, np.zeros((2, 1), np.uint8)).close()
    assert main(["serve", "--run", str(world["run"]), "--collection", str(tmp_path / "c8")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "8-bit codes" in err and "16-bit" in err
    with pytest.raises(SystemExit):
        main(["serve", "--run", "r", "--collection", "c", "--port", "70000"])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_server_process_leaves_its_startup_objects_out_of_garbage_collection(world, monkeypatch, workers):
    """Else a full collection under load walks every object of torch, numba and the app with every thread
    stopped (~170 ms, about once a second with 32 clients: bench/service_load.py's p99)."""
    import gc

    import uvicorn

    from hashlearn.serve.app import app_from_env

    seen = {}

    def listen(app, **kwargs):  # where uvicorn would start listening: what would a full collection walk?
        if kwargs.get("factory"):  # --workers N: each worker process builds its app from the environment
            app = app_from_env()
        seen["walked"], seen["frozen"] = len(gc.get_objects()), gc.get_freeze_count()
        app.state.service.close()

    monkeypatch.setattr(uvicorn, "run", listen)
    monkeypatch.setenv("HASHLEARN_SERVE_SETTINGS", "")  # restored after: cmd_serve sets it for the workers
    try:
        assert main(["serve", "--run", str(world["run"]), "--collection", str(world["collection"]),
                     "--workers", str(workers)]) == 0
    finally:
        gc.unfreeze()
    assert seen["frozen"] > 50_000 and seen["walked"] < seen["frozen"] / 20, seen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc, seconds: float = 120) -> None:
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise AssertionError("server did not start")


@pytest.mark.slow
def test_an_acknowledged_add_survives_kill_9_of_the_server(world, tmp_path):
    import httpx

    from hashlearn.index import Collection

    collection = tmp_path / "collection"
    shutil.copytree(world["collection"], collection)
    port = _free_port()
    env = dict(os.environ, HASHLEARN_TOKEN=TOKEN, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "hashlearn", "serve", "--run", str(world["run"]),
                             "--collection", str(collection), "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc)
        new = np.full((8, 8), 180, np.uint8)
        r = httpx.post(url + "/items", files={"files": ("k.png", png_bytes(new))}, data={"labels": "kept"},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert r.status_code == 201, r.text
        (added,) = r.json()["added"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    with Collection.open(collection, readonly=True) as coll:
        codes, ids = coll.read()
        meta = coll.metadata([added["id"]])[added["id"]]
        path = coll.resolve_path(meta["path"])
    assert added["id"] in ids.tolist() and len(ids) == len(world["ids"]) + 1
    assert bytes(codes[ids.tolist().index(added["id"])]).hex() == added["code"]
    assert meta["label"] == "kept" and Path(path).is_file()
    assert np.array_equal(np.asarray(Image.open(path)), new)


# -- schemathesis and a real browser ------------------------------------------------------------------

@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(world):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    app = create_app(ServeSettings(run=str(world["run"]), collection=str(world["collection"]), token=""))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures = []
    for operation in schema.get_all_operations():
        op = operation.ok()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case):
            response = case.call()
            if response.status_code >= 500:
                failures.append((case.operation.label, response.status_code, response.text[:200]))
            if response.status_code >= 400:
                body = response.json()
                assert isinstance(body.get("error"), str) and body["status"] == response.status_code, body
            # documented status, content type and body; random bytes that the schema allows as a "file"
            # are rightly refused (400), so positive_data_acceptance does not apply
            case.validate_response(response, excluded_checks=[schemathesis.checks.positive_data_acceptance])

        check()
    app.state.service.close()
    assert failures == []


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
def test_the_page_in_a_real_browser(world, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                     "playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium); playwright's own browser "
                    "download needs internet")
    port = _free_port()
    collection = tmp_path / "collection"
    shutil.copytree(world["collection"], collection)
    proc = subprocess.Popen([sys.executable, "-m", "hashlearn", "serve", "--run", str(world["run"]),
                             "--collection", str(collection), "--port", str(port), "--log-level", "warning"],
                            env=dict(os.environ, HASHLEARN_TOKEN=""), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    query = tmp_path / "query.png"
    query.write_bytes(image_file(world, 33))
    try:
        _wait_up(url, proc)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url + "/")
            page.wait_for_selector("#browse .card")
            assert "lsh" in page.inner_text("#summary")
            page.set_input_files("#file", str(query))
            page.wait_for_selector("#grid .card")
            cards = page.query_selector_all("#grid .card")
            assert len(cards) == 24
            first = cards[0].get_attribute("data-id")
            assert "tied in the collection" in page.inner_text("#ties")
            clicked = cards[1].get_attribute("data-id")
            assert first is not None and clicked is not None
            cards[1].click()
            page.wait_for_function("document.getElementById('status').textContent.startsWith('query: item')")
            assert page.inner_text("#status").startswith(f"query: item {clicked}")
            assert len(page.query_selector_all("#grid .card")) == 24
            shot = os.environ.get("HASHLEARN_SERVE_SCREENSHOT") or str(tmp_path / "page.png")
            page.screenshot(path=shot, full_page=True)
            browser.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
