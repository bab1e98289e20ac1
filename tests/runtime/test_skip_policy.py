"""The CI skip policy (tests/_skip_policy.py): with CI or MEDPLIB_NO_SKIPS=1 a skip fails the run
unless it is one of the CUDA skips; without them a skip is just a skip. Each case runs pytest in a
subprocess on a tiny test file, with the policy loaded as a plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

TINY = '''
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="no CUDA GPU on this machine")
def test_needs_cuda():
    pass

def test_data_missing():
    pytest.skip("real data not found: /nowhere/x.nrrd")

@pytest.mark.xfail(reason="a known bug")
def test_known_bug():
    assert False
'''


def _pytest(folder: Path, body: str, **env: str) -> subprocess.CompletedProcess:
    (folder / "pytest.ini").write_text("[pytest]\n")  # its own rootdir: not the repository's options
    (folder / "test_tiny.py").write_text(body)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "MEDPLIB_NO_SKIPS")}
    clean["PYTHONPATH"] = os.pathsep.join([str(TESTS), clean.get("PYTHONPATH", "")])
    clean["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # no napari/Qt/Xvfb plugins: a second per run, not ten
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "_skip_policy", "-p", "no:cacheprovider", "-q",
                           "test_tiny.py"], cwd=folder, env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)


def test_without_ci_a_skip_is_just_a_skip(tmp_path):
    run = _pytest(tmp_path, TINY)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "only the CUDA tests may skip" not in run.stdout


@pytest.mark.parametrize("env", [{"CI": "true"}, {"MEDPLIB_NO_SKIPS": "1"}])
def test_in_ci_a_skip_other_than_cuda_fails_the_run_in_one_line(tmp_path, env):
    run = _pytest(tmp_path, TINY, **env)
    assert run.returncode == 1, run.stdout + run.stderr
    (line,) = [line for line in run.stdout.splitlines() if "only the CUDA tests may skip" in line]
    assert line.startswith("FAILED: 1 test(s) skipped")
    assert "test_tiny.py::test_data_missing (real data not found: /nowhere/x.nrrd)" in line
    assert "test_needs_cuda" not in line and "test_known_bug" not in line  # allowed skip; xfail is no skip


def test_in_ci_the_cuda_skips_alone_pass_and_failures_stay_failures(tmp_path):
    cuda_only = TINY.replace('    pytest.skip("real data not found: /nowhere/x.nrrd")', "    pass")
    assert _pytest(tmp_path, cuda_only, CI="true").returncode == 0
    failing = cuda_only + "\ndef test_fails():\n    assert False\n"
    assert _pytest(tmp_path, failing, CI="false", MEDPLIB_NO_SKIPS="1").returncode == 1
    assert _pytest(tmp_path, TINY, CI="false").returncode == 0  # CI=false is off
