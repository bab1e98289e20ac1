"""Where the docks get their runtime: one per process, shared (one embedding cache), replaceable.

The runtime is warmed in the background, one step after another in the order the docks ask (the
segmentation model, the shown slice, the language model), so the first click does not pay for it;
``warm_status()`` says what is loading and how long each finished step took, for the status lines.
The runtime is closed at interpreter exit so its prefetch thread never runs torch code while
Python shuts down (that aborts the process).
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_lock = threading.Lock()
_state: dict = {}  # the process-wide runtime; a registry, so several docks share one cache
_background: set[threading.Thread] = set()  # fire-and-forget jobs (warm-up, prefetch hints)


@dataclass(frozen=True)
class WarmStatus:
    """What the background warm-up is doing (``loading``, since ``started`` on the monotonic clock)."""

    loading: str | None
    started: float
    loaded: tuple[tuple[str, float], ...]  # (step, seconds) in the order they finished
    failed: tuple[tuple[str, str], ...]  # (step, error)
    queued: tuple[str, ...]

    def seconds(self, step: str) -> float | None:
        return dict(self.loaded).get(step)

    @property
    def busy(self) -> bool:
        return self.loading is not None or bool(self.queued)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


_warm: dict = {"queue": [], "names": set(), "loading": None, "started": 0.0, "loaded": [], "failed": [],
               "running": False}


def local_model_installed() -> bool:
    """The in-process model needs torch (the `[local]` extra); the base install is a remote client."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


NO_LOCAL_MODEL = ("no model on this computer (torch is not installed): connect to a `medplib serve` with "
                  "Change… in the segment dock (or set $MEDPLIB_REMOTE_URL), or pip install 'napari-medplib[local]'")
URL_ENV, TOKEN_ENV = "MEDPLIB_REMOTE_URL", "MEDPLIB_TOKEN"


def default_choice() -> str:
    """Where the model runs when nobody chose in the dock: the server named by $MEDPLIB_REMOTE_URL, else this
    computer when torch is installed, else nowhere yet ("remote URL", "local" or "none")."""
    import os

    url = os.environ.get(URL_ENV, "").strip()
    if url:
        return f"remote {url}"
    return "local" if local_model_installed() else "none"


def get_runtime():
    """The process's runtime, created on first use from ``default_choice()`` (torch is imported then, not before)."""
    with _lock:
        if _state.get("runtime") is None:
            choice = default_choice()
            if choice == "none":
                from medplib_runtime.errors import RuntimeNotReady

                raise RuntimeNotReady(NO_LOCAL_MODEL)
            if choice.startswith("remote "):
                from medplib_runtime.remote import RemoteRuntime

                from medplib_runtime.errors import InputError

                try:  # the token comes from $MEDPLIB_TOKEN
                    _state["runtime"] = RemoteRuntime(choice.removeprefix("remote "))
                except InputError as exc:  # say where the bad URL came from: the user did not type it here
                    raise InputError(f"${URL_ENV}: {exc}") from None
            else:
                from medplib_runtime.local import LocalRuntime

                _state["runtime"] = LocalRuntime()
        return _state["runtime"]


def current_runtime():
    """The runtime in use, or None if none was created yet (never creates one)."""
    with _lock:
        return _state.get("runtime")


def runtime_info(runtime):
    """``runtime.info()``, asked once per runtime (call it from a worker: a remote one asks its server).
    Kept so that each label write can say which model made it (provenance) without a call on the Qt thread."""
    with _lock:
        cached = _state.get("info")
        if cached is not None and cached[0] is runtime:
            return cached[1]
    try:
        info = runtime.info()
    except Exception:  # noqa: BLE001 — provenance must never cost the user a Segment or an answer
        return None
    with _lock:
        _state["info"] = (runtime, info)
    return info


def last_runtime_info():
    """The RuntimeInfo of the runtime in use, if a worker asked for it already (never calls the runtime)."""
    with _lock:
        cached = _state.get("info")
        return cached[1] if cached is not None and cached[0] is _state.get("runtime") else None


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


def warm(step: str, fn: Callable[[object], None]) -> None:
    """Queue ``fn(runtime)`` as warm-up step ``step`` (once per runtime); steps run one at a time, in order."""
    with _lock:
        if step in _warm["names"]:
            return
        _warm["names"].add(step)
        _warm["queue"].append((step, fn))
        if _warm["running"]:
            return
        _warm["running"] = True
    run_background(_drain_warm_queue)


def _drain_warm_queue() -> None:
    while True:
        with _lock:
            if not _warm["queue"]:
                _warm["running"], _warm["loading"] = False, None
                return
            step, fn = _warm["queue"].pop(0)
            _warm["loading"], _warm["started"] = step, time.monotonic()
        try:
            fn(get_runtime())
        except Exception as exc:  # noqa: BLE001 — a failed warm-up only costs speed; the click will say why
            with _lock:
                _warm["failed"].append((step, str(exc)))
        else:
            with _lock:
                _warm["loaded"].append((step, time.monotonic() - _warm["started"]))


SEGMENTATION_STEP, LANGUAGE_STEP = "the segmentation model", "the language model"


def warm_segmentation() -> None:
    """Queue loading the segmentation model (torch's import included), the first thing a click needs."""
    warm(SEGMENTATION_STEP, lambda runtime: getattr(runtime, "warm_up", lambda: None)())


def warm_language() -> None:
    """Queue loading the language model and glue (the chat's first answer needs them)."""
    warm(LANGUAGE_STEP, lambda runtime: getattr(runtime, "load_asker", lambda: None)())


def warm_status() -> WarmStatus:
    with _lock:
        return WarmStatus(_warm["loading"], _warm["started"], tuple(_warm["loaded"]), tuple(_warm["failed"]),
                          tuple(step for step, _ in _warm["queue"]))


def set_runtime(runtime) -> None:
    """Use ``runtime`` (a medplib_runtime.protocol.Runtime) from now on; None forgets it. Closes the old one."""
    with _lock:
        _warm["queue"].clear()  # steps for the old runtime that have not started are dropped
    wait_background()  # no job may still be using the old runtime
    with _lock:
        _warm.update(names=set(), loading=None, loaded=[], failed=[])
        old = _state.get("runtime")
        _state["runtime"] = runtime
    if old is not None and old is not runtime:
        old.close()


@atexit.register
def _close_at_exit() -> None:
    set_runtime(None)
