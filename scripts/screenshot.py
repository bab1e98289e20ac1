"""docs/screenshot.png from a real session: the launch acceptance test (tests/plugin/test_launch_acceptance.py)
starts `medplib-napari` as the README says, draws a box with real mouse events, presses Segment, asks
"Segment the lesion." in the chat and adds its mask; the screenshot is taken there. Nothing is staged.

Run: .venv/bin/python scripts/screenshot.py   (pytest-xvfb supplies a 1280×800 virtual screen)
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    env = {**os.environ, "MEDPLIB_SCREENSHOT": str(ROOT / "docs" / "screenshot.png")}
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "tests/plugin/test_launch_acceptance.py"], cwd=ROOT,
                             env=env))
