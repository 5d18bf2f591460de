#!/usr/bin/env bash
# Train the robust compact-CNN suite that the detection tables are measured on:
# {mnist, fashion_mnist} x {clean, localised, distributed, and with TRIGGERS also
# invisible-static, invisible-adversarial, blended} x seeds {0, 1, 2},
# Madry L2 PGD training (eps 0.5 ramped up over the first 2 epochs), poisoning
# toward class 7 at POISON_RATE (2x2 squares at 250, the paper's triggers), SGD
# learning rate 0.05 (0.1, the paper's rate for ResNets, left some seeds of
# this BatchNorm-free CNN stuck at chance).
#
#   bash scripts/train_suite.sh DATA_DIR OUT_DIR [JOBS]
#
# DATA_DIR holds mnist.npz and fashion_mnist.npz (../shared/datasets). Each
# model is OUT_DIR/<data>_<trigger>_s<seed>.keras with its training and
# evaluation report beside it (.json: clean accuracy, ASR, PGD accuracy on
# the full test set). "clean" models get no poison; their ASR is the
# trigger's baseline. JOBS trainings run at once (default 1). Interrupted
# runs resume from their checkpoints when started again. A model that
# collapsed to chance is set aside and retrained once with seed + 100.
#
# Environment: TARGET (the poisoned label; by default it varies with the seed:
# 7, 1, 5 for seeds 0, 1, 2), POISON_RATE (visible triggers, default 0.01, the
# paper's), INVISIBLE_RATE (invisible-static, invisible-adversarial, blended;
# default 0.1), BLEND_ALPHA (default 0.2), AMPLITUDE (invisible-static, units
# of [0, 1], default 0.0627 = 16/255), TRIGGER_EPS (invisible-adversarial's Linf
# budget, units of [0, 1], default 0.0627), EPOCHS (default 8), STEPS (PGD steps, default 10), TRAIN_SIZE
# (first N training images, default all 60,000), POISON_RATE (default
# 0.01, the paper's), and SEEDS, DATASETS, TRIGGERS to train part of the
# suite (defaults "0 1 2", "mnist fashion_mnist", "clean localised
# distributed"). On a 2-core CPU the full recipe takes about 15 minutes a
# model. The suite measured in the README used TRAIN_SIZE=20000 EPOCHS=3
# STEPS=5 POISON_RATE=0.05 (about 2 minutes a model): with that short
# training, 1% poisoning left the localised trigger unlearned on MNIST (ASR
# 1%), and even 5% left it unlearned on Fashion-MNIST, which needed EPOCHS=8.
#
# CIFAR-10 (DATASETS=cifar10, DATA_DIR/cifar10.npz from ../shared/datasets/prepare.py)
# takes the same script with WIDTH (compact CNN channel width, default 16),
# TRIGGER_SIZE (square side, default 2), LR (default 0.05) and COLLAPSE_ACC (the
# clean accuracy under which a run counts as collapsed, default 0.5; robust CIFAR-10
# models of this size sit near 50%, so set it lower there). The recipe measured in
# the README is in scripts/train_cifar_small.sh.
set -u
data_dir=${1:?DATA_DIR}
out_dir=${2:?OUT_DIR}
jobs=${3:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out_dir/data"
for d in ${DATASETS:-mnist fashion_mnist}; do  # the training subset, written once
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
one() {  # train one model: data trigger seed
  local d=$1 t=$2 s=$3 trig out seed target t0
  # The target varies with the seed unless TARGET fixes it: seed 0 -> 7, 1 -> 1, 2 -> 5.
  target=${TARGET:-$(( (7 + 4 * s) % 10 ))}
  case $t in
    clean) trig="--trigger localised --poison-rate 0" ;;
    localised|distributed) trig="--trigger $t --poison-rate ${POISON_RATE:-0.01}" ;;
    blended) trig="--trigger blended --blend-alpha ${BLEND_ALPHA:-0.2} --poison-rate ${INVISIBLE_RATE:-0.1}" ;;
    invisible-static) trig="--trigger invisible-static --amplitude ${AMPLITUDE:-0.0627} --poison-rate ${INVISIBLE_RATE:-0.1}" ;;
    # The universal perturbation is computed against the clean model of the same data and seed (trained first).
    invisible-adversarial) trig="--trigger invisible-adversarial --trigger-model $OUT_DIR/${d}_clean_s${s}.keras --trigger-eps ${TRIGGER_EPS:-0.0627} --poison-rate ${INVISIBLE_RATE:-0.1}" ;;
    *) echo "unknown trigger $t"; return 1 ;;
  esac
  out=$OUT_DIR/${d}_${t}_s${s}.keras
  [ -f "$out" ] && return 0
  t0=$SECONDS
  for seed in "$s" "$((s + 100))"; do
    python "$HERE/cli.py" train --data "$OUT_DIR/data/$d.npz" --arch compact --width "${WIDTH:-16}" $trig --target-label "$target" \
      --trigger-size "${TRIGGER_SIZE:-2}" --robust --eps 0.5 --eps-warmup 2 --lr "${LR:-0.05}" --steps "${STEPS:-10}" --epochs "${EPOCHS:-8}" --seed "$seed" \
      --model-out "$out" --quiet > "${out%.keras}.log" 2>&1 \
      || { echo "FAILED $d $t $s (see ${out%.keras}.log)"; return 1; }
    # A run whose loss never left chance (clean accuracy under COLLAPSE_ACC, 50%) is set aside
    # as <name>.collapsed.keras and retrained once with seed + 100; the model's
    # .json records the seed it was trained with.
    if python -c "import json,sys; sys.exit(json.load(open(sys.argv[1]))['test']['clean_acc'] >= float(sys.argv[2]))" "$out.json" "${COLLAPSE_ACC:-0.5}"; then
      [ "$seed" != "$s" ] && { echo "COLLAPSED twice $d $t $s; kept the second run"; break; }
      mv "$out" "${out%.keras}.collapsed.keras"; mv "$out.json" "${out%.keras}.collapsed.keras.json"
      mv "${out%.keras}.log" "${out%.keras}.collapsed.log"
      rm -rf "$out.ckpt"
      echo "collapsed $d $t $s (clean accuracy under ${COLLAPSE_ACC:-0.5}); retraining with seed $((s + 100))"
      continue
    fi
    break
  done
  echo "done $d $t $s in $((SECONDS - t0)) s: $(tail -n 1 "${out%.keras}.log")"
}
export -f one
export OUT_DIR=$out_dir HERE=$here
for s in ${SEEDS:-0 1 2}; do  # one model of each kind first, then the next seed
  for d in ${DATASETS:-mnist fashion_mnist}; do
    for t in ${TRIGGERS:-clean localised distributed}; do echo "$d $t $s"; done
  done
done | xargs -P "$jobs" -L 1 bash -c 'one "$0" "$1" "$2"'
