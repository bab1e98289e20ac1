"""The docks' one way to run a runtime call off the Qt main thread: a ``WorkerSlot`` per dock.

A slot runs one call at a time in a napari worker (inline when the dock is ``synchronous``, for
debugging and tests). The job gets a ``threading.Event``: ``cancel()`` sets it, and a job that checks it (a
propagation before each slice, an answer at each token) stops early by raising ``Cancelled``.
Whatever a cancelled or superseded call returns is discarded, so nothing is written after the
user pressed Cancel. Errors are one line (a notification and ``on_error``), never a traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from napari.utils.notifications import show_error

from medplib_runtime.errors import Cancelled, MedplibError


def user_message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MedplibError) else f"MedPLIB failed: {type(exc).__name__}: {exc}"


class _Call:
    """One started call: its cancel flag, and the callbacks that may still reach the dock."""

    def __init__(self, on_done, on_error, on_finished) -> None:
        self.cancel = threading.Event()
        self.on_done, self.on_error, self.on_finished = on_done, on_error, on_finished


class WorkerSlot:
    def __init__(self, *, synchronous: Callable[[], bool]) -> None:
        self.synchronous = synchronous  # asked at each start: a dock's ``synchronous`` may be set after it is built
        self._call: _Call | None = None
        self.worker = None  # the napari worker of the current call (None when synchronous)

    @property
    def busy(self) -> bool:
        return self._call is not None

    def start(self, fn: Callable[[threading.Event], object], on_done: Callable[[object], None], *,
              on_error: Callable[[BaseException], None] | None = None,
              on_finished: Callable[[], None] | None = None) -> None:
        """``fn(cancel)`` in a worker; ``on_done(result)`` then ``on_finished()`` on the main thread, only while this
        call is the slot's current one. A call still running is cancelled first (its result will be dropped)."""
        self.cancel()
        call = self._call = _Call(on_done, on_error, on_finished)
        if self.synchronous():
            try:
                result = fn(call.cancel)
            except Exception as exc:  # noqa: BLE001 — shown to the user as one line
                self._failed(call, exc)
            else:
                self._returned(call, result)
            self._finished(call)
            return
        from napari.qt.threading import create_worker

        worker = create_worker(fn, call.cancel, _ignore_errors=True)  # errors go to our handler, not a traceback
        worker.returned.connect(lambda result: self._returned(call, result))
        worker.errored.connect(lambda exc: self._failed(call, exc))
        worker.finished.connect(lambda: self._finished(call))
        self.worker = worker
        worker.start()

    def cancel(self) -> bool:
        """Stop the current call at its next check and drop its result; True if one was running."""
        call, self._call = self._call, None
        if call is None:
            return False
        call.cancel.set()
        if self.worker is not None:
            self.worker.quit()
            self.worker = None
        return True

    def _returned(self, call: _Call, result) -> None:
        if call is self._call:
            call.on_done(result)

    def _failed(self, call: _Call, exc: BaseException) -> None:
        if call is not self._call:
            return  # cancelled or superseded: the user already moved on
        if not isinstance(exc, Cancelled):
            show_error(user_message(exc))
        if call.on_error is not None:
            call.on_error(exc)

    def _finished(self, call: _Call) -> None:
        if call is not self._call:
            return
        self._call, self.worker = None, None
        if call.on_finished is not None:
            call.on_finished()
