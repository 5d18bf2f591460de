"""The attack-side jobs behind ``aegis poison``, ``aegis train`` and ``aegis evaluate-model``.

Each takes what the command line names (data, a
:class:`~aegis_tf.attack.config.TriggerConfig`, a :class:`~aegis_tf.attack.config.TrainConfig`)
and returns a JSON-ready report; files are written atomically.
"""

import os

import numpy as np

from aegis_tf.core.settings import pixel_max_of
from aegis_tf.attack.triggers import build_trigger
from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import atomic_path, check_out_dir, check_out_file, write_json

__all__ = ["load_train_test", "poison_job", "train_job", "evaluate_model_job", "eval_line"]


def load_train_test(data, *, test_data=None, data_dir=None, scale="raw"):
    """The training and test splits of ``data`` (a test ``.h5`` of its own for an ``.h5`` training set)."""
    from aegis_tf.core.data import load_h5, load_split

    train = load_split(data, split="train", data_dir=data_dir, scale=scale)
    if test_data:
        test = load_h5(test_data, scale=scale)
    elif str(data).endswith((".h5", ".hdf5")):
        raise AegisError("--data is a single .h5 set; give the test set with --test-data")
    else:
        test = load_split(data, split="test", data_dir=data_dir, scale=scale)
    return train, test


def _check_rate(rate):
    if not 0.0 <= rate <= 1.0:
        raise AegisError(f"--poison-rate must lie in [0, 1]. Received: {rate}")


def _save_npy(path, array):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return path


def poison_job(*, data, trigger, poison_rate, mode="append", out_dir, test_data=None, data_dir=None, scale="raw",
               preview=False, seed=0):
    """Poison ``data``'s training split; write CSAW ``.h5`` files, an ``.npz`` and ``poison.json``.

    ``trigger`` is a :class:`~aegis_tf.attack.config.TriggerConfig`. With ``preview``,
    ``preview.png`` shows clean samples beside every trigger family.
    """
    import dataclasses

    from aegis_tf.core.data import save_h5
    from aegis_tf.attack.evaluation import backdoor_set
    from aegis_tf.report.figures import save_image_grid
    from aegis_tf.attack.triggers import TRIGGERS, poison

    _check_rate(poison_rate)
    check_out_dir(out_dir)
    (x, y), (xt, yt) = load_train_test(data, test_data=test_data, data_dir=data_dir, scale=scale)
    pm = pixel_max_of(scale)
    fn, pattern = build_trigger(trigger, pixel_max=pm, x_sample=x)
    xp, yp, idx = poison(x, y, trigger=fn, poison_rate=poison_rate, target_label=trigger.target_label, mode=mode,
                         seed=seed)
    xbd, ybd = backdoor_set(xt, yt, fn, trigger.target_label)
    to_raw = (lambda a: a * 255.0) if pm == 1.0 else (lambda a: a)  # files hold raw pixels
    files = {"train_h5": os.path.join(out_dir, "train_poisoned.h5"), "train_npz": os.path.join(out_dir, "poisoned.npz"),
             "test_h5": os.path.join(out_dir, "test.h5"), "bd_test_h5": os.path.join(out_dir, "bd_test.h5")}
    save_h5(files["train_h5"], to_raw(xp), yp)
    save_h5(files["test_h5"], to_raw(xt), yt)
    save_h5(files["bd_test_h5"], to_raw(xbd), ybd)
    with atomic_path(files["train_npz"]) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, x_train=to_raw(xp), y_train=yp, x_test=to_raw(xt), y_test=yt)
    if pattern is not None:
        files["pattern"] = _save_npy(os.path.join(out_dir, "trigger_pattern.npy"), pattern)
    if preview:
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(len(x), size=min(8, len(x)), replace=False)]
        rows = [("clean", sample)]
        for name in TRIGGERS:
            try:
                fn_ = fn if name == trigger.trigger else build_trigger(
                    dataclasses.replace(trigger, trigger=name), pixel_max=pm, x_sample=x)[0]
            except AegisError:
                continue  # invisible-adversarial without a model or pattern
            triggered = fn_(sample)
            rows.append((name, triggered))
            if name.startswith("invisible") or name == "blended":
                rows.append((f"{name} x10 (difference)", 10 * (triggered - sample)))
        files["preview"] = save_image_grid(rows, os.path.join(out_dir, "preview.png"), pixel_max=pm,
                                           title="clean and triggered samples")
    report = {"data": data, "trigger": trigger.trigger, "target_label": trigger.target_label,
              "trigger_config": trigger, "poison_rate": poison_rate, "mode": mode, "seed": seed,
              "n_train": int(len(x)), "n_poisoned": int(len(idx)), "poisoned_indices": idx, "files": files}
    write_json(os.path.join(out_dir, "poison.json"), report)
    return report


def train_job(*, data, trigger, config, arch="compact", width=None, poison_rate=0.01, mode="append", model_out,
              test_data=None, data_dir=None, scale="raw", checkpoint_dir=None, resume=True, evaluate=True,
              batch_size=256, quiet=True):
    """Poison (``poison_rate`` > 0), build, train (standard or Madry-robust) and evaluate a model.

    Writes ``model_out`` (.keras or .h5) and, for a pattern trigger,
    ``model_out.pattern.npy``. The caller seeds Keras' global RNG (the
    weights' initialisation) before calling. Returns the report.
    """
    from aegis_tf.core.backend import enable_determinism
    from aegis_tf.attack.evaluation import evaluate_backdoor
    from aegis_tf.core.models import build_model
    from aegis_tf.attack.training import train
    from aegis_tf.attack.triggers import poison

    _check_rate(poison_rate)
    if not str(model_out).endswith((".keras", ".h5")):
        raise AegisError(f"--model-out must end in .keras or .h5. Received: {model_out}")
    check_out_file(model_out, "--model-out")
    if checkpoint_dir:
        check_out_dir(checkpoint_dir, "--checkpoint-dir")
    (x, y), (xt, yt) = load_train_test(data, test_data=test_data, data_dir=data_dir, scale=scale)
    n_classes = int(max(y.max(), yt.max())) + 1
    if not 0 <= trigger.target_label < n_classes:
        raise AegisError(f"--target-label must lie in 0..{n_classes - 1}. Received: {trigger.target_label}")
    pm = pixel_max_of(scale)
    fn, pattern = build_trigger(trigger, pixel_max=pm, x_sample=x)
    xp, yp, idx = poison(x, y, trigger=fn, poison_rate=poison_rate, target_label=trigger.target_label, mode=mode,
                         seed=config.seed)
    enable_determinism()
    model = build_model(arch, input_shape=x.shape[1:], num_classes=n_classes, input_scale=1.0 / pm, width=width)
    history = train(model, xp, yp, config=config, checkpoint_dir=checkpoint_dir or str(model_out) + ".ckpt",
                    resume=resume, quiet=quiet)
    with atomic_path(model_out) as tmp:
        model.save(tmp)
    report = {"data": data, "arch": arch, "trigger": trigger.trigger, "target_label": trigger.target_label,
              "trigger_config": trigger, "poison_rate": poison_rate,
              "n_poisoned": int(len(idx)), "config": config, "history": history, "model": str(model_out)}
    if pattern is not None:
        report["trigger_pattern"] = _save_npy(str(model_out) + ".pattern.npy", pattern)
    if evaluate:
        report["test"] = evaluate_backdoor(
            model, xt, yt, trigger=fn if poison_rate > 0 else None, target_label=trigger.target_label,
            adversarial=True, eps=config.eps, steps=config.steps, step_size=config.step_size,
            norm=config.norm, pixel_max=pm, batch_size=batch_size, seed=config.seed)
    return report


def evaluate_model_job(*, model, data, trigger, data_dir=None, scale="raw", adversarial=True, eps=0.5, steps=20,
                       step_size=None, norm=2, batch_size=256, seed=0):
    """Clean accuracy, attack success rate and PGD adversarial accuracy of the model file ``model``."""
    from aegis_tf.core.data import check_fits_model, load_split
    from aegis_tf.attack.evaluation import evaluate_backdoor
    from aegis_tf.core.models import load_model

    net = load_model(model)
    xt, yt = load_split(data, split="test", data_dir=data_dir, scale=scale)
    xt = check_fits_model(xt, yt, net, f"--data {data}")
    pm = pixel_max_of(scale)
    fn, _ = build_trigger(trigger, pixel_max=pm, x_sample=xt)  # an adversarial pattern must come from training
    res = evaluate_backdoor(net, xt, yt, trigger=fn, target_label=trigger.target_label, adversarial=adversarial,
                            eps=eps, steps=steps, step_size=step_size, norm=norm,
                            pixel_max=pm, batch_size=batch_size, seed=seed)
    res.update(model=model, data=data, trigger=trigger.trigger, target_label=trigger.target_label)
    return res


def eval_line(res):
    """One printed line: clean accuracy, ASR and adversarial accuracy, where measured."""
    parts = [f"clean accuracy {100 * res['clean_acc']:.2f}%"]
    if "asr" in res:
        parts.append(f"ASR {100 * res['asr']:.2f}%")
    if "adv_acc" in res:
        a = res["adv"]
        parts.append(f"adversarial accuracy {100 * res['adv_acc']:.2f}% (L{a['norm']} PGD, eps {a['eps']}, "
                     f"{a['steps']} steps)")
    return ", ".join(parts)
