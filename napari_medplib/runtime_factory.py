"""Where the docks get their runtime: one per process, shared (one embedding cache), replaceable.

The runtime is closed at interpreter exit so its prefetch thread never runs torch code while
Python shuts down (that aborts the process).
"""

from __future__ import annotations

import atexit
import threading

_lock = threading.Lock()
_state: dict = {}  # the process-wide runtime; a registry, so several docks share one cache
_background: set[threading.Thread] = set()  # fire-and-forget jobs (warm-up, prefetch hints)


def get_runtime():
    """The process's runtime, created on first use (torch is imported then, not before)."""
    with _lock:
        if _state.get("runtime") is None:
            from medplib_runtime.local import LocalRuntime

            _state["runtime"] = LocalRuntime()
        return _state["runtime"]


def current_runtime():
    """The runtime in use, or None if none was created yet (never creates one)."""
    with _lock:
        return _state.get("runtime")


def run_background(fn) -> None:
    """Run ``fn`` on a plain thread (no Qt objects, so it can outlive a closed viewer safely)."""

    def body():
        try:
            fn()
        except Exception:  # noqa: BLE001 — a failed warm-up/prefetch only costs speed
            pass
        finally:
            with _lock:
                _background.discard(thread)

    thread = threading.Thread(target=body, name="medplib-background", daemon=True)
    with _lock:
        _background.add(thread)
    thread.start()


def wait_background(timeout: float = 120.0) -> None:
    with _lock:
        threads = list(_background)
    for thread in threads:
        thread.join(timeout)


def set_runtime(runtime) -> None:
    """Use ``runtime`` (a medplib_runtime.protocol.Runtime) from now on; None forgets it. Closes the old one."""
    wait_background()  # no job may still be using the old runtime
    with _lock:
        old = _state.get("runtime")
        _state["runtime"] = runtime
    if old is not None and old is not runtime:
        old.close()


@atexit.register
def _close_at_exit() -> None:
    set_runtime(None)
