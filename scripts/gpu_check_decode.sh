#!/usr/bin/env bash
# The decode-speed device check (issue #38), one short run on a CUDA machine from the repo root:
#   scripts/gpu_check_decode.sh
# `medplib bench --quick` on the GPU, then on the same machine's CPU, and the issue's two decode targets from
# those two tables: ≥ 150 tok/s on the GPU and ≥ 5× the CPU. The MoE's top-1 dispatch no longer reads the
# chosen expert back to the host on a GPU (moe.py, tested equal on the CPU); CUDA graphs are not built yet,
# so this check says how far that alone goes. Written on a CPU-only host: checked with `bash -n`, never run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUTDIR="${OUT:-$(mktemp -d)}"

echo "== device"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"

echo "== medplib bench --quick --device cuda"
"$PY" -m medplib_runtime.cli bench --quick --device cuda | tee "$OUTDIR/bench_cuda.txt"
echo "== medplib bench --quick (this machine's CPU)"
"$PY" -m medplib_runtime.cli bench --quick | tee "$OUTDIR/bench_cpu.txt"

"$PY" - "$OUTDIR/bench_cuda.txt" "$OUTDIR/bench_cpu.txt" <<'PYEOF'
import re, sys

def decode(path):
    for line in open(path):
        if line.startswith("LLM decode (MoE, greedy, KV cache)"):
            return float(re.split(r"\s{2,}", line.strip())[1])
    raise SystemExit(f"no decode row in {path}")

gpu, cpu = decode(sys.argv[1]), decode(sys.argv[2])
print(f"decode: GPU {gpu:.1f} tok/s, CPU {cpu:.1f} tok/s, ratio {gpu / cpu:.2f}x")
print(f"target >= 150 tok/s: {'met' if gpu >= 150 else 'missed'}; target >= 5x the CPU: {'met' if gpu >= 5 * cpu else 'missed'}")
PYEOF
