#!/usr/bin/env bash
# The CIFAR-10 recipe of the detection matrix, small enough for a 2-core CPU:
# scripts/train_suite.sh on cifar10 with the compact CNN at width 16, all 50,000
# training images, Madry L2 PGD training (eps 0.5 ramped up over 2 epochs, 3
# steps), 10 epochs, SGD 0.05; triggers clean, localised (3x3 square at 250, 5%),
# blended (alpha 0.3, 20%) and invisible-static (amplitude 0.1 = 25/255, 20%),
# targets 7, 1, 5 for seeds 0, 1, 2. 30 minutes a model on 2 CPU cores shared with
# two detection jobs (measured once); the measured runs: results/attack/cifar_training/README.md.
# Far from the paper's ResNet-18 (about 80-90% clean accuracy after 100+ epochs
# with 7-10 PGD steps); see docs/detection.md.
#
#   bash scripts/train_cifar_small.sh DATA_DIR OUT_DIR [JOBS]
#
# DATA_DIR holds cifar10.npz (`python ../shared/datasets/prepare.py DATA_DIR cifar10`).
# Every setting can be overridden the same way as in train_suite.sh (SEEDS, TRIGGERS,
# WIDTH, EPOCHS, STEPS, POISON_RATE, INVISIBLE_RATE, ...).
set -eu
export DATASETS=cifar10 WIDTH=${WIDTH:-16} TRIGGER_SIZE=${TRIGGER_SIZE:-3} EPOCHS=${EPOCHS:-10} \
  STEPS=${STEPS:-3} POISON_RATE=${POISON_RATE:-0.05} COLLAPSE_ACC=${COLLAPSE_ACC:-0.2} \
  BLEND_ALPHA=${BLEND_ALPHA:-0.3} AMPLITUDE=${AMPLITUDE:-0.1} INVISIBLE_RATE=${INVISIBLE_RATE:-0.2} \
  TRIGGERS=${TRIGGERS:-clean localised blended invisible-static}
exec bash "$(dirname "$0")/train_suite.sh" "$@"
