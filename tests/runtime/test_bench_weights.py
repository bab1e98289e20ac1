"""Issue #37: `medplib bench` takes medplib-7b's loading options (--weights, --dtype, --load-in, --allow-cpu) as
every other model command does: on the tiny reference checkpoint (tests/modeling/fixtures/medplib7b_tiny, the
real layout at toy sizes) it prints the table, the rows that only apply to medplib-lite listed as skipped; its bad
starts are the other commands' one line, exit 2, before anything loads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # starts `medplib bench` processes (conftest's tiers)

WEIGHTS = Path(__file__).parents[1] / "modeling" / "fixtures" / "medplib7b_tiny" / "checkpoint"
MEDPLIB = str(Path(sys.executable).parent / "medplib")
SEVEN_B = ["--preset", "medplib-7b", "--weights", str(WEIGHTS)]


def _bench(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEDPLIB_DEBUG"}  # errors as a user sees them
    return subprocess.run([MEDPLIB, "bench", *argv], capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env=env)


def _row(stdout: str, name: str) -> list[str]:
    """The cells after the row's name (its start given): the name is padded with two spaces or more."""
    line = next((line for line in stdout.splitlines() if line.startswith(name)), None)
    assert line is not None, f"no row {name!r} in:\n{stdout}"
    return re.split(r"\s{2,}", line.strip())[1:]


def test_the_table_on_the_reference_checkpoint():
    out = _bench(*SEVEN_B, "--allow-cpu", "--quick")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    header = out.stdout.splitlines()[0]
    assert header.startswith("# medplib bench") and "medplib-7b from" in header and "(fp32)" in header
    for name in ("load medplib-7b checkpoint", "slice embedding", "box → mask, cached slice",
                 "ask, 16 new tokens", "ask, 1 new token", "LLM prefill 200 tokens (MoE)",
                 "LLM decode (MoE, greedy, KV cache)", "decode step, MoE top-1 routed", "peak RSS"):
        median = _row(out.stdout, name)[0]
        assert float(median) > 0, (name, out.stdout)  # measured, not NaN
    # measures of medplib-lite's structure: listed, not measured and not a crash
    for name in ("import the LLM modules", "MedPLIB LLM + glue load", "LLM decode per weight precision"):
        assert "skipped:" in " ".join(_row(out.stdout, name)), out.stdout
    assert "int8 weights" not in out.stdout


def _refused(*argv: str) -> str:
    out = _bench(*argv, "--quick", timeout=120)
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip()
    assert line.startswith("medplib: error: ") and "\n" not in line and "Traceback" not in line, out.stderr
    assert out.stdout == "", "refused before the table's header"
    return line


def test_weights_without_the_7b_preset():
    assert "--weights applies to --preset medplib-7b" in _refused("--weights", str(WEIGHTS))


def test_the_7b_preset_without_weights():
    assert "medplib-7b needs --weights DIR" in _refused("--preset", "medplib-7b")


def test_a_missing_folder(tmp_path):
    line = _refused("--preset", "medplib-7b", "--weights", str(tmp_path / "absent"), "--allow-cpu")
    assert "absent: not a folder" in line


@pytest.mark.parametrize("remote", [(), ("--remote",)], ids=["local", "remote"])
def test_cpu_without_allow_cpu_states_the_speed(remote):
    line = _refused(*SEVEN_B, *remote)  # --remote: refused before a server is started
    assert "on the CPU reads ≈" in line and "tokens/s" in line and "--allow-cpu" in line


def test_model_options_with_a_remote_url_are_refused():
    """A server at a URL runs its own model: --weights would change only the local side of the comparison."""
    line = _refused(*SEVEN_B, "--allow-cpu", "--remote", "http://127.0.0.1:9")
    assert "--weights with --remote URL" in line and "without a URL" in line
