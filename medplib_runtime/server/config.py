"""What `medplib serve` is configured with, and the start-up safety rule for its address."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

TOKEN_ENV = "MEDPLIB_TOKEN"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None  # None: no auth (allowed on loopback only)
    preset: str = "medplib-lite"
    device: str = "cpu"
    precision: str | None = None  # the LLM's weights: fp32, int8, int4 (None: the runtime's default)
    preload: str = "all"  # all | segment | none: which model parts load at start-up
    max_body_mb: float = 64.0  # one request body; a 2048² float32 slice is 16 MB
    request_timeout_s: float = 120.0  # per request, queue wait included
    max_queue: int = 16  # model requests running or waiting; more → 503 busy
    client_cache_mb: float = 256.0  # uploaded slices kept per client (LRU)
    total_cache_mb: float = 1024.0  # uploaded slices kept in all (LRU)
    embedding_cache_mb: int = 1024  # slice embeddings (4 MB each for LiteMedSAM)
    max_new_tokens: int = 512  # cap on one answer
    glue: str | None = None  # a glue file instead of the preset's shipped one (e.g. a training run's adapter)
    # medplib-7b: the released checkpoint's folder, its dtype (None: bf16 on CUDA, fp32 on the CPU), 8/4-bit
    # loading (bitsandbytes, CUDA), and leave to run on the CPU (LocalRuntime checks them all before loading)
    weights: str | None = None
    dtype: str | None = None
    load_in: str | None = None
    allow_cpu: bool = False
    # hostile or slow connections (issue #33); see connections.py
    header_timeout_s: float = 10.0  # request headers must complete within this (counted from connect / last reply)
    body_timeout_s: float = 60.0  # and the body within this once the headers are in (≥ 270 KB/s for 16 MB)
    max_connections: int = 256  # open at once; past it the oldest idle or stalled one is closed
    max_inflight_body_mb: float = 256.0  # request bodies being received or decoded at once; more → 503 busy
    max_slice_pixels: int = 4096 * 4096  # one uploaded slice; stored as float32 at most → 64 MB

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < 8:
            raise InputError("--token must be at least 8 characters")
        if self.preload not in ("all", "segment", "none"):
            raise InputError(f"--preload must be all, segment or none; got {self.preload!r}")
        for name in ("max_body_mb", "request_timeout_s", "client_cache_mb", "total_cache_mb", "header_timeout_s",
                     "body_timeout_s", "max_inflight_body_mb"):
            if not getattr(self, name) > 0:
                raise InputError(f"--{name.replace('_', '-')} must be positive")
        if self.max_queue < 1:
            raise InputError("--max-queue must be at least 1")
        if self.max_connections < 8:
            raise InputError("--max-connections must be at least 8")
        if self.max_slice_pixels < 4:
            raise InputError("--max-slice-pixels must be at least 4 (a 2×2 slice)")
        if self.glue is not None:  # refuse a missing or unreadable glue before any model work
            from ..glue.files import trained_parts

            if not Path(self.glue).is_file():
                raise InputError(f"glue file {self.glue} does not exist")
            trained_parts(Path(self.glue))

    def runtime_weights(self) -> dict:
        """LocalRuntime's medplib-7b keywords (checked there, before anything loads)."""
        return {"weights": self.weights, "dtype": self.dtype, "load_in": self.load_in, "allow_cpu": self.allow_cpu}


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address (127/8, ::1)."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_exposure(config: ServerConfig) -> None:
    """Refuse to listen beyond this machine without a token (InputError, one line)."""
    if config.token is None and not is_loopback(config.host):
        raise InputError(f"refusing to listen on {config.host} without a token: pass --token or set {TOKEN_ENV}"
                         " (or bind to 127.0.0.1)")


def token_from_env() -> str | None:
    return os.environ.get(TOKEN_ENV) or None
