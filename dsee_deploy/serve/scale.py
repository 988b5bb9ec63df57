"""Scale-out: the same Engine and HTTP app as dsee-serve, as a Ray Serve deployment with replicas.

Each replica loads the engine and runs the app of dsee-serve (its own micro-batcher, limits and /metrics), so a
request gets the same answer from one replica or many. Ray's proxy spreads requests over replicas; autoscaling
adds a replica when requests in flight per replica pass `target_requests`.

    from ray import serve
    from dsee_deploy.serve import ray_app
    serve.run(ray_app("engines/sst2-s", scale=ScaleOptions(replicas=2)), route_prefix="/")

`serve run serve/ray-serve.yaml` builds the same application from `build_app`.
"""

from __future__ import annotations

from dataclasses import asdict

from ray import serve
from ray.serve import Application

from .options import ScaleOptions, ServeOptions


@serve.deployment(name="dsee-engine")
@serve.ingress()
class EngineDeployment:
    """One replica: the engine and the FastAPI app of dsee-serve around it (built once the engine is loaded)."""

    def __init__(self, engine_dir: str, threads: int | None, max_length: int | None, options: dict):
        from .engine import Engine

        self.options = ServeOptions(**options)
        self.engine = Engine.load(
            engine_dir,
            threads=threads,
            max_length=max_length,
            spin_us=self.options.spin_us,
            verify=self.options.verify,
        )

    def __serve_build_asgi_app__(self):
        from .app import create_app

        return create_app(self.engine, self.options)


def ray_app(
    engine_dir: str,
    threads: int | None = None,
    max_length: int | None = None,
    options: ServeOptions | None = None,
    scale: ScaleOptions | None = None,
    access_log: bool = False,
    log_level: str = "INFO",
) -> Application:
    """A Ray Serve application serving `engine_dir`; run it with serve.run(app, route_prefix="/").

    `threads` (ORT intra-op threads per replica) defaults to the CPUs Ray reserves for a replica. Ray's log line
    per request (`access_log`) is off by default, as in dsee-serve: it costs throughput."""
    options = options or ServeOptions()
    scale = scale or ScaleOptions()
    threads = threads or max(1, int(scale.replica_cpus))
    deployment_options = {
        "ray_actor_options": {"num_cpus": scale.replica_cpus},
        # Room for a full batch being computed and the next one filling; Ray's default (5) would starve batching.
        "max_ongoing_requests": 2 * options.max_batch_size,
        "logging_config": {"log_level": log_level.upper(), "enable_access_log": access_log},
    }
    if scale.autoscaling:
        low, high = scale.bounds
        deployment_options["num_replicas"] = "auto"
        deployment_options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": scale.target_requests or options.max_batch_size,
        }
    else:
        deployment_options["num_replicas"] = scale.replicas or 1
    return EngineDeployment.options(**deployment_options).bind(
        str(engine_dir), threads, max_length, asdict(options)
    )


def build_app(args: dict) -> Application:
    """Application builder for `serve run` and Serve config files: `args` holds `engine` and, optionally,
    `threads`, `max_length`, `access_log`, `log_level`, the fields of ServeOptions and those of ScaleOptions."""
    args = dict(args)
    engine = args.pop("engine")
    threads, max_length = args.pop("threads", None), args.pop("max_length", None)
    access_log, log_level = args.pop("access_log", False), args.pop("log_level", "INFO")
    serve_fields = set(ServeOptions.__dataclass_fields__)
    options = ServeOptions(**{k: args.pop(k) for k in list(args) if k in serve_fields})
    scale = ScaleOptions(**args)  # anything left over must be a scale option; a typo raises TypeError
    return ray_app(engine, threads, max_length, options, scale, access_log, log_level)
