#!/usr/bin/env bash
# Fingerprints of a fixed-seed `vitmim run --preset smoke`: proof that a change of structure
# left behaviour alone. Run it before and after and compare the lines. metrics.jsonl is hashed
# without time_s, cpu_s and images_per_s: clock readings differ between two runs of the same code.
#   usage: VITMIM_DATA=tiny-imagenet-200.zip scripts/smoke_hashes.sh OUT_DIR
set -euo pipefail
out=$1
rm -rf "$out"
OMP_NUM_THREADS=1 vitmim run --preset smoke --out "$out" > "$out.log" 2>&1
for stage in pretrain finetune scratch; do
    echo "$stage model.safetensors $(sha256sum < "$out/$stage/model.safetensors" | cut -c1-16)"
    echo "$stage metrics.jsonl $(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line); r.pop("time_s", None); r.pop("images_per_s", None); r.pop("cpu_s", None)
    print(json.dumps(r, sort_keys=True))' "$out/$stage/metrics.jsonl" | sha256sum | cut -c1-16)"
done
