#!/usr/bin/env bash
# The shipped glue's recipe, end to end on CPU: data → stages I–IV → assets → eval on held-out volumes.
# About four and a half hours on 2 cores (docs/training.md has each stage's time). Re-running resumes a cut-off stage from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
MEDPLIB=${MEDPLIB:-.venv/bin/medplib}
CFG=configs/training/default_glue
MEDPLIB=$MEDPLIB bash scripts/build_glue_data.sh glue-data glue-vqa glue-pairs glue-pairs4 glue-pairs4g glue-pairs4a
# stage3_head: stage III's seg projector and ground head trained on, alone, from the frozen LLM's <SEG>
# states (minutes: each state is computed once). stage2_more: the vision-language expert and region
# encoder trained on, on build/glue-vqa, with everything the grounding path reads frozen. stage2_align: the
# region encoder's projection fitted in closed form onto the structure names' embeddings, then the
# vision-language expert trained on to read it (region encoder frozen), on build/glue-pairs. stage2_closed: the
# vision-language expert again, on build/glue-pairs4 with each closed-answer record 3 times (the yes/no readout;
# docs/closed_answers.md). Stage 4 (the routers alone) starts from it. 4_realign: the region encoder's projection
# fitted again, each structure name weighing the same (align_region_balanced), then the routers 400 steps more
# (docs/region_alignment.md, "Names balanced").
# scripts/glue_report.py reads this line for the order.
for step in 1 2 3 3_head 2_more 2_align 2_closed 4 4_realign; do
    echo "== stage $step ($(date +%T))" >&2
    $MEDPLIB train --stage "${step%%_*}" --config "$CFG/stage$step.json" --no-progress | tee "build/glue-stage$step.json"
done
mkdir -p medplib_runtime/assets
cp build/glue-runs/stage4-realign/adapter.safetensors medplib_runtime/assets/medplib-lite-glue.safetensors
echo "== eval on held-out volumes ($(date +%T))" >&2
$MEDPLIB eval build/glue-data/test.json --max-new-tokens 32 --predictions build/glue-test.predictions.jsonl \
    --json > build/glue-test.eval.json
echo "== done ($(date +%T)): build/glue-test.eval.json" >&2
