#!/usr/bin/env bash
# The medplib-7b device check (issue #37), one short run on a CUDA machine from the repo root:
#   scripts/gpu_check_medplib_7b.sh [WEIGHTS_DIR]
# 1. the reference-parity test on CUDA: fp32 (strict bounds, TF32 off) and bf16 (looser bounds);
# 2. `medplib serve --preset medplib-7b --weights DIR --device cuda` (bf16; default DIR: the tiny fixture): one
#    segment and two asks over HTTP, compared with an in-process LocalRuntime on the same GPU (masks and
#    text), with latency, the memory estimate the server printed and the CUDA peak after loading;
# 3. with bitsandbytes installed: the same server with --load-in 8bit, then 4bit (start line + one ask).
# Written on a CPU-only host: checked with `bash -n`, never run. MEDPLIB_CHECK_DTYPE=fp32 serves fp32 instead.
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

DTYPE="${MEDPLIB_CHECK_DTYPE:-bf16}"

start_server() {  # start_server EXTRA_FLAGS...: serve medplib-7b in the background, wait for /health
  LOG=$(mktemp)
  "$PY" -m medplib_runtime.cli serve --preset medplib-7b --weights "$WEIGHTS" --device cuda --port "$PORT" "$@" \
    >"$LOG" 2>&1 &
  SERVER=$!
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && { cat "$LOG"; return 0; }
    kill -0 "$SERVER" 2>/dev/null || { cat "$LOG"; return 1; }
    sleep 1
  done
  cat "$LOG"; return 1
}
stop_server() {
  [ -n "${SERVER:-}" ] && { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
  rm -f "${LOG:-}"; SERVER=""
}
trap 'stop_server' EXIT

echo "== serve medplib-7b from $WEIGHTS on cuda in $DTYPE"
start_server --dtype "$DTYPE"
"$PY" - "$PORT" "$WEIGHTS" "$DTYPE" <<'PYEOF'
import sys
import time

import numpy as np

from medplib_runtime.local import LocalRuntime
from medplib_runtime.remote import RemoteRuntime
from medplib_runtime.schemas import AskRequest, Box, Prompt, SegmentRequest, SliceRef

port, weights, dtype = sys.argv[1:4]
remote = RemoteRuntime(f"http://127.0.0.1:{port}")
print("info:", [(p.name, p.source) for p in remote.info().parts])
image = np.random.default_rng(0).random((256, 256)).astype(np.float32)
key = remote.set_image(image)
seg = SegmentRequest(key, SliceRef(), Prompt(box=Box(60, 60, 180, 180)))
asks = (AskRequest(key, SliceRef(), "segment the lesion", max_new_tokens=16),
        AskRequest(key, SliceRef(), "what is in the region ?", region=Prompt(box=Box(40, 40, 200, 200)),
                   max_new_tokens=16))
t0 = time.perf_counter()
r_seg = remote.segment(seg)
t1 = time.perf_counter()
r_asks = [remote.ask(a) for a in asks]
t2 = time.perf_counter()
print(f"remote segment: {1000 * (t1 - t0):.0f} ms, mask pixels {int(np.asarray(r_seg.mask).sum())}")
print(f"remote asks: {1000 * (t2 - t1):.0f} ms for 2; texts {[a.text for a in r_asks]}; masks {[len(a.masks) for a in r_asks]}")
local = LocalRuntime("medplib-7b", weights=weights, device="cuda", dtype=dtype)  # a second copy: small models only
assert local.set_image(image) == key
l_seg = local.segment(seg)
l_asks = [local.ask(a) for a in asks]
print("segment mask identical to in-process:", bool(np.array_equal(l_seg.mask, r_seg.mask)))
print("answers identical to in-process:", [a.text == b.text for a, b in zip(l_asks, r_asks)])
PYEOF
nvidia-smi --query-gpu=memory.used --format=csv,noheader || true
stop_server

if "$PY" -c "import bitsandbytes" 2>/dev/null; then
  for bits in 8bit 4bit; do
    echo "== serve medplib-7b with --load-in $bits"
    start_server --load-in "$bits"
    "$PY" - "$PORT" <<'PYEOF'
import sys

import numpy as np

from medplib_runtime.remote import RemoteRuntime
from medplib_runtime.schemas import AskRequest, SliceRef

remote = RemoteRuntime(f"http://127.0.0.1:{sys.argv[1]}")
key = remote.set_image(np.random.default_rng(0).random((256, 256)).astype(np.float32))
print("ask:", remote.ask(AskRequest(key, SliceRef(), "segment the lesion", max_new_tokens=16)).text)
PYEOF
    stop_server
  done
else
  echo "== bitsandbytes not installed: --load-in 8bit/4bit not checked (the server refuses them in one line)"
fi
