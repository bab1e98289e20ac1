"""Run runtime calls off the Qt main thread (napari workers), or inline when debugging/testing."""

from __future__ import annotations

from typing import Callable

from napari.utils.notifications import show_error

from medplib_runtime.errors import MedplibError


def user_message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MedplibError) else f"MedPLIB failed: {type(exc).__name__}: {exc}"


def run_call(fn: Callable, on_done: Callable, *, synchronous: bool, on_finished: Callable[[], None] | None = None,
             on_error: Callable[[BaseException], None] | None = None):
    """``fn()`` in a worker; ``on_done(result)`` on the main thread; errors → one-line notification
    (and ``on_error(exc)``, e.g. to put it in a status line).

    Returns the worker (None when synchronous). The worker never touches widgets or layers.
    """
    if synchronous:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 — shown to the user as one line
            show_error(user_message(exc))
            if on_error is not None:
                on_error(exc)
        else:
            on_done(result)
        if on_finished is not None:
            on_finished()
        return None
    from napari.qt.threading import create_worker

    worker = create_worker(fn, _ignore_errors=True)  # errors go to our one-line handler, not a traceback
    worker.returned.connect(on_done)
    worker.errored.connect(lambda exc: show_error(user_message(exc)))
    if on_error is not None:
        worker.errored.connect(on_error)
    if on_finished is not None:
        worker.finished.connect(on_finished)
    worker.start()
    return worker
