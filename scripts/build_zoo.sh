#!/usr/bin/env bash
# Rebuild the detection matrix as a zoo on a fresh machine: train every family of
# scripts/train_families.sh (standard-trained, then Madry-robust when ROBUST_TOO=1) for
# each data set and seed, then lay the models out as a zoo with their truth
# (scripts/make_zoo.py), the embedded digits models included. Resumable: a model already
# trained is skipped and an interrupted one resumes from its checkpoint; run it again
# after a crash. Meant for the background:
#
#   nohup bash scripts/build_zoo.sh ../shared/datasets out/matrix > out/build_zoo.log 2>&1 &
#   python cli.py scan-zoo out/matrix/zoo --out out/matrix/scan
#
# DATA_DIR holds mnist.npz and fashion_mnist.npz. Environment: DATASETS ("mnist
# fashion_mnist"), SEEDS ("0 1 2"), ROBUST_TOO (0), and every setting of
# train_families.sh (EPOCHS, FAMILIES, ...). About 8 minutes per standard model on 2
# idle CPU cores; 7 families x 2 data sets x 3 seeds = 42 models, about 6 hours.
set -u
data_dir=${1:?DATA_DIR}
out_dir=${2:?OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
export DATASETS=${DATASETS:-mnist fashion_mnist} SEEDS=${SEEDS:-0 1 2}
ROBUST=0 bash "$here/train_families.sh" "$data_dir" "$out_dir/models"
if [ "${ROBUST_TOO:-0}" = 1 ]; then
  ROBUST=1 bash "$here/train_families.sh" "$data_dir" "$out_dir/models"
fi
python "$here/make_zoo.py" "$out_dir/models" "$out_dir/zoo" --embedded
