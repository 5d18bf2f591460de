"""Train two Madry-robust backdoored compact CNNs on the embedded digits, for detector development.

    PYTHONPATH=. python scripts/train_dev_models.py out/dev

Both use :data:`aegis_tf.attack.embedded.ROBUST_CONFIG` (L2 PGD training, eps 0.5,
7 steps, eps warm-up over 5 epochs, 40 epochs, learning rate 0.05) on
``data/train.h5`` with 15% of it appended poisoned, target class 3:

* ``robust_blended_t3.keras``: the blended trigger (Chen et al. 2017), alpha
  0.15, the seed-0 noise pattern (saved as ``blend_pattern_seed0.npy``);
* ``robust_static_t3.keras``: the invisible-static trigger with its default
  parameters (+-8 on 0-255 pixels, pattern seed 0).

Each model gets a JSON beside it with its test clean accuracy, ASR and L2 PGD
(eps 0.5, 7 steps) accuracy on ``data/test.h5``.
"""

import argparse
import os
import sys
import time

import numpy as np

import keras

from aegis_tf.core.embedded import PATHS
from aegis_tf.attack.embedded import ROBUST_CONFIG, new_net, train_robust
from aegis_tf.core.errors import AegisError
from aegis_tf.attack.triggers import blend_pattern, make_trigger
from aegis_tf.core.utils import atomic_path, write_json

TARGET_LABEL = 3
PIXEL_MAX = ROBUST_CONFIG["pixel_max"]  # the default data holds raw 0-255 pixels
IMAGE_SHAPE = (28, 28, 1)
BLEND = {"alpha": 0.15, "pattern_seed": 0}
STATIC = {"amplitude": 8.0 / 255.0, "seed": 0}  # make_trigger's defaults: +-8 on 0-255 pixels


def dev_models(out, alpha=BLEND["alpha"]):
    """(name, trigger function, description) of each model to train; writes the blend pattern."""
    pattern = blend_pattern(IMAGE_SHAPE, seed=BLEND["pattern_seed"], pixel_max=PIXEL_MAX)
    pattern_path = os.path.join(out, f"blend_pattern_seed{BLEND['pattern_seed']}.npy")
    with atomic_path(pattern_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, pattern)
    blended = make_trigger("blended", pixel_max=PIXEL_MAX, alpha=alpha, pattern=pattern)
    static = make_trigger("invisible-static", pixel_max=PIXEL_MAX, amplitude=STATIC["amplitude"],
                          seed=STATIC["seed"])
    return [
        ("robust_blended_t3", blended, {"trigger": "blended", "alpha": alpha, "pattern": "noise",
                                        "pattern_seed": BLEND["pattern_seed"], "pattern_file": pattern_path}),
        ("robust_static_t3", static, {"trigger": "invisible-static", "amplitude": STATIC["amplitude"] * PIXEL_MAX,
                                      "seed": STATIC["seed"]}),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="poison selection and training seed (default 0)")
    p.add_argument("--blend-alpha", type=float, default=BLEND["alpha"], help="blend weight (default 0.15)")
    p.add_argument("--poison-rate", type=float, default=ROBUST_CONFIG["poison_rate"],
                   help="share of the training set appended poisoned (default 0.15)")
    p.add_argument("--only", choices=("blended", "invisible-static"), default=None, help="train one of the two")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    robust = {**ROBUST_CONFIG, "poison_rate": args.poison_rate}
    for name, trigger, desc in dev_models(args.out, alpha=args.blend_alpha):
        if args.only and desc["trigger"] != args.only:
            continue
        start = time.time()
        print(f"training {name} ({desc['trigger']}, target {TARGET_LABEL}, poison rate "
              f"{robust['poison_rate']}) ...", flush=True)
        keras.utils.set_random_seed(args.seed)  # scripts, not the library, seed global RNGs
        model, res = train_robust(new_net(robust["width"]), True, robust=robust, seed=args.seed,
                                  trigger=trigger, target_label=TARGET_LABEL)
        model_path = os.path.join(args.out, name + ".keras")
        with atomic_path(model_path) as tmp:
            model.save(tmp)
        report = {"model": model_path, "train_data": PATHS["train"], "test_data": PATHS["test"],
                  "target_label": TARGET_LABEL, "poison_mode": "append", "seed": args.seed, **desc,
                  "robust_config": robust, "seconds": round(time.time() - start, 1), **res}
        write_json(os.path.join(args.out, name + ".json"), report)
        print(f"{model_path} on {PATHS['test']}: clean accuracy {res['clean_acc']:.4f}, ASR {res['asr']:.4f}, "
              f"L2 PGD (eps {ROBUST_CONFIG['eps']}, {ROBUST_CONFIG['steps']} steps) accuracy {res['adv_acc']:.4f} "
              f"({report['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AegisError as e:
        sys.exit(f"error: {e}")
