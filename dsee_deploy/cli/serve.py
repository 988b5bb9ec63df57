"""dsee-serve: an exported engine over HTTP, with micro-batching and Prometheus metrics; --ray scales it out on
Ray Serve.

    dsee-serve engines/sst2-s --host 127.0.0.1 --port 8000 --max-batch-size 32 --max-wait-ms 5
    curl -s localhost:8000/v1/predict -d '{"inputs": ["a gripping film"]}'
    dsee-serve engines/sst2-s --ray --replicas 2
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from ..errors import DSEEError, require_extra
from ..serve.options import ScaleOptions, ServeOptions
from . import run_cli
from .flags import add_fields, from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dsee-serve",
        description="Serve a dsee-export engine over HTTP: POST /v1/predict (or /v1/embed and OpenAI's "
        "/v1/embeddings), GET /v1/model, /healthz, /readyz, /metrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "engine", help="An engine directory written by dsee-export (model.onnx, manifest.json, ...)."
    )
    p.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 in a container).")
    p.add_argument("--port", type=int, default=8000, help="Port to listen on.")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core).")
    p.add_argument(
        "--max-length",
        type=int,
        help="Truncate inputs to this many tokens (default: the length the model was tuned with).",
    )
    add_fields(p, ServeOptions)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="Log every request (costs throughput).")
    ray = p.add_argument_group("scale-out on Ray Serve (needs the 'ray' extra)")
    ray.add_argument("--ray", action="store_true", help="Serve on Ray Serve, with replicas.")
    ray.add_argument("--ray-address", help="A running Ray cluster (default: start one on this machine).")
    add_fields(ray, ScaleOptions)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: serve(argv))


def serve(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options, scale = from_args(ServeOptions, args), from_args(ScaleOptions, args)
    if not args.ray and (scale.replicas is not None or scale.autoscaling):
        raise DSEEError("--replicas, --min-replicas and --max-replicas scale out on Ray Serve: add --ray")
    if not 0 <= args.port < 65536:
        raise DSEEError(f"--port {args.port} is not a port: pass 0-65535")
    require_extra("serve", "fastapi", "uvicorn", "prometheus_client")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    if args.ray:
        return _serve_on_ray(args, options, scale)
    import uvicorn

    from ..serve import Engine, create_app
    from ..serve.app import listen
    from ..serve.connections import guarded_protocol

    sock = listen(args.host, args.port)  # first: a port in use is told before the engine loads
    # ORT's threads spin only briefly: between runs the cores belong to the event loop and the clients.
    engine = Engine.load(
        args.engine,
        threads=args.threads,
        max_length=args.max_length,
        spin_us=options.spin_us,
        verify=options.verify,
    )
    app = create_app(engine, options)
    print(
        f"serving {args.engine} ({engine.task}, {engine.provider}) on http://{args.host}:{sock.getsockname()[1]}: "
        f"max batch {options.max_batch_size}, max wait {options.max_wait_ms:g} ms",
        file=sys.stderr,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=options.graceful_timeout_s,
        # Requests in progress are limited by the app (RequestLimit), head deadlines and idle connections by
        # the protocol: uvicorn's limit_concurrency would count half-sent heads as requests (connections.py).
        http=guarded_protocol(options),
    )
    # On SIGTERM uvicorn stops accepting, finishes the requests in flight, runs the app's shutdown (which
    # answers whatever is still queued), then raises the signal again for the previous handler: this one, so
    # that a graceful stop exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _serve_on_ray(args, options: ServeOptions, scale: ScaleOptions) -> int:
    require_extra("ray", "ray.serve")
    import ray
    from ray import serve

    from ..serve import Engine, ray_app

    # bad input fails here, in one line, before Ray starts
    Engine.load(args.engine, threads=1, max_length=args.max_length, verify=options.verify)
    if args.ray_address:
        ray.init(address=args.ray_address, include_dashboard=False, logging_level=logging.WARNING)
    else:  # a cluster of this machine alone, bound to loopback
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(
            http_options={"host": args.host, "port": args.port},
            logging_config={"log_level": args.log_level.upper(), "enable_access_log": args.access_log},
        )
        app = ray_app(
            args.engine,
            threads=args.threads,
            max_length=args.max_length,
            options=options,
            scale=scale,
            access_log=args.access_log,
            log_level=args.log_level,
        )
        serve.run(app, name="dsee", route_prefix="/", blocking=False)
        print(
            f"serving {args.engine} on Ray Serve at http://{args.host}:{args.port}: {scale.describe()}",
            file=sys.stderr,
        )
        stop.wait()
    finally:
        serve.shutdown()  # replicas finish their requests in flight and drain their queues
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
