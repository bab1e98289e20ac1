"""`medplib serve`: the runtime over HTTP (FastAPI + uvicorn). Needs the ``[server]`` and ``[local]`` extras."""

from .config import ServerConfig, check_exposure, is_loopback

__all__ = ["ServerConfig", "check_exposure", "is_loopback"]
