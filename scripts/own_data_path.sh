#!/usr/bin/env bash
# The newcomer's path of docs/own-data.md, each command timed: class folders -> pre-train ->
# fine-tune -> eval -> predict -> export -> probe -> reconstruct, then a config typo.
#   usage: scripts/own_data_path.sh WORK_DIR   (vitmim on PATH; writes WORK_DIR/clothes first)
set -euo pipefail
work=$1
tests=$(dirname "$(realpath "$0")")/../tests
mkdir -p "$work" && cd "$work" && rm -rf runs export cache clothes
export OMP_NUM_THREADS=1 VITMIM_CACHE=$PWD/cache
python3 -c "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path
from test_own_data import write_own_images; write_own_images(Path('clothes'), per_class=80)" \
    "$tests"
timed() {
    local start=$(date +%s.%N) rc=0
    "$@" > log.txt 2>&1 || rc=$?
    printf '%6.1f s  rc %d  %s\n' "$(echo "$(date +%s.%N) - $start" | bc)" "$rc" "$*"
}
timed vitmim pretrain --data clothes --out runs/pre --preset smoke --set pretrain.epochs=5
timed vitmim finetune --init runs/pre --data clothes --out runs/ft --set finetune.epochs=5
timed vitmim eval runs/ft
timed vitmim predict runs/ft clothes/boot/1.png clothes/trouser/3.png
timed vitmim export runs/ft --format timm --out export/ft
timed vitmim probe runs/pre --data clothes
timed vitmim reconstruct runs/pre clothes/boot/0.png clothes/sneaker/5.png --out export/recon.png
timed vitmim pretrain --out runs/x --set model.bogus=1
