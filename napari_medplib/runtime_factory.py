"""Where the dock gets its runtime: one LocalRuntime per process, replaceable (tests, remote)."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_state: dict = {}


def get_runtime():
    """The process's runtime, created on first use (torch is imported then, not before)."""
    with _lock:
        if "runtime" not in _state:
            from medplib_runtime.local import LocalRuntime

            _state["runtime"] = LocalRuntime()
        return _state["runtime"]


def set_runtime(runtime) -> None:
    """Use ``runtime`` (anything implementing medplib_runtime.protocol.Runtime) from now on."""
    with _lock:
        old = _state.get("runtime")
        _state["runtime"] = runtime
    if old is not None and old is not runtime:
        old.close()
