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
from repair.config import check_reinvert_settings
from repair.prune import THRESHOLDS, _activations, _channel_means, _check_thresholds, _first_reaching, prune_curve

__all__ = ["triggered_set", "trigger_channel_gap", "trigger_prune_curve", "check_unlearn_settings", "unlearn",
           "check_reinvert_settings", "reinverted_triggers", "default_unlearn_lr", "batch_norm_layers"]


def _eligible(t, y):
    """Which labels ``y`` the trigger ``t`` applies to: every class but its target, or only its
    ``sources`` (a source-specific or all-to-all backdoor found by the per-pair view)."""
    y = np.asarray(y)
    keep = y != t.target
    if t.sources is not None:
        keep &= np.isin(y, list(t.sources))
    return keep


def triggered_set(triggers, x, y, *, groups=False, all_variants=False):
    """Clean images with the recovered triggers, labelled with each trigger's target.

    Each trigger is applied to the images of its source classes (every class but its target,
    unless the trigger names ``sources``), one variant per image in turn, or every variant to
    every image with ``all_variants``; the sets of several triggers are concatenated. Returns
    ``(x_triggered, targets)``, and with ``groups`` also the index of the trigger of each image.
    """
    xs, ys, gs = [], [], []
    x = np.asarray(x)
    for i, t in enumerate(triggers):
        keep = _eligible(t, y)
        if not keep.any():
            whose = f"of class(es) {', '.join(map(str, t.sources))} " if t.sources is not None else ""
            raise AegisError(f"no clean images {whose}outside class {t.target} to apply its recovered trigger to")
        offsets = range(t.n_variants) if all_variants else (0,)
        for off in offsets:
            xs.append(t.apply(x[keep], offset=off))
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
        keep = _eligible(t, y)
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


def check_unlearn_settings(*, epochs, share, holdout=0.2, max_drop=0.01, shift=2, learning_rate=None, rounds=1):
    """One-line errors for unlearning settings out of range (checked before any work);
    ``learning_rate`` None stands for :func:`default_unlearn_lr`."""
    if learning_rate is not None and not learning_rate > 0:
        raise AegisError(f"--unlearn-lr must be a positive number. Received: {learning_rate}")
    for name, v, lo, hi in (("--unlearn-share", share, 0.0, 1.0), ("holdout", holdout, 0.05, 0.9),
                            ("max_drop", max_drop, 0.0, 1.0)):
        if not lo <= v <= hi:
            raise AegisError(f"{name} must lie in [{lo}, {hi}]. Received: {v}")
    if epochs < 1:
        raise AegisError(f"--unlearn-epochs must be at least 1. Received: {epochs}")
    if not isinstance(rounds, (int, np.integer)) or isinstance(rounds, bool) or rounds < 1:
        raise AegisError(f"--unlearn-rounds must be a whole number, at least 1. Received: {rounds}")
    if shift < 0:
        raise AegisError(f"the unlearning shift must be 0 or a positive number of pixels. Received: {shift}")


def _shifted(x, rng, pad):
    """``x`` with each image moved by up to ``pad`` pixels (zero-padded crop, no flip)."""
    from aegis_tf.core.augment import apply_crop_flip, crop_flip_params

    if not pad:
        return x
    oy, ox, _ = crop_flip_params(len(x), rng, pad=pad)
    return apply_crop_flip(x, oy, ox, np.zeros(len(x), "int32"), pad=pad).astype("float32")


def _with_triggers(triggers, x, applicable, rng):
    """Each image of ``x`` with one of the triggers ``applicable`` to it (a random one, a random
    variant)."""
    choice = np.argmax(rng.random(applicable.shape) * applicable, axis=1)
    out = np.array(x, copy=True)
    for j, t in enumerate(triggers):
        sel = np.nonzero(choice == j)[0]
        if sel.size:
            out[sel] = t.apply(x[sel], offset=int(rng.integers(t.n_variants)))
    return out


def _running_mean(avg, weights, n):
    """The mean of ``n`` weight sets from the mean of the first ``n - 1`` (``avg``) and the ``n``-th."""
    if avg is None:
        return [np.array(w, copy=True) for w in weights]
    return [a + (np.asarray(w, a.dtype) - a) / n if np.issubdtype(a.dtype, np.floating) else np.asarray(w)
            for a, w in zip(avg, weights)]


def batch_norm_layers(model):
    """The BatchNormalization layers of ``model`` (nested models included)."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(batch_norm_layers(layer))
    return found


UNLEARN_LR, UNLEARN_LR_BN = 1e-3, 1e-4


def default_unlearn_lr(model):
    """Unlearning's Adam learning rate when none is given: 1e-3, or 1e-4 for a model with batch
    normalisation, whose statistics stay frozen (docs/repair.md, CIFAR-10 section: trained
    BatchNormalization at 1e-3 lost 4-5 points on the standard ResNet-18s)."""
    return UNLEARN_LR_BN if batch_norm_layers(model) else UNLEARN_LR


def unlearn(model, triggers, x, y, *, epochs=20, rounds=2, learning_rate=None, share=1.0, holdout=0.2,
            max_drop=0.01, average=True, shift=2, patience=5, batch_size=32, soft_targets=True, freeze_bn=True,
            seed=0, quiet=False, teacher="last", reinvert=0, reinvert_at=0.5, reinvert_starts=3):
    """Fine-tune a copy of ``model`` to ignore the recovered triggers. Returns ``(model, history)``.

    ``learning_rate`` (Adam) defaults to :func:`default_unlearn_lr`. With ``freeze_bn`` the copy's
    BatchNormalization layers are frozen (Keras then runs them in inference mode): a few hundred
    images, a third of them triggered, would otherwise rewrite statistics B learnt on the whole
    training set. A model without batch normalisation is not affected.

    ``holdout`` of ``(x, y)`` is kept apart to check the result; the rest is trained on.
    Each epoch the training images are moved by up to ``shift`` pixels (a few hundred clean
    images are otherwise learnt by heart), and ``share`` of those outside a trigger's target
    are added again carrying one of the triggers (a trigger with ``sources`` too: the per-pair
    view may have seen only some of a backdoor's sources). With ``soft_targets`` every image,
    triggered or not, is taught B's own output on the clean image (B's clean behaviour moves
    as little as it can, and a trigger is taught to change nothing); without, its true label.

    With ``average``, the weights kept are the mean of the epochs after the first quarter
    (stochastic weight averaging, Izmailov et al. 2018: single epochs on so few images swing
    by points of accuracy and ASR, their mean does not), if its held-out clean accuracy stays
    within ``max_drop`` of B's (within two held-out images on a held-out set too small to
    resolve ``max_drop``). Otherwise, or without ``average``, the epoch with the lowest
    held-out recovered-trigger ASR among those within that drop (B itself if none is), and
    training stops after ``patience`` epochs without a better one. The held-out ASR applies
    every variant of every trigger to every held-out image of its sources (:func:`triggered_set`).

    ``rounds`` repeats all of that from the weights the previous round kept, with a fresh
    optimiser, the same held-out images and the same check against B's accuracy; with
    ``teacher="last"`` a later round's soft targets are the outputs of the model the last round
    kept, not B's (``"B"``: B's in every round). Measured in docs/repair.md ("Unlearning in
    rounds"). ``history`` is the last round's, with every round's in ``history["rounds"]``.

    ``reinvert`` (0: off) steps of re-inversion: after unlearning, Neural Cleanse's mask and
    pattern are reversed again on the repaired model toward each trigger's target
    (``reinvert_starts`` starts, on the training images of the trigger's sources) and every
    mask that still sends ``reinvert_at`` of the held-out images of those sources to the
    target (of the fit images when fewer than 5 are held out; ``checked_on`` says) joins the
    triggers; B is then unlearned again, from scratch, with all of them. It stops early when
    no new mask works. A position-free trigger, which the scan reverses at one
    place, is closed this way a place at a time (docs/repair.md, "Re-inverting after
    unlearning"). ``history["reinvert"]`` lists each step's masks (L1 norm, held-out share).
    """
    check_reinvert_settings(reinvert, reinvert_at, reinvert_starts)
    kwargs = dict(epochs=epochs, rounds=rounds, learning_rate=learning_rate, share=share, holdout=holdout,
                  max_drop=max_drop, average=average, shift=shift, patience=patience, batch_size=batch_size,
                  soft_targets=soft_targets, freeze_bn=freeze_bn, seed=seed, quiet=quiet, teacher=teacher)
    tuned, out = _unlearn_once(model, triggers, x, y, **kwargs)
    if not reinvert:
        return tuned, out
    _, hold, train = _holdout_split(len(x), holdout, seed)
    found, steps = list(triggers), []
    for k in range(reinvert):
        new, step = reinverted_triggers(tuned, triggers, (x[train], y[train]), (x[hold], y[hold]), at=reinvert_at,
                                        starts=reinvert_starts, seed=seed * 1000 + 100 * (k + 1))
        steps.append(step)
        if not new:
            step["stopped"] = f"no re-inverted mask sent {100 * reinvert_at:.0f}% of the held-out images to its target"
            break
        found += new
        tuned, out = _unlearn_once(model, found, x, y, **kwargs)
        acc, asr = _final_holdout(out)
        step.update(n_triggers=len(found), kept_epoch=out["kept_epoch"], holdout_clean_acc=acc,
                    holdout_recovered_asr=asr)
    out["reinvert"] = {"steps": steps, "at": float(reinvert_at), "starts": int(reinvert_starts),
                       "n_triggers": len(found)}
    return tuned, out


def _final_holdout(out):
    """(held-out clean accuracy, held-out recovered-trigger ASR) of the weights a round kept."""
    if out["kept_epoch"] == "average":
        return out["average"]["holdout_clean_acc"], out["average"]["holdout_recovered_asr"]
    e = out["epochs"][[h["epoch"] for h in out["epochs"]].index(out["kept_epoch"])]
    return e["holdout_clean_acc"], e["holdout_recovered_asr"]


def reinverted_triggers(model, triggers, fit, check, *, at=0.5, starts=3, seed=0):
    """Masks reversed on ``model`` toward each target of ``triggers`` (Neural Cleanse's fit,
    ``starts`` starts on the ``fit`` images of the trigger's sources), kept where they send at
    least ``at`` of the ``check`` images of those sources to the target. One fit per (target,
    sources) the triggers name. Returns ``(new triggers, {"masks": [...]})``."""
    from aegis_tf.detect.neural_cleanse import reverse_engineer_triggers
    from aegis_tf.detect.recovered import RecoveredTrigger

    (xf, yf), (xc, yc) = fit, check
    xf, xc, yf, yc = np.asarray(xf, "float32"), np.asarray(xc, "float32"), np.asarray(yf), np.asarray(yc)
    groups = {}
    for t in triggers:
        groups.setdefault((t.target, t.sources), t)
    new, masks = [], []
    for g, ((target, sources), t) in enumerate(groups.items()):
        pool, probe, checked_on = xf[_eligible(t, yf)], xc[_eligible(t, yc)], "held-out"
        if len(probe) < 5:  # too few held-out images of the sources to tell: the fit's own (said so)
            probe, checked_on = pool, "fit"
        if not len(pool):
            continue
        fitted = reverse_engineer_triggers(model, pool, [target] * starts, pixel_max=t.pixel_max,
                                           seeds=[seed + 10 * g + i for i in range(starts)])
        for r in fitted:
            pattern = np.asarray(r["pattern"], "float32")[None]
            found = RecoveredTrigger(target=int(target), source="reinverted", sources=sources,
                                     mask=r["mask"][None, ..., None], pattern=pattern, delta=np.zeros_like(pattern),
                                     pixel_max=t.pixel_max, evidence={"l1": float(r["l1"])})
            share = float(np.mean(predict_labels(model, found.apply(probe)) == target))
            found.evidence["share"] = share
            masks.append({"target": int(target), "sources": None if sources is None else list(sources),
                          "l1": float(r["l1"]), "share": share, "kept": share >= at, "checked_on": checked_on})
            if share >= at:
                new.append(found)
    return new, {"masks": masks}


def _holdout_split(n, holdout, seed):
    """``(rng, held-out indices, training indices)``: the unlearning's split of ``n`` images; the
    generator goes on to draw the epochs' shifts and picks."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n)
    n_hold = max(1, int(round(holdout * n)))
    return rng, idx[:n_hold], idx[n_hold:]


def _unlearn_once(model, triggers, x, y, *, epochs, rounds, learning_rate, share, holdout, max_drop, average, shift,
                  patience, batch_size, soft_targets, freeze_bn, seed, quiet, teacher):
    """:func:`unlearn` without re-inversion."""
    import keras

    check_unlearn_settings(epochs=epochs, share=share, holdout=holdout, max_drop=max_drop, shift=shift,
                           learning_rate=learning_rate, rounds=rounds)
    if learning_rate is None:
        learning_rate = default_unlearn_lr(model)
    rng, hold, train = _holdout_split(len(x), holdout, seed)
    n_hold = len(hold)
    xh, yh = np.asarray(x[hold], "float32"), np.asarray(y[hold])
    xtr, ytr = np.asarray(x[train], "float32"), np.asarray(y[train])
    if not len(xtr):
        raise AegisError(f"unlearning needs clean images to train on besides the {n_hold} held out. Received: "
                         f"{len(x)} image(s)")
    # In training every trigger goes on every class but its target, sources or not: the per-pair view
    # may have seen only some sources of a backdoor, and teaching a trigger to change nothing where it
    # changed nothing costs nothing (the cover classes of a source-specific backdoor included).
    applicable = np.stack([ytr != t.target for t in triggers], axis=1)
    eligible = np.nonzero(applicable.any(axis=1))[0]
    if not eligible.size:
        raise AegisError("every clean training image belongs to the recovered trigger(s)' target class: no image "
                         "to teach the trigger on")
    xh_trig, yh_trig = triggered_set(triggers, xh, yh, all_variants=True)
    n_classes = int(model.output_shape[-1])
    eye = np.eye(n_classes, dtype="float32")

    def measure(m):
        return (float(np.mean(predict_labels(m, xh) == yh)), float(np.mean(predict_labels(m, xh_trig) == yh_trig)))

    if teacher not in ("last", "B"):
        raise AegisError(f"the unlearning teacher must be 'last' or 'B'. Received: {teacher!r}")
    teachers = [model]  # the first round learns from B's clean outputs

    def targets_for(xs):
        return np.asarray(teachers[-1].predict(xs, batch_size=256, verbose=0), "float32") if soft_targets \
            else eye[ytr]

    work = copy_model(model)
    frozen = batch_norm_layers(work) if freeze_bn else []
    for layer in frozen:
        layer.trainable = False
    acc0, _ = measure(work)
    allowed = max(max_drop, 2.0 / n_hold) + 1e-12
    fixed = None if shift else targets_for(xtr)  # unshifted images: B's outputs are the same every epoch
    data = dict(xtr=xtr, eligible=eligible, applicable=applicable, n_pick=(
        max(1, int(round(share * len(eligible)))) if share > 0 else 0), fixed=fixed)
    rounds_out = []
    for r in range(rounds):
        if r and teacher == "last":  # later rounds learn from the outputs of the model the last round kept
            teachers.append(copy_model(work))
            if data["fixed"] is not None:
                data["fixed"] = targets_for(xtr)
        work.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="categorical_crossentropy")
        out = _unlearn_round(work, triggers, data, rng, measure=measure, targets_for=targets_for, acc0=acc0,
                             allowed=allowed, epochs=epochs, average=average, shift=shift, patience=patience,
                             batch_size=batch_size, quiet=quiet, desc=f"unlearning{f' {r + 1}/{rounds}' if rounds > 1 else ''}")
        rounds_out.append(out)
    out = dict(rounds_out[-1])
    out.update({"n_holdout": int(n_hold), "allowed_drop": allowed, "n_train": int(len(xtr)),
                "n_triggered": int(data["n_pick"]), "shift": int(shift), "soft_targets": bool(soft_targets),
                "learning_rate": float(learning_rate), "frozen_batch_norm_layers": len(frozen),
                "holdout_clean_acc_B": acc0})
    if rounds > 1:
        out["rounds"] = rounds_out
    return _thawed(work, frozen), out


def _unlearn_round(work, triggers, data, rng, *, measure, targets_for, acc0, allowed, epochs, average, shift,
                   patience, batch_size, quiet, desc):
    """One round of :func:`unlearn` on ``work`` (compiled), from its current weights; leaves the kept
    weights in ``work`` and returns the round's history. Epoch 0 is the round's start, which stays
    kept unless an epoch or the epochs' mean is better within ``allowed`` of B's accuracy ``acc0``."""
    xtr, eligible, applicable, n_pick = data["xtr"], data["eligible"], data["applicable"], data["n_pick"]
    average_from = epochs // 4 if average else None
    start_acc, start_asr = measure(work)
    history = [{"epoch": 0, "holdout_clean_acc": start_acc, "holdout_recovered_asr": start_asr}]
    best, kept, since, avg, n_avg = work.get_weights(), 0, 0, None, 0
    best_key = (start_asr, -start_acc) if start_acc >= acc0 - allowed else (np.inf, 0.0)
    for epoch in progress(range(1, epochs + 1), quiet=quiet, desc=desc):
        xs = _shifted(xtr, rng, shift)
        targets = targets_for(xs) if data["fixed"] is None else data["fixed"]
        pick = rng.choice(eligible, size=n_pick, replace=False)
        x_fit = np.concatenate([xs, _with_triggers(triggers, xs[pick], applicable[pick], rng)])
        y_fit = np.concatenate([targets, targets[pick]])
        order = rng.permutation(len(x_fit))
        work.fit(x_fit[order], y_fit[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        acc, asr = measure(work)
        history.append({"epoch": epoch, "holdout_clean_acc": acc, "holdout_recovered_asr": asr})
        if average_from is not None and epoch > average_from:
            n_avg += 1
            avg = _running_mean(avg, work.get_weights(), n_avg)
        if acc >= acc0 - allowed and (asr, -acc) < best_key:
            best, best_key, kept, since = work.get_weights(), (asr, -acc), epoch, 0
        else:
            since += 1
            if average_from is None and since >= patience:
                break
    out = {"epochs": history}
    if avg is not None:
        work.set_weights(avg)
        acc, asr = measure(work)
        out["average"] = {"epochs": [average_from + 1, average_from + n_avg], "holdout_clean_acc": acc,
                          "holdout_recovered_asr": asr}
        if acc >= acc0 - allowed:
            out["kept_epoch"] = "average"
            return out
        out["average"]["rejected"] = f"held-out clean accuracy fell by more than {100 * allowed:.1f} points"
    work.set_weights(best)
    out["kept_epoch"] = kept
    return out


def _thawed(model, layers):
    """``model`` with ``layers`` trainable again, so that B' saves as B was (its weights unchanged)."""
    for layer in layers:
        layer.trainable = True
    return model
