"""``hashlearn serve``: the HTTP API and web page over a run and a collection."""

from __future__ import annotations

from hashlearn._argtypes import int_arg, positive_float_arg


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a collection over HTTP: search by image or code, browse, add and remove (web page at /)",
        description="Serve COLLECTION with the model of RUN: a JSON API (OpenAPI document at /openapi.json) and a"
        " web page at /. Binds 127.0.0.1 unless --host says otherwise. Adding and removing items needs the token"
        " in $HASHLEARN_TOKEN (sent as 'Authorization: Bearer TOKEN'); without it the service is read-only.",
    )
    p.add_argument("--run", required=True, metavar="RUN",
                   help="training run folder (one code length, e.g. runs/x/32bits) or a model file from hashlearn "
                        "export (.hlm)")
    p.add_argument("--collection", required=True, metavar="COLLECTION",
                   help="collection folder (hashlearn index build)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_arg(0, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int_arg(1), default=1,
                   help="worker processes, each with the model and the index in memory (default 1)")
    p.add_argument("--threads", type=int_arg(1), help="torch threads per worker (default: cores / workers)")
    p.add_argument("--uploads", metavar="DIR", help="where added images are kept (default COLLECTION/uploads)")
    p.add_argument("--max-upload-mb", type=positive_float_arg(4096), default=16.0,
                   help="largest request body in MiB (default 16)")
    p.add_argument("--max-pixels", type=int_arg(1),
                   help="largest image in pixels (default: $HASHLEARN_MAX_IMAGE_PIXELS, else 100 million)")
    p.add_argument("--max-k", type=int_arg(1), default=1000, help="largest k a search may ask for (default 1000)")
    p.add_argument("--max-files", type=int_arg(1), default=32,
                   help="images or codes in one request at most (default 32)")
    p.add_argument("--batch-wait-ms", type=float, default=3.0,
                   help="how long a micro-batch waits for requests being decoded (default 3 ms)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import dataclasses
    import json
    import os
    import sys

    from hashlearn.serve.service import MIB, ServeSettings

    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    settings = ServeSettings(
        run=args.run,
        collection=args.collection,
        uploads=args.uploads,
        max_upload_bytes=int(args.max_upload_mb * MIB),
        max_pixels=args.max_pixels,
        max_k=args.max_k,
        max_files=args.max_files,
        batch_wait_ms=args.batch_wait_ms,
        threads=threads,
    )
    settings.check()
    import uvicorn

    from hashlearn.serve.app import create_app, freeze_startup_objects

    # the model and the collection are loaded here (one worker) or checked here (several), so that a bad
    # run or collection is one line before anything listens
    app = create_app(settings)
    svc = app.state.service
    mode = "read-only (no $HASHLEARN_TOKEN)" if svc.read_only else "writes need the token in $HASHLEARN_TOKEN"
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {args.collection} ({svc.items} items, {svc.bits} bits) with {args.run} at "
          f"http://{shown}:{args.port}/ ; {mode}", file=sys.stderr, flush=True)
    if args.workers == 1:
        freeze_startup_objects()
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
        return 0
    svc.close()
    os.environ["HASHLEARN_SERVE_SETTINGS"] = json.dumps(dataclasses.asdict(settings))
    uvicorn.run("hashlearn.serve.app:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level)
    return 0
