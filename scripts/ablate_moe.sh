#!/usr/bin/env bash
# Ablations like MedPLIB's Tables 3–4, small: stage IV variants from the same stage-III adapter
# (dense FFN vs MoE, top-1 vs top-2, training capacity factor 1 / 1.5 / 2), each evaluated on a
# seeded sample of the validation volumes' records. Needs scripts/train_default_glue.sh's build/glue-runs/stage3. Prints a table.
# Usage: bash scripts/ablate_moe.sh [RUN ...]   (RUN: a name in configs/training/ablation; none = all)
set -euo pipefail
cd "$(dirname "$0")/.."
MEDPLIB=${MEDPLIB:-.venv/bin/medplib}
SPLIT=${SPLIT:-val}
N=${N:-48}  # records per evaluation: a seeded random sample of the split
.venv/bin/python - "$SPLIT" "$N" <<'PY'
import json, random, sys
split, n = sys.argv[1], int(sys.argv[2])
records = json.load(open(f"build/glue-data/{split}.json"))
random.Random(0).shuffle(records)
json.dump(records[:n], open(f"build/glue-data/{split}-ablation.json", "w"))
PY
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=($(ls configs/training/ablation | sed "s/\.json$//"))
for name in "${runs[@]}"; do
    cfg=configs/training/ablation/$name.json
    echo "== $name ($(date +%T))" >&2
    $MEDPLIB train --stage 4 --config "$cfg" --no-progress > "build/ablation-$name.train.json"
    $MEDPLIB eval build/glue-data/$SPLIT-ablation.json --glue "build/ablation/$name/adapter.safetensors" --max-new-tokens 16 \
        --predictions "build/ablation/$name/$SPLIT.predictions.jsonl" --json > "build/ablation/$name/$SPLIT.eval.json"
done
.venv/bin/python scripts/ablation_table.py build/ablation "$SPLIT"
