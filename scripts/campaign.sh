#!/usr/bin/env bash
# The campaign: the studies whose records are committed under docs/results/, continued wherever
# vitmim is worked on. Every finished run is recorded there and never run again, on any machine;
# a run cut off when the machine stops runs again (or resumes, where its run folder survived).
# Start it first, in the background, one thread per job (two jobs: the two cores of the
# development machine); commit docs/results/<study>/ before stopping:
#
#   nohup scripts/campaign.sh /path/to/tiny-imagenet-200.zip > campaign.log 2>&1 &
#
# VITMIM: the vitmim command to use (default: vitmim on PATH); JOBS: runs at once (default 2);
# UNTIL=HH:MM: start only the study's runs and search trials estimated to end by then (when the
# machine stops); the search starts once every run of the study is recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: scripts/campaign.sh TINY_IMAGENET_ZIP}
VITMIM=${VITMIM:-vitmim}
export OMP_NUM_THREADS=1  # the grid gives each job its share of the cores; this keeps it at one
JOBS=${JOBS:-2}
RECIPE=docs/results/scratch_search/scratch_recipe.yaml
# the study's pre-trained and same-recipe scratch arms, then the search for scratch's own recipe
# (done once its budget is spent), then the study's tuned-scratch arm with that recipe
UNTIL_ARGS=()
if [ -n "${UNTIL:-}" ]; then UNTIL_ARGS=(--until "$UNTIL"); fi
"$VITMIM" grid configs/grids/unseen_subsets.yaml --data "$DATA" --jobs "$JOBS" "${UNTIL_ARGS[@]}"
if ! "$VITMIM" grid configs/grids/unseen_subsets.yaml --data "$DATA" --dry-run | tail -n 1 \
        | grep -q ", 0 to do$"; then
    exit 0  # runs were left for a later session
fi
# the search writes the recipe once its whole budget is spent ("wrote ..."; with UNTIL it may
# stop before, and the tuned arm waits for a later session)
said=$("$VITMIM" search configs/search/scratch.yaml --data "$DATA" --jobs "$JOBS" \
    "${UNTIL_ARGS[@]}" | tee /dev/stderr)
grep -q "^wrote " <<< "$said" || exit 0
"$VITMIM" grid configs/grids/unseen_subsets.yaml --data "$DATA" --jobs "$JOBS" -c "$RECIPE" \
    "${UNTIL_ARGS[@]}"
