"""The HTTP API of ``hashlearn serve`` (FastAPI) and its web page.

Endpoints (the OpenAPI document is at ``/openapi.json``; ``/docs`` is off, as its page loads scripts
from another host):

* ``POST /search`` — one uploaded image (``file``), ``k``, optional ``radius`` → the top-k items
  (id, Hamming distance, label, thumbnail URL), the tie group at the k-th distance and the time taken;
  ``POST /search/batch`` several images (``files``); ``POST /search/codes`` hex-packed codes (JSON).
* ``GET /items`` (pages), ``GET /items/{id}``, ``GET /items/{id}/thumbnail``, ``GET /stats``,
  ``GET /health``, ``GET /metrics`` (Prometheus text).
* ``POST /items`` (upload images: encoded and added) and ``DELETE /items/{id}``: only with the token
  (``Authorization: Bearer $HASHLEARN_TOKEN``, compared in constant time); without a configured token
  the service is read-only (403).

Every error is JSON ``{"error": "<one line>", "status": <code>}``: bad input is a 4xx naming the
problem, never a 500. Request bodies past ``max_upload_bytes`` are refused (413) as they arrive.
Nothing the service does reaches another host: it reads uploads, its run and its collection.
"""

# no ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time, and
# those name types local to create_app
import asyncio
import hmac
import time
from importlib import resources

from hashlearn.serve.service import MIB, ServeSettings, Service, describe_error, parse_code

MAX_ID = 2**63 - 1


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request whose body exceeds ``limit`` bytes gets 413, whether it says its
    length (refused before reading) or streams it (refused once the limit is passed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _send_json(send, 400, "Content-Length is not a number")
            if declared > self.limit:
                return await _send_json(send, 413, self._message())
        state = {"seen": 0, "over": False, "started": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.limit:
                    state["over"] = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message):
            if state["over"]:
                return  # the app's answer to a body cut short is replaced by 413
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            pass
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await _send_json(send, 413, self._message())

    def _message(self) -> str:
        return f"request body larger than the upload limit of {self.limit / MIB:g} MiB (--max-upload-mb)"


class RequestMetrics:
    """ASGI middleware: counts every HTTP request by route template and status, and times it."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(scope.get("method", "?"), path, status["code"], time.perf_counter() - start)


async def _send_json(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: ServeSettings | None = None, service: Service | None = None):
    """The FastAPI application over ``service`` (or a new :class:`Service` of ``settings``: the run is
    loaded and the collection opened now, so a bad run or collection fails here, as one line)."""
    from contextlib import asynccontextmanager
    from typing import Annotated

    from fastapi import Depends, FastAPI, File, Form, Path, Query, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, Field
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from hashlearn import __version__
    from hashlearn.errors import HashlearnError, InputError

    svc = service if service is not None else Service(settings)
    cfg = svc.settings

    @asynccontextmanager
    async def lifespan(app):
        yield
        svc.close()

    app = FastAPI(
        title="hashlearn retrieval service",
        version=__version__,
        description=f"Query a collection of {svc.bits}-bit codes by image or by code (run {svc.hasher.run_dir}).",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = svc

    # -- errors: always JSON with one line ---------------------------------------------------------
    def error(status: int, message: str, headers=None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form"))
            problems.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
        return error(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(HashlearnError)
    async def hashlearn_error(request, exc):
        status, message = describe_error(exc)
        return error(status, message)

    @app.exception_handler(Exception)
    async def unexpected(request, exc):
        import logging

        logging.getLogger("hashlearn.serve").exception("error answering %s %s", request.method, request.url.path)
        status, message = describe_error(exc)
        return error(status, message)

    # -- schemas ---------------------------------------------------------------------------------
    class Result(BaseModel):
        id: int
        distance: int = Field(description="Hamming distance to the query")
        label: str | None
        path: str | None = Field(description="the item's image path as the collection stores it")
        thumbnail_url: str

    class Answer(BaseModel):
        k: int
        radius: int | None
        code: str = Field(description="the query's packed code, hex (most significant bit first)")
        results: list[Result]
        kth_distance: int = Field(description="distance of the last result (-1 when there is none)")
        tied_at_kth: int = Field(description="items of the whole collection at kth_distance (the tie group)")
        tied_in_results: int = Field(description="how many of the tie group are among the results")
        collection_size: int
        index_method: str | None = Field(description="what the index's auto choice used (flat or mih)")
        name: str | None = None
        took_ms: float = Field(description="time taken by the whole request, in milliseconds")

    class Answers(BaseModel):
        queries: list[Answer]
        took_ms: float

    class CodesQuery(BaseModel):
        codes: list[str] = Field(min_length=1, max_length=cfg.max_files,
                                 description=f"packed {svc.bits}-bit codes, hex ({2 * ((svc.bits + 7) // 8)} digits)")
        k: int = Field(10, ge=1, le=cfg.max_k)
        radius: int | None = Field(None, ge=0, le=svc.bits)

    class Item(BaseModel):
        id: int
        label: str | None
        path: str | None
        added: float = Field(description="when it was added (seconds since the epoch)")
        code: str
        thumbnail_url: str

    class ItemPage(BaseModel):
        total: int
        offset: int
        limit: int
        items: list[Item]

    class Added(BaseModel):
        added: list[Item]
        items: int

    class Removed(BaseModel):
        removed: int
        items: int

    class ErrorBody(BaseModel):
        error: str
        status: int

    errors = {code: {"model": ErrorBody} for code in (400, 404, 413, 422, 503)}
    write_errors = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 422, 503)}

    # -- helpers ---------------------------------------------------------------------------------
    async def wait(future):
        return await asyncio.wrap_future(future)

    async def read_upload(upload: UploadFile, n: int) -> tuple[bytes, str]:
        name = upload.filename or f"upload {n + 1}"
        data = await upload.read()
        return data, name

    async def decode_all(files: list[UploadFile]):
        if len(files) > cfg.max_files:
            raise InputError(f"files: {len(files)} images in one request; at most {cfg.max_files} (--max-files)")
        raw = [await read_upload(f, n) for n, f in enumerate(files)]
        with svc.encoder.expect():
            images = [await run_in_threadpool(svc.decode, data, f"{name!r}") for data, name in raw]
        return raw, images

    def check_k_radius(k: int, radius: int | None):
        if not 1 <= k <= cfg.max_k:
            raise InputError(f"k: must be between 1 and {cfg.max_k}, got {k}")
        if radius is not None and not 0 <= radius <= svc.bits:
            raise InputError(f"radius: must be between 0 and {svc.bits} (the code length), got {radius}")

    async def answer(code, k, radius, name=None, start=None):
        result = await wait(svc.search(code, k, radius))
        result = dict(result, name=name)
        result["took_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return result

    bearer = HTTPBearer(auto_error=False, description="the service's token ($HASHLEARN_TOKEN)")

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]):
        if svc.token is None:
            raise StarletteHTTPException(403, "read-only service: no token is configured (start it with "
                                              "$HASHLEARN_TOKEN set to allow adding and removing items)")
        if credentials is None:
            raise StarletteHTTPException(401, "this endpoint needs the token: Authorization: Bearer <token>",
                                         headers={"WWW-Authenticate": "Bearer"})
        given = credentials.credentials.encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, svc.token.encode("utf-8", "surrogateescape")):
            raise StarletteHTTPException(401, "wrong token", headers={"WWW-Authenticate": "Bearer"})

    K = Annotated[int, Form(ge=1, le=cfg.max_k, description="how many results")]
    RADIUS = Annotated[int | None, Form(ge=0, le=svc.bits, description="only results within this distance")]
    ITEM_ID = Annotated[int, Path(ge=0, le=MAX_ID, description="the item's id")]

    # -- search ----------------------------------------------------------------------------------
    @app.post("/search", response_model=Answer, responses=errors, summary="Search by one uploaded image")
    async def search(file: Annotated[UploadFile, File(description="the query image")], k: K = 10,
                     radius: RADIUS = None):
        start = time.perf_counter()
        check_k_radius(k, radius)
        raw, images = await decode_all([file])
        code = await wait(svc.encode(images[0]))
        return await answer(code, k, radius, name=raw[0][1], start=start)

    @app.post("/search/batch", response_model=Answers, responses=errors, summary="Search by several images")
    async def search_batch(files: Annotated[list[UploadFile], File(description="query images")], k: K = 10,
                           radius: RADIUS = None):
        start = time.perf_counter()
        check_k_radius(k, radius)
        if not files:
            raise InputError("files: no images given")
        raw, images = await decode_all(files)
        codes = await asyncio.gather(*(wait(svc.encode(im)) for im in images))
        answers = await asyncio.gather(*(answer(c, k, radius, name=n, start=start)
                                         for c, (_, n) in zip(codes, raw, strict=True)))
        return {"queries": answers, "took_ms": round((time.perf_counter() - start) * 1000, 3)}

    @app.post("/search/codes", response_model=Answers, responses=errors, summary="Search by packed codes")
    async def search_codes(query: CodesQuery):
        start = time.perf_counter()
        codes = [parse_code(c, svc.bits, f"codes[{n}]") for n, c in enumerate(query.codes)]
        answers = await asyncio.gather(*(answer(c, query.k, query.radius, start=start) for c in codes))
        return {"queries": answers, "took_ms": round((time.perf_counter() - start) * 1000, 3)}

    # -- items -----------------------------------------------------------------------------------
    @app.get("/items", response_model=ItemPage, responses=errors, summary="Browse the items, in id order")
    async def items(offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                    limit: Annotated[int, Query(ge=1, le=500)] = 48):
        return await wait(svc.page(offset, limit))

    @app.get("/items/{item_id}", response_model=Item, responses=errors, summary="One item's metadata and code")
    async def item(item_id: ITEM_ID):
        return await wait(svc.item(item_id))

    @app.get("/items/{item_id}/thumbnail", responses={200: {"content": {"image/png": {}}}, **errors},
             response_class=Response, summary="A small PNG of the item's image")
    async def thumbnail(item_id: ITEM_ID):
        png = await run_in_threadpool(svc.thumbnail, item_id)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=300"})

    @app.post("/items", response_model=Added, status_code=201, responses=write_errors,
              dependencies=[Depends(require_token)], summary="Upload images: encode them and add them (token)")
    async def add_items(files: Annotated[list[UploadFile], File(description="images to add")],
                        labels: Annotated[list[str] | None, Form(description="one label per image")] = None):
        if not files:
            raise InputError("files: no images given")
        if labels is not None and len(labels) != len(files):
            raise InputError(f"labels: {len(labels)} labels for {len(files)} images (give one per image, or none)")
        raw, images = await decode_all(files)
        codes = await asyncio.gather(*(wait(svc.encode(im)) for im in images))
        paths = [await run_in_threadpool(svc.save_upload, data) for data, _ in raw]
        import numpy as np

        added = await wait(svc.add(np.stack(codes), paths, labels))
        return {"added": added, "items": svc.items}

    @app.delete("/items/{item_id}", response_model=Removed, responses=write_errors,
                dependencies=[Depends(require_token)], summary="Remove an item (token)")
    async def remove_item(item_id: ITEM_ID):
        left = await wait(svc.remove(item_id))
        return {"removed": item_id, "items": left}

    # -- about the service -----------------------------------------------------------------------
    @app.get("/stats", summary="The collection and the run: size, code length, method, protocol, mAP")
    async def stats():
        return svc.stats(await wait(svc.count()))

    @app.get("/health", summary="Liveness: answers while the service can read its collection")
    async def health():
        return {"status": "ok", "items": await wait(svc.count()), "bits": svc.bits}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus text format")
    async def metrics():
        return PlainTextResponse(svc.metrics.render(svc.items), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        html = resources.files("hashlearn.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    app.add_middleware(BodyLimit, limit=cfg.max_upload_bytes)
    app.add_middleware(RequestMetrics, metrics=svc.metrics)
    return app


def freeze_startup_objects() -> None:
    """Leave the objects that exist once the service is loaded (torch, numba, FastAPI, the model: some
    300,000) out of garbage collection from now on. Under load, the objects of requests in flight outlive
    young collections and soon set off a full one, which otherwise walks all of them with every thread
    stopped: measured ~170 ms about once a second with 32 clients on a busy 2-core machine, all of the
    p99 latency. Called once per server process, when it is about to listen."""
    import gc

    gc.collect()
    gc.freeze()


def app_from_env():
    """The application for a uvicorn worker process (``--workers N``): settings from
    ``$HASHLEARN_SERVE_SETTINGS`` (JSON written by ``hashlearn serve``)."""
    import json
    import os

    settings = ServeSettings(**json.loads(os.environ["HASHLEARN_SERVE_SETTINGS"]))
    app = create_app(settings)
    freeze_startup_objects()
    return app
