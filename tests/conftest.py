"""Shared fixtures: where the real volumes are, and a real-weight runtime built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "pyradiomics"
SAMPLE_DATA = ROOT / "sample_data"


def _case(name: str) -> tuple[Path, Path]:
    image, label = SHARED_DATA / f"{name}_image.nrrd", SHARED_DATA / f"{name}_label.nrrd"
    if not image.exists():
        pytest.skip(f"real data not found: {image} (../shared/data beside the repo)")
    return image, label


@pytest.fixture(scope="session")
def brain1_paths() -> tuple[Path, Path]:
    return _case("brain1")


@pytest.fixture(scope="session")
def lung2_paths() -> tuple[Path, Path]:
    return _case("lung2")


@pytest.fixture(scope="session")
def breast1_paths() -> tuple[Path, Path]:
    return _case("breast1")


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
