"""AEGIS translation: training images of other classes pushed toward each class by targeted L2 PGD.

Every detector that reads translations (patch transfer, the paper's clusters,
the whole-image signal) shares one :func:`translate_all` call.
"""

from typing import NamedTuple

import numpy as np

from aegis_tf.core.pgd import projected_gradient_descent
from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import predict_labels
from aegis_tf.core.utils import progress

__all__ = ["Translation", "draw_seeds", "translate_all", "translate", "translate_pairs", "translation_attack",
           "translations_for"]


class Translation(NamedTuple):
    """Translations toward one class: the images, the indices of their seeds in
    the training set, the share the model classifies as the class, and the
    images PGD started from (the seeds, plus noise with ``start_noise``)."""

    images: np.ndarray
    seeds: np.ndarray
    reached: float
    starts: np.ndarray


def translate_all(model, x, y, classes, *, n_seeds, eps, step_size, steps, clip_min, clip_max, seed=0,
                  batch_size=512, start_noise=0.0, attack_fn=None, done=None, save=None, quiet=True):
    """Translate ``n_seeds`` training images of other classes toward each class in ``classes``.

    Returns ``{c: Translation}``. All classes go through one batched targeted
    L2 PGD call (``eps``/``step_size`` in the model's input units). The paper
    starts PGD from the seed images themselves (``start_noise=0``).
    ``start_noise`` > 0 adds Gaussian noise of that standard deviation (input
    units) to each seed first, drawn from ``seed``: a ReLU network often has
    zero gradient on a black corner, so PGD from a clean seed can never light
    a corner trigger there; from a noisy start it can
    (``results/detect/trigger_lit.md``). ``attack_fn`` (:func:`translation_attack`)
    reuses one compiled PGD loop across calls.

    The rows (translations, class after class) run in chunks of whole batches,
    about one class each, under a progress bar (unless ``quiet``). After each
    chunk ``save(first_row, rows)`` receives its translations; ``done`` (the
    first rows, saved by an interrupted call with the same arguments) skips
    them. Chunks hold whole batches, so a resumed call gives the same numbers.
    """
    if start_noise < 0:
        raise AegisError(f"start_noise must be >= 0. Received: {start_noise}")
    rng = np.random.default_rng(seed)
    seeds = draw_seeds(rng, y, classes, n_seeds)
    all_idx = np.concatenate([seeds[c] for c in classes])
    all_t = np.concatenate([np.full(len(seeds[c]), c) for c in classes])
    starts = np.asarray(x[all_idx], dtype="float32")
    if start_noise > 0:
        noise = rng.standard_normal(starts.shape).astype("float32") * np.float32(start_noise)
        starts = np.clip(starts + noise, clip_min, clip_max)
    if attack_fn is None:
        attack_fn = _targeted_l2_attack(model, eps=eps, step_size=step_size, steps=steps, clip_min=clip_min,
                                        clip_max=clip_max)
    adv = np.empty_like(starts)
    first = 0 if done is None else len(done)
    if first:
        adv[:first] = done
    chunk = batch_size * max(1, -(-n_seeds // batch_size))  # whole batches, about one class
    ends = np.cumsum([len(seeds[c]) for c in classes])
    with progress(total=len(starts), initial=first, quiet=quiet, desc=f"translate {len(classes)} classes",
                  unit="image") as bar:
        for i in range(first, len(starts), chunk):
            sl = slice(i, i + chunk)
            adv[sl] = projected_gradient_descent(model, starts[sl], eps=eps, step_size=step_size, steps=steps,
                                                 norm=2, y=all_t[sl], targeted=True, random_start=False,
                                                 clip_min=clip_min, clip_max=clip_max, batch_size=batch_size,
                                                 attack_fn=attack_fn)
            if save is not None:
                save(i, adv[sl])
            bar.update(min(chunk, len(starts) - i))
            bar.set_postfix_str(f"{int(np.sum(ends <= sl.stop))} of {len(classes)} classes done")
    pred = predict_labels(model, adv, batch_size=batch_size)
    out, start = {}, 0
    for c in classes:
        n = len(seeds[c])
        sl = slice(start, start + n)
        out[c] = Translation(adv[sl], seeds[c], float(np.mean(pred[sl] == c)), starts[sl])
        start += n
    return out


def draw_seeds(rng, y, classes, n_seeds):
    """The training images :func:`translate_all` translates toward each class: ``n_seeds`` (or all)
    of the other classes' images, drawn from ``rng`` class after class. Returns ``{class: indices}``;
    a replay that draws from ``np.random.default_rng(seed)`` gets a scan's seeds back."""
    seeds = {}
    for c in classes:
        pool = np.nonzero(y != c)[0]
        if len(pool) == 0:
            raise AegisError(f"no training images outside class {c} to translate from")
        seeds[c] = rng.choice(pool, size=min(n_seeds, len(pool)), replace=False)
    return seeds


def translate(model, x, y, classes, config, *, pixel_max, seed=0, batch_size=512, attack_fn=None, **kwargs):
    """:func:`translate_all` with the settings of a :class:`~aegis_tf.detect.config.DetectConfig`
    (``eps``, ``step_size`` and ``start_noise`` in units of [0, 1], scaled by ``pixel_max``);
    ``kwargs`` (``done``, ``save``, ``quiet``) go to :func:`translate_all`."""
    return translate_all(model, x, y, classes, n_seeds=config.n_seeds, eps=config.eps * pixel_max,
                         step_size=config.step_size * pixel_max, steps=config.steps, clip_min=0.0,
                         clip_max=pixel_max, seed=seed, batch_size=batch_size,
                         start_noise=config.start_noise * pixel_max, attack_fn=attack_fn, **kwargs)


def translate_pairs(model, x, y, counts, used, config, *, pixel_max, seed=0, batch_size=512, attack_fn=None):
    """Fresh translations for some (source, target) pairs, with the settings of :func:`translate`.

    ``counts`` maps each pair to how many images of its source to translate toward its target;
    they are drawn from the source's training images that ``used[target]`` (indices into ``x``:
    the seeds already translated toward that target) does not hold, as many as there are. One
    batched PGD call. Returns ``{target: Translation}`` holding only the new images (their seeds
    are their indices, so :func:`~aegis_tf.detect.patch_transfer.pair_transfer_rates` reads their
    sources from ``y``). The draws come from their own stream of ``seed``: the same pairs, counts
    and seeds give the same images, and no other part of a scan draws differently."""
    y = np.asarray(y)
    rng = np.random.default_rng([int(seed), 25])
    rows, targets = [], []
    for (s, t), n in sorted(counts.items()):
        pool = np.setdiff1d(np.nonzero(y == s)[0], np.asarray(used.get(t, ()), dtype=int))
        idx = rng.choice(pool, size=min(int(n), len(pool)), replace=False) if len(pool) else pool
        rows.append(np.asarray(idx, dtype=int))
        targets.append(np.full(len(idx), t, dtype=int))
    idx, tgt = (np.concatenate(rows), np.concatenate(targets)) if rows else (np.zeros(0, int), np.zeros(0, int))
    if not len(idx):
        return {}
    starts = np.asarray(x[idx], dtype="float32")
    if config.start_noise > 0:
        noise = rng.standard_normal(starts.shape).astype("float32") * np.float32(config.start_noise * pixel_max)
        starts = np.clip(starts + noise, 0.0, pixel_max)
    if attack_fn is None:
        attack_fn = translation_attack(model, config, pixel_max=pixel_max)
    adv = projected_gradient_descent(model, starts, eps=config.eps * pixel_max, step_size=config.step_size * pixel_max,
                                     steps=config.steps, norm=2, y=tgt, targeted=True, random_start=False,
                                     clip_min=0.0, clip_max=pixel_max, batch_size=batch_size, attack_fn=attack_fn)
    pred = predict_labels(model, adv, batch_size=batch_size)
    out = {}
    for t in np.unique(tgt):
        sel = tgt == t
        out[int(t)] = Translation(adv[sel], idx[sel], float(np.mean(pred[sel] == t)), starts[sel])
    return out


def translation_attack(model, config, *, pixel_max):
    """The compiled targeted PGD loop of :func:`translate` with ``config``'s settings,
    for scans that translate in many calls (one compilation instead of one per call)."""
    return _targeted_l2_attack(model, eps=config.eps * pixel_max, step_size=config.step_size * pixel_max,
                               steps=config.steps, clip_min=0.0, clip_max=pixel_max)


def _targeted_l2_attack(model, *, eps, step_size, steps, clip_min, clip_max):
    """A compiled targeted L2 PGD loop on ``model``'s logits (input units)."""
    from aegis_tf.core import backend
    from aegis_tf.core.pgd import make_step
    from aegis_tf.core.models import logits_model

    step = make_step(norm=2, eps=eps, step_size=step_size, clip_min=clip_min, clip_max=clip_max)
    return backend.make_attack(logits_model(model), step, int(steps), -1.0)


def translations_for(detector, model, x, y, classes, translations=None):
    """``translations`` restricted to ``classes``, or fresh ones made with the detector's
    ``translation`` settings (default :class:`~aegis_tf.detect.config.DetectConfig`), ``pixel_max``,
    ``random_state`` and ``batch_size``: what every translation-based detector's ``fit`` needs."""
    if translations is None:
        from aegis_tf.detect.config import DetectConfig

        translations = translate(model, x, y, classes, detector.translation or DetectConfig(),
                                 pixel_max=detector.pixel_max, seed=detector.random_state,
                                 batch_size=detector.batch_size)
    return {c: translations[c] for c in classes}
