#!/usr/bin/env bash
# The glue recipes' data sets, each defined once: `bash scripts/build_glue_data.sh SET...` writes
# build/SET (+ build/SET.manifest.json) for each SET named, every one from the same volumes with the same
# seeded split by volume (docs/training.md). scripts/train_default_glue.sh and scripts/train_hour_glue.sh
# call it with the sets their configs read (tests/test_training_config.py checks that they do).
set -euo pipefail
cd "$(dirname "$0")/.."
MEDPLIB=${MEDPLIB:-.venv/bin/medplib}
B="--cases configs/data/default_glue_cases.json --mni152 --phantoms 4 --seed 0"
P4="$B --r-per-label 4 --r-is-pairs 1 --r-is-modes point,box,freeform --c-per-slice 6"
if [ $# -eq 0 ]; then
    echo "build_glue_data.sh: name the sets to build (glue-data glue-vqa glue-pairs glue-pairs4 glue-pairs4g glue-pairs4a)" >&2
    exit 2
fi
mkdir -p build
for set in "$@"; do
    case "$set" in
        # the first set: stages I and III read it; its test split is the held-out eval
        glue-data) flags="$B" ;;
        # more region and complex questions, balanced "is it the X?" answers
        glue-vqa) flags="$B --r-per-label 4 --r-is-per-label 1 --c-per-slice 6" ;;
        # "is the region the X?" asked in pairs (the region's own name: yes; another's: no)
        glue-pairs) flags="$B --r-per-label 4 --r-is-pairs 1 --c-per-slice 6" ;;
        # the pairs on points and boxes too (a napari user's regions), half the region questions written as the
        # chat sends them (the region token after the question)
        glue-pairs4) flags="$P4 --region-after 0.5" ;;
        # the routers' (stage IV): pairs4 with half the single-structure grounding questions asked again with a
        # region on the structure after them (the chat's "Segment the lesion." with a box), and a copy with
        # every region question in the chat's form, so "Name the structure in the region. <region>" is no rarer
        # than "Outline the lesion. <region>" (docs/training.md, "Routing a question with a region after it")
        glue-pairs4g) flags="$P4 --g-region 0.5 --region-after 0.5" ;;
        glue-pairs4a) flags="$P4 --g-region 0.5 --region-after 1.0" ;;
        *) echo "build_glue_data.sh: unknown set '$set' (glue-data glue-vqa glue-pairs glue-pairs4 glue-pairs4g glue-pairs4a)" >&2
           exit 2 ;;
    esac
    echo "== data $set ($(date +%T))" >&2
    # shellcheck disable=SC2086  # the flags are words
    $MEDPLIB build-data $flags --out "build/$set" --overwrite > "build/$set.manifest.json"
done
