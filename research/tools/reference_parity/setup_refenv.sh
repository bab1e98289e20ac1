#!/usr/bin/env bash
# The reference environment for build_fixture.py: MedPLIB's source at a pinned commit, a venv with the
# versions it pins where they install on CPU, and two stand-ins (DeepSpeed's MoE layer, torchvision's
# unused imports). Nothing goes into the project's own venv.
#   research/tools/reference_parity/setup_refenv.sh [MEDPLIB_GIT_DIR]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
MEDPLIB_GIT="${1:-/work/.mirror/ShawnHuang497+MedPLIB/repo}"  # a clone (or bare mirror) of ShawnHuang497/MedPLIB
COMMIT=5ab54bcd72140a5e4aade727d713a46760da49e7
SRC=/tmp/medplib_ref SHIM=/tmp/refshim VENV=/tmp/refenv

rm -rf "$SRC" && mkdir -p "$SRC"
for f in $(git -C "$MEDPLIB_GIT" ls-tree -r "$COMMIT" --name-only -- model utils | grep '\.py$'); do
  mkdir -p "$SRC/$(dirname "$f")"
  git -C "$MEDPLIB_GIT" show "$COMMIT:$f" > "$SRC/$f"
done

echo "$COMMIT" > "$SRC/MEDPLIB_COMMIT"  # build_fixture.py records it in reference_outputs.json

rm -rf "$SHIM" && mkdir -p "$SHIM/deepspeed/moe" "$SHIM/torchvision/transforms" "$SHIM/torchvision/ops"
touch "$SHIM/deepspeed/__init__.py" "$SHIM/deepspeed/moe/__init__.py"
cp "$HERE/deepspeed_moe_shim.py" "$SHIM/deepspeed/moe/layer.py"
echo "# stub: MedPLIB's SAM utilities import these at module level; the fixture never calls them" \
  > "$SHIM/torchvision/__init__.py"
touch "$SHIM/torchvision/transforms/__init__.py" "$SHIM/torchvision/ops/__init__.py"
printf 'def resize(*a, **k):\n    raise NotImplementedError\n\n\ndef to_pil_image(*a, **k):\n    raise NotImplementedError\n' \
  > "$SHIM/torchvision/transforms/functional.py"
printf 'def batched_nms(*a, **k):\n    raise NotImplementedError\n\n\ndef box_area(*a, **k):\n    raise NotImplementedError\n' \
  > "$SHIM/torchvision/ops/boxes.py"

# MedPLIB pins torch 2.1.2+cu118 / transformers 4.31.0 / tokenizers 0.13.3 / deepspeed 0.13.1; the CPU
# torch wheel at hand is 2.13.0 (the project's), the rest as pinned; DeepSpeed is the shim above.
uv venv "$VENV" --python 3.11 -q --clear
uv pip install --python "$VENV/bin/python" --find-links /opt/wheels \
  torch==2.13.0+cpu transformers==4.31.0 tokenizers==0.13.3 accelerate==0.26.1 safetensors einops sentencepiece numpy pillow
echo "ready: PYTHONPATH=$SHIM:$SRC $VENV/bin/python $HERE/build_fixture.py --out tests/modeling/fixtures/medplib7b_tiny"
