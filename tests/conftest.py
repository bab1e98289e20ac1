"""Shared fixtures: where the real volumes are, and a real-weight runtime built once per session.

The core real-data tests read the volumes shipped in ``sample_data/`` (brain1, and a crop of lung2
that holds the whole tumour), so a fresh clone runs them all. breast1 lives only in
``../shared/data`` beside the repo (or ``$MEDPLIB_SHARED_DATA``): a test that needs it fails with a
one-line message when it is missing, it is never skipped. In CI (``CI`` set, or
``MEDPLIB_NO_SKIPS=1``) any skip other than the CUDA ones fails the run (``_skip_policy``).
"""

from __future__ import annotations

import locale
import os
from pathlib import Path

import pytest
from _skip_policy import (  # noqa: F401  (hooks: registered because conftest.py defines them)
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_sessionstart,
    pytest_terminal_summary,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = ROOT / "sample_data"
SHARED_DATA = Path(os.environ.get("MEDPLIB_SHARED_DATA") or ROOT.parent / "shared" / "data") / "pyradiomics"


def _pair(folder: Path, stem: str, hint: str) -> tuple[Path, Path]:
    image, label = folder / f"{stem}_image.nrrd", folder / f"{stem}_label.nrrd"
    for path in (image, label):
        if not path.exists():
            pytest.fail(f"real data not found: {path} ({hint})", pytrace=False)
    return image, label


@pytest.fixture(autouse=True)
def _keep_the_locale():
    """SimpleITK's DICOM (GDCM) writer sets the C locale for the whole process, after which Python reads
    and decodes text as ASCII: a test that writes a DICOM series must not break the tests after it."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(scope="session")
def brain1_paths() -> tuple[Path, Path]:
    """brain1 (T1 MRI + enhancing lesion), shipped in sample_data/ (identical to ../shared/data's)."""
    return _pair(SAMPLE_DATA, "brain1", "shipped in the repository's sample_data/")


@pytest.fixture(scope="session")
def lung2_paths() -> tuple[Path, Path]:
    """The shipped crop of lung2 (chest CT + tumour): 36×256×256, the full volume's
    [5:41, 237:493, 233:489] (z, y, x); see sample_data/PROVENANCE.md."""
    return _pair(SAMPLE_DATA, "lung2_crop", "shipped in the repository's sample_data/")


@pytest.fixture(scope="session")
def breast1_paths() -> tuple[Path, Path]:
    """breast1 is not shipped: it needs ../shared/data beside the repo (or $MEDPLIB_SHARED_DATA)."""
    return _pair(SHARED_DATA, "breast1", "needs ../shared/data beside the repo, or MEDPLIB_SHARED_DATA")


@pytest.fixture(scope="session")
def local_runtime():
    """One real LocalRuntime (LiteMedSAM + SmolLM2 on demand) shared by the slow tests."""
    from medplib_runtime.local import LocalRuntime

    runtime = LocalRuntime(preset="medplib-lite")
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def remote_server():
    """One real `medplib serve` (model fully loaded) on a loopback port for the whole session."""
    from _server import ServerProcess

    server = ServerProcess(["--preload", "all"]).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def remote_runtime(remote_server):
    from medplib_runtime.remote import RemoteRuntime

    runtime = RemoteRuntime(remote_server.url)
    yield runtime
    runtime.close()


NAPARI_FIXTURES = {"make_napari_viewer", "qtbot", "make_napari_viewer_proxy"}


def pytest_collection_modifyitems(config, items) -> None:
    """Tiers by cost: ``napari`` for tests that build a viewer or drive Qt, ``process`` (set per module) for
    suites made of process start-ups (the bad-input CLI matrix, live servers under attack), ``unit`` for the
    rest that load no weights (``pytest -m unit`` is the inner loop)."""
    for item in items:
        if NAPARI_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.napari)
        if not any(item.get_closest_marker(tier) for tier in ("weights", "napari", "process")):
            item.add_marker(pytest.mark.unit)
