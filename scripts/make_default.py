"""Rebuild the embedded default data (data/*.h5) and models (models/).

    python scripts/make_default.py                 # everything
    python scripts/make_default.py --robust-only   # only the robust detection examples
    python scripts/make_default.py --sidecars-only # only the models' trigger files (MODEL.json)
    python scripts/make_default.py --out DIR       # write DIR/data and DIR/models instead (to compare);
                                                   # with --robust-only the data is read from data/

The robust pair is built through the train job, as ``aegis train`` builds a
model (poison, build_model, train, save, evaluate), with the arguments of
:func:`aegis_tf.attack.embedded.robust_job_args`. The BadNet keeps its own
recipe (Keras ``fit`` with Adam, :func:`aegis_tf.attack.embedded.build_default`):
the train job's loop does not reproduce its committed weights.

Deterministic: rerunning it writes the same images and labels and, on the
TensorFlow CPU backend, the same weights. This script, not the library, seeds
Keras' global RNG before each model is built.
"""

import os
import sys
import tempfile

import keras

from aegis_tf.attack.embedded import (CONFIG, ROBUST_CONFIG, ROBUST_MODELS, build_default, new_net, robust_job_args,
                                      trigger_config, write_sidecars)
from aegis_tf.core.embedded import PATHS, ROOT


def paths_under(root, keys=tuple(PATHS)):
    """:data:`PATHS` with ``keys`` moved from the embedded root to ``root``."""
    return {k: os.path.join(root, os.path.relpath(v, ROOT)) if k in keys else v for k, v in PATHS.items()}


def build_robust_defaults(paths=PATHS, *, quiet=True):
    """Train the robust pair through the train job; returns ``{key: test metrics}``."""
    from aegis_tf.attack.evaluation import evaluate_backdoor
    from aegis_tf.attack.job import train_job
    from aegis_tf.attack.triggers import build_trigger
    from aegis_tf.core.data import load_h5
    from aegis_tf.core.models import load_model

    results = {}
    for key in ROBUST_MODELS:
        args = robust_job_args(key, paths)
        os.makedirs(os.path.dirname(args["model_out"]), exist_ok=True)
        keras.utils.set_random_seed(ROBUST_CONFIG["seed"])
        with tempfile.TemporaryDirectory() as checkpoints:  # no MODEL.ckpt/ left beside the model
            res = train_job(**args, checkpoint_dir=checkpoints, resume=False, quiet=quiet)["test"]
        if "asr" not in res:  # the clean model: the ASR of the pair's trigger, for comparison
            x, y = load_h5(paths["test"])
            fn, _ = build_trigger(trigger_config(), pixel_max=ROBUST_CONFIG["pixel_max"], x_sample=x)
            res["asr"] = evaluate_backdoor(load_model(args["model_out"]), x, y, trigger=fn,
                                           target_label=CONFIG["target_label"], adversarial=False)["asr"]
        results[key] = res
        print(f"{args['model_out']} on {paths['test']}: clean accuracy {res['clean_acc']:.4f}, ASR {res['asr']:.4f}, "
              f"L2 PGD (eps {ROBUST_CONFIG['eps']}, {ROBUST_CONFIG['steps']} steps) accuracy {res['adv_acc']:.4f}")
    return results


def main(argv):
    out = argv[argv.index("--out") + 1] if "--out" in argv else None
    robust_only = "--robust-only" in argv
    paths = PATHS if out is None else paths_under(out, ROBUST_MODELS + ("bd_net", "bd_weights") if robust_only
                                                  else tuple(PATHS))
    if "--sidecars-only" in argv:
        write_sidecars(paths)
        return 0
    if not robust_only:
        for path in paths.values():
            os.makedirs(os.path.dirname(path), exist_ok=True)
        keras.utils.set_random_seed(CONFIG["train_seed"])
        result = build_default(new_net(CONFIG["width"]), paths=paths)
        print(f"default BadNet on {paths['test']}: clean accuracy {result['clean_acc']:.4f}, "
              f"ASR on {paths['bd_test']} {result['asr']:.4f}")
        if result["clean_acc"] < 0.9 or result["asr"] < 0.9:
            sys.exit("default BadNet is below 90% clean accuracy or 90% ASR")
    build_robust_defaults(paths)
    write_sidecars(paths)  # each model's trigger, beside it (MODEL.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
