#!/usr/bin/env bash
# Fine-tuning and pre-training levers on TIN-10, 2 seeds each (docs/results/tin10_recipe.md, "Levers").
#
#   VITMIM_DATA=tiny-imagenet-200.zip bash bench/tin10_levers.sh [RUNS] [OUT]
#
# RUNS holds the grid of the fine-tuning batch 128 recipe (`vitmim grid
# configs/grids/tin10_default.yaml --out RUNS`): every lever below fine-tunes its restorers
# (RUNS/pretrained/seed<k>/pretrain) or pre-trains its own. Each command is one run (11-30 min on
# one CPU core; 32 in all); OUT/<name>/metrics.jsonl has the per-epoch val top-1. Run two at a
# time with OMP_NUM_THREADS=1 on a 2-core machine. The reference figures of the batch-128 levers
# are the grid's own `pretrained` and `scratch` cells.
set -euo pipefail
RUNS=${1:-runs/tin10_default}
OUT=${2:-runs/tin10_levers}
B128=(--set finetune.batch_size=128)  # the batch 128 recipe, the reference of the grid's cells
B64=(--set finetune.batch_size=64)  # the default, spelled out so the figures survive a change

# fine-tuning levers: one change each to the fine-tuning batch 128 recipe
for s in 0 1; do
  init=$RUNS/pretrained/seed$s/pretrain
  # layer-wise lr decay 0.75 (MAE's fine-tuning value)
  vitmim finetune --out "$OUT/ld75_s$s" --init "$init" "${B128[@]}" \
    --set finetune.seed=$s --set finetune.layer_decay=0.75
  # no drop-path (the default recipe uses 0.1), pre-trained and scratch
  vitmim finetune --out "$OUT/dp0_s$s" --init "$init" "${B128[@]}" \
    --set finetune.seed=$s --set finetune.drop_path=0.0
  vitmim finetune --out "$OUT/dp0_scratch_s$s" "${B128[@]}" \
    --set finetune.seed=$s --set finetune.drop_path=0.0
  # conv stem (Early Convolutions): its own restorer, then fine-tuning
  vitmim pretrain --out "$OUT/convstem_s$s/pretrain" \
    --set model.conv_stem=true --set pretrain.seed=$s
  vitmim finetune --out "$OUT/convstem_s$s/finetune" --init "$OUT/convstem_s$s/pretrain" \
    "${B128[@]}" --set model.conv_stem=true --set finetune.seed=$s
  # 10 % of the labels, fine-tuned 100 epochs (300 steps), pre-trained and scratch
  vitmim finetune --out "$OUT/lowlabel100_pretrained_s$s" --init "$init" "${B128[@]}" \
    --set finetune.seed=$s --set data.label_fraction=0.1 --set finetune.epochs=100
  vitmim finetune --out "$OUT/lowlabel100_scratch_s$s" "${B128[@]}" \
    --set finetune.seed=$s --set data.label_fraction=0.1 --set finetune.epochs=100
done

# batch size, longer pre-training, scratch at equal training FLOPs
for s in 0 1; do
  init=$RUNS/pretrained/seed$s/pretrain
  # batch 64 instead of 128 (twice the optimiser steps per epoch, same lr): the default
  vitmim finetune --out "$OUT/bs64_s$s" --init "$init" "${B64[@]}" --set finetune.seed=$s
  vitmim finetune --out "$OUT/bs64_scratch_s$s" "${B64[@]}" --set finetune.seed=$s
  # batch 32 (pre-trained only)
  vitmim finetune --out "$OUT/bs32_s$s" --init "$init" --set finetune.batch_size=32 \
    --set finetune.seed=$s
  # scratch trained as many FLOPs as pre-train + fine-tune: 22 epochs, what
  # `vitmim run --equal-compute flops` computes for the default recipe
  vitmim finetune --out "$OUT/bs64_scratch_equal_flops_s$s" "${B64[@]}" \
    --set finetune.seed=$s --set finetune.epochs=22
  # 60 pre-training epochs instead of 20, then 10 % of the labels for 100 epochs at batch 128,
  # against lowlabel100_scratch above
  vitmim pretrain --out "$OUT/pre60_s$s" --set pretrain.seed=$s --set pretrain.epochs=60
  vitmim finetune --out "$OUT/lowlabel100_pre60_s$s" --init "$OUT/pre60_s$s" "${B128[@]}" \
    --set finetune.seed=$s --set data.label_fraction=0.1 --set finetune.epochs=100
done

# regularisers: those of the long GPU recipe (and EMA, TrivialAugment) at the 15-epoch CPU
# default, pre-trained only: each against bs64_s<k> above
for s in 0 1; do
  init=$RUNS/pretrained/seed$s/pretrain
  # mixup 0.8 / cutmix 1.0 (one per batch) and random erasing 0.25, as in --preset tin10_long
  vitmim finetune --out "$OUT/mix_s$s" --init "$init" --set finetune.seed=$s \
    --set finetune.augment.mixup=0.8 --set finetune.augment.cutmix=1.0 \
    --set finetune.augment.erasing=0.25
  # EMA of the weights, decay 0.998 per step (a horizon of 500 of the run's 1,170 steps)
  vitmim finetune --out "$OUT/ema_s$s" --init "$init" --set finetune.seed=$s \
    --set finetune.ema=0.998
  # TrivialAugmentWide per image
  vitmim finetune --out "$OUT/ta_s$s" --init "$init" --set finetune.seed=$s \
    --set finetune.augment.trivial_augment=true
done

# final val top-1 of every run above
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
for m in sorted(Path(sys.argv[1]).glob("**/metrics.jsonl")):
    last = json.loads(m.read_text().splitlines()[-1])
    if "val_top1" in last:
        print(f"{str(m.parent.relative_to(sys.argv[1])):40s} {last['val_top1']:5.1f}")
PY
