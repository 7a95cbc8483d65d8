#!/usr/bin/env bash
# The paper grid on one GPU as one command, within one 10-minute call of the device machine:
#   1. Tiny ImageNet from the parts that ../shared/tools/device-data.sh cut (carried into
#      .device-data/ by the calls before this one), checked against its sha256;
#   2. pip install --no-deps --no-build-isolation -e . (the machine is offline);
#   3. the 200-class image cache, built once (not on the grid's clock);
#   4. bench/step_profile.py and bench/throughput.py --device cuda --no-reference on the grid's
#      model: operators and CUDA kernels per step, images/s and model FLOP utilisation per stage;
#   5. vitmim grid configs/grids/paper_tin200.yaml --executor inline, cut at the deadline (the
#      one equal-FLOPs baseline, the longest run, comes last);
#   6. vitmim report; results (no weights, no checkpoints) copied to $OUT.
#
#   on the GPU:  bash scripts/gpu_paper.sh [RUNS_DIR]     (default runs/paper_tin200)
#
# BUDGET (s, default 570) is the deadline of the whole script. Run it again on the same machine
# to go on: finished steps are skipped, a cut run resumes from its last checkpoint.
# Dry run on a CPU (no pip, no benches, the grid with --dry-run):
#   DRY=1 VITMIM_DATA=/path/tiny-imagenet-200.zip bash scripts/gpu_paper.sh /tmp/paper
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEADLINE=$((SECONDS + ${BUDGET:-570}))
RUNS=$(mkdir -p "${1:-runs/paper_tin200}" && cd "${1:-runs/paper_tin200}" && pwd)
SPEC=configs/grids/paper_tin200.yaml
RESULTS=${OUT:-$RUNS/out}
mkdir -p "$RESULTS"
# the grid's model and batch for the benches, so their images/s check the grid's time estimate
# (throughput.py times the full path the grid uses and the fast path of the 100,000 img/s target)
MODEL=(--set data.classes=null --set model.patch_size=8
       --set pretrain.batch_size=256 --set finetune.batch_size=256)
left() { echo $((DEADLINE - SECONDS > 1 ? DEADLINE - SECONDS : 1)); }
at_most() { echo $(($1 < $(left) ? $1 : $(left))); }
say() { echo "$(date +%T) gpu_paper (${SECONDS} s): $*"; }

# 1. data
source scripts/device_prelude.sh

if [[ ${DRY:-0} == 1 ]]; then
    bash -n "$0" && $PY -m vitmim.cli grid "$SPEC" --out "$RUNS" --dry-run
    exit $?
fi

# 2. install, 3. image cache
install_vitmim "$RESULTS"
$PY - "${MODEL[@]}" <<'PY' || { say "image cache failed"; exit 1; }
import sys, time
from vitmim.config import load_config
from vitmim.data import load_splits
t0 = time.time()
args = [a for a in sys.argv[1:] if a != "--set"]
train, val = load_splits(load_config([], args).data, 64, progress=False)
print(f"image cache: {len(train)} train, {len(val)} val images in {time.time() - t0:.0f} s")
PY

# 4. benches (each once; a rerun keeps the first figures)
bench() {
    local name=$1 cap=$2; shift 2
    [[ -s $RESULTS/$name.txt ]] && return 0
    timeout "$(at_most "$cap")" $PY "$@" > "$RESULTS/$name.tmp" 2>&1
    local rc=$?
    grep -v "it/s" "$RESULTS/$name.tmp" | tail -25
    if [[ $rc == 0 ]]; then mv "$RESULTS/$name.tmp" "$RESULTS/$name.txt"
    else say "$name: exit $rc"; fi
}
bench step_profile 40 bench/step_profile.py --device cuda --steps 2 --warmup 3
bench throughput 60 bench/throughput.py --device cuda --no-reference --seconds 2 --warmup 5 \
    "${MODEL[@]}"

# 5. the grid, cut at the deadline (leaving time for the report)
say "grid: $(($(left) - 40)) s left for it"
timeout -s INT -k 15 "$(($(left) > 60 ? $(left) - 40 : 20))" \
    $PY -m vitmim.cli grid "$SPEC" --out "$RUNS" --executor inline 2>&1 \
    | grep --line-buffered -v "it/s" | tee -a "$RESULTS/grid.log"
grid_rc=${PIPESTATUS[0]}
say "grid: exit $grid_rc"

# 6. report and results
timeout "$(at_most 60)" $PY -m vitmim.cli report "$RUNS" 2>&1 | tail -30 | tee "$RESULTS/report.txt"
tar -C "$RUNS" --exclude='*.safetensors' --exclude=checkpoints --exclude=out \
    -czf "$RESULTS/runs.tgz" . && cp -r "$RUNS/report" "$RESULTS/" 2>/dev/null
say "results in $RESULTS (grid exit $grid_rc; run the script again to go on)"
exit "$grid_rc"
