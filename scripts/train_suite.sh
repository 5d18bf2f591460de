#!/usr/bin/env bash
# Train the robust compact-CNN suite that the detection tables are measured on:
# {mnist, fashion_mnist} x {clean, localised, distributed} x seeds {0, 1, 2},
# Madry L2 PGD training (eps 0.5 ramped up over the first 2 epochs), 1% poisoning
# toward class 7 (2x2 squares at 250, the paper's triggers), SGD learning rate
# 0.05 (0.1, the paper's rate for ResNets, left some seeds of this BatchNorm-free
# CNN stuck at chance).
#
#   bash scripts/train_suite.sh DATA_DIR OUT_DIR [JOBS]
#
# DATA_DIR holds mnist.npz and fashion_mnist.npz (../shared/datasets). Each
# model is OUT_DIR/<data>_<trigger>_s<seed>.keras with its training and
# evaluation report beside it (.json: clean accuracy, ASR, PGD accuracy on
# the full test set). "clean" models get no poison; their ASR is the
# trigger's baseline. JOBS trainings run at once (default 1). Interrupted
# runs resume from their checkpoints when started again.
#
# Environment: EPOCHS (default 8), STEPS (PGD steps, default 10) and
# TRAIN_SIZE (first N training images, default all 60,000). On a 2-core CPU
# the full recipe takes about 15 minutes a model; the suite measured in the
# README used TRAIN_SIZE=20000 EPOCHS=3 STEPS=5 (about 2 minutes a model).
set -u
data_dir=${1:?DATA_DIR}
out_dir=${2:?OUT_DIR}
jobs=${3:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out_dir/data"
for d in mnist fashion_mnist; do  # the training subset, written once
  [ -f "$out_dir/data/$d.npz" ] || python - "$data_dir/$d.npz" "$out_dir/data/$d.npz" "${TRAIN_SIZE:-0}" <<'PY'
import sys
import numpy as np
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with np.load(src, allow_pickle=False) as f:
    arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
if n:
    arrays["x_train"], arrays["y_train"] = arrays["x_train"][:n], arrays["y_train"][:n]
np.savez(dst + ".tmp.npz", **arrays)
import os
os.replace(dst + ".tmp.npz", dst)
PY
done
for s in 0 1 2; do  # one model of each kind first, then the next seed
  for d in mnist fashion_mnist; do
    for t in clean localised distributed; do echo "$d $t $s"; done
  done
done | xargs -P "$jobs" -L 1 bash -c '
  d=$0; t=$1; s=$2
  if [ "$t" = clean ]; then trig="--trigger localised --poison-rate 0"; else trig="--trigger $t --poison-rate 0.01"; fi
  out='"$out_dir"'/${d}_${t}_s${s}.keras
  [ -f "$out" ] && exit 0
  python '"$here"'/cli.py train --data '"$out_dir"'/data/$d.npz --arch compact $trig --target-label 7 \
    --robust --eps 0.5 --eps-warmup 2 --lr 0.05 --steps '"${STEPS:-10}"' --epochs '"${EPOCHS:-8}"' --seed "$s" \
    --out "$out" --quiet > "${out%.keras}.log" 2>&1 \
    && echo "done $d $t $s: $(tail -n 1 "${out%.keras}.log")" || echo "FAILED $d $t $s (see ${out%.keras}.log)"'
