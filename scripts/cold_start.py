"""Cold-start time of `medplib ask`: the CLI run N times as a fresh process, median and max wall time,
with the in-process breakdown each run prints (`--timings`).

    .venv/bin/python scripts/cold_start.py                 # brain1 slice 16, 3 runs
    .venv/bin/python scripts/cold_start.py -n 5 --remote http://127.0.0.1:8765

The converted LLM must be in the cache already (the first run ever converts the GGUF: run one ask
first). The host's load average is printed with each run: on a shared machine it explains outliers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medplib_runtime.cli.cold_start import PREFIX, STAGES, parse_line  # noqa: E402

COLUMNS = STAGES + ("rest", "total")


def _medplib() -> list[str]:
    exe = Path(sys.executable).with_name("medplib")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "medplib_runtime.cli"]


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run_once(cmd: list[str]) -> tuple[float, dict[str, float], str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"medplib ask failed ({done.returncode}):\n{done.stderr}")
    line = next((ln for ln in done.stderr.splitlines() if ln.startswith(PREFIX)), None)
    return wall, (parse_line(line) if line else {}), done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--runs", type=int, default=3)
    p.add_argument("--image", default="sample_data/brain1_image.nrrd")
    p.add_argument("--slice", type=int, default=16)
    p.add_argument("--question", default="What is the modality of this image?")
    p.add_argument("--remote", default=None, metavar="URL", help="ask a running `medplib serve` instead")
    args = p.parse_args(argv)
    cmd = _medplib() + ["ask", args.image, "--slice", str(args.slice), args.question, "--timings"]
    if args.remote:
        cmd += ["--remote", args.remote]
    print(f"# {' '.join(cmd[1:])}  ({os.cpu_count()} CPUs)")
    header = ["run", "wall s", "load avg (1/5/15 min)"] + list(COLUMNS)
    print(" | ".join(header))
    walls: list[float] = []
    answers: set[str] = set()
    for i in range(args.runs):
        load = _load()
        wall, parts, answer = run_once(cmd)
        walls.append(wall)
        answers.add(answer)
        cells = [f"{parts[c]:.2f}" if c in parts else "-" for c in COLUMNS]
        print(" | ".join([str(i + 1), f"{wall:.2f}", load] + cells))
    print(f"median {statistics.median(walls):.2f} s, max {max(walls):.2f} s over {len(walls)} cold runs"
          f" (answer{'s differ: ' if len(answers) > 1 else ': '}{' / '.join(sorted(answers))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
