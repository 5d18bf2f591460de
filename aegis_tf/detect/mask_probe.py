"""The mask probe: Neural Cleanse's smallest trigger per class, read by the relative gap.

AEGIS reads a backdoor from translations toward each class, which on a robust
model carry the trigger's features. A standard-trained model is another matter:
its translations are small adversarial perturbations, spread over the image,
and a small patch backdoor can hide among them (the standard MNIST localised,
source-specific and random-position models of the held-out scans). Neural
Cleanse (Wang et al. 2019; :mod:`aegis_tf.detect.neural_cleanse`) asks a
question that does not need robustness: per class, the smallest mask (L1 norm)
and pattern that send clean images there. This probe keeps that reverse
engineering and changes how it is read, in the manner of the whole-image
signal:

* each class's mask is fitted on ``n_fit`` training images (every class, as
  Neural Cleanse does) from ``restarts`` random starts, each tried on the same
  ``n_probes`` *fresh* images of other classes; the smallest mask that moves
  ``flip_at`` of them is kept. A class none of whose masks does found no
  trigger, and its norm is set to the ceiling (the whole image: ``H * W``). One
  start now and then stops in a local minimum several times the trigger's size
  (the standard MNIST localised model of seed 10, detection seed 4: 44 pixels
  for the 3x3 patch's class), so a full scan takes the better of two
  (:data:`RESTART_SEED_STEP` apart; the first start is the single start of
  before); where all starts would go over a time budget (a staged scan's
  ``--probe-budget``), the first start alone runs if it fits (``starts_used``);
* a class's *gap* is the smallest other norm over its own, flagged at
  ``threshold`` (the scan's ``wi_threshold``, 2), not Neural Cleanse's median
  absolute deviation (which flags a class with a slightly small norm when the
  others agree closely: it named Fashion-MNIST's class 8 on clean models);
  two backdoors in one model give two small norms, each the other's nearest
  rival, so the two smallest classes also get the *pair gap* (the third
  smallest norm over the second) when that is larger: both are flagged when
  they stand together at ``threshold`` times below every other class
  (:data:`GROUP`: at most two);
* every class at the bound (no trigger moved the fresh probes toward any class) is
  the clean answer, as for the warp probe; it names no class when it cannot read the
  norms (``inconclusive_``): the smallest norm is no smaller than a quarter of the
  image while its rival sits at the bound (:func:`~aegis_tf.detect.whole_image.saturation`),
  or the model gives one class ``flip_at`` of the probes with no trigger at all (a
  collapsed model).

A full scan runs it by default, on standard and robust models alike (the
robustness check at L2 0.5 reads standard MNIST models as robust, so it cannot
tell where the probe is needed); a staged scan runs it on every class when that
fits its time budget (:func:`aegis_tf.detect.staged.probe_budget`), and otherwise says "not run". The gradients come from the input gradient (:func:`aegis_tf.core.backend.input_gradient`),
so nothing here is backend-specific.
"""

import numpy as np

from aegis_tf.core.models import predict_labels
from aegis_tf.core.params import Interval
from aegis_tf.detect.neural_cleanse import OverBudget, reverse_engineer_triggers
from aegis_tf.detect.whole_image import WholeImageDetector

__all__ = ["mask_probe_on", "apply_mask", "MaskProbeDetector", "GROUP", "RESTART_SEED_STEP"]

# How many classes may stand together below the rest (two backdoors in one model): the pair gap.
GROUP = 2

# Start k of class c draws from the seed ``random_state + c + k * step``, ``step`` this or one more than
# the largest class (a model of over 1,000 classes): start 0 is the single start of a one-start probe,
# and no start of one class shares a stream with another class's.
RESTART_SEED_STEP = 1000


def mask_probe_on(config):
    """Whether a scan runs the mask probe: ``mask_probe`` ``True`` or ``"auto"`` (a staged scan runs
    an ``"auto"`` probe on every class within ``probe_budget`` seconds:
    :func:`aegis_tf.detect.staged.probe_budget`)."""
    return config.mask_probe in (True, "auto")



def apply_mask(x, mask, pattern):
    """``(1 - mask) x + mask pattern``: ``mask`` (H, W) in [0, 1], ``pattern`` (H, W, C)."""
    m = np.asarray(mask, "float32")[..., None]
    return (1.0 - m) * np.asarray(x, "float32") + m * np.asarray(pattern, "float32")


class MaskProbeDetector(WholeImageDetector):
    """Neural Cleanse's reverse engineering per class, scored by the relative gap (see the
    module docstring): ``l1_norms_`` each class's fitted mask norm, ``fresh_`` the share of
    fresh other-class probes its trigger moves, ``norms_`` the norm the gap uses (the
    ceiling where the trigger did not move ``flip_at`` of the probes), ``scores_`` the gap,
    ``masks_`` and ``patterns_`` the fitted triggers, ``plain_`` the share of each class's
    probes the model already gives it with no trigger, ``ceiling_`` the whole image's norm;
    ``start_l1_`` and ``start_fresh_`` each start's mask norm and fresh share (``restarts``
    starts per class, the smallest working one kept; ``starts_used_`` how many ran: 1 where
    ``restarts`` would have gone over ``budget_s`` and one start did not)."""

    _parameter_constraints = {
        **WholeImageDetector._parameter_constraints,
        "n_fit": [Interval(int, 1, None)],
        "epochs": [Interval(int, 1, None)],
        "steps_per_epoch": [Interval(int, 1, None)],
        "restarts": [Interval(int, 1, None)],
        "budget_s": [None, Interval(float, 0, None, closed="neither")],
    }
    score_name = "mask_gap"
    _measure_name = "mask_norm"

    def __init__(self, *, n_probes=50, flip_at=0.9, threshold=2.0, n_fit=1000, epochs=10, steps_per_epoch=20,
                 restarts=2, budget_s=None, translation=None, pixel_max=255.0, random_state=0, batch_size=512):
        super().__init__(n_probes=n_probes, flip_at=flip_at, threshold=threshold, translation=translation,
                         pixel_max=pixel_max, random_state=random_state, batch_size=batch_size)
        self.n_fit = n_fit
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.restarts = restarts
        self.budget_s = budget_s

    @classmethod
    def from_config(cls, config, **kwargs):
        """The probe as a scan runs it with a :class:`~aegis_tf.detect.config.DetectConfig`."""
        return cls(n_probes=config.wi_probes, flip_at=config.flip_at, threshold=config.wi_threshold,
                   n_fit=config.mask_fit, epochs=config.mask_epochs, restarts=config.mask_restarts, **kwargs)

    def _ceiling(self, x):
        return float(np.prod(np.shape(x)[1:3]))  # a mask over the whole image

    def fit(self, model, x, y, classes, *, translations=None, screen_gaps=None, screen_threshold=None):
        """Reverse-engineer a trigger per class of ``classes`` and score them (no translations needed)."""
        self._validate_params()
        classes = list(classes)
        x, y = np.asarray(x), np.asarray(y)
        rng = np.random.default_rng(self.random_state + 23)
        order = rng.permutation(len(x))
        fit_idx, rest = order[:min(self.n_fit, max(len(x) // 2, 1))], order[min(self.n_fit, max(len(x) // 2, 1)):]
        pool = np.asarray(x[fit_idx], "float32")
        ceiling = self.ceiling_ = self._ceiling(x)
        self.masks_, self.patterns_, self.success_, self.l1_norms_, self.fresh_, self.plain_ = {}, {}, {}, {}, {}, {}
        self.start_l1_, self.start_fresh_ = {}, {}
        norms = {}
        step = max(RESTART_SEED_STEP, max((int(c) for c in classes), default=0) + 1)
        # Over a time budget (a staged scan's --probe-budget), the first start alone before nothing at all.
        for n_starts in sorted({self.restarts, 1}, reverse=True):
            starts = [(int(c), k) for k in range(n_starts) for c in classes]  # every class's first start first
            try:
                fitted = reverse_engineer_triggers(model, pool, [c for c, _ in starts], pixel_max=self.pixel_max,
                                                   epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                                                   budget_s=self.budget_s,
                                                   seeds=[self.random_state + c + k * step for c, k in starts])
                break
            except OverBudget as e:
                if n_starts == 1:
                    return self._over_budget(classes, e.projected_s)
        self.starts_used_ = n_starts
        by_class = {}  # each class's fits, start 0 first
        for (c, _), r in zip(starts, fitted):
            by_class.setdefault(c, []).append(r)
        for c in classes:
            runs = by_class[int(c)]
            others = rest[y[rest] != c]
            probes = np.asarray(x[rng.choice(others, size=min(self.n_probes, len(others)), replace=False)], "float32")
            if len(probes) == 0:
                shares, self.plain_[c] = [0.0] * len(runs), 0.0
            else:
                shares = [float(np.mean(predict_labels(model, apply_mask(probes, r["mask"], r["pattern"]),
                                                       batch_size=self.batch_size) == c)) for r in runs]
                self.plain_[c] = float(np.mean(predict_labels(model, probes, batch_size=self.batch_size) == c))
            moved = [i for i, f in enumerate(shares) if f >= self.flip_at]
            keep = min(moved, key=lambda i: runs[i]["l1"]) if moved else int(np.argmax(shares))
            r = runs[keep]
            self.masks_[c], self.patterns_[c], self.success_[c], self.l1_norms_[c] = (
                r["mask"], r["pattern"], r["success"], float(r["l1"]))
            self.start_l1_[c], self.start_fresh_[c] = [float(r_["l1"]) for r_ in runs], shares
            self.fresh_[c] = shares[keep]
            norms[c] = self.l1_norms_[c] if moved else ceiling
        self.shares_ = dict(self.fresh_)
        self.fit_norms(norms, screen_gaps=screen_gaps, screen_threshold=screen_threshold, ceiling=ceiling)
        why = None
        given = {c: s for c, s in self.plain_.items() if s >= self.flip_at}
        if given:
            c, share = max(given.items(), key=lambda kv: kv[1])
            why = (f"class {c} takes {100 * share:.0f}% of other classes' probes with no trigger at all: the model "
                   "gives it nearly every image, so no mask norm can be read")
        if why:
            self.inconclusive_, self.suspect_classes_, self.is_backdoored_ = why, [], False
        return self

    def describe(self):
        """What the probe's evidence measures, in words (the ``description`` of :meth:`evidence`; fitted)."""
        return ("the smallest other class's mask norm over this class's (for the two smallest, the third smallest "
                "norm over the second when that is larger: two backdoors), where a norm is the L1 norm of Neural "
                f"Cleanse's smallest mask toward the class (the smallest working one of "
                f"{getattr(self, 'starts_used_', self.restarts)} starts, "
                f"{self.epochs} x {self.steps_per_epoch} steps on {self.n_fit} images), counted only when its "
                f"trigger moves >= {100 * self.flip_at:g}% of {self.n_probes} fresh clean probes of other classes "
                f"(else the whole image, {self.ceiling_:g} pixels)")

    def _gaps(self, ceiling):
        """The whole-image gaps, and for the :data:`GROUP` smallest classes their pair gap (the next
        norm over the larger of theirs) where it is larger, when the classes number more than twice
        :data:`GROUP` and the pair's gap is not set by the bound (``pair_gap_``: None where not read)."""
        gaps = super()._gaps(ceiling)
        self.pair_gap_ = None
        order = sorted(self.classes_, key=lambda c: self.norms_[c])
        if len(order) <= 2 * GROUP:
            return gaps  # a group is a minority: with few classes, two small norms are one large one
        inner, outer = self.norms_[order[GROUP - 1]], self.norms_[order[GROUP]]
        if ceiling is not None and outer >= ceiling * (1 - 1e-6) and inner >= ceiling * self._resolved_below:
            return gaps  # the rest at the bound and the pair not well under it: the bound sets the gap
        self.pair_gap_ = float(outer / max(inner, 1e-12))
        return {c: max(g, self.pair_gap_) if c in order[:GROUP] else g for c, g in gaps.items()}

    def _saturation(self, ceiling):
        if all(n >= ceiling * (1 - 1e-6) for n in self.norms_.values()):
            return None  # no small trigger toward any class: the clean answer, not a saturation
        return super()._saturation(ceiling)

    def report(self):
        out = super().report()
        if not getattr(self, "skipped_", None):
            out["pair_gap"] = getattr(self, "pair_gap_", None)
            if hasattr(self, "starts_used_"):  # fitted, not only scored from norms
                out["starts_used"] = self.starts_used_
        return out

    def _class_entry(self, c):
        entry = super()._class_entry(c)
        if hasattr(self, "l1_norms_"):  # fitted, not only scored from norms
            entry.update(mask_l1=self.l1_norms_[c], attack_success=self.success_[c],
                         start_mask_l1=self.start_l1_[c], start_fresh=self.start_fresh_[c])
        return entry
