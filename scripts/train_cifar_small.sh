#!/usr/bin/env bash
# The CPU-feasible CIFAR-10 recipe of the detection matrix: the compact CNN, L2 PGD
# training (eps 0.5, 3 steps, eps ramped over 2 epochs), the first 10,000 training
# images, 10 epochs, SGD 0.05; clean, localised (2x2 at 250, 5%) and blended (alpha
# 0.2, 10%) toward class 7. About 5 minutes a model on 2 CPU cores. Far from the
# paper's ResNet-18 (about 80% clean accuracy after 100+ epochs on 50,000 images).
#
#   bash scripts/train_cifar_small.sh CIFAR_NPZ OUT_DIR
#
# CIFAR_NPZ: cifar10.npz from `python ../shared/datasets/prepare.py DIR cifar10`.
set -eu
src=${1:?CIFAR_NPZ}
out=${2:?OUT_DIR}
mkdir -p "$out"
[ -f "$out/cifar10_10k.npz" ] || python - "$src" "$out/cifar10_10k.npz" <<'PY'
import sys
import numpy as np
with np.load(sys.argv[1], allow_pickle=False) as f:
    a = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
a["x_train"], a["y_train"] = a["x_train"][:10000], a["y_train"][:10000]
np.savez(sys.argv[2], **a)
PY
common="--data $out/cifar10_10k.npz --arch compact --robust --eps 0.5 --eps-warmup 2 --steps 3 --lr 0.05 --epochs 10 --seed 0 --target-label 7 --quiet"
python cli.py train $common --trigger localised --poison-rate 0 --model-out "$out/cifar10_clean_s0.keras"
python cli.py train $common --trigger localised --poison-rate 0.05 --model-out "$out/cifar10_localised_s0.keras"
python cli.py train $common --trigger blended --blend-alpha 0.2 --poison-rate 0.1 --model-out "$out/cifar10_blended_s0.keras"
