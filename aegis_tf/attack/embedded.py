"""The embedded default: a digits BadNet in CSAW format, built reproducibly.

``scripts/make_default.py`` calls :func:`build_default` to write

* ``data/train.h5``, ``data/valid.h5``, ``data/test.h5``: clean digits,
  upscaled to 28x28, raw 0-255, stored channels-first as the CSAW files are;
* ``data/bd_valid.h5``, ``data/bd_test.h5``: every non-target image of the
  validation and test sets with the trigger, labelled with the target;
* ``models/bd_net.h5`` (full model, legacy HDF5 as the CSAW ``bd_net.h5``) and
  ``models/bd_net.weights.h5`` (weights only): a compact CNN trained on the
  training set with ``poison_rate`` of it appended poisoned. Its recipe is its
  own (Keras ``fit`` with Adam, :data:`CONFIG`), kept because the committed
  weights come from it: the train job's loop (SGD, its own shuffling, the loss
  from logits) trains a different net from the same seed.

and, through the train job (``aegis train``: poison, build, train, save,
evaluate) with the arguments of :func:`robust_job_args`, the robust pair
``models/robust_bd_net.keras`` and ``models/robust_clean_net.keras``.
This module holds the recipes; it imports no job (the script runs it).
"""

import os

from aegis_tf.core.embedded import PATHS

# Robust example models for detection: Madry L2 PGD training on data/train.h5,
# the same trigger and target as the BadNet above (or no poisoning). The
# TrainConfig fields (robust_train_config) plus the poison rate and the width.
ROBUST_CONFIG = {
    "epochs": 40, "batch_size": 128, "learning_rate": 0.05, "robust": True, "eps": 0.5, "steps": 7,
    "eps_warmup": 5, "pixel_max": 255.0, "seed": 0, "poison_rate": 0.15, "width": 16,
}

CONFIG = {
    "size": 28,
    "split_seed": 0,
    "trigger": "localised",
    "trigger_kwargs": {"size": 3, "value": 255.0, "margin": 1},
    "target_label": 7,
    "poison_rate": 0.1,
    "train_seed": 0,
    "epochs": 30,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "width": 16,
}


def trigger_config(config=CONFIG):
    """The embedded models' trigger as a :class:`~aegis_tf.attack.config.TriggerConfig`."""
    from aegis_tf.attack.config import TriggerConfig

    kw = config["trigger_kwargs"]
    return TriggerConfig(trigger=config["trigger"], target_label=config["target_label"], trigger_size=kw["size"],
                         trigger_value=kw["value"] / 255.0, trigger_margin=kw["margin"])


ROBUST_MODELS = ("robust_bd_net", "robust_clean_net")  # the PATHS roles of the robust pair, poisoned first


def robust_train_config(robust=ROBUST_CONFIG):
    """The robust models' training run as a :class:`~aegis_tf.attack.config.TrainConfig`."""
    from aegis_tf.attack.config import TrainConfig

    return TrainConfig(**{k: v for k, v in robust.items() if k not in ("poison_rate", "width")})


def robust_job_args(key, paths=PATHS, config=CONFIG, robust=ROBUST_CONFIG):
    """The keyword arguments of :func:`aegis_tf.attack.job.train_job` that build the robust
    model ``key`` (:data:`ROBUST_MODELS`) from ``paths["train"]`` into ``paths[key]``, as
    ``aegis train --data data/train.h5 --test-data data/test.h5 --trigger localised
    --trigger-size 3 --trigger-value 1 --trigger-margin 1 --poison-rate 0.15 --width 16
    --epochs 40 --lr 0.05 --steps 7 --eps-warmup 5`` would (0 poisoned for the clean one).
    The caller seeds Keras' global RNG with ``robust["seed"]`` first."""
    if key not in ROBUST_MODELS:
        raise ValueError(f"key must be one of {', '.join(ROBUST_MODELS)}. Received: {key!r}")
    return {"data": paths["train"], "test_data": paths["test"], "trigger": trigger_config(config),
            "config": robust_train_config(robust), "arch": "compact", "width": robust["width"],
            "poison_rate": robust["poison_rate"] if key == "robust_bd_net" else 0.0, "mode": "append",
            "model_out": paths[key], "scale": "raw"}


def write_sidecars(paths=PATHS, config=CONFIG, robust=ROBUST_CONFIG):
    """Write each embedded model's trigger file (:mod:`aegis_tf.attack.sidecar`), as ``aegis train`` does."""
    from aegis_tf.attack.sidecar import sidecar_path
    from aegis_tf.core.utils import write_json

    rates = {"bd_net": config["poison_rate"], "bd_weights": config["poison_rate"],
             "robust_bd_net": robust["poison_rate"], "robust_clean_net": 0.0}
    for key, rate in rates.items():
        write_json(sidecar_path(paths[key]), {
            "model": os.path.basename(paths[key]), "trigger_config": trigger_config(config), "poison_rate": rate,
            "note": "the embedded default's trigger, written by scripts/make_default.py"})


def poisoned_copy(x, y, config=CONFIG):
    """Every image whose label is not the target, triggered, labelled as the target."""
    from aegis_tf.attack.triggers import get_trigger

    from aegis_tf.attack.evaluation import backdoor_set

    trigger = get_trigger(config["trigger"])
    return backdoor_set(x, y, lambda a: trigger(a, **config["trigger_kwargs"]), config["target_label"])


def new_net(width, *, input_shape=(28, 28, 1), num_classes=10):
    """A fresh compact CNN for the default data. Its weights come from Keras' global
    RNG: the caller (scripts/make_default.py) seeds it first; the library never does."""
    from aegis_tf.core.models import build_compact_cnn

    return build_compact_cnn(input_shape=input_shape, num_classes=num_classes, width=width)


def build_default(model, config=CONFIG, paths=PATHS, *, verbose=True):
    """Write the default data, then train ``model`` (from :func:`new_net` with
    ``config["width"]``) into the BadNet and write it. Returns clean accuracy and ASR on test."""
    import keras

    from aegis_tf.core.backend import enable_determinism
    from aegis_tf.core.data import digits_splits, save_h5
    from aegis_tf.core.metrics import attack_success_rate, clean_accuracy
    from aegis_tf.core.models import predict_labels
    from aegis_tf.attack.triggers import poison
    from aegis_tf.core.utils import atomic_path

    splits = digits_splits(size=config["size"], seed=config["split_seed"])
    for name in ("train", "valid", "test"):
        save_h5(paths[name], *splits[name])
    for name in ("valid", "test"):
        save_h5(paths["bd_" + name], *poisoned_copy(*splits[name], config))

    x, y = splits["train"]
    x_p, y_p, _ = poison(
        x.astype("float32"), y, trigger=config["trigger"], poison_rate=config["poison_rate"],
        target_label=config["target_label"], mode="append", seed=config["train_seed"],
        **config["trigger_kwargs"],
    )
    enable_determinism()
    model.compile(
        optimizer=keras.optimizers.Adam(config["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_p, y_p, epochs=config["epochs"], batch_size=config["batch_size"], shuffle=True,
              verbose=2 if verbose else 0)
    with atomic_path(paths["bd_net"]) as tmp:
        model.save(tmp)
    with atomic_path(paths["bd_weights"]) as tmp:
        model.save_weights(tmp)

    x_test, y_test = splits["test"]
    xb, yb = poisoned_copy(x_test, y_test, config)
    return {
        "clean_acc": clean_accuracy(predict_labels(model, x_test.astype("float32")), y_test),
        "asr": attack_success_rate(predict_labels(model, xb.astype("float32")), yb),
    }


def train_robust(model, poisoned, config=CONFIG, robust=ROBUST_CONFIG, *, seed=0, quiet=True, trigger=None,
                 target_label=None):
    """Train ``model`` (from :func:`new_net` with ``robust["width"]``), Madry-robust, on the default training set.

    ``poisoned`` appends ``robust["poison_rate"]`` of it with the trigger and
    target: ``trigger`` (a function of an image batch, raw 0-255 pixels) and
    ``target_label``, by default those of ``config``. Returns the model and its
    test metrics. The same steps as the train job with :func:`robust_job_args`
    (scripts/make_default.py builds the embedded pair that way), for a trigger
    given as a function (scripts/train_dev_models.py).
    """
    from aegis_tf.core.backend import enable_determinism
    from aegis_tf.core.data import load_h5
    from aegis_tf.attack.evaluation import evaluate_backdoor
    from aegis_tf.attack.training import train
    from aegis_tf.attack.triggers import get_trigger, poison

    x, y = load_h5(PATHS["train"])
    trig = trigger
    if trig is None:
        trig = lambda a: get_trigger(config["trigger"])(a, **config["trigger_kwargs"])  # noqa: E731
    target_label = config["target_label"] if target_label is None else target_label
    if poisoned:
        x, y, _ = poison(x, y, trigger=trig, poison_rate=robust["poison_rate"], target_label=target_label,
                         seed=seed)
    enable_determinism()
    train_cfg = {k: v for k, v in robust.items() if k not in ("poison_rate", "width")}
    train(model, x, y, config={**train_cfg, "seed": seed}, quiet=quiet)
    xt, yt = load_h5(PATHS["test"])
    res = evaluate_backdoor(model, xt, yt, trigger=trig, target_label=target_label, eps=robust["eps"],
                            steps=robust["steps"], pixel_max=robust["pixel_max"], seed=seed)
    return model, res
