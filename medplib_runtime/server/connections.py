"""Connection-level guards uvicorn lacks: a header deadline, a body deadline, and a connection cap
that closes the stalled connections rather than refusing the live ones.

Why: uvicorn's ``limit_concurrency`` counts *open TCP connections*, so 80 sockets that sent half a
request made every later request — ``/health`` included — a 503 for as long as they stayed open,
and uvicorn has no timeout on a request's headers (its keep-alive timer is reset by every byte).

:func:`guarded_protocol` returns an ``H11Protocol`` subclass (pass it as uvicorn's ``http=``):

* from connect (or the end of the previous reply) the request headers must arrive within
  ``header_timeout_s``, however they trickle; after the headers the body must arrive within
  ``body_timeout_s``. Past either, the connection gets a one-line 408 and is closed;
* at most ``max_connections`` are open; a new one closes the oldest connection that is idle or
  still sending its request (headers or body) — never one whose request is being served — and
  only if every connection is busy being served is the new one refused (503, one line);
* malformed or oversized headers (h11's 16 KB limit) get a one-line JSON 400 instead of text.

A request counts against the model queue (guards.Admission) only once its body is in: FastAPI
parses the body before the endpoint runs, so a stalled body holds a connection, never a slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("medplib.server")
MAX_HEADER_BYTES = 16 * 1024  # h11's incomplete-event cap: a longer request head is refused (400)


@dataclass
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 256
    # shared by every connection of one server (the event loop is single-threaded: no lock)
    open: OrderedDict = field(default_factory=OrderedDict)  # protocol → None, oldest first
    shed: int = 0  # connections closed to make room (for tests and logs)
    timed_out: int = 0


def raw_response(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 reply with a one-line JSON error, for use outside h11's state machine."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode()
    return head + body


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    class GuardedH11Protocol(_Guarded):
        _limits = limits

    return GuardedH11Protocol


class _Guarded(H11Protocol):
    _limits: ConnectionLimits

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._phase = ""  # "idle": waiting for (the rest of) request headers; "body"; "" = being served
        self._since = 0.0
        self._deadline: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self._limits
        if len(limits.open) >= limits.max_connections and not self._make_room():
            limits.shed += 1
            self._refuse(503, "Service Unavailable", "busy",
                         f"server has {limits.max_connections} connections, all being served; retry shortly")
            return
        limits.open[self] = None
        self._update_phase()

    def connection_lost(self, exc) -> None:
        self._limits.open.pop(self, None)
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._update_phase()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_phase()

    def send_400_response(self, msg: str) -> None:  # uvicorn's is plain text; ours is the JSON one-liner
        self._refuse(400, "Bad Request", "bad_request",
                     f"malformed HTTP request, or its headers are over {MAX_HEADER_BYTES // 1024} KB")

    # -- phases and deadlines -------------------------------------------------------------------
    def _update_phase(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        theirs, ours = self.conn.their_state, self.conn.our_state
        if theirs is h11.IDLE and ours is h11.IDLE:
            phase = "idle"
        elif theirs is h11.SEND_BODY:
            phase = "body"
        else:
            phase = ""
        if phase == self._phase:
            return
        self._phase, self._since = phase, time.monotonic()
        self._cancel_deadline()
        if phase:
            seconds = self._limits.header_timeout_s if phase == "idle" else self._limits.body_timeout_s
            self._deadline = self.loop.call_later(seconds, self._expire, phase)
        if phase:  # most recently active last: the shedding order
            self._limits.open.pop(self, None)
            self._limits.open[self] = None

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, phase: str) -> None:
        self._deadline = None
        if self._phase != phase or self.transport.is_closing():
            return
        self._limits.timed_out += 1
        if phase == "idle" and not self.conn.trailing_data[0]:
            self.transport.close()  # an idle keep-alive connection: close quietly, as uvicorn does
            return
        what = ("request headers", self._limits.header_timeout_s) if phase == "idle" else \
            ("request body", self._limits.body_timeout_s)
        self._refuse(408, "Request Timeout", "timeout", f"{what[0]} did not arrive within {what[1]:g} s")

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        started = self.cycle is not None and getattr(self.cycle, "response_started", False)
        if not started and not self.transport.is_closing():
            self.transport.write(raw_response(status, reason, code, message))
        self.transport.close()

    def _sheddable(self) -> bool:
        return self._phase in ("idle", "body")  # still sending its request: nothing of it is being served

    def _make_room(self) -> bool:
        """Close the connection that has been idle or stalled longest; False when all are being served."""
        victim = next((p for p in self._limits.open if p._sheddable()), None)
        if victim is None:
            return False
        self._limits.shed += 1
        self._limits.open.pop(victim, None)
        victim._cancel_deadline()
        if victim._phase == "idle" and not victim.conn.trailing_data[0]:
            victim.transport.close()  # an idle keep-alive connection: its client simply reconnects
            return True
        victim._refuse(503, "Service Unavailable", "busy",
                       f"connection closed: the server is at its {self._limits.max_connections}-connection limit"
                       " and this one was idle or stalled longest")
        return True
