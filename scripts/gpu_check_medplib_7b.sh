#!/usr/bin/env bash
# The medplib-7b device check (issue #37), one short run on a CUDA machine from the repo root:
#   scripts/gpu_check_medplib_7b.sh [WEIGHTS_DIR]
# 1. the reference-parity test on CUDA: fp32 (strict bounds, TF32 off) and bf16 (looser bounds);
# 2. `medplib serve --preset medplib-7b --weights DIR --device cuda` (default DIR: the tiny fixture), one
#    segment and one ask over HTTP, with latency and peak GPU memory.
# Step 2 needs `--weights` on `medplib serve`, which is not wired yet (released_checkpoint.py is reached
# through build_medplib(weights=DIR)); the script says so and stops there instead of failing obscurely.
# Written on a CPU-only host: checked with `bash -n`, never run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
WEIGHTS="${1:-tests/modeling/fixtures/medplib7b_tiny/checkpoint}"
PORT="${MEDPLIB_CHECK_PORT:-8799}"

echo "== device"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true

echo "== parity on CUDA, fp32 then bf16"
for dtype in fp32 bf16; do
  SECONDS=0
  MEDPLIB_PARITY_DEVICE=cuda MEDPLIB_PARITY_DTYPE=$dtype \
    "$PY" -m pytest tests/modeling/test_reference_parity.py -q -p no:cacheprovider -m reference_parity
  echo "parity $dtype: ${SECONDS} s (pytest, model load included)"
done

echo "== serve medplib-7b from $WEIGHTS"
if ! "$PY" -m medplib_runtime.cli serve --help 2>/dev/null | grep -q -- "--weights"; then
  echo "STOP: 'medplib serve' has no --weights option yet (wire it to build_medplib(weights=DIR)); parity above is the result"
  exit 3
fi
LOG=$(mktemp)
"$PY" -m medplib_runtime.cli serve --preset medplib-7b --weights "$WEIGHTS" --device cuda --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 1
done

"$PY" - "$PORT" <<'PYEOF'
import sys
import time

import numpy as np

from medplib_runtime.remote import RemoteRuntime
from medplib_runtime.schemas import AskRequest, Box, Prompt, SegmentRequest, SliceRef

runtime = RemoteRuntime(f"http://127.0.0.1:{sys.argv[1]}")
image = np.random.default_rng(0).random((256, 256)).astype(np.float32)
key = runtime.set_image(image)
t0 = time.perf_counter()
seg = runtime.segment(SegmentRequest(key, SliceRef(), Prompt(box=Box(60, 60, 180, 180))))
t1 = time.perf_counter()
answer = runtime.ask(AskRequest(key, SliceRef(), "segment the lesion", max_new_tokens=16))
t2 = time.perf_counter()
print(f"segment: {1000 * (t1 - t0):.0f} ms, mask pixels {int(np.asarray(seg.mask).sum())}")
print(f"ask: {1000 * (t2 - t1):.0f} ms, {len(answer.text)} chars, {len(answer.masks)} masks")
PYEOF
nvidia-smi --query-gpu=memory.used --format=csv,noheader || true
grep -i -E "memory|peak" "$LOG" || true
