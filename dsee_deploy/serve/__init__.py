"""Serving: the embeddable `Engine` (onnxruntime, tokenizers and numpy only), the HTTP app behind dsee-serve,
and its scale-out on Ray Serve.

    from dsee_deploy.serve import Engine
    engine = Engine.load("engines/sst2-s", threads=2)
    engine.predict(["a gripping film", "dull and long"])

`create_app` needs the 'serve' extra (fastapi, prometheus-client) and `ray_app` the 'ray' extra; importing this
package needs neither, and never imports torch or transformers.
"""

from __future__ import annotations

from ..runtime import plan_buckets
from .engine import Engine
from .options import ScaleOptions, ServeOptions


def create_app(engine: Engine, options: ServeOptions | None = None):
    """The FastAPI app of dsee-serve around `engine`; see dsee_deploy.serve.app.create_app."""
    from ..errors import require_extra

    require_extra("serve", "fastapi", "prometheus_client")
    from .app import create_app as _create_app

    return _create_app(engine, options)


def ray_app(
    engine_dir,
    threads=None,
    max_length=None,
    options: ServeOptions | None = None,
    scale: ScaleOptions | None = None,
    access_log: bool = False,
    log_level: str = "INFO",
):
    """A Ray Serve application serving `engine_dir`; see dsee_deploy.serve.scale.ray_app."""
    from ..errors import require_extra

    require_extra("ray", "ray.serve")
    require_extra("serve", "fastapi", "prometheus_client")
    from .scale import ray_app as _ray_app

    return _ray_app(engine_dir, threads, max_length, options, scale, access_log, log_level)


__all__ = ["Engine", "ScaleOptions", "ServeOptions", "create_app", "plan_buckets", "ray_app"]
