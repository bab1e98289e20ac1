"""The docks' one worker helper: results only from the current call, cancel stops and drops, one-line errors."""

from __future__ import annotations

import threading

import pytest

from medplib_runtime.errors import Cancelled, InputError
from napari_medplib import _workers
from napari_medplib._workers import WorkerSlot


@pytest.fixture
def notices(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(_workers, "show_error", shown.append)
    return shown


def test_inline_calls_deliver_then_finish_and_errors_are_one_line(notices):
    slot, seen = WorkerSlot(synchronous=lambda: True), []
    slot.start(lambda cancel: 42, seen.append, on_finished=lambda: seen.append("finished"))
    assert seen == [42, "finished"] and not slot.busy

    def bad(cancel):
        raise InputError("point outside the image")

    slot.start(bad, seen.append, on_error=lambda exc: seen.append(type(exc).__name__))
    assert seen[-1] == "InputError" and notices == ["point outside the image"]

    def crash(cancel):
        raise ZeroDivisionError("boom")

    slot.start(crash, seen.append)
    assert notices[-1] == "MedPLIB failed: ZeroDivisionError: boom"


def _until_cancelled(started: threading.Event, ended: list):
    def job(cancel: threading.Event):
        started.set()
        while not cancel.wait(0.01):
            pass
        ended.append("stopped")
        raise Cancelled("cancelled")

    return job


def test_cancel_stops_the_job_and_drops_its_result(qtbot, notices):
    slot, seen, ended, started = WorkerSlot(synchronous=lambda: False), [], [], threading.Event()
    slot.start(_until_cancelled(started, ended), seen.append, on_error=seen.append,
               on_finished=lambda: seen.append("finished"))
    assert started.wait(10) and slot.busy
    assert slot.cancel() and not slot.busy
    qtbot.waitUntil(lambda: ended == ["stopped"], timeout=10_000)
    qtbot.wait(100)
    assert seen == [] and notices == [], "a cancelled call reaches the dock with nothing, not even its error"
    assert not slot.cancel(), "nothing left to cancel"


def test_a_new_call_supersedes_the_running_one(qtbot, notices):
    slot, seen, ended, started = WorkerSlot(synchronous=lambda: False), [], [], threading.Event()
    slot.start(_until_cancelled(started, ended), lambda r: seen.append(("first", r)))
    assert started.wait(10)
    slot.start(lambda cancel: "second", lambda r: seen.append(("second", r)), on_finished=lambda: seen.append("done"))
    qtbot.waitUntil(lambda: "done" in seen and ended == ["stopped"], timeout=10_000)
    qtbot.wait(100)
    assert seen == [("second", "second"), "done"] and not slot.busy and notices == []
