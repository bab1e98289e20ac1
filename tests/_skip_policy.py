"""A pytest plugin (imported by conftest.py): in CI, a skipped test fails the run.

With the environment variable ``CI`` set (to anything but "", "0" or "false") or with
``MEDPLIB_NO_SKIPS=1``, any test skipped for a reason that does not start with one of
``ALLOWED_SKIP_REASONS`` turns the exit status into 1 (tests failed), with one line naming the
skipped tests. Only the CUDA tests may skip: they need (or, for the missing-GPU errors, must not
have) a CUDA GPU, which CI machines may or may not have.
"""

from __future__ import annotations

import os

import pytest

ALLOWED_SKIP_REASONS = ("no CUDA GPU on this machine", "this machine has a CUDA GPU")

_skipped: list[tuple[str, str]] = []  # (test id, reason) of every skip this session


def skips_fail_the_run() -> bool:
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("MEDPLIB_NO_SKIPS", "") == "1"


def _reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def _record(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is reported as skipped too
        _skipped.append((report.nodeid, _reason(report)))


def pytest_sessionstart(session) -> None:
    _skipped.clear()


def pytest_collectreport(report) -> None:  # a module skipped as a whole (pytest.skip(allow_module_level))
    _record(report)


def pytest_runtest_logreport(report) -> None:
    _record(report)


def _not_allowed() -> list[tuple[str, str]]:
    return [(node, reason) for node, reason in _skipped if not reason.startswith(ALLOWED_SKIP_REASONS)]


def pytest_sessionfinish(session, exitstatus) -> None:
    if skips_fail_the_run() and _not_allowed() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    bad = _not_allowed()
    if skips_fail_the_run() and bad:
        listed = "; ".join(f"{node} ({reason})" for node, reason in bad)
        terminalreporter.write_line(f"FAILED: {len(bad)} test(s) skipped, and in CI only the CUDA tests may skip: "
                                    f"{listed}", red=True, bold=True)
