"""Rebuild the embedded default data (data/*.h5) and BadNet (models/bd_net*).

    python scripts/make_default.py                 # everything
    python scripts/make_default.py --robust-only   # only the robust detection examples
    python scripts/make_default.py --sidecars-only # only the models' trigger files (MODEL.json)

Deterministic: rerunning it writes the same images and labels and, on the
TensorFlow CPU backend, the same weights. This script, not the library, seeds
Keras' global RNG before each model is built.
"""

import sys

import keras

from aegis_tf.attack.embedded import CONFIG, ROBUST_CONFIG, build_default, new_net, train_robust, write_sidecars
from aegis_tf.core.embedded import PATHS
from aegis_tf.core.utils import atomic_path


def build_robust_defaults():
    for key, poisoned in (("robust_bd_net", True), ("robust_clean_net", False)):
        keras.utils.set_random_seed(0)
        model, res = train_robust(new_net(ROBUST_CONFIG["width"]), poisoned)
        with atomic_path(PATHS[key]) as tmp:
            model.save(tmp)
        print(f"models/{key}.keras on data/test.h5: clean accuracy {res['clean_acc']:.4f}, "
              f"ASR {res['asr']:.4f}, L2 PGD (eps 0.5, 7 steps) accuracy {res['adv_acc']:.4f}")


if __name__ == "__main__":
    if "--sidecars-only" in sys.argv:
        write_sidecars()
        sys.exit(0)
    if "--robust-only" not in sys.argv:
        keras.utils.set_random_seed(CONFIG["train_seed"])
        result = build_default(new_net(CONFIG["width"]))
        print(f"default BadNet on data/test.h5: clean accuracy {result['clean_acc']:.4f}, "
              f"ASR on data/bd_test.h5 {result['asr']:.4f}")
        if result["clean_acc"] < 0.9 or result["asr"] < 0.9:
            sys.exit("default BadNet is below 90% clean accuracy or 90% ASR")
    build_robust_defaults()
    write_sidecars()  # each model's trigger, beside it (MODEL.json)
