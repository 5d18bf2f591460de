"""Repair from a recovered trigger, with clean data only (no attacker data).

The lab's pruning needs the attacker's poisoned validation set to measure
ASR, and it prunes the channels that clean images leave dormant, which a
backdoor need not use. With a trigger recovered by ``aegis detect``
(:mod:`aegis_tf.detect.recovered`) a defender can do better with clean images alone:

* :func:`trigger_prune_curve` ranks the last pooling layer's channels by how
  much the recovered trigger raises their mean activation (triggered minus
  clean, on the same clean validation images) and prunes the most raised
  first. The ASR it watches is that of the *recovered* trigger on the
  validation images; B' at a threshold is the first model where that ASR is
  at most ``stop_asr`` or, if that never comes first, where the clean
  accuracy has dropped by the threshold.
* :func:`unlearn` fine-tunes a copy of B on clean validation images plus a
  share of them carrying the recovered trigger with their *true* labels
  (Neural Cleanse's unlearning, Wang et al. 2019), with a bounded number of
  epochs and a held-out part of the validation set for early stopping.

The attacker's true trigger is never used here; ``repair`` measures the true
ASR on test data only.
"""

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import copy_model, find_last_pooling_layer, predict_labels
from aegis_tf.core.utils import progress
from repair.prune import THRESHOLDS, _activations, _channel_means, _check_thresholds, _first_reaching, prune_curve

__all__ = ["triggered_set", "trigger_channel_gap", "trigger_prune_curve", "check_unlearn_settings", "unlearn"]


def triggered_set(triggers, x, y, *, groups=False):
    """Clean images with the recovered triggers, labelled with each trigger's target.

    Each trigger is applied to the images whose label is not its target; the
    sets of several triggers are concatenated. Returns ``(x_triggered, targets)``,
    and with ``groups`` also the index of the trigger of each image.
    """
    xs, ys, gs = [], [], []
    for i, t in enumerate(triggers):
        keep = np.asarray(y) != t.target
        if not keep.any():
            raise AegisError(f"no clean images outside class {t.target} to apply its recovered trigger to")
        xs.append(t.apply(np.asarray(x)[keep]))
        ys.append(np.full(int(keep.sum()), t.target, dtype="int64"))
        gs.append(np.full(int(keep.sum()), i))
    if not xs:
        raise AegisError("no recovered trigger to apply")
    out = (np.concatenate(xs), np.concatenate(ys))
    return out + (np.concatenate(gs),) if groups else out


def trigger_channel_gap(model, triggers, x, y, *, layer=None, batch_size=256):
    """Per channel of the pooling layer: mean activation with the triggers minus without,
    on the same clean images. Returns ``(gap, pooling layer name)``."""
    pool = find_last_pooling_layer(model, layer)
    gaps = []
    for t in triggers:
        keep = np.asarray(y) != t.target
        clean = _channel_means(_activations(model, pool, np.asarray(x)[keep], batch_size))
        trig = _channel_means(_activations(model, pool, t.apply(np.asarray(x)[keep]), batch_size))
        gaps.append(trig - clean)
    return np.max(gaps, axis=0), pool.name


def trigger_prune_curve(model, triggers, x, y, *, layer=None, thresholds=THRESHOLDS, stop_asr=0.05, batch_size=256,
                        quiet=False):
    """Prune the channels the recovered trigger raises most, first.

    Returns a :class:`~repair.prune.PruneCurve` whose ``asr`` is the recovered
    triggers' ASR on ``x`` (``group_asr``: per trigger) and whose ``saved[t]`` is
    the first ``k`` with every trigger's ASR at most ``stop_asr``, or with an accuracy drop of ``t`` points if
    that comes first (None if neither happens). ``curve.gap`` holds each
    channel's activation gap, ``curve.stop_reason[t]`` says which rule chose ``k``.
    """
    _check_thresholds(thresholds)
    if not 0.0 <= stop_asr < 1.0:
        raise AegisError(f"--stop-asr must lie in [0, 1). Received: {stop_asr}")
    gap, _ = trigger_channel_gap(model, triggers, x, y, layer=layer, batch_size=batch_size)
    order = np.argsort(-gap, kind="stable")
    x_trig, y_trig, groups = triggered_set(triggers, x, y, groups=True)
    curve = prune_curve(model, x, y, x_trig, y_trig, layer=layer, thresholds=thresholds, batch_size=batch_size,
                        quiet=quiet, order=order, groups=groups)
    worst = curve.group_asr.max(axis=0)  # every trigger must fail, not their average
    if worst[0] <= stop_asr:
        raise AegisError(f"the recovered trigger(s) reach at most {100 * worst[0]:.1f}% ASR on B's validation images "
                         f"already (--stop-asr {stop_asr}): nothing for trigger-aware pruning to remove")
    low = np.nonzero(worst <= stop_asr + 1e-12)[0]
    k_asr = int(low[0]) if low.size else None
    by_drop = _first_reaching(curve.clean_acc, thresholds)
    curve.saved, curve.stop_reason = {}, {}
    for t in thresholds:
        ks = [(k, why) for k, why in ((k_asr, "recovered-trigger ASR <= stop"), (by_drop[t], "accuracy drop"))
              if k is not None]
        k, why = min(ks) if ks else (None, None)
        curve.saved[t], curve.stop_reason[t] = k, why
    curve.gap = gap
    return curve


def check_unlearn_settings(*, epochs, share, holdout=0.2, max_drop=0.02):
    """One-line errors for unlearning settings out of range (checked before any work)."""
    for name, v, lo, hi in (("--unlearn-share", share, 0.0, 1.0), ("holdout", holdout, 0.05, 0.9),
                            ("max_drop", max_drop, 0.0, 1.0)):
        if not lo <= v <= hi:
            raise AegisError(f"{name} must lie in [{lo}, {hi}]. Received: {v}")
    if epochs < 1:
        raise AegisError(f"--unlearn-epochs must be at least 1. Received: {epochs}")


def unlearn(model, triggers, x, y, *, epochs=20, learning_rate=1e-3, share=0.5, holdout=0.2, max_drop=0.02,
            patience=5, batch_size=32, soft_targets=True, seed=0, quiet=False):
    """Fine-tune a copy of ``model`` to ignore the recovered triggers. Returns ``(model, history)``.

    ``holdout`` of ``(x, y)`` is kept apart for early stopping; the rest is
    trained on, with ``share`` of it added again carrying a trigger (in turn,
    when there are several) and its true label. After each epoch the held-out
    clean accuracy and recovered-trigger ASR are measured; the weights kept
    are those of the epoch with the lowest ASR among the epochs whose
    accuracy stayed within ``max_drop`` of the start, or within two held-out
    images on a held-out set too small to resolve ``max_drop`` (the start
    itself if none did). Training stops after ``patience`` epochs without a
    better one.
    """
    import keras

    check_unlearn_settings(epochs=epochs, share=share, holdout=holdout, max_drop=max_drop)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_hold = max(1, int(round(holdout * len(x))))
    hold, train = idx[:n_hold], idx[n_hold:]
    xh, yh = np.asarray(x[hold], "float32"), np.asarray(y[hold])
    xh_trig, yh_trig = triggered_set(triggers, xh, yh)
    xtr, ytr = np.asarray(x[train], "float32"), np.asarray(y[train])
    pick = rng.choice(len(xtr), size=int(round(share * len(xtr))), replace=False)
    parts_x, parts_y = [xtr], [ytr]
    for j, t in enumerate(triggers):  # the picked images, split between the triggers
        sel = pick[j::len(triggers)]
        parts_x.append(t.apply(xtr[sel], offset=j))
        parts_y.append(ytr[sel])
    x_fit, y_fit = np.concatenate(parts_x), np.concatenate(parts_y)
    n_classes = int(model.output_shape[-1])
    targets = np.eye(n_classes, dtype="float32")[y_fit]
    if soft_targets:  # the clean images keep B's own outputs, so its clean behaviour moves as little as it can
        targets[:len(xtr)] = np.asarray(model.predict(xtr, batch_size=256, verbose=0), "float32")

    def measure(m):
        return (float(np.mean(predict_labels(m, xh) == yh)), float(np.mean(predict_labels(m, xh_trig) == yh_trig)))

    work = copy_model(model)
    work.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="categorical_crossentropy")
    acc0, asr0 = measure(work)
    allowed = max(max_drop, 2.0 / n_hold) + 1e-12
    history = [{"epoch": 0, "holdout_clean_acc": acc0, "holdout_recovered_asr": asr0}]
    best, best_key, kept, since = work.get_weights(), (asr0, -acc0), 0, 0
    for epoch in progress(range(1, epochs + 1), quiet=quiet, desc="unlearning"):
        order = rng.permutation(len(x_fit))
        work.fit(x_fit[order], targets[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        acc, asr = measure(work)
        history.append({"epoch": epoch, "holdout_clean_acc": acc, "holdout_recovered_asr": asr})
        if acc >= acc0 - allowed and (asr, -acc) < best_key:
            best, best_key, kept, since = work.get_weights(), (asr, -acc), epoch, 0
        else:
            since += 1
            if since >= patience:
                break
    work.set_weights(best)
    return work, {"epochs": history, "kept_epoch": kept, "n_holdout": int(n_hold), "allowed_drop": allowed,
                  "n_train": int(len(xtr)), "n_triggered": int(len(pick))}
