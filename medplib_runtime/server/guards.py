"""The server's gatekeepers, as plain ASGI middleware so they run before any routing or parsing:
a loopback-Host check (no token), a constant-time bearer-token check, a request-body cap with a
budget for all bodies in flight, and a bounded admission counter."""

from __future__ import annotations

import hmac
import json
import re
import threading

from starlette.exceptions import HTTPException as StarletteHTTPException

PUBLIC_PATHS = frozenset({"/health"})
# localhost, 127.0.0.1, [::1], each with or without :port (Host headers are ASCII; case-insensitive)
_LOOPBACK_HOST = re.compile(rb"^(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?$", re.IGNORECASE)


async def _send_json(send, status: int, code: str, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class LoopbackHostOnly:
    """Without a token, answer only requests addressed to a loopback name. A web page can point its
    own domain at 127.0.0.1 (DNS rebinding) and then read this server as same-origin; its requests
    still carry that domain in ``Host``, so they get 421 here."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        hosts = [value for name, value in scope.get("headers", ()) if name == b"host"]
        if len(hosts) == 1 and _LOOPBACK_HOST.match(hosts[0].strip()):
            return await self.app(scope, receive, send)
        shown = hosts[0].decode("latin-1")[:80] if hosts else "(none)"
        return await _send_json(send, 421, "bad_host",
                                f"Host {shown!r} is not localhost, 127.0.0.1 or [::1]: without a token this server"
                                " answers loopback names only", [(b"connection", b"close")])


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
    """413 before reading a body whose Content-Length is over the cap, and mid-stream for chunked ones;
    503 busy while the bodies of all requests in flight (received, not yet answered) would pass
    ``max_inflight_bytes`` — many large uploads at once cannot take the server's memory."""

    def __init__(self, app, *, max_bytes: int, max_inflight_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_inflight_bytes = max_inflight_bytes or 1 << 62
        self.inflight = 0  # only touched on the event loop

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
                n = len(message.get("body", b""))
                seen += n
                self.inflight += n
                if seen > self.max_bytes:
                    raise _TooLarge(f"request body is over the {limit_mb:g} MB limit")
                if self.inflight > self.max_inflight_bytes:
                    raise _Crowded(f"server is receiving over {self.max_inflight_bytes / 2**20:g} MB of requests at"
                                   " once; retry shortly")
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except (_TooLarge, _Crowded) as exc:  # the app's handlers answer these; this is the fallback
            if not started:
                await _send_json(send, exc.status_code, exc.code, exc.detail,
                                 [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()])
        finally:
            self.inflight -= seen


# HTTPException subclasses: FastAPI re-raises these from its body parsing (any other exception there
# becomes a generic 400), so the app's handler answers them with their own status and one line.
class _TooLarge(StarletteHTTPException):
    code = "too_large"

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class _Crowded(StarletteHTTPException):
    code = "busy"

    def __init__(self, message: str) -> None:
        super().__init__(503, message, headers={"Retry-After": "1"})


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
