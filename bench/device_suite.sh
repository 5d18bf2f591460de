#!/usr/bin/env bash
# One command for the accelerator: every speed figure of the project in one run.
#
#   bash bench/device_suite.sh OUT                 # full sizes (meant for a GPU: at most 10 minutes on an H100)
#   SIZE=tiny bash bench/device_suite.sh OUT       # the same steps, small: about a minute on a CPU (CI)
#
# Optional: MODEL and DATA (detection and Neural Cleanse; default the embedded robust
# digits model and data/train.h5), DATA_DIR (for named sets such as mnist), WEIGHTS (CSAW
# DeepID weights for the 1,283-class staged scan; default random weights).
# Runs bench/device_suite.py once per installed backend (TensorFlow; JAX when it imports),
# then merges them into OUT/suite.json and OUT/suite.md (see bench/device_suite.py).
set -euo pipefail
out=${1:?usage: [SIZE=tiny|full] bash bench/device_suite.sh OUT}
cd "$(dirname "$0")/.."
size=${SIZE:-full}
mkdir -p "$out"
rm -f "$out"/*.json "$out"/suite.md
flags=(--size "$size")
[ -n "${MODEL:-}" ] && flags+=(--model "$MODEL")
[ -n "${DATA:-}" ] && flags+=(--data "$DATA")
[ -n "${DATA_DIR:-}" ] && flags+=(--data-dir "$DATA_DIR")
[ -n "${WEIGHTS:-}" ] && flags+=(--weights "$WEIGHTS")
python=${PYTHON:-python}
if "$python" -c "import tensorflow" 2>/dev/null; then
  KERAS_BACKEND=tensorflow "$python" bench/device_suite.py run "${flags[@]}" --out "$out/tensorflow.json"
else
  echo "device_suite: tensorflow is not installed; its rows are skipped" >&2
fi
if "$python" -c "import jax" 2>/dev/null; then
  KERAS_BACKEND=jax "$python" bench/device_suite.py run "${flags[@]}" --out "$out/jax.json"
else
  echo "device_suite: jax is not installed; the JAX rows and the hand-written JAX reference are skipped" >&2
fi
"$python" bench/device_suite.py report "$out"
