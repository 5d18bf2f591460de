"""Standard and adversarially robust (Madry PGD) training, with checkpoints and resume.

Defaults follow the AEGIS paper: SGD with momentum 0.9, weight decay 5e-4,
learning rate 0.1 dropped 10x at 50% and 75% of the epochs, and for robust
training L2 PGD with eps 0.5 (in units of the [0, 1] image range) and 20
steps of size 2.5 * eps / steps (MadryLab robustness' rule). Every one is an
argument.

Randomness comes only from ``seed``: epoch ``e`` shuffles and draws PGD random
starts from ``np.random.default_rng([seed, e])``, so a run resumed from the
checkpoint of epoch ``e`` continues exactly as the uninterrupted run would.
The weight initialisation is the caller's (build the model after
``keras.utils.set_random_seed``).

Checkpoints: after every epoch, ``checkpoint_dir`` gets ``last.weights.h5``
(model), ``last.optimizer.npz`` (optimizer variables, no pickle) and
``last.json`` (epoch, history and the configuration), written atomically, JSON last.

``augment=True`` adds the CIFAR recipe (zero-pad 4, random crop, horizontal
flip; see :mod:`aegis_tf.core.augment`). The compiled work per batch lives in
:mod:`aegis_tf.core.backend` (``make_trainer``); under JAX a whole chunk of
batches runs in one jitted call with the data on the device.
"""

import dataclasses
import json
import os
import time

import keras
import numpy as np

from aegis_tf.core import backend
from aegis_tf.core.pgd import make_step
from aegis_tf.core.augment import crop_flip_params
from aegis_tf.attack.config import TrainConfig
from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import logits_model
from aegis_tf.core.utils import atomic_path, progress, write_json

__all__ = ["TrainConfig", "train", "learning_rate_at"]


def _as_config(config):
    """A :class:`TrainConfig` from one, from a dict of overrides, or from None."""
    if isinstance(config, TrainConfig):
        return config
    config = dict(config or {})
    unknown = set(config) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise AegisError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    return TrainConfig(**config)


def learning_rate_at(epoch, config):
    """Learning rate for ``epoch`` (0-based): dropped by ``lr_drop`` at each milestone."""
    drops = sum(epoch >= int(round(m * config["epochs"])) for m in config["lr_milestones"])
    return config["learning_rate"] * config["lr_drop"] ** drops


def _paths(checkpoint_dir):
    return {k: os.path.join(checkpoint_dir, "last" + s)
            for k, s in (("weights", ".weights.h5"), ("optimizer", ".optimizer.npz"), ("state", ".json"))}


def _save_checkpoint(checkpoint_dir, model, optimizer, state):
    p = _paths(checkpoint_dir)
    with atomic_path(p["weights"]) as tmp:
        model.save_weights(tmp)
    with atomic_path(p["optimizer"]) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{f"v{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    write_json(p["state"], state)  # last: a checkpoint counts only once its state is there


def _load_checkpoint(checkpoint_dir, model, optimizer, config):
    p = _paths(checkpoint_dir)
    if not os.path.isfile(p["state"]):
        return None
    with open(p["state"]) as f:
        state = json.load(f)
    if state.get("config") != config.to_dict():
        raise AegisError(
            f"checkpoint in {checkpoint_dir} was made with another configuration; "
            "use a new --checkpoint-dir or the same options"
        )
    model.load_weights(p["weights"])
    with np.load(p["optimizer"], allow_pickle=False) as f:
        values = [f[f"v{i}"] for i in range(len(f.files))]
    if len(values) != len(optimizer.variables):
        raise AegisError(f"checkpoint optimizer state in {checkpoint_dir} does not fit this model")
    for v, val in zip(optimizer.variables, values):
        v.assign(val)
    return state


def train(model, x, y, *, config=None, checkpoint_dir=None, resume=True, quiet=False, on_epoch_end=None):
    """Train ``model`` in place on ``(x, y)``; returns the history (list of per-epoch dicts).

    ``x`` holds pixels in [0, ``pixel_max``] (the model's own input units);
    ``eps`` and ``step_size`` are in units of [0, 1] and scaled by
    ``pixel_max``. With ``checkpoint_dir`` and ``resume``, training continues
    after the last completed epoch found there. ``on_epoch_end(epoch, record)``
    is called after each checkpoint (tests use it to interrupt a run).
    """
    config = _as_config(config)
    x = np.asarray(x, dtype=keras.config.floatx())
    y = np.asarray(y, dtype="int64")
    if len(x) == 0:
        raise AegisError("training set is empty")
    optimizer = keras.optimizers.SGD(
        learning_rate=config["learning_rate"], momentum=config["momentum"], weight_decay=config["weight_decay"]
    )
    logits = logits_model(model)
    trainer = backend.make_trainer(logits, optimizer, x, y)
    attacks = {}

    def attack_for(epoch):
        """(step, steps) of this epoch's PGD (eps ramps up over ``eps_warmup`` epochs)."""
        scale = min(1.0, (epoch + 1) / config["eps_warmup"]) if config["eps_warmup"] else 1.0
        if scale not in attacks:
            pm = config["pixel_max"]
            step = make_step(norm=config["norm"], eps=scale * config["eps"] * pm,
                             step_size=scale * config["step_size"] * pm, clip_min=0.0, clip_max=pm)
            attacks[scale] = (step, int(config["steps"]))
        return attacks[scale]

    start, history = 0, []
    if checkpoint_dir and resume:
        state = _load_checkpoint(checkpoint_dir, model, optimizer, config)
        if state is not None:
            start, history = state["epoch"] + 1, state["history"]

    n, bs = len(x), config["batch_size"]
    for epoch in range(start, config["epochs"]):
        rng = np.random.default_rng([config["seed"], epoch])
        optimizer.learning_rate.assign(learning_rate_at(epoch, config))
        order = rng.permutation(n)
        augment = crop_flip_params(n, rng) if config["augment"] else None
        bar = progress(total=-(-n // bs), quiet=quiet, desc=f"epoch {epoch + 1}/{config['epochs']}")
        t0 = time.perf_counter()
        with bar:
            loss = trainer.epoch(order, rng, batch_size=bs, attack=attack_for(epoch) if config["robust"] else None,
                                 augment=augment, on_batches=bar.update)
        record = {"epoch": epoch, "loss": loss, "learning_rate": learning_rate_at(epoch, config),
                  "seconds": round(time.perf_counter() - t0, 2)}
        history.append(record)
        if checkpoint_dir:
            _save_checkpoint(checkpoint_dir, model, optimizer, {"epoch": epoch, "history": history, "config": config.to_dict()})
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    return history
