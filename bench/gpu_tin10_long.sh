#!/usr/bin/env bash
# The long TIN-10 recipe and the 200-class recipe on one GPU, in one short call
# (docs/results/gpu_tin10_long/):
#  1. the `--preset tin200` model and recipe for a few epochs on TIN-10: checks that the
#     pre-train -> fine-tune path runs on CUDA (TrivialAugment, mixup/cutmix, erasing, EMA,
#     layer decay) and measures its images/s, from which the 200-class budget follows;
#  2. `--preset tin10_long` on TIN-10, 2 seeds, all runs side by side on the one GPU:
#     pre-train 150 epochs -> fine-tune 100; scratch 100 (equal epochs); scratch 152 (equal
#     training FLOPs, what `vitmim run --equal-compute flops` computes for this recipe).
#
#   here, once:  VITMIM_DATA=/path/tiny-imagenet-200.zip scripts/gpu_check.sh --pack
#   on the GPU:  bash bench/gpu_tin10_long.sh [OUT_DIR]     (default runs/gpu_long)
#
# Every job has a deadline (BUDGET seconds from the start, default 500); a run cut short keeps
# its per-epoch metrics but is reported as unfinished. Knobs for a dry run on a CPU:
# DEVICE=cpu SMOKE_EPOCHS=1 PT_EPOCHS=1 FT_EPOCHS=1 FLOPS_EPOCHS=2 (else derived) and EXTRA (overrides added to
# every job), e.g. EXTRA="--set model.depth=1 --set model.embed_dim=48 --set model.num_heads=1".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
SUBSET=${VITMIM_SUBSET:-data/tin10.zip}
[[ -f $SUBSET ]] || { echo "gpu_tin10_long: $SUBSET not found (scripts/gpu_check.sh --pack)" >&2
                      exit 2; }
OUT=$(mkdir -p "${1:-runs/gpu_long}" && cd "${1:-runs/gpu_long}" && pwd)
export VITMIM_DATA="$PWD/$SUBSET" VITMIM_CACHE="$OUT/cache"
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE_EPOCHS:-4}
PT=${PT_EPOCHS:-150}
FT=${FT_EPOCHS:-100}
DEADLINE=$((SECONDS + ${BUDGET:-500}))
left() { echo $((DEADLINE - SECONDS > 1 ? DEADLINE - SECONDS : 1)); }
# one job: `job NAME vitmim-args...`, output in OUT/NAME.log, cut at the deadline
job() {
    local name=$1; shift
    # shellcheck disable=SC2086  # EXTRA is a list of words
    timeout "$(left)" $PY -m vitmim.cli "$@" --set device="$DEVICE" ${EXTRA:-} \
        >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$(date +%T) $name: exit $rc ($SECONDS s)"
    return $rc
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
$PY -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

# 1. the 200-class recipe's model for a few epochs (also the CUDA smoke test: stop on failure)
T200=(--preset tin200 --set compile=false --set pretrain.epochs="$SMOKE"
      --set finetune.epochs="$SMOKE")
job tin200_pretrain pretrain --out "$OUT/tin200/pretrain" "${T200[@]}" || {
    tail -20 "$OUT/tin200_pretrain.log"; exit 1; }
job tin200_finetune finetune --out "$OUT/tin200/finetune" --init "$OUT/tin200/pretrain" \
    "${T200[@]}" || { tail -20 "$OUT/tin200_finetune.log"; exit 1; }

# 2. TIN-10 long schedule, 2 seeds, side by side
L=(--preset tin10_long --set pretrain.epochs="$PT" --set finetune.epochs="$FT")
# scratch epochs of equal training FLOPs, as `vitmim run --equal-compute flops` computes them
# (152 for the preset's schedule)
# shellcheck disable=SC2086
FLOPS=${FLOPS_EPOCHS:-$($PY - "${L[@]}" ${EXTRA:-} <<'PY'
import argparse, sys
from vitmim.cli import add_config_args, resolve_config
from vitmim.pipeline import equal_compute
p = argparse.ArgumentParser()
add_config_args(p)
print(equal_compute(resolve_config(p.parse_args(sys.argv[1:])), "flops").finetune.epochs)
PY
)}
echo "scratch at equal training FLOPs: $FLOPS epochs"
for s in 0 1; do
    ( job pre_s$s pretrain --out "$OUT/pre_s$s" "${L[@]}" --set pretrain.seed=$s &&
      job ft_s$s finetune --out "$OUT/ft_s$s" --init "$OUT/pre_s$s" "${L[@]}" \
          --set finetune.seed=$s ) &
    ( job scratch_s$s finetune --out "$OUT/scratch_s$s" "${L[@]}" --set finetune.seed=$s
      job scratch_flops_s$s finetune --out "$OUT/scratch_flops_s$s" "${L[@]}" \
          --set finetune.seed=$s --set finetune.epochs="$FLOPS" ) &
done
wait

# summary: last epoch of every run, and whether it finished its schedule
$PY - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
import yaml
out = Path(sys.argv[1])
for m in sorted(out.glob("**/metrics.jsonl")):
    rows = [json.loads(x) for x in m.read_text().splitlines() if x.strip()]
    cfg = yaml.safe_load((m.parent / "config.yaml").read_text())
    last, stage = rows[-1], rows[-1]["stage"]
    planned = cfg.get(stage, {}).get("epochs", "?")
    ips = [r["images_per_s"] for r in rows[1:]] or [rows[0]["images_per_s"]]
    wall = sum(r.get("time_s", 0) for r in rows)
    score = ", ".join(f"{k} {last[k]:.2f}" for k in ("val_top1", "val_top5", "val_psnr") if k in last)
    print(f"{str(m.parent.relative_to(out)):22s} {stage:8s} epoch {last['epoch']}/{planned} "
          f"{score}; {sum(ips) / len(ips):.0f} img/s; {wall:.0f} s")
PY
tar -czf "$OUT/runs.tgz" -C "$OUT" --exclude=cache --exclude=checkpoints \
    --exclude='*.safetensors' --exclude='recon_epoch0[0-9][0-9].png' . 2>/dev/null
echo "gpu_tin10_long: done in $SECONDS s; summary in $OUT/summary.txt"
