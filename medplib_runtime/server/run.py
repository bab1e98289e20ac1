"""`medplib serve`: check the address, load the model once, then serve with uvicorn."""

from __future__ import annotations

import logging
import sys
import time

from .config import ServerConfig, check_exposure


def build_runtime(config: ServerConfig):
    """A LocalRuntime with the parts ``config.preload`` names already loaded."""
    from ..local import LocalRuntime

    runtime = LocalRuntime(config.preset, device=config.device, cache_mb=config.embedding_cache_mb,
                           glue=config.glue, max_images=1 << 30)  # the server's slice store decides what to forget
    if config.preload in ("all", "segment"):
        runtime.warm_up()
    if config.preload == "all":
        runtime.load_asker()
    return runtime


def serve(config: ServerConfig) -> int:
    import uvicorn

    from .app import create_app

    check_exposure(config)  # before any model work: a refused start is instant
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    runtime = build_runtime(config)
    app = create_app(config, runtime=runtime)
    auth = "token required" if config.token else "no token (loopback only)"
    print(f"medplib serve: {config.preset} loaded in {time.perf_counter() - t0:.1f} s; listening on "
          f"http://{config.host}:{config.port} ({auth})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", server_header=False,
                timeout_keep_alive=30, limit_concurrency=config.max_queue * 4 + 16)
    return 0
