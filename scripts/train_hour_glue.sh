#!/usr/bin/env bash
# The one-hour recipe (docs/training.md, "The one-hour recipe"): the shipped recipe's losses in five runs
# instead of its nine (one stage-II run, not four, on the data of two; no second stage IV), for a researcher's laptop: data →
# stages I, II, III, III head-only, IV → eval on held-out volumes, in build/hour-runs (66 min on a 2-core AMD
# EPYC). It writes no asset: `medplib eval --glue` reads its adapter. Re-running resumes a cut-off stage from
# its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
MEDPLIB=${MEDPLIB:-.venv/bin/medplib}
CFG=configs/training/hour_glue
mkdir -p build
MEDPLIB=$MEDPLIB bash scripts/build_glue_data.sh glue-data glue-vqa glue-pairs4 glue-pairs4g glue-pairs4a
# stage 2 here: on glue-pairs4 and glue-vqa together, the region encoder's projection fitted to the names first
# (align_region), closed answers x3
for step in 1 2 3 3_head 4; do
    echo "== stage $step ($(date +%T))" >&2
    $MEDPLIB train --stage "${step%%_*}" --config "$CFG/stage$step.json" --no-progress | tee "build/hour-stage$step.json"
done
echo "== eval on held-out volumes ($(date +%T))" >&2
$MEDPLIB eval build/glue-data/test.json --glue build/hour-runs/stage4/adapter.safetensors --max-new-tokens 32 \
    --predictions build/hour-test.predictions.jsonl --json > build/hour-test.eval.json
echo "== done ($(date +%T)): build/hour-test.eval.json" >&2
