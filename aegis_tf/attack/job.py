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


def _specs(trigger):
    """The backdoor(s) of ``trigger``: a TriggerConfig or a list of them, as a list."""
    specs = list(trigger) if isinstance(trigger, (list, tuple)) else [trigger]
    if not specs:
        raise AegisError("expected at least one trigger")
    for spec in specs[1:]:
        if spec.trigger == "invisible-adversarial" or (spec.trigger == "blended" and spec.blend_pattern != "noise"):
            raise AegisError("a second backdoor must use a seeded trigger (not invisible-adversarial or a blend "
                             "pattern file): only the first one's pattern is saved")
    if len({s.target_label for s in specs if s.mapping == "all-to-one"}) < sum(s.mapping == "all-to-one"
                                                                               for s in specs):
        raise AegisError("two backdoors need two targets")
    return specs


def _poison_all(x, y, specs, fns, *, poison_rate, n_classes, mode, seed, pixel_max):
    """Poison ``(x, y)`` with every backdoor of ``specs`` (each drawn from the clean set; the
    first with ``seed``, the next with ``seed + 1``...). Returns ``(x, y, counts)``."""
    from aegis_tf.attack.triggers import poison_backdoor

    if len(specs) > 1 and mode != "append":
        raise AegisError("two backdoors in one model need --mode append")
    xp, yp, counts = x, y, []
    for i, (spec, fn) in enumerate(zip(specs, fns)):
        xi, yi, chosen = poison_backdoor(x, y, spec, trigger=fn, poison_rate=poison_rate, n_classes=n_classes,
                                         mode=mode, seed=seed + i, pixel_max=pixel_max)
        if i == 0:
            xp, yp = xi, yi
        else:
            xp, yp = np.concatenate([xp, xi[len(x):]]), np.concatenate([yp, yi[len(y):]])
        counts.append({"backdoor": spec.describe(), **{f"n_{k}": int(len(v)) for k, v in chosen.items()},
                       "poisoned_indices": chosen["poisoned"]})
    return xp, yp, counts


def _evaluate_all(model, xt, yt, specs, fns, *, adversarial, **kwargs):
    """:func:`evaluate_backdoor` for the first backdoor (with the adversarial accuracy), plus
    ``backdoors``: each backdoor's ASR (and leak, for a source-specific one)."""
    from aegis_tf.attack.evaluation import evaluate_backdoor

    res, rows = None, []
    for i, (spec, fn) in enumerate(zip(specs, fns)):
        r = evaluate_backdoor(model, xt, yt, trigger=fn, target_label=spec.target_label, sources=spec.source_classes,
                              mapping=spec.mapping, adversarial=adversarial and i == 0, **kwargs)
        res = r if res is None else res
        rows.append({"backdoor": spec.describe(), "asr": r["asr"],
                     **{k: r[k] for k in ("leak", "asr_on_correct") if k in r}})
    res["backdoors"] = rows
    return res


def poison_job(*, data, trigger, poison_rate, mode="append", out_dir, test_data=None, data_dir=None, scale="raw",
               preview=False, seed=0):
    """Poison ``data``'s training split; write CSAW ``.h5`` files, an ``.npz`` and ``poison.json``.

    ``trigger`` is a :class:`~aegis_tf.attack.config.TriggerConfig` (or a list of two, two
    backdoors in one set). ``bd_test.h5`` holds the first backdoor's triggered test images.
    With ``preview``, ``preview.png`` shows clean samples beside every trigger family.
    """
    import dataclasses

    from aegis_tf.core.data import save_h5
    from aegis_tf.attack.evaluation import backdoor_set
    from aegis_tf.report.figures import save_image_grid
    from aegis_tf.attack.triggers import TRIGGERS

    _check_rate(poison_rate)
    check_out_dir(out_dir)
    specs = _specs(trigger)
    trigger = specs[0]
    (x, y), (xt, yt) = load_train_test(data, test_data=test_data, data_dir=data_dir, scale=scale)
    n_classes = int(max(y.max(), yt.max())) + 1
    pm = pixel_max_of(scale)
    built = [build_trigger(spec, pixel_max=pm, x_sample=x) for spec in specs]
    fn, pattern = built[0]
    xp, yp, counts = _poison_all(x, y, specs, [b[0] for b in built], poison_rate=poison_rate, n_classes=n_classes,
                                 mode=mode, seed=seed, pixel_max=pm)
    idx = counts[0].pop("poisoned_indices")
    xbd, ybd = backdoor_set(xt, yt, fn, trigger.target_label, sources=trigger.source_classes,
                            mapping=trigger.mapping, n_classes=n_classes)
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
              "n_train": int(len(x)), "n_poisoned": int(len(idx)), "poisoned_indices": idx, "files": files,
              "backdoors": [{k: v for k, v in c.items() if k != "poisoned_indices"} for c in counts]}
    if len(specs) > 1:
        report["trigger_configs"] = specs
    write_json(os.path.join(out_dir, "poison.json"), report)
    return report


def train_job(*, data, trigger, config, arch="compact", width=None, poison_rate=0.01, mode="append", model_out,
              test_data=None, data_dir=None, scale="raw", checkpoint_dir=None, resume=True, evaluate=True,
              batch_size=256, quiet=True):
    """Poison (``poison_rate`` > 0), build, train (standard or Madry-robust) and evaluate a model.

    ``trigger`` is a :class:`~aegis_tf.attack.config.TriggerConfig`, or a list of two (two
    backdoors in one model, each poisoning ``poison_rate`` of the set). Writes
    ``model_out`` (.keras or .h5) and, for a pattern trigger, ``model_out.pattern.npy``.
    The caller seeds Keras' global RNG (the weights' initialisation) before calling.
    Returns the report.
    """
    from aegis_tf.core.backend import enable_determinism
    from aegis_tf.core.models import build_model
    from aegis_tf.attack.training import train

    _check_rate(poison_rate)
    if not str(model_out).endswith((".keras", ".h5")):
        raise AegisError(f"--model-out must end in .keras or .h5. Received: {model_out}")
    check_out_file(model_out, "--model-out")
    if checkpoint_dir:
        check_out_dir(checkpoint_dir, "--checkpoint-dir")
    specs = _specs(trigger)
    trigger = specs[0]
    (x, y), (xt, yt) = load_train_test(data, test_data=test_data, data_dir=data_dir, scale=scale)
    n_classes = int(max(y.max(), yt.max())) + 1
    for spec in specs:
        if not 0 <= spec.target_label < n_classes:
            raise AegisError(f"--target-label must lie in 0..{n_classes - 1}. Received: {spec.target_label}")
    pm = pixel_max_of(scale)
    built = [build_trigger(spec, pixel_max=pm, x_sample=x) for spec in specs]
    fn, pattern = built[0]
    xp, yp, counts = _poison_all(x, y, specs, [b[0] for b in built], poison_rate=poison_rate, n_classes=n_classes,
                                 mode=mode, seed=config.seed, pixel_max=pm)
    idx = counts[0].pop("poisoned_indices")
    for c in counts[1:]:
        c.pop("poisoned_indices")
    enable_determinism()
    model = build_model(arch, input_shape=x.shape[1:], num_classes=n_classes, input_scale=1.0 / pm, width=width)
    history = train(model, xp, yp, config=config, checkpoint_dir=checkpoint_dir or str(model_out) + ".ckpt",
                    resume=resume, quiet=quiet)
    with atomic_path(model_out) as tmp:
        model.save(tmp)
    report = {"data": data, "arch": arch, "trigger": trigger.trigger, "target_label": trigger.target_label,
              "trigger_config": trigger, "poison_rate": poison_rate, "n_poisoned": int(len(idx)),
              "backdoors": counts, "config": config, "history": history, "model": str(model_out)}
    if len(specs) > 1:
        report["trigger_configs"] = specs
    if pattern is not None:
        report["trigger_pattern"] = _save_npy(str(model_out) + ".pattern.npy", pattern)
    if evaluate:
        common = dict(eps=config.eps, steps=config.steps, step_size=config.step_size, norm=config.norm,
                      pixel_max=pm, batch_size=batch_size, seed=config.seed)
        if poison_rate > 0:
            report["test"] = _evaluate_all(model, xt, yt, specs, [b[0] for b in built], adversarial=True, **common)
        else:
            from aegis_tf.attack.evaluation import evaluate_backdoor

            report["test"] = evaluate_backdoor(model, xt, yt, adversarial=True, **common)
    write_json(str(model_out) + ".json", report)  # MODEL.json: evaluate reads the backdoor from it
    return report


def evaluate_model_job(*, model, data, trigger, data_dir=None, scale="raw", adversarial=True, eps=0.5, steps=20,
                       step_size=None, norm=2, batch_size=256, seed=0):
    """Clean accuracy, attack success rate and PGD adversarial accuracy of the model file ``model``.

    ``trigger`` is a :class:`~aegis_tf.attack.config.TriggerConfig` or a list (a model with two
    backdoors): each backdoor's ASR is in ``backdoors`` (with the leak of a source-specific
    one: its trigger on the other classes); ``asr`` is the first's."""
    from aegis_tf.core.data import check_fits_model, load_split
    from aegis_tf.core.models import load_model

    specs = _specs(trigger)
    net = load_model(model)
    xt, yt = load_split(data, split="test", data_dir=data_dir, scale=scale)
    xt = check_fits_model(xt, yt, net, f"--data {data}")
    pm = pixel_max_of(scale)
    fns = [build_trigger(spec, pixel_max=pm, x_sample=xt)[0] for spec in specs]  # an adversarial pattern comes from training
    res = _evaluate_all(net, xt, yt, specs, fns, adversarial=adversarial, eps=eps, steps=steps, step_size=step_size,
                        norm=norm, pixel_max=pm, batch_size=batch_size, seed=seed)
    res.update(model=model, data=data, trigger=specs[0].trigger, target_label=specs[0].target_label)
    return res


def eval_line(res):
    """One printed line: clean accuracy, ASR (each backdoor's, with a source-specific one's
    leak onto the other classes) and adversarial accuracy, where measured."""
    parts = [f"clean accuracy {100 * res['clean_acc']:.2f}%"]
    rows = res.get("backdoors") or []
    if len(rows) > 1 or any("leak" in r or "all-to-all" in r["backdoor"] or "all ->" not in r["backdoor"]
                            for r in rows):
        for r in rows:
            leak = f", leak {100 * r['leak']:.2f}% on the other classes" if "leak" in r else ""
            if "all-to-all" in r["backdoor"] and "asr_on_correct" in r:
                leak += f"; {100 * r['asr_on_correct']:.2f}% on the images it classifies right"
            parts.append(f"ASR {100 * r['asr']:.2f}% ({r['backdoor']}{leak})")
    elif "asr" in res:
        parts.append(f"ASR {100 * res['asr']:.2f}%")
    if "adv_acc" in res:
        a = res["adv"]
        parts.append(f"adversarial accuracy {100 * res['adv_acc']:.2f}% (L{a['norm']} PGD, eps {a['eps']}, "
                     f"{a['steps']} steps)")
    return ", ".join(parts)
