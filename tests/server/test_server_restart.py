"""The server dies mid-request (SIGKILL) and comes back: the client reports it in one line,
returns nothing partial, and works again after the restart (re-sending what the server lost)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from medplib_runtime.errors import RemoteError
from medplib_runtime.remote import RemoteRuntime
from medplib_runtime.schemas import Box, Prompt, SegmentRequest, SliceRef

pytestmark = pytest.mark.weights


def _volume() -> np.ndarray:
    vol = np.random.default_rng(5).normal(100, 8, (6, 96, 96)).astype(np.float32)
    vol[:, 30:60, 40:70] += 250
    return vol


def test_killed_mid_request_then_restarted():
    from _server import ServerProcess

    server = ServerProcess(["--preload", "segment"]).start()
    runtime = RemoteRuntime(server.url, retries=2)
    try:
        key = runtime.set_image(_volume())
        box = Prompt(box=Box(26, 36, 64, 74))
        first = runtime.segment(SegmentRequest(key, SliceRef(0, 0), box)).mask
        assert first[35:55, 45:65].all()

        outcome: dict = {}

        def slow_call():  # a new slice: ~1 s of embedding on the server, killed half-way
            try:
                outcome["result"] = runtime.segment(SegmentRequest(key, SliceRef(0, 3), box))
            except RemoteError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=slow_call)
        thread.start()
        time.sleep(0.4)
        server.kill()
        thread.join(60)
        assert "result" not in outcome, "a result came back from a killed server"
        error = outcome["error"]
        assert error.code in ("lost", "unreachable") and "\n" not in str(error)

        with pytest.raises(RemoteError, match="cannot reach") as err:  # down: said plainly, after backoff
            runtime.segment(SegmentRequest(key, SliceRef(0, 0), box))
        assert err.value.code == "unreachable"

        server.start()  # same port; the new process knows no slices
        again = runtime.segment(SegmentRequest(key, SliceRef(0, 0), box)).mask
        assert np.array_equal(again, first)  # uploaded again transparently, same answer
        assert runtime.segment(SegmentRequest(key, SliceRef(0, 3), box)).mask[35:55, 45:65].all()
    finally:
        runtime.close()
        server.stop()
