"""Backdoor evaluation: clean accuracy, attack success rate, adversarial accuracy."""

import numpy as np

from aegis_tf.core.pgd import projected_gradient_descent
from aegis_tf.core.settings import default_step_size, norm_name, parse_norm
from aegis_tf.core.metrics import attack_success_rate, clean_accuracy
from aegis_tf.core.models import predict_labels

__all__ = ["backdoor_set", "backdoor_sets", "evaluate_backdoor"]


def backdoor_set(x, y, trigger, target_label, *, sources=None, mapping="all-to-one", n_classes=None):
    """The attack's test set, with ``trigger`` (a function of an image batch) applied and
    labelled as the backdoor sends them: every image whose true class is not
    ``target_label`` (or of the ``sources`` classes, for a source-specific backdoor),
    labelled ``target_label``; for an all-to-all backdoor, every image, labelled y + 1."""
    from aegis_tf.attack.triggers import backdoor_labels

    y = np.asarray(y)
    keep = _kept(y, target_label, sources, mapping)
    labels = backdoor_labels(y[keep], target_label=target_label, mapping=mapping, n_classes=n_classes)
    return trigger(x[keep]), labels.astype("int64")


def _kept(y, target_label, sources, mapping):
    """Which test images a backdoor's ASR is measured on (:func:`backdoor_set`)."""
    y = np.asarray(y)
    if mapping == "all-to-all":
        return np.ones(len(y), bool)
    if sources:
        return np.isin(y, sources)
    return y != target_label


def backdoor_sets(configs, x, y, *, pixel_max=255.0, n_classes=None):
    """Each backdoor's attack test set, ``[(config, x_triggered, labels)]``: :func:`backdoor_set`
    with each :class:`~aegis_tf.attack.config.TriggerConfig`'s trigger, target, sources and mapping
    (a model with two backdoors has two)."""
    from aegis_tf.attack.triggers import build_trigger

    out = []
    for c in configs:
        fn, _ = build_trigger(c, pixel_max=pixel_max, x_sample=x)
        out.append((c, *backdoor_set(x, y, fn, c.target_label, sources=c.source_classes, mapping=c.mapping,
                                     n_classes=n_classes)))
    return out


def evaluate_backdoor(model, x, y, *, trigger=None, target_label=None, adversarial=True, eps=0.5, steps=20,
                      step_size=None, norm=2, pixel_max=255.0, batch_size=256, seed=0, sources=None,
                      mapping="all-to-one"):
    """Evaluate ``model`` on clean test images ``(x, y)``.

    * ``clean_acc``: accuracy on ``x``.
    * ``asr`` (with ``trigger``, a function of an image batch): the trigger is
      applied to the images whose true class is not ``target_label``; the
      fraction predicted as ``target_label``. A source-specific backdoor (``sources``)
      is measured on the images of its sources, and ``leak`` is the share of the other
      classes' triggered images (not the target's) predicted as the target; an
      all-to-all backdoor (``mapping``) on every image, as predicted y + 1.
      ``asr_on_correct``: the same share on the images the model classifies right without
      the trigger (an all-to-all backdoor must recognise y to send it to y + 1, so its ASR
      cannot exceed the clean accuracy by much; this one can reach 100%).
    * ``adv_acc`` (with ``adversarial``): accuracy under untargeted PGD with
      ``eps``/``step_size`` in units of [0, 1] (scaled by ``pixel_max``),
      random start, the training parameters by default; ``norm`` is any spelling
      :func:`~aegis_tf.core.settings.parse_norm` takes (2, "inf", np.inf...).
    """
    pred = predict_labels(model, x, batch_size=batch_size)
    out = {"clean_acc": clean_accuracy(pred, y), "n_test": int(len(x))}
    if trigger is not None:
        n_classes = int(model.output_shape[-1])
        xt, yt = backdoor_set(x, y, trigger, target_label, sources=sources, mapping=mapping, n_classes=n_classes)
        pred_t = predict_labels(model, xt, batch_size=batch_size)
        out["asr"], hit = attack_success_rate(pred_t, yt), pred_t == yt
        out["n_triggered"] = int(len(yt))
        # backdoor_set's images, in its order: those the model gets right without the trigger
        right = (pred == np.asarray(y))[_kept(y, target_label, sources, mapping)]
        if right.any():
            out["asr_on_correct"] = float(np.mean(hit[right]))
            out["n_correct"] = int(right.sum())
        if sources:
            others = ~np.isin(np.asarray(y), sources) & (np.asarray(y) != target_label)
            if others.any():
                pred = predict_labels(model, trigger(x[others]), batch_size=batch_size)
                out["leak"] = float(np.mean(pred == target_label))
    if adversarial:
        norm = parse_norm(norm)
        step_size = default_step_size(eps, steps) if step_size is None else step_size
        adv = projected_gradient_descent(
            model, x, eps=eps * pixel_max, step_size=step_size * pixel_max, steps=steps, norm=norm, y=y,
            clip_min=0.0, clip_max=pixel_max, seed=seed, batch_size=batch_size,
        )
        out["adv_acc"] = clean_accuracy(predict_labels(model, adv, batch_size=batch_size), y)
        out["adv"] = {"eps": eps, "steps": steps, "step_size": step_size, "norm": norm_name(norm)}
    return out
