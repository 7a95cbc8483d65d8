#!/usr/bin/env bash
# GPU readiness check: the throughput and fast-path benches, then `vitmim run` (pre-train ->
# fine-tune -> scratch) on a packed Tiny ImageNet class subset. Under 8 minutes on one H100.
#
#   here, once:  VITMIM_DATA=/path/tiny-imagenet-200.zip scripts/gpu_check.sh --pack
#                (writes data/tin10.zip, about 20 MiB: small enough to travel with the tree)
#   on the GPU:  scripts/gpu_check.sh [OUT_DIR]    (default runs/gpu_check; figures are printed
#                and kept in OUT_DIR/*.txt; GPU_CHECK_COMPILE=1 also times torch.compile)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SUBSET=${VITMIM_SUBSET:-data/tin10.zip}

if [[ ${1:-} == --pack ]]; then
    mkdir -p "$(dirname "$SUBSET")"
    exec $PY -m vitmim.cli data pack --set data.classes=10 --out "$SUBSET"
fi
if [[ ! -f $SUBSET ]]; then
    echo "gpu_check: $SUBSET not found; run scripts/gpu_check.sh --pack here first" >&2
    exit 2
fi
OUT=$(mkdir -p "${1:-runs/gpu_check}" && cd "${1:-runs/gpu_check}" && pwd)
export VITMIM_DATA="$PWD/$SUBSET" VITMIM_CACHE="$OUT/cache"
COMPILE=()
[[ ${GPU_CHECK_COMPILE:-0} == 1 ]] && COMPILE=(--compile)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | tee "$OUT/device.txt"
# each step has its own time limit; together they stay under 8 minutes
timeout 170 $PY bench/throughput.py --device cuda --seconds 5 "${COMPILE[@]}" \
    | tee "$OUT/throughput.txt"
timeout 40 $PY bench/data_pipeline.py --device cuda --seconds 3 --classes 10 \
    | tee "$OUT/data_pipeline.txt"
timeout 130 $PY bench/fast_path.py --device cuda --seconds 5 --accuracy \
    --pretrain-epochs 20 --finetune-epochs 20 --out "$OUT/fast_path" \
    | tee "$OUT/fast_path.txt"
timeout 120 $PY -m vitmim.cli run --out "$OUT/run" --set device=cuda \
    --set pretrain.epochs=20 --set finetune.epochs=20 2>&1 \
    | grep -v "it/s" | tee "$OUT/run.txt"
echo "gpu_check: done; figures in $OUT"
