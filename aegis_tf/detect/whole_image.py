"""The whole-image signal: how little of a class's common translation direction moves other images?

The patch-transfer score looks for a few bright pixels, so it is blind to
triggers spread over the whole image (invisible-static, invisible-adversarial,
blended). Those share another structure: a backdoor's trigger is one fixed
direction that sends *any* image to the target. The translations toward the
target therefore share a common component, the trigger, while translations
toward an ordinary class are specific to each seed image.

For each class ``c``, :func:`flip_norms` takes the mean translation delta
(translated image minus its start) and finds, by bisection, the smallest L2
norm of that direction which, added to ``n_probes`` clean images of other
classes, moves at least ``flip_at`` of them to ``c``. A backdoor's target
needs far less than the other classes. :class:`WholeImageDetector` compares
the classes relatively: a class's *gap* is the smallest norm among the other
classes divided by its own, and a class is flagged when its gap reaches
``threshold`` (default 2: it needs less than half the norm of every other
class). No absolute norm is assumed, so the rule carries over between data
sets, models and pixel scales. Two or more targets of one model hide each
other under this rule (each is the other's nearest class); the patch-transfer
score and Neural Cleanse do not share that blind spot.

A blended trigger (``x' = (1 - a) x + a p``) is not additive: it also fades
the image. On bright images (Fashion-MNIST) the additive probe can miss it.
:class:`BlendProbeDetector` (on by default in a full scan, ``DetectConfig.wi_blend``) probes
the same way with a blend: the smallest ``a`` at which ``(1 - a) x + a m_c``,
with ``m_c`` the mean of class ``c``'s translated images, moves ``flip_at``
of the probes to ``c``. A backdoor's pattern survives the averaging and
works at a small ``a``; an ordinary class's mean translation is a blur of
different images that needs most of the image (or never moves 90% at all).
The same relative gap and threshold decide.
"""

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import predict_labels
from aegis_tf.core.params import Detector, Interval

__all__ = ["mean_direction", "flip_norms", "blend_alphas", "WholeImageDetector", "BlendProbeDetector"]


def mean_direction(translation):
    """The mean translation delta (translated image minus its start) of one class, and its L2 norm."""
    delta = np.mean(np.asarray(translation.images, "float32") - np.asarray(translation.starts, "float32"), axis=0)
    return delta, float(np.linalg.norm(delta))


def _probes(x, y, classes, n_probes, seed):
    """Per class, ``n_probes`` clean images of other classes (float32)."""
    rng = np.random.default_rng(seed + 3)
    out = []
    for c in classes:
        pool = np.nonzero(y != c)[0]
        out.append(np.asarray(x[rng.choice(pool, size=min(n_probes, len(pool)), replace=False)], "float32"))
    return out


def _smallest_moving(model, classes, probes, move, ceiling, *, flip_at, batch_size, iters):
    """Per class, by bisection on ``[0, ceiling]``, the smallest strength ``r`` at which
    ``move(i, probes[i], r)`` sends ``flip_at`` of class ``classes[i]``'s probes to it,
    and the share moved there. A class that ``ceiling`` does not move gets ``ceiling``.
    All classes bisect together: one prediction call per step."""

    def shares(radii):
        moved = np.concatenate([move(i, p, np.float32(r)) for i, (p, r) in enumerate(zip(probes, radii))])
        pred = predict_labels(model, moved, batch_size=batch_size)
        out, start = [], 0
        for c, p in zip(classes, probes):
            out.append(float(np.mean(pred[start:start + len(p)] == c)))
            start += len(p)
        return np.array(out)

    lo, hi = np.zeros(len(classes)), np.full(len(classes), float(ceiling))
    best = shares(hi)
    reachable = best >= flip_at
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        s = shares(mid)
        ok = (s >= flip_at) & reachable
        hi = np.where(ok, mid, hi)
        best = np.where(ok, s, best)
        lo = np.where(ok | ~reachable, lo, mid)
    return hi, best


def flip_norms(model, x, y, translations, *, n_probes=50, flip_at=0.9, pixel_max=255.0, seed=0, batch_size=512,
               iters=12):
    """Per class, the smallest L2 norm (in units of the [0, 1] range) of its mean
    translation direction that moves ``flip_at`` of the probes to it.

    Returns ``{c: (norm, share_at_norm)}``. A class that no norm up to that of
    a full-range image reaches gets that ceiling (``sqrt(pixels)``). The
    bisection runs for all classes at once: one prediction call per step.
    """
    classes = list(translations)
    units = []
    for c in classes:
        delta, size = mean_direction(translations[c])
        units.append(delta / size if size > 0 else delta)
    ceiling = float(np.sqrt(units[0].size)) * pixel_max
    hi, best = _smallest_moving(model, classes, _probes(x, y, classes, n_probes, seed),
                                lambda i, p, r: np.clip(p + r * units[i], 0.0, pixel_max), ceiling,
                                flip_at=flip_at, batch_size=batch_size, iters=iters)
    return {c: (float(hi[i]) / pixel_max, float(best[i])) for i, c in enumerate(classes)}


def mean_translated(translation):
    """The mean of one class's translated images (float32)."""
    return np.mean(np.asarray(translation.images, "float32"), axis=0)


def blend_alphas(model, x, y, translations, *, n_probes=50, flip_at=0.9, seed=0, batch_size=512, iters=12):
    """Per class, the smallest blend weight ``a`` in (0, 1] at which
    ``(1 - a) x + a m_c`` (``m_c``: the mean translated image of class ``c``)
    moves ``flip_at`` of the probes to ``c``.

    Returns ``{c: (alpha, share_at_alpha)}``; a class that even ``a = 1`` (every
    probe replaced by ``m_c``) does not move gets 1. Blends stay in the pixel
    range, so no clipping and no ``pixel_max`` is needed.
    """
    classes = list(translations)
    means = [mean_translated(translations[c]) for c in classes]
    hi, best = _smallest_moving(model, classes, _probes(x, y, classes, n_probes, seed),
                                lambda i, p, a: (1 - a) * p + a * means[i], 1.0,
                                flip_at=flip_at, batch_size=batch_size, iters=iters)
    return {c: (float(hi[i]), float(best[i])) for i, c in enumerate(classes)}


def saturation(norms, ceiling, *, resolved_below=0.25):
    """Why ``{class: norm}`` (from a bisection on ``[0, ceiling]``) cannot single out a class,
    or ``None``.

    A class the ceiling did not move gets the ceiling: a bound, not a measurement. When
    the smallest norm's nearest rival sits at the ceiling, the top class's gap is only a
    lower bound (the ceiling over its own norm). That bound says something only when the
    top class moved below ``resolved_below`` times the ceiling, where the probe still
    carries the image: a quarter for the additive direction (beyond it the clipped image
    is mostly the direction), a half for a blend (beyond it the pattern outweighs the
    probe). Else (the exact 2.00 of a class found at the first halving, every other at
    the bound) the signal is saturated. When that rival ties with half the classes or
    more at one value, the bisection could not tell them apart: saturated too."""
    values = np.array(list(norms.values()), dtype="float64")
    n = len(values)
    ordered = np.sort(values)
    own, rival = ordered[0], ordered[1]
    if rival >= ceiling * (1 - 1e-6) and own >= ceiling * resolved_below * (1 - 1e-9):
        at_bound = int(np.sum(values >= ceiling * (1 - 1e-6)))
        return (f"saturated: {at_bound} of {n} classes not moved below the bisection's ceiling ({ceiling:g}), and "
                f"the smallest norm ({own:.4g}) is not under {resolved_below:g} of it: its gap is set by the bound")
    tied = int(np.sum(np.isclose(values, rival, rtol=1e-9, atol=0.0)))
    if rival < ceiling * (1 - 1e-6) and tied >= max(3, (n + 1) // 2):
        return f"saturated: {tied} of {n} classes tie at {rival:.4g}, the top class's nearest rival"
    return None


class WholeImageDetector(Detector):
    """Flags a class whose common translation direction moves other images at an
    outlying small norm (see the module docstring), scikit-learn style.

    ``fit(model, x, y, classes)`` translates (unless ``translations`` are
    given) and measures :func:`flip_norms`; ``fit_norms({class: norm})``
    scores norms already measured. A saturated measurement (:func:`saturation`)
    makes the signal inconclusive: ``inconclusive_`` says why, and no class is flagged. ``scores_`` holds each class's gap (the
    smallest other norm over its own; above 1 only for the class of smallest norm).

    Attributes after ``fit``: ``classes_``, ``norms_``, ``shares_`` (after
    ``fit`` only), ``scores_``, ``suspect_classes_``, ``is_backdoored_``.
    """

    _parameter_constraints = {
        "n_probes": [Interval(int, 1, None)],
        "flip_at": [Interval(float, 0, 1, closed="right")],
        "threshold": [Interval(float, 1, None)],
        "pixel_max": [Interval(float, 0, None, closed="neither")],
        "random_state": [Interval(int, 0, None)],
        "batch_size": [Interval(int, 1, None)],
    }
    score_name = "whole_image_gap"

    def __init__(self, *, n_probes=50, flip_at=0.9, threshold=2.0, translation=None, pixel_max=255.0,
                 random_state=0, batch_size=512):
        self.n_probes = n_probes
        self.flip_at = flip_at
        self.threshold = threshold
        self.translation = translation
        self.pixel_max = pixel_max
        self.random_state = random_state
        self.batch_size = batch_size

    @property
    def threshold_(self):
        return self.threshold

    def fit(self, model, x, y, classes, *, translations=None, screen_gaps=None, screen_threshold=None):
        from aegis_tf.detect.translation import translations_for

        self._validate_params()
        translations = translations_for(self, model, x, y, classes, translations)
        measured = self._measure(model, x, y, translations)
        self.shares_ = {c: s for c, (_, s) in measured.items()}
        return self.fit_norms({c: n for c, (n, _) in measured.items()}, screen_gaps=screen_gaps,
                              screen_threshold=screen_threshold, ceiling=self._ceiling(x))

    def _ceiling(self, x):
        """The bisection's upper bound, in the units of ``norms_``: the L2 norm of a full-range image."""
        return float(np.sqrt(np.prod(np.shape(x)[1:])))

    def _measure(self, model, x, y, translations):
        return flip_norms(model, x, y, translations, n_probes=self.n_probes, flip_at=self.flip_at,
                          pixel_max=self.pixel_max, seed=self.random_state, batch_size=self.batch_size)

    def fit_norms(self, norms, *, screen_gaps=None, screen_threshold=None, ceiling=None):
        """Score ``{class: norm}``. Returns ``self``.

        ``ceiling`` (the bisection's upper bound) lets the signal see when its measurement
        saturated (:func:`saturation`: the top class's rival at the ceiling while the top
        class moved only where the probe no longer carries the image, or the rival tied with
        half the classes, and at least 3, at one value): the signal is then inconclusive
        (``inconclusive_`` says why) and names no class.

        A staged scan measures only its promoted classes in full, so their gaps
        compare them with each other only, and a class whose nearest rival was
        left in stage 1 would look better than it is. ``screen_gaps`` (each
        class's stage-1 gap, measured against *every* class on stage 1's
        shorter translations) and ``screen_threshold`` add a second condition:
        a class is flagged only when its gap reaches ``threshold`` here *and*
        its stage-1 gap reaches ``screen_threshold``. Two classes are then
        enough to compare.
        """
        self._validate_params()
        staged = screen_gaps is not None
        if staged and screen_threshold is None:
            raise AegisError("screen_gaps needs a screen_threshold")
        if len(norms) < (2 if staged else 3):
            raise AegisError(f"the whole-image signal needs at least {2 if staged else 3} classes to compare")
        self.classes_ = sorted(norms)
        self.skipped_ = None
        self.norms_ = {c: float(norms[c]) for c in self.classes_}
        self.scores_ = self._gaps(ceiling)
        self.screen_gaps_ = {c: float(screen_gaps[c]) for c in self.classes_} if staged else None
        self.screen_threshold_ = screen_threshold
        self.suspect_classes_ = [c for c in self.classes_ if self.scores_[c] >= self.threshold
                                 and (not staged or self.screen_gaps_[c] >= screen_threshold)]
        self.inconclusive_ = None if ceiling is None else self._saturation(ceiling)
        if self.inconclusive_:
            self.suspect_classes_ = []
        self.is_backdoored_ = bool(self.suspect_classes_)
        return self

    def _gaps(self, ceiling):
        """Each class's gap: the smallest other norm of ``norms_`` over its own."""
        norms = np.maximum([self.norms_[c] for c in self.classes_], 1e-12)
        return {c: float(np.delete(norms, i).min() / norms[i]) for i, c in enumerate(self.classes_)}

    def _saturation(self, ceiling):
        """Why ``norms_`` cannot single out a class (:func:`saturation`), or None."""
        return saturation(self.norms_, ceiling, resolved_below=self._resolved_below)

    def _skip(self, classes, why):
        """Not run (``skipped_``: why, e.g. over its time budget): no norm read, no class named."""
        self.classes_ = sorted(int(c) for c in classes)
        self.norms_, self.scores_ = {}, {c: 0.0 for c in self.classes_}
        self.screen_gaps_, self.screen_threshold_, self.inconclusive_ = None, None, None
        self.suspect_classes_, self.is_backdoored_, self.skipped_ = [], False, why
        return self

    def _over_budget(self, classes, projected_s):
        """:meth:`_skip` for a fit projected to take ``projected_s`` seconds, over ``budget_s``."""
        return self._skip(classes, f"{len(classes)} classes would take about {projected_s:.0f} s here, over the "
                                   f"budget of {self.budget_s:g} s (--probe-budget; --mask-probe / --warp-probe "
                                   "run it whatever it costs)")

    def report(self):
        if getattr(self, "skipped_", None):
            return {"verdict": "not run", "skipped": self.skipped_, "suspect_classes": [], "classes": {},
                    "params": self.get_params()}
        out = super().report()
        if getattr(self, "inconclusive_", None):
            out["verdict"] = "inconclusive"
            out["inconclusive"] = self.inconclusive_
        return out

    def evidence(self, description):
        out = super().evidence(description)
        if getattr(self, "skipped_", None):
            out["skipped"] = self.skipped_
        if getattr(self, "inconclusive_", None):
            out["inconclusive"] = self.inconclusive_
        if self.screen_gaps_ is not None:  # a staged scan: the stage-1 gap must reach the alarm level too
            out["also"] = {"name": "stage 1", "scores": {str(c): g for c, g in self.screen_gaps_.items()},
                           "threshold": self.screen_threshold_}
        return out

    _measure_name = "flip_norm"
    _resolved_below = 0.25  # of the ceiling: see saturation()

    def _class_entry(self, c):
        entry = {self.score_name: self.scores_[c], self._measure_name: self.norms_[c]}
        if hasattr(self, "shares_"):
            entry["share_at_norm"] = self.shares_[c]
        if self.screen_gaps_ is not None:
            entry["stage1_gap"] = self.screen_gaps_[c]
        return entry


class BlendProbeDetector(WholeImageDetector):
    """The whole-image signal with a blend in place of the additive direction
    (:func:`blend_alphas`; see the module docstring): ``norms_`` holds each
    class's blend weight, ``scores_`` its gap (the smallest other weight over
    its own), flagged at ``threshold``. Run by default in a full scan (``DetectConfig.wi_blend``).
    """

    score_name = "blend_gap"
    _measure_name = "blend_alpha"
    _resolved_below = 0.5  # a blend does not clip: under a = 1/2 the probe is still the larger part

    def _ceiling(self, x):
        return 1.0  # a = 1 replaces the probe by the pattern

    def _measure(self, model, x, y, translations):
        return blend_alphas(model, x, y, translations, n_probes=self.n_probes, flip_at=self.flip_at,
                            seed=self.random_state, batch_size=self.batch_size)
