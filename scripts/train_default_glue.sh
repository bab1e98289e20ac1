#!/usr/bin/env bash
# The shipped glue's recipe, end to end on CPU: data → stages I–IV → assets → eval on held-out volumes.
# About four hours on 2 cores (docs/training.md has each stage's time). Re-running resumes a cut-off stage from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
MEDPLIB=${MEDPLIB:-.venv/bin/medplib}
CFG=configs/training/default_glue
$MEDPLIB build-data --cases configs/data/default_glue_cases.json --mni152 --phantoms 4 --seed 0 \
    --out build/glue-data --overwrite > build/glue-data.manifest.json
# the same volumes and split with more region and complex questions, balanced "is it the X?" answers:
# stage2_more's data (the stages before it keep the first set, so their runs are unchanged)
$MEDPLIB build-data --cases configs/data/default_glue_cases.json --mni152 --phantoms 4 --seed 0 \
    --r-per-label 4 --r-is-per-label 1 --c-per-slice 6 --out build/glue-vqa --overwrite > build/glue-vqa.manifest.json
# and again with "is the region the X?" asked in pairs (the region's own name: yes; another's: no): stage2_align's
$MEDPLIB build-data --cases configs/data/default_glue_cases.json --mni152 --phantoms 4 --seed 0 \
    --r-per-label 4 --r-is-pairs 1 --c-per-slice 6 --out build/glue-pairs --overwrite > build/glue-pairs.manifest.json
# and with the pairs on points and boxes too (a napari user's regions), half the region questions written
# as the chat sends them (the region token after the question): stage2_closed's and stage 4's
$MEDPLIB build-data --cases configs/data/default_glue_cases.json --mni152 --phantoms 4 --seed 0 \
    --r-per-label 4 --r-is-pairs 1 --r-is-modes point,box,freeform --region-after 0.5 --c-per-slice 6 \
    --out build/glue-pairs4 --overwrite > build/glue-pairs4.manifest.json
# stage 4's (the routers'): pairs4 with half the single-structure grounding questions asked again with a
# region on the structure after them (the chat's "Segment the lesion." with a box), and a copy with every
# region question in the chat's form, so "Name the structure in the region. <region>" is no rarer than
# "Outline the lesion. <region>" (docs/training.md, "Routing a question with a region after it")
F4="--cases configs/data/default_glue_cases.json --mni152 --phantoms 4 --seed 0 --r-per-label 4 --r-is-pairs 1
    --r-is-modes point,box,freeform --c-per-slice 6 --g-region 0.5"
$MEDPLIB build-data $F4 --region-after 0.5 --out build/glue-pairs4g --overwrite > build/glue-pairs4g.manifest.json
$MEDPLIB build-data $F4 --region-after 1.0 --out build/glue-pairs4a --overwrite > build/glue-pairs4a.manifest.json
# stage3_head: stage III's seg projector and ground head trained on, alone, from the frozen LLM's <SEG>
# states (minutes: each state is computed once). stage2_more: the vision-language expert and region
# encoder trained on, on build/glue-vqa, with everything the grounding path reads frozen. stage2_align: the
# region encoder's projection fitted in closed form onto the structure names' embeddings, then the
# vision-language expert trained on to read it (region encoder frozen), on build/glue-pairs. stage2_closed: the
# vision-language expert again, on build/glue-pairs4 with each closed-answer record 3 times (the yes/no readout;
# docs/closed_answers.md). Stage 4 (the routers alone) starts from it.
# scripts/glue_report.py reads this line for the order.
for step in 1 2 3 3_head 2_more 2_align 2_closed 4; do
    echo "== stage $step ($(date +%T))" >&2
    $MEDPLIB train --stage "${step%%_*}" --config "$CFG/stage$step.json" --no-progress | tee "build/glue-stage$step.json"
done
mkdir -p medplib_runtime/assets
cp build/glue-runs/stage4-after/adapter.safetensors medplib_runtime/assets/medplib-lite-glue.safetensors
echo "== eval on held-out volumes ($(date +%T))" >&2
$MEDPLIB eval build/glue-data/test.json --max-new-tokens 32 --predictions build/glue-test.predictions.jsonl \
    --json > build/glue-test.eval.json
echo "== done ($(date +%T)): build/glue-test.eval.json" >&2
