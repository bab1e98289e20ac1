"""`medplib serve`: check the address, load the model once, then serve with uvicorn."""

from __future__ import annotations

import logging
import sys
import time

from .config import ServerConfig, check_exposure


def build_runtime(config: ServerConfig):
    """A LocalRuntime with the parts ``config.preload`` names already loaded."""
    from ..local import LocalRuntime

    runtime = LocalRuntime(config.preset, device=config.device, precision=config.precision,
                           cache_mb=config.embedding_cache_mb,
                           glue=config.glue, max_images=1 << 30,  # the server's slice store decides what to forget
                           **config.runtime_weights())
    if config.preload in ("all", "segment"):
        runtime.warm_up()
    if config.preload == "all":
        runtime.load_asker()
    return runtime


def _report_memory(runtime) -> None:
    """medplib-7b: the estimate checked before loading, and on CUDA what loading took."""
    load = getattr(runtime, "released", None)
    if load is None or load.estimate is None:
        return
    from ..modeling.memory_estimate import describe

    line = f"medplib serve: estimated {describe(load.estimate)}"
    if runtime.device.startswith("cuda"):
        import torch

        line += f"; CUDA peak after loading {torch.cuda.max_memory_allocated(runtime.device) / 1e9:.1f} GB"
    print(line, file=sys.stderr, flush=True)


def uvicorn_config(app, config: ServerConfig):
    """uvicorn settings for ``app``: h11 with the connection guards (connections.py) instead of
    ``limit_concurrency``, which 503s every request while enough sockets merely stay open."""
    import uvicorn

    from .connections import MAX_HEADER_BYTES, ConnectionLimits, guarded_protocol

    limits = ConnectionLimits(header_timeout_s=config.header_timeout_s, body_timeout_s=config.body_timeout_s,
                              max_connections=config.max_connections)
    app.state.connection_limits = limits
    return uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", server_header=False,
                          http=guarded_protocol(limits), ws="none", lifespan="on",
                          timeout_keep_alive=max(1, int(config.header_timeout_s)),  # ours closes idle ones too
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                          timeout_graceful_shutdown=5)  # an open answer stream does not hold a stop for long


def serve(config: ServerConfig) -> int:
    import uvicorn

    from .app import create_app

    check_exposure(config)  # before any model work: a refused start is instant
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    runtime = build_runtime(config)
    _report_memory(runtime)
    app = create_app(config, runtime=runtime)
    auth = "token required" if config.token else "no token (loopback only)"
    what = config.preset if config.weights is None else f"{config.preset} from {config.weights}"
    print(f"medplib serve: {what} loaded in {time.perf_counter() - t0:.1f} s on {runtime.device}; listening on "
          f"http://{config.host}:{config.port} ({auth})", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn_config(app, config)).run()
    return 0
