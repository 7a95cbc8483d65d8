#!/usr/bin/env bash
# The campaign's runs on one GPU, within one call of the device machine: the runs of
# configs/grids/unseen_subsets.yaml that docs/results/unseen_subsets/ does not record yet (with
# the tuned scratch arm once docs/results/scratch_search/scratch_recipe.yaml exists), JOBS
# of them sharing the GPU (default 4), cut at the deadline. The records of the runs it finished
# come back as $OUT/records.tgz: unpack it in docs/results/ here and commit, as for the CPU's
# records (a record names the machine it ran on; the grid skips a recorded run on any machine).
#
#   here, before:  ../shared/tools/device-data.sh  (the parts of the archive, one per call)
#   on the GPU:    bash scripts/gpu_campaign.sh [RUNS_DIR]       (default runs/unseen_subsets)
#   here, after:   tar -xzf /work/.device/.../records.tgz -C docs/results
#
# BUDGET (s, default 570) is the deadline of the whole script; run it again on the same
# machine to go on (a cut run resumes from its checkpoint there). The recipe search is not run
# here (the GPU machine lacks optuna): it runs with scripts/campaign.sh on a CPU.
# Dry run on a CPU:  DRY=1 VITMIM_DATA=/path/tiny-imagenet-200.zip bash scripts/gpu_campaign.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # the jobs' CPU side: 16 cores shared by 4 jobs
DEADLINE=$((SECONDS + ${BUDGET:-570}))
SPEC=${SPEC:-configs/grids/unseen_subsets.yaml}
STUDY=${STUDY:-docs/results/unseen_subsets}  # the spec's records: folder
RECIPE=docs/results/scratch_search/scratch_recipe.yaml
RUNS=$(mkdir -p "${1:-runs/unseen_subsets}" && cd "${1:-runs/unseen_subsets}" && pwd)
RESULTS=${OUT:-$RUNS/out}
mkdir -p "$RESULTS"
left() { echo $((DEADLINE - SECONDS > 1 ? DEADLINE - SECONDS : 1)); }
say() { echo "$(date +%T) gpu_campaign (${SECONDS} s): $*"; }

source scripts/device_prelude.sh
ARGS=(grid "$SPEC" --data "$VITMIM_DATA" --out "$RUNS" --jobs "${JOBS:-4}")
[[ -f $RECIPE ]] && ARGS+=(-c "$RECIPE")
if [[ ${DRY:-0} == 1 ]]; then
    bash -n "$0" && $PY -m vitmim.cli "${ARGS[@]}" --dry-run
    exit $?
fi
install_vitmim "$RESULTS"

# the grid, stopped like Ctrl-C 30 s before the deadline (its jobs keep their checkpoints);
# every run it finishes is recorded in $STUDY as it ends
stamp=$(mktemp)
say "grid: $(($(left) - 30)) s left for it"
timeout -s TERM -k 20 "$(($(left) > 60 ? $(left) - 30 : 30))" $PY -m vitmim.cli "${ARGS[@]}" \
    2>&1 | grep --line-buffered -v "it/s" | tee "$RESULTS/grid.log"
grid_rc=${PIPESTATUS[0]}
say "grid: exit $grid_rc"

# the new records (and the study's progress line) back to the machine that commits them
mapfile -t new < <(cd "$STUDY" && find . -name record.json -newer "$stamp" -printf '%h\n' \
                   | sort)
study=$(basename "$STUDY")
tar -C "$(dirname "$STUDY")" -czf "$RESULTS/records.tgz" "$study/README.md" \
    "${new[@]/#./$study}"
say "${#new[@]} new records in $RESULTS/records.tgz: ${new[*]#./}"
exit "$grid_rc"
