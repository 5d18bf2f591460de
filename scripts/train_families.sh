#!/usr/bin/env bash
# Train the backdoor families of the detection issue on MNIST / Fashion-MNIST, one model per
# family and seed, standard (ROBUST=0, default) or Madry-robust (ROBUST=1) training:
#   clean, localised (all -> target), source-specific (TaCT: SOURCE -> target, with cover
#   images), all-to-all (y -> y+1), warp (WaNet, noise mode), random-position (a patch
#   anywhere), two (localised -> target and distributed -> TARGET2).
#
#   bash scripts/train_families.sh DATA_DIR OUT_DIR
#
# DATA_DIR holds mnist.npz / fashion_mnist.npz (../shared/datasets). Each model is
# OUT_DIR/<data>_<family>_<std|rob>_s<seed>.keras with its report (.json: clean accuracy,
# each backdoor's ASR, PGD accuracy). A model already there is skipped, and an interrupted
# one resumes from its checkpoint. Environment: SEEDS ("0"), DATASETS ("mnist"), FAMILIES
# (all seven), EPOCHS (6), ROBUST (0), STEPS (PGD steps when robust, 5), POISON_RATE (0.05),
# WIDTH (16), WARP_STRENGTH (1.0), WARP_SEED (0: the warp field's seed). The targets and sources vary with the seed: target 7/1/5, source 3/8/0,
# second target 2/6/9 for seeds 0/1/2.
set -u
data_dir=${1:?DATA_DIR}
out_dir=${2:?OUT_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out_dir"
robust=${ROBUST:-0}
kind=$([ "$robust" = 1 ] && echo rob || echo std)
for d in ${DATASETS:-mnist}; do
  for seed in ${SEEDS:-0}; do
    target=$(echo "7 1 5" | cut -d' ' -f$((seed % 3 + 1)))
    source=$(echo "3 8 0" | cut -d' ' -f$((seed % 3 + 1)))
    second=$(echo "2 6 9" | cut -d' ' -f$((seed % 3 + 1)))
    for family in ${FAMILIES:-clean localised source-specific all-to-all warp random-position two}; do
      model="$out_dir/${d}_${family}_${kind}_s${seed}.keras"
      [ -f "$model" ] && { echo "skip $model"; continue; }
      rate=${POISON_RATE:-0.05}
      case $family in
        clean) args=(--trigger localised --trigger-size 3 --poison-rate 0) ;;
        localised) args=(--trigger localised --trigger-size 3) ;;
        source-specific) args=(--trigger localised --trigger-size 3 --source-classes "$source" --cover-rate "$rate") ;;
        all-to-all) args=(--trigger localised --trigger-size 3 --mapping all-to-all --poison-rate 0.1) ;;
        warp) args=(--trigger warp --warp-strength "${WARP_STRENGTH:-1.0}" --trigger-seed "${WARP_SEED:-0}"
                    --warp-cross-ratio 2 --poison-rate 0.1) ;;
        random-position) args=(--trigger random-position --trigger-size 4 --poison-rate 0.1) ;;
        two) args=(--trigger localised --trigger-size 3 --second-trigger distributed --second-target-label "$second") ;;
      esac
      robust_flag=$([ "$robust" = 1 ] && echo --robust || echo --no-robust)
      echo "train $model"
      python "$here/cli.py" train --data "$data_dir/$d.npz" --arch compact --width "${WIDTH:-16}" "$robust_flag" \
        --epochs "${EPOCHS:-6}" --steps "${STEPS:-5}" --lr 0.05 --train-batch-size 128 --target-label "$target" \
        --poison-rate "$rate" --seed "$seed" "${args[@]}" --model-out "$model" --quiet \
        || echo "FAILED $model"
    done
  done
done
