#!/usr/bin/env bash
# The shipped glue's recipe, end to end on CPU: data → stages I–IV → assets → eval on held-out volumes.
# One to two hours on 2 cores. Re-running resumes a cut-off stage from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
MEDPLIB=${MEDPLIB:-.venv/bin/medplib}
CFG=configs/training/default_glue
$MEDPLIB build-data --cases configs/data/default_glue_cases.json --mni152 --phantoms 4 --seed 0 \
    --out build/glue-data --overwrite > build/glue-data.manifest.json
# stage3_head: stage III's seg projector and ground head trained on, alone, from the frozen LLM's <SEG>
# states (minutes: each state is computed once); stage 4 starts from it
for step in 1 2 3 3_head 4; do
    echo "== stage $step ($(date +%T))" >&2
    $MEDPLIB train --stage "${step%%_*}" --config "$CFG/stage$step.json" --no-progress | tee "build/glue-stage$step.json"
done
mkdir -p medplib_runtime/assets
cp build/glue-runs/stage4/adapter.safetensors medplib_runtime/assets/medplib-lite-glue.safetensors
echo "== eval on held-out volumes ($(date +%T))" >&2
$MEDPLIB eval build/glue-data/test.json --max-new-tokens 32 --predictions build/glue-test.predictions.jsonl \
    --json > build/glue-test.eval.json
echo "== done ($(date +%T)): build/glue-test.eval.json" >&2
