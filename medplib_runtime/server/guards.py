"""The server's gatekeepers, as plain ASGI middleware so they run before any routing or parsing:
a constant-time bearer-token check, a request-body cap, and a bounded admission counter."""

from __future__ import annotations

import hmac
import json
import threading

PUBLIC_PATHS = frozenset({"/health"})


async def _send_json(send, status: int, code: str, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class TokenAuth:
    """Every path but /health needs ``Authorization: Bearer <token>`` (compared in constant time)."""

    def __init__(self, app, *, token: str | None) -> None:
        self.app = app
        self.token = None if token is None else token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.token is None or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        if not hmac.compare_digest(given, self.token):
            message = "missing token" if not given else "wrong token"
            return await _send_json(send, 401, "auth", message, [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


class BodySizeLimit:
    """413 before reading a body whose Content-Length is over the cap, and mid-stream for chunked ones."""

    def __init__(self, app, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit_mb = self.max_bytes / 2**20
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    return await _send_json(send, 400, "bad_input", "Content-Length is not a number")
                if size > self.max_bytes:
                    return await _send_json(send, 413, "too_large",
                                            f"request body of {size / 2**20:.1f} MB is over the {limit_mb:g} MB limit")
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, "too_large", f"request body is over the {limit_mb:g} MB limit")


class _TooLarge(Exception):
    pass


class Admission:
    """At most ``limit`` model requests in the server (running or waiting for the model lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self._count >= self.limit:
                return False
            self._count += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._count -= 1

    @property
    def in_flight(self) -> int:
        return self._count
