"""Where the docks get their runtime: one per process, shared (one embedding cache), replaceable.

The runtime is closed at interpreter exit so its prefetch thread never runs torch code while
Python shuts down (that aborts the process).
"""

from __future__ import annotations

import atexit
import threading

_lock = threading.Lock()
_state: dict = {}  # the process-wide runtime; a registry, so several docks share one cache


def get_runtime():
    """The process's runtime, created on first use (torch is imported then, not before)."""
    with _lock:
        if _state.get("runtime") is None:
            from medplib_runtime.local import LocalRuntime

            _state["runtime"] = LocalRuntime()
        return _state["runtime"]


def set_runtime(runtime) -> None:
    """Use ``runtime`` (a medplib_runtime.protocol.Runtime) from now on; None forgets it. Closes the old one."""
    with _lock:
        old = _state.get("runtime")
        _state["runtime"] = runtime
    if old is not None and old is not runtime:
        old.close()


@atexit.register
def _close_at_exit() -> None:
    set_runtime(None)
