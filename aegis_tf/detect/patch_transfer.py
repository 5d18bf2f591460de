"""The default AEGIS score: does a translation's patch move other images?

A translation toward a backdoor's target often draws the trigger, and the few
pixels it changed most then act as a universal patch.
:func:`patch_transfer_rates` pastes them onto clean images of other classes
and counts how many take the class; :class:`PatchTransferDetector` flags a
class when enough of its translations carry such a patch.
"""

from collections import Counter

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import predict_labels
from aegis_tf.core.params import Detector, Interval

__all__ = ["SECOND_LOOK_PROBES", "patch_pixels", "paste_patches", "patch_transfer_rates",
           "probes_moved_histogram", "rates_from_histogram", "PatchTransferDetector", "pair_transfer_rates",
           "PairTransferDetector", "pair_mapping"]


def patch_pixels(x_translated, x_seed, top_frac):
    """Flat pixel indices (n, k) of the ``top_frac`` most-changed pixels of each translation."""
    d = np.abs(np.asarray(x_translated, "float32") - np.asarray(x_seed, "float32")).sum(-1)
    d = d.reshape(len(d), -1)
    k = int(min(d.shape[1], max(1, round(top_frac * d.shape[1]))))
    return np.argpartition(-d, k - 1, axis=1)[:, :k]


def paste_patches(x_translated, pixels, probes):
    """Every translation's patch (its values at ``pixels``) pasted onto every probe.

    Returns an array of shape ``(len(x_translated), len(probes)) + image shape``.
    """
    n, (h, w, c) = len(x_translated), probes.shape[1:]
    out = np.repeat(np.asarray(probes, "float32")[None], n, axis=0).reshape(n, len(probes), h * w, c)
    values = np.asarray(x_translated, "float32").reshape(n, h * w, c)[np.arange(n)[:, None], pixels]  # (n, k, c)
    out[np.arange(n)[:, None], :, pixels] = values[:, :, None, :]
    return out.reshape((n, len(probes), h, w, c))


def patch_transfer_rates(model, x, y, translations, *, top_frac=0.02, n_probes=20, seed=0, batch_size=512):
    """How far each translation's most-changed pixels carry the class on their own.

    For class ``c`` and each of its translations: take the ``top_frac`` share of
    pixels that the translation changed most (the patch), paste them onto
    ``n_probes`` training images of other classes, and record the share of
    those that the model then classifies as ``c``. Returns ``{c: (rates,
    pixels, probe_indices)}``, ``rates`` one value per translation.
    """
    rng = np.random.default_rng(seed + 2)
    out = {}
    for c, tr in translations.items():
        xt = tr.images
        pool = np.nonzero(y != c)[0]
        probe_idx = rng.choice(pool, size=min(n_probes, len(pool)), replace=False)
        pixels = patch_pixels(xt, tr.starts, top_frac)
        out[c] = (_moved_to(model, xt, pixels, x[probe_idx], c, batch_size), pixels, probe_idx)
    return out


def probes_moved_histogram(rates, n_probes):
    """How many translations moved 0, 1, ..., ``n_probes`` probes, from their ``rates``
    (:func:`patch_transfer_rates`). It holds all that :class:`PatchTransferDetector` needs."""
    moved = np.rint(np.asarray(rates, dtype="float64") * n_probes).astype(int)
    return np.bincount(moved, minlength=n_probes + 1)


def rates_from_histogram(hist):
    """The inverse of :func:`probes_moved_histogram`: one rate per translation, in increasing order."""
    hist = np.asarray(hist, dtype=int)
    n = len(hist) - 1
    return np.repeat(np.arange(n + 1) / n, hist)


class PatchTransferDetector(Detector):
    """Flags classes whose translations carry a universal patch, scikit-learn style.

    ``fit(model, x, y, classes)`` translates toward each class (or takes
    ``translations``), then measures :func:`patch_transfer_rates` with
    ``top_frac`` and ``n_probes``; ``fit_rates({class: rates})`` scores rates
    already measured. A translation *transfers* when its patch moves at least
    ``flip_at`` of the probes to its class. A backdoor trigger is a
    near-universal patch, so the default 0.9 asks for nearly all of them: on
    badly trained models, patches toward ordinary classes move half the probes
    or so, and 0.5 flagged those (``results/detect/detect_rules.md``). A class's score
    is the share of its translations that transfer. It is suspect when that
    share is at least ``min_score`` (and at least ``min_count`` translations),
    and more than ``relative`` times the median score of the other examined
    classes (so a model whose every class transfers is not blamed on one class).
    ``translation`` (a :class:`~aegis_tf.detect.config.DetectConfig`, default the
    defaults) gives the translation settings, scaled by ``pixel_max``.

    Attributes after ``fit``: ``classes_``, ``rates_`` (class -> (rates, patch
    pixels, probe indices); only after ``fit``), ``scores_``, ``transferring_``
    (class -> count), ``mean_rates_``, ``suspect_classes_``, ``is_backdoored_``.
    """

    _parameter_constraints = {
        "flip_at": [Interval(float, 0, 1, closed="right")],
        "min_score": [Interval(float, 0, 1)],
        "min_count": [Interval(int, 0, None)],
        "relative": [Interval(float, 0, None)],
        "top_frac": [Interval(float, 0, 1, closed="right")],
        "n_probes": [Interval(int, 1, None)],
        "pixel_max": [Interval(float, 0, None, closed="neither")],
        "random_state": [Interval(int, 0, None)],
        "batch_size": [Interval(int, 1, None)],
    }
    score_name = "transfer_score"

    def __init__(self, *, flip_at=0.9, min_score=0.02, min_count=3, relative=3.0, top_frac=0.02, n_probes=20,
                 translation=None, pixel_max=255.0, random_state=0, batch_size=512):
        self.flip_at = flip_at
        self.min_score = min_score
        self.min_count = min_count
        self.relative = relative
        self.top_frac = top_frac
        self.n_probes = n_probes
        self.translation = translation
        self.pixel_max = pixel_max
        self.random_state = random_state
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, config, **kwargs):
        """A detector with the transfer settings of a :class:`~aegis_tf.detect.config.DetectConfig`."""
        return cls(flip_at=config.flip_at, top_frac=config.top_frac, n_probes=config.n_probes, translation=config,
                   **kwargs)

    @property
    def threshold_(self):
        return self.min_score

    def fit(self, model, x, y, classes, *, translations=None):
        """Translate (unless ``translations`` are given), paste patches, score. Returns ``self``."""
        from aegis_tf.detect.translation import translations_for

        self._validate_params()
        translations = translations_for(self, model, x, y, classes, translations)
        self.rates_ = patch_transfer_rates(model, x, y, translations,
                                           top_frac=self.top_frac, n_probes=self.n_probes, seed=self.random_state,
                                           batch_size=self.batch_size)
        return self.fit_rates({c: r[0] for c, r in self.rates_.items()})

    def fit_rates(self, rates):
        """Score per-translation transfer rates ``{class: rates}``. Returns ``self``."""
        self._validate_params()
        if not rates:
            raise AegisError("no classes to examine")
        self.classes_ = sorted(rates)
        self.transferring_ = {c: int(np.sum(np.asarray(rates[c]) >= self.flip_at)) for c in self.classes_}
        self.scores_ = {c: self.transferring_[c] / max(1, len(rates[c])) for c in self.classes_}
        self.mean_rates_ = {c: float(np.mean(rates[c])) for c in self.classes_}

        def others(c):  # median score of the other classes (0 when there are none)
            rest = [self.scores_[k] for k in self.classes_ if k != c]
            return float(np.median(rest)) if rest else 0.0

        self.suspect_classes_ = [c for c in self.classes_
                                 if self.scores_[c] >= self.min_score and self.transferring_[c] >= self.min_count
                                 and self.scores_[c] > self.relative * others(c)]
        self.is_backdoored_ = bool(self.suspect_classes_)
        return self

    def _class_entry(self, c):
        return {"transfer_score": self.scores_[c], "transferring": self.transferring_[c],
                "mean_probe_rate": self.mean_rates_[c]}


def pair_transfer_rates(model, x, y, translations, *, top_frac=0.02, n_probes=10, seed=0, batch_size=512,
                        confirm_probes=0, flip_at=0.9):
    """The per-pair view of :func:`patch_transfer_rates`: each translation's patch is pasted
    onto ``n_probes`` training images of its own seed's class (the source), not of every
    other class, so a trigger that moves only its source classes (a source-specific or an
    all-to-all backdoor) still transfers. Returns ``{(source, target): rates}``, one rate
    per translation from that source toward that target.

    **Confirmation** (``confirm_probes`` > 0): a translation whose patch moves at least
    ``flip_at`` of the first probes is pasted onto ``confirm_probes`` fresh images of its
    source, and its rate becomes the share over all ``n_probes + confirm_probes``. Chosen
    because it cleared ``flip_at`` on a few probes, its first rate is biased upwards; the
    fresh probes measure it without that bias (a trigger keeps moving nearly all of them,
    a natural confusion slips back). Translations under ``flip_at`` keep their first rate.
    """
    rng = np.random.default_rng(seed + 3)
    y = np.asarray(y)
    probes, fresh = {}, {}
    for s in np.unique(y):
        pool = np.nonzero(y == s)[0]
        probes[int(s)] = rng.choice(pool, size=min(n_probes, len(pool)), replace=False)
    if confirm_probes:
        rng_confirm = np.random.default_rng(seed + 4)  # its own stream: the first probes stay as they were
        for s, first in probes.items():
            rest = np.setdiff1d(np.nonzero(y == s)[0], first)
            fresh[s] = rng_confirm.choice(rest, size=min(confirm_probes, len(rest)), replace=False)
    out = {}
    for c, tr in translations.items():
        src = y[tr.seeds]
        pixels = patch_pixels(tr.images, tr.starts, top_frac)
        for s in np.unique(src):
            idx = np.nonzero(src == s)[0]
            rates = _moved_to(model, tr.images[idx], pixels[idx], x[probes[int(s)]], c, batch_size)
            again = np.nonzero(rates >= flip_at)[0] if confirm_probes else ()
            if len(again) and len(fresh[int(s)]):
                k, m, sel = len(probes[int(s)]), len(fresh[int(s)]), idx[again]
                more = _moved_to(model, tr.images[sel], pixels[sel], x[fresh[int(s)]], c, batch_size)
                rates[again] = (np.rint(rates[again] * k) + np.rint(more * m)) / (k + m)
            out[(int(s), int(c))] = rates
    return out


def _moved_to(model, images, pixels, probes, target, batch_size):
    """Per translation: the share of ``probes`` that its patch moves to ``target``."""
    pasted = paste_patches(images, pixels, probes)
    pred = predict_labels(model, pasted.reshape((-1,) + pasted.shape[2:]), batch_size=batch_size)
    return (pred.reshape(len(images), -1) == target).mean(axis=1)


class PairTransferDetector(PatchTransferDetector):
    """Flags (source, target) pairs whose translations carry a patch that moves the
    source's own images to the target (:func:`pair_transfer_rates`), scikit-learn style.

    A pair's score is the share of its translations that transfer (move at least
    ``flip_at`` of the source's probes). A pair is flagged when that share is at least
    ``min_score``, at least ``min_count`` translations transfer, and the share exceeds
    ``relative`` times the median share of all pairs (a model whose patches all
    transfer is not blamed on one pair). ``scores_`` holds each target's largest pair
    score; ``pairs_`` every pair's (``pair_rates_``: its translations' rates, in the order of
    the target's translations from that source); ``flagged_pairs_`` the flagged ones;
    ``suspect_classes_`` the targets of flagged pairs. :meth:`mapping` reads them as
    backdoors: one target with its sources, or an all-to-all mapping.

    **Breadth** (:meth:`breadth_evidence`, a signal of its own in the verdict): a trigger
    that sends every class to one target transfers from many sources, each a little on a
    standard-trained model, while a natural confusion (a thin 1 pushed into a 7) transfers
    from one. ``breadth_[t]`` counts the sources with at least one transferring translation
    toward ``t``, ``breadth_scores_[t]`` is that count over the sources examined, and
    ``broad_targets_`` the targets where it reaches ``source_share`` and at least
    ``min_sources`` sources, and exceeds ``relative`` times the median breadth of the other
    targets (``broad_sources_``: those sources).

    **Fragile sources**: a backdoor moves a source to one target (two with two backdoors),
    while a source whose images any small patch pushes somewhere (a thin 1 on a standard
    model trained on warped or randomly placed triggers) transfers toward many.
    ``fragile_sources_`` holds the sources with a transferring translation toward more
    than ``max_targets`` targets; their pairs are neither flagged, nor counted in breadth, nor in
    ``scores_`` (so not in the model's suspicion score); ``pairs_`` still holds them.

    **Confirmation**: ``fit`` re-tests each translation that cleared ``flip_at`` on the first
    ``n_probes`` on ``confirm_probes`` fresh images of its source (:func:`pair_transfer_rates`);
    it transfers only if its patch moves ``flip_at`` of all of them. On robust clean models a
    natural confusion (a sneaker patch that makes a bag) cleared 9 of 10 probes by chance in
    a quarter to two fifths of its translations and flagged the pair
    (``results/detect/pair_confirm.md``). ``0`` skips it.

    **A second look** (``retest`` > 0): the share of a pair is counted on the few translations
    that happen to start in its source (about ``n_seeds / (N - 1)``), so a pair whose patches
    transfer now and then crosses ``min_score`` in some runs by chance. On robust clean models a
    natural confusion (a thin 1 drawn into a 4, a sandal into a bag) did so in 4 of 30 scans,
    at shares of 0.28-0.29 that it reached nowhere else (0.03-0.17 in the other runs). ``fit``
    therefore translates ``retest`` times as many fresh images of the source toward the target
    for every flagged pair whose share is under ``retest_below``
    (:func:`~aegis_tf.detect.translation.translate_pairs`, with the ``translation`` settings),
    measures them as the first ones and scores the pair on all of them (:meth:`pool_rates`); a
    pair at or above ``retest_below`` stands as measured. A trigger keeps its share on the
    larger count, a chance crossing falls back toward the pair's real rate. ``retested_``
    holds each re-tested pair's share before and after.
    """

    score_name = "pair_transfer_score"
    _parameter_constraints = {**PatchTransferDetector._parameter_constraints,
                              "min_sources": [Interval(int, 1, None)],
                              "source_share": [Interval(float, 0, 1, closed="right")],
                              "max_targets": [Interval(int, 1, None)],
                              "confirm_probes": [Interval(int, 0, None)],
                              "retest": [Interval(int, 0, None)],
                              "retest_below": [Interval(float, 0, 1, closed="right")],
                              "retest_sets": [Interval(int, 1, None)],
                              "retest_probes": [None, Interval(int, 0, None)]}

    def __init__(self, *, flip_at=0.9, min_score=0.25, min_count=3, relative=3.0, min_sources=3, source_share=1 / 3,
                 max_targets=2, top_frac=0.02, n_probes=10, confirm_probes=30, retest=3, retest_below=0.5,
                 retest_sets=3, retest_probes=None, translation=None, pixel_max=255.0, random_state=0, batch_size=512):
        super().__init__(flip_at=flip_at, min_score=min_score, min_count=min_count, relative=relative,
                         top_frac=top_frac, n_probes=n_probes, translation=translation, pixel_max=pixel_max,
                         random_state=random_state, batch_size=batch_size)
        self.min_sources = min_sources
        self.source_share = source_share
        self.max_targets = max_targets
        self.confirm_probes = confirm_probes
        self.retest = retest
        self.retest_below = retest_below
        self.retest_sets = retest_sets
        self.retest_probes = retest_probes

    def fit(self, model, x, y, classes, *, translations=None):
        """Translate (unless ``translations`` are given), measure every pair, score, and take a
        second look at the weak flags (``retest``). Returns ``self``."""
        from aegis_tf.detect.translation import translations_for

        self._validate_params()
        translations = translations_for(self, model, x, y, classes, translations)
        self.fit_rates(self.measure(model, x, y, translations), classes=classes)
        return self.second_look(model, x, y, {c: tr.seeds for c, tr in translations.items()})

    def measure(self, model, x, y, translations, *, probe_seed=None, confirm_probes=None):
        """:func:`pair_transfer_rates` of ``translations`` with this detector's settings (its probes
        drawn from ``probe_seed``, default ``random_state``; ``confirm_probes`` default the detector's)."""
        seed = self.random_state if probe_seed is None else probe_seed
        confirm = self.confirm_probes if confirm_probes is None else confirm_probes
        return pair_transfer_rates(model, x, y, translations, top_frac=self.top_frac, n_probes=self.n_probes,
                                   seed=seed, batch_size=self.batch_size, confirm_probes=confirm,
                                   flip_at=self.flip_at)

    def second_look(self, model, x, y, used):
        """Re-test the weak flags of a fitted detector (:meth:`weak_pairs`; nothing with ``retest``
        0): ``retest`` times each pair's count of translations, from images of its source that
        ``used[target]`` (the seeds already translated toward the target) does not hold, measured
        on ``retest_sets`` sets of probes of their own (translation ``i`` of a target on set ``i %
        retest_sets``, set ``g`` drawn from ``random_state + (g + 1) * SECOND_LOOK_PROBES``) and
        pooled (:meth:`pool_rates`). Returns ``self``."""
        weak = self.weak_pairs()
        if not (self.retest and weak):
            return self
        from aegis_tf.detect.config import DetectConfig
        from aegis_tf.detect.translation import Translation, translate_pairs

        counts = {p: self.retest * len(self.pair_rates_[p]) for p in weak}
        more = translate_pairs(model, x, y, counts, used, self.translation or DetectConfig(),
                               pixel_max=self.pixel_max, seed=self.random_state, batch_size=self.batch_size)
        rates = {}
        for g in range(self.retest_sets):
            part = {}
            for t, tr in more.items():
                sel = np.arange(len(tr.seeds)) % self.retest_sets == g
                if sel.any():
                    part[t] = Translation(tr.images[sel], tr.seeds[sel], tr.reached, tr.starts[sel])
            measured = self.measure(model, x, y, part, probe_seed=self.random_state + (g + 1) * SECOND_LOOK_PROBES,
                                    confirm_probes=self.retest_probes)
            for p, r in measured.items():
                rates[p] = np.concatenate([rates[p], r]) if p in rates else r
        return self.pool_rates({p: rates[p] for p in weak if p in rates})

    def scan_rates(self, pair):
        """The rates of ``pair``'s translations in the set the detector was fitted on, in their order
        there: without those of its second look (which :meth:`pool_rates` appends)."""
        rates = self.pair_rates_[pair]
        return rates[:self.retested_[pair]["translations_before"]] if pair in self.retested_ else rates

    def weak_pairs(self):
        """The flagged pairs whose share is under ``retest_below``: those a second look re-tests."""
        return [p for p in self.flagged_pairs_ if self.pairs_[p] < self.retest_below]

    def pool_rates(self, more):
        """Score again with the rates of further translations ``{(source, target): rates}`` added
        to each pair's first ones (:meth:`fit_rates`). ``retested_[pair]`` records its share and
        count of translations before and after, and whether it is flagged. Returns ``self``."""
        before = {p: (self.pairs_[p], len(self.pair_rates_[p])) for p in more}
        rates = {p: np.concatenate([r, np.asarray(more[p], dtype=r.dtype)]) if p in more else r
                 for p, r in self.pair_rates_.items()}
        self.fit_rates(rates, classes=self.classes_)
        self.retested_ = {p: {"share_before": before[p][0], "translations_before": before[p][1],
                              "share": self.pairs_[p], "translations": len(self.pair_rates_[p]),
                              "flagged": p in self.flagged_pairs_} for p in sorted(more)}
        return self

    def fit_rates(self, rates, *, classes=None):
        """Score ``{(source, target): rates}``. Returns ``self``."""
        self._validate_params()
        if not rates:
            raise AegisError("no pairs to examine")
        self.classes_ = sorted(classes if classes is not None else {c for _, c in rates})
        self.pair_rates_ = {p: np.asarray(r) for p, r in rates.items()}
        self.retested_ = {}
        self.transferring_pairs_ = {p: int(np.sum(np.asarray(r) >= self.flip_at)) for p, r in rates.items()}
        self.pairs_ = {p: self.transferring_pairs_[p] / max(1, len(r)) for p, r in rates.items()}
        median = float(np.median(list(self.pairs_.values())))
        reach = Counter(s for (s, _), n in self.transferring_pairs_.items() if n >= 1)  # targets per source
        self.fragile_sources_ = sorted(s for s, n in reach.items() if n > self.max_targets)
        fragile = set(self.fragile_sources_)
        self.flagged_pairs_ = sorted(p for p, v in self.pairs_.items()
                                     if v >= self.min_score and self.transferring_pairs_[p] >= self.min_count
                                     and v > self.relative * median and p[0] not in fragile)
        examined = {c: [] for c in self.classes_}  # one pass over the pairs, not one per class
        self.scores_ = {c: 0.0 for c in self.classes_}
        for (s, t), v in sorted(self.pairs_.items()):
            if t in examined:
                examined[t].append(s)
                if s not in fragile:  # set-aside evidence neither flags nor ranks (the model's score)
                    self.scores_[t] = max(self.scores_[t], v)
        self.suspect_classes_ = sorted({t for _, t in self.flagged_pairs_})
        self.is_backdoored_ = bool(self.suspect_classes_)
        self.broad_sources_ = {c: [s for s in examined[c] if self.transferring_pairs_[(s, c)] >= 1
                                   and s not in fragile] for c in self.classes_}
        self.breadth_ = {c: len(self.broad_sources_[c]) for c in self.classes_}
        self.breadth_scores_ = {c: self.breadth_[c] / max(1, len(examined[c])) for c in self.classes_}
        med = {c: float(np.median([self.breadth_[k] for k in self.classes_ if k != c] or [0]))
               for c in self.classes_}  # as for pairs: a model whose patches transfer everywhere blames no target
        self.broad_targets_ = [c for c in self.classes_ if self.breadth_[c] >= self.min_sources
                               and self.breadth_scores_[c] >= self.source_share
                               and self.breadth_[c] > self.relative * med[c]]
        return self

    def breadth_evidence(self, description):
        """The breadth rule's part of the verdict: per target the share of sources whose patches
        moved their own probes (at least one translation each), flagged at ``source_share`` and
        ``min_sources`` sources."""
        return {"description": description, "scores": {str(c): self.breadth_scores_[c] for c in self.classes_},
                "threshold": self.source_share, "direction": "above", "flagged": list(self.broad_targets_),
                "sources": {str(c): self.broad_sources_[c] for c in self.broad_targets_},
                "min_sources": self.min_sources}

    def breadth_report(self):
        """Per target: its breadth (sources that transferred), that share, and whether it is broad."""
        return {"verdict": "backdoored" if self.broad_targets_ else "clean",
                "suspect_classes": list(self.broad_targets_),
                "classes": {str(c): {"breadth": self.breadth_[c], "breadth_score": self.breadth_scores_[c],
                                     "sources": self.broad_sources_[c]} for c in self.classes_},
                "params": {"min_sources": self.min_sources, "source_share": self.source_share,
                           "max_targets": self.max_targets, "flip_at": self.flip_at},
                "fragile_sources": list(self.fragile_sources_)}

    def mapping(self):
        """The flagged pairs read as backdoors (:func:`pair_mapping`)."""
        return pair_mapping(self.flagged_pairs_)

    def evidence(self, description):
        out = super().evidence(description)
        out["pairs"] = [list(p) for p in self.flagged_pairs_]
        out["mapping"] = self.mapping()
        out["n_sources"] = len({s for s, _ in self.pairs_})  # every class with training images, examined or not
        out["fragile_sources"] = list(self.fragile_sources_)
        out["max_targets"] = self.max_targets
        out["retested"] = [{"pair": list(p), **v} for p, v in sorted(self.retested_.items())]
        return out

    def _class_entry(self, c):
        return {self.score_name: self.scores_[c],
                "sources": {str(s): v for (s, t), v in sorted(self.pairs_.items()) if t == c}}


# The second look measures its translations on probes of their own: the offset of their seed. Within one
# scan a pair's share depends on the source's probes as much as on its translations (a natural pair kept
# 0.26-0.27 on fresh translations over the same probes that had put it at 0.29).
SECOND_LOOK_PROBES = 1009


def pair_mapping(flagged_pairs):
    """Flagged ``(source, target)`` pairs read as backdoors: ``{"kind": "all-to-all", "pairs": [...]}``
    when they map at least 3 sources to distinct targets, each target from at most 2 sources
    (a permutation, not many classes to one); else ``{"kind": "per-target",
    "backdoors": {target: [sources]}}``."""
    by_target = {}
    for s, t in flagged_pairs:
        by_target.setdefault(t, []).append(s)
    sources = {s for s, _ in flagged_pairs}
    if len(by_target) >= 3 and len(sources) >= 3 and all(len(v) <= 2 for v in by_target.values()):
        return {"kind": "all-to-all", "pairs": [list(p) for p in flagged_pairs]}
    return {"kind": "per-target", "backdoors": {t: sorted(v) for t, v in sorted(by_target.items())}}
