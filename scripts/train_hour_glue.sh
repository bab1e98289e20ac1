#!/usr/bin/env bash
# The one-hour recipe (docs/training.md, "The one-hour recipe"): the shipped recipe's data and losses in
# five runs instead of its eight (one stage-II run, not four), for a researcher's laptop: data → stages I,
# II, III, III head-only, IV → eval on held-out volumes, in build/hour-runs (41–81 min on 2 cores). It writes no asset: `medplib eval --glue` reads its
# adapter. Re-running resumes a cut-off stage from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
MEDPLIB=${MEDPLIB:-.venv/bin/medplib}
CFG=configs/training/hour_glue
mkdir -p build
echo "== data ($(date +%T))" >&2
B="--cases configs/data/default_glue_cases.json --mni152 --phantoms 4 --seed 0"
$MEDPLIB build-data $B --out build/glue-data --overwrite > build/glue-data.manifest.json
# stage II's: region questions on points, boxes and free-form regions, "is the region the X?" in pairs,
# half the region questions in the chat's form (the region after the question)
P4="$B --r-per-label 4 --r-is-pairs 1 --r-is-modes point,box,freeform --c-per-slice 6"
$MEDPLIB build-data $P4 --region-after 0.5 --out build/glue-pairs4 --overwrite > build/glue-pairs4.manifest.json
# stage IV's (the routers'): grounding questions also asked with a region after them, and every region
# question once more in the chat's form
$MEDPLIB build-data $P4 --g-region 0.5 --region-after 0.5 --out build/glue-pairs4g --overwrite > build/glue-pairs4g.manifest.json
$MEDPLIB build-data $P4 --g-region 0.5 --region-after 1.0 --out build/glue-pairs4a --overwrite > build/glue-pairs4a.manifest.json
# stage 2 here: the region encoder's projection fitted to the names first (align_region), closed answers x3
for step in 1 2 3 3_head 4; do
    echo "== stage $step ($(date +%T))" >&2
    $MEDPLIB train --stage "${step%%_*}" --config "$CFG/stage$step.json" --no-progress | tee "build/hour-stage$step.json"
done
echo "== eval on held-out volumes ($(date +%T))" >&2
$MEDPLIB eval build/glue-data/test.json --glue build/hour-runs/stage4/adapter.safetensors --max-new-tokens 32 \
    --predictions build/hour-test.predictions.jsonl --json > build/hour-test.eval.json
echo "== done ($(date +%T)): build/hour-test.eval.json" >&2
