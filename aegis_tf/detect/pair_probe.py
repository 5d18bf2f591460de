"""The pair mask probe: Neural Cleanse's smallest trigger per (source, target) pair.

The mask probe (:mod:`aegis_tf.detect.mask_probe`) asks, per class, for the smallest
mask that sends images of *every* class there. A source-specific backdoor (TaCT, Tang et
al. 2021: the trigger moves one class, and cover images teach the model that it moves no
other) has no such mask, and an all-to-all one (y -> y + 1) sends each class somewhere
else; both leave every class-level signal at natural values. Per (source, target) pair
they are as plain as an all-to-one patch: the attacker's patch sends the source's images
to the target. This probe asks that question for every ordered pair, K-Arm style (Shen et
al. 2021 scan the pairs with a bandit; here all pairs share one batch):

* each pair's mask and pattern are fitted by Neural Cleanse's procedure
  (:func:`reverse_engineer_pairs`: ``epochs`` x ``steps_per_epoch`` Adam steps on
  ``per_pair`` images of the source per step, the cost schedule per start, ``patience``
  2 so the cost can rise within the budget) from ``restarts`` random starts, on ``n_fit``
  training images of the source. One start lands in a natural local minimum about one
  time in three on the standard MNIST models (a 3x3 patch reversed at 27 pixels instead of 5);
  the smallest of three whose trigger works is kept;
* the kept trigger is tried on ``n_probes`` *fresh* images of the source; one that moves
  fewer than ``flip_at`` of them found nothing, and the pair's norm is set to the ceiling
  (the whole image, ``H * W``);
* a pair's *gap* is the smallest other norm of its row (the source toward other targets)
  and of its column (other sources toward the target) over its own, flagged at
  ``threshold`` (the scan's ``wi_threshold``, 2). Natural pairs are small in rows (a thin 1
  goes anywhere) or in columns (many classes become an 8), not alone in both. When the pair
  is one of the :data:`~aegis_tf.detect.mask_probe.GROUP` smallest of its column, the column
  may also read the third smallest norm over the second (two sources of one target). An
  all-to-one backdoor makes a whole column small, so it flags no pair here (the mask probe
  names it);
* flagged pairs are read as backdoors as the per-pair view reads its own
  (:func:`~aegis_tf.detect.patch_transfer.pair_mapping`): one target with its sources, or an
  all-to-all mapping;
* a pair that stands out while its norm is a quarter of the image or more (its rivals at the
  bound) makes the probe inconclusive, and so does a model that gives one class ``flip_at``
  of another class's fresh images with no trigger (collapsed); every pair at the bound is the
  clean answer. More than ``max_starts`` starts (pairs x restarts: a model with many classes)
  are not fitted, nor a fit whose projected time (timed on its third step) exceeds
  ``budget_s``; the report says so (``skipped_``), and the verdict line says "not run".

On every pair it is opt-in: on held-out standard models it named 3 of 4 source-specific and 2 of 2
all-to-all backdoors, but also a natural pair on 1 of 4 clean models (the gaps of true and
natural pairs overlap between 1.89 and 2.06; docs/detection.md). ``DetectConfig.pair_mask=True``
(``--pair-mask``) runs it on every pair in every scan whatever it costs; ``"auto"`` in a full scan,
within ``pair_mask_budget`` seconds. By default (``"candidates"``) it fits only the rows and
columns of the pairs the per-pair view saw transfer without flagging them (:func:`candidate_pairs`,
:func:`row_and_column`), with :data:`CANDIDATE_RESTARTS` times the starts, and scores those pairs
alone, so a flagged pair has both views behind it. Gradients come from
:func:`aegis_tf.core.backend.input_gradient`, so nothing
here is backend-specific. Measured in results/detect/pair_mask.md.
"""

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import logits_model, predict_labels
from aegis_tf.core.params import Detector, Interval
from aegis_tf.detect.mask_probe import GROUP, apply_mask
from aegis_tf.detect.neural_cleanse import OverBudget, StepBudget, _schedule, _squash, mask_state, mask_step
from aegis_tf.detect.patch_transfer import pair_mapping

__all__ = ["reverse_engineer_pairs", "PairMaskDetector", "pair_mask_mode", "pair_mask_on", "candidate_pairs",
           "row_and_column",
           "CANDIDATE_SHARE", "CANDIDATE_COUNT", "CANDIDATE_RESTARTS", "CANDIDATE_MAX",
           "OverBudget"]


def pair_mask_mode(config, mode="full"):
    """How a scan of ``mode`` (``"full"`` or ``"staged"``) runs the pair mask probe: ``"all"`` (every
    pair: ``pair_mask=True``, or ``"auto"`` in a full scan), ``"candidates"`` (the per-pair view's
    candidates only: :func:`candidate_pairs`) or None (not at all)."""
    if config.pair_mask is True or (config.pair_mask == "auto" and mode == "full"):
        return "all"
    return "candidates" if config.pair_mask == "candidates" else None


def pair_mask_on(config, mode="full"):
    """Whether a scan runs the pair mask probe on every pair (:func:`pair_mask_mode` is ``"all"``)."""
    return pair_mask_mode(config, mode) == "all"


# A pair the per-pair view saw transfer, but under its own rule: at least this share of its translations
# and this many of them. Such a pair is the pair mask probe's candidate (``pair_mask="candidates"``).
# One transferring translation is enough: on the 30 scans of six clean standard models (three zoos x five
# runs) no translation transferred at all, while a source-specific pair of a standard model often shows
# one or two of its about 22 (share 0.04-0.10) and was left unexamined under the former rule (0.1 and two);
# the pair mask probe, not the count, decides (docs/detection.md, "One transferring translation is a
# candidate"; results/detect/pair_candidates_h10_runs.md).
CANDIDATE_SHARE = 0.0
CANDIDATE_COUNT = 1
# How many times ``pair_mask_restarts`` the probe starts per pair when it fits candidates only.
CANDIDATE_RESTARTS = 2
# At most this many candidates (the highest shares): five rows and columns already cover most pairs of a
# 10-class model, and past that the doubled starts would cost more than the probe on every pair.
CANDIDATE_MAX = 5


def candidate_pairs(pairs, *, classes=None, min_share=CANDIDATE_SHARE, min_count=CANDIDATE_COUNT,
                    max_pairs=CANDIDATE_MAX):
    """The pairs a fitted :class:`~aegis_tf.detect.patch_transfer.PairTransferDetector` saw transfer
    without flagging them: at least ``min_count`` translations and ``min_share`` of them moved the
    source's probes, the pair is not flagged, and its source is not fragile (a source whose patches
    move it toward many targets is a natural confusion, not a candidate); with ``classes``, only
    pairs of those classes (a scan of some classes: the view sees translations from every source);
    the ``max_pairs`` with the highest shares (then counts). Sorted."""
    fragile = set(pairs.fragile_sources_)
    flagged = set(pairs.flagged_pairs_)
    inside = None if classes is None else {int(c) for c in classes}
    found = [p for p, v in pairs.pairs_.items() if v >= min_share and pairs.transferring_pairs_[p] >= min_count
             and p not in flagged and p[0] not in fragile
             and (inside is None or (p[0] in inside and p[1] in inside))]
    found.sort(key=lambda p: (-pairs.pairs_[p], -pairs.transferring_pairs_[p], p))
    return sorted(found[:max_pairs])


def row_and_column(examine, classes):
    """Every ordered pair of ``classes`` in the row (same source) or the column (same target) of a pair
    of ``examine``: what the gap of each examined pair is read against. Sorted."""
    classes = [int(c) for c in classes]
    out = set()
    for s, t in examine:
        out.update((s, k) for k in classes if k != s)
        out.update((k, t) for k in classes if k != t)
    return sorted(out)


def reverse_engineer_pairs(model, pools, pairs, *, pixel_max=255.0, epochs=16, steps_per_epoch=20, per_pair=8,
                           restarts=1, learning_rate=0.1, init_cost=1e-3, patience=2, attack_threshold=0.99, seed=0,
                           budget_s=None):
    """Neural Cleanse's reverse engineering for every ``(source, target)`` of ``pairs``, all in
    one batch: each step draws ``per_pair`` images of the pair's source from ``pools[source]``
    for each of its ``restarts`` (independent random starts) and takes one Adam step on each
    start's own mask and pattern, with Neural Cleanse's cost schedule run per start.

    Returns ``{(s, t): [{"mask", "pattern", "l1", "success", "reached"}, ...]}``, one entry per
    start: its smallest mask that reached ``attack_threshold`` on its batches (``reached``
    True), or its last one. With ``budget_s``, the third step's time (the first two compile)
    projects the whole fit; over the budget, :class:`OverBudget` is raised (its ``projected_s``:
    that projection) before more work is done."""
    rng = np.random.default_rng(seed)
    pairs = [(int(s), int(t)) for s, t in pairs]
    pools = {int(k): np.asarray(v, "float32") for k, v in pools.items()}
    h, w, ch = next(iter(pools.values())).shape[1:]
    units = [p for p in pairs for _ in range(restarts)]
    n, k = len(units), per_pair
    targets = np.repeat([t for _, t in units], k)
    logits = logits_model(model)
    state = mask_state(rng.random((n, h, w, 1)), rng.random((n, h, w, ch)))  # mask first, then pattern
    cost, cost_set = np.zeros(n, "float32"), np.zeros(n, bool)
    up, down = np.zeros(n, int), np.zeros(n, int)
    best = [None] * n
    budget = StepBudget(budget_s, epochs * steps_per_epoch)
    for _ in range(epochs):
        hits = np.zeros(n)
        for _ in range(steps_per_epoch):
            budget.tick()
            xb = np.stack([pools[s][rng.choice(len(pools[s]), size=k, replace=len(pools[s]) < k)] for s, _ in units])
            hits += mask_step(logits, xb, targets, state, cost, pixel_max=pixel_max, learning_rate=learning_rate)
        success = hits / steps_per_epoch
        mask, pattern = _squash(state["mask_t"])[..., 0], _squash(state["pat_t"], pixel_max)
        l1 = mask.sum(axis=(1, 2))
        for i in range(n):
            ok = success[i] >= attack_threshold
            if ok and (best[i] is None or not best[i]["reached"] or l1[i] < best[i]["l1"]):
                best[i] = {"mask": mask[i], "pattern": pattern[i], "l1": float(l1[i]), "success": float(success[i]),
                           "reached": True}
            elif best[i] is None or not best[i]["reached"]:
                best[i] = {"mask": mask[i], "pattern": pattern[i], "l1": float(l1[i]), "success": float(success[i]),
                           "reached": False}
            _schedule(i, ok, cost, cost_set, up, down, init_cost=init_cost, patience=patience)  # per start
    out = {p: [] for p in pairs}
    for u, r in zip(units, best):
        out[u].append(r)
    return out


class PairMaskDetector(Detector):
    """Neural Cleanse per (source, target) pair, scored by the relative gap (see the module
    docstring), scikit-learn style.

    Attributes after ``fit``: ``classes_``, ``pair_norms_`` (``{(s, t): norm}``, the ceiling
    where no start's trigger moved ``flip_at`` of the source's fresh probes), ``pair_l1_``
    (each start's mask norm), ``pair_fresh_`` (each start's share of fresh probes moved),
    ``pair_gaps_``, ``flagged_pairs_``, ``scores_`` (each target's largest pair gap),
    ``suspect_classes_`` (the targets of flagged pairs), ``is_backdoored_``, ``masks_`` and
    ``patterns_`` (the kept start's trigger of each pair), ``ceiling_``, ``inconclusive_``
    (why no pair can be read, or None), ``skipped_`` (why the probe did not run, or None)."""

    _parameter_constraints = {
        "n_fit": [Interval(int, 1, None)],
        "n_probes": [Interval(int, 1, None)],
        "flip_at": [Interval(float, 0, 1, closed="right")],
        "threshold": [Interval(float, 1, None)],
        "epochs": [Interval(int, 1, None)],
        "steps_per_epoch": [Interval(int, 1, None)],
        "per_pair": [Interval(int, 1, None)],
        "restarts": [Interval(int, 1, None)],
        "max_starts": [Interval(int, 1, None)],
        "budget_s": [None, Interval(float, 0, None, closed="neither")],
        "pixel_max": [Interval(float, 0, None, closed="neither")],
        "random_state": [Interval(int, 0, None)],
        "batch_size": [Interval(int, 1, None)],
    }
    score_name = "pair_mask_gap"

    def __init__(self, *, n_fit=100, n_probes=50, flip_at=0.9, threshold=2.0, epochs=16, steps_per_epoch=20,
                 per_pair=4, restarts=3, max_starts=2000, budget_s=None, pixel_max=255.0, random_state=0,
                 batch_size=512):
        self.n_fit = n_fit
        self.n_probes = n_probes
        self.flip_at = flip_at
        self.threshold = threshold
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.per_pair = per_pair
        self.restarts = restarts
        self.max_starts = max_starts
        self.budget_s = budget_s
        self.pixel_max = pixel_max
        self.random_state = random_state
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, config, **kwargs):
        """The probe as a scan runs it with a :class:`~aegis_tf.detect.config.DetectConfig`."""
        budget = None if config.pair_mask is True else float(config.pair_mask_budget)
        # on candidates it fits a row and a column, not every pair: twice the starts, so that a true pair's
        # fit lands in a natural local minimum on every start less often (about one start in three does;
        # docs/detection.md)
        restarts = config.pair_mask_restarts * (CANDIDATE_RESTARTS if pair_mask_mode(config) == "candidates" else 1)
        return cls(n_probes=config.wi_probes, flip_at=config.flip_at, threshold=config.wi_threshold,
                   epochs=config.pair_mask_epochs, restarts=restarts, budget_s=budget, **kwargs)

    @property
    def threshold_(self):
        return self.threshold

    def fit(self, model, x, y, classes, *, examine=None):
        """Reverse-engineer a trigger per ordered pair of ``classes`` and score the pairs. With
        ``examine`` (some pairs: a scan's candidates), only their rows and columns are fitted
        (:func:`row_and_column`) and only they are scored (``examined_``)."""
        self._validate_params()
        classes = self.classes_ = sorted(int(c) for c in classes)
        x, y = np.asarray(x), np.asarray(y)
        self.ceiling_ = float(np.prod(x.shape[1:3]))
        pairs = [(s, t) for s in classes for t in classes if s != t]
        self.examined_ = None
        if examine is not None:
            self.examined_ = sorted({(int(s), int(t)) for s, t in examine})
            outside = sorted({c for p in self.examined_ for c in p} - set(classes))
            if outside:
                raise AegisError(f"an examined pair names class(es) {', '.join(map(str, outside))}, not among the "
                                 f"classes fitted ({', '.join(map(str, classes))})")
            pairs = row_and_column(self.examined_, classes)
        self.skipped_ = None
        if len(pairs) * self.restarts > self.max_starts:
            self.skipped_ = (f"{len(classes)} classes make {len(pairs)} pairs x {self.restarts} starts, over the "
                             f"{self.max_starts} this probe fits at once")
            return self._empty()
        rng = np.random.default_rng(self.random_state + 29)
        pools, fresh = {}, {}
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            n_fit = min(self.n_fit, max(len(idx) // 2, 1))
            pools[c] = np.asarray(x[idx[:n_fit]], "float32")
            fresh[c] = np.asarray(x[idx[n_fit:n_fit + self.n_probes]], "float32")
        try:
            fitted = reverse_engineer_pairs(model, pools, pairs, pixel_max=self.pixel_max, epochs=self.epochs,
                                            steps_per_epoch=self.steps_per_epoch, per_pair=self.per_pair,
                                            restarts=self.restarts, seed=self.random_state, budget_s=self.budget_s)
        except OverBudget as e:
            self.skipped_ = (f"{len(pairs)} pairs x {self.restarts} starts would take about {e.projected_s:.0f} s "
                             f"here, over the budget of {self.budget_s:g} s")
            return self._empty()
        plain = {c: predict_labels(model, fresh[c], batch_size=self.batch_size) if len(fresh[c]) else np.zeros(0, int)
                 for c in classes}
        self.pair_l1_, self.pair_fresh_, self.masks_, self.patterns_ = {}, {}, {}, {}
        norms = {}
        for (s, t), starts in fitted.items():
            shares = [float(np.mean(predict_labels(model, apply_mask(fresh[s], r["mask"], r["pattern"]),
                                                   batch_size=self.batch_size) == t)) if len(fresh[s]) else 0.0
                      for r in starts]
            self.pair_l1_[(s, t)] = [r["l1"] for r in starts]
            self.pair_fresh_[(s, t)] = shares
            moved = [i for i, f in enumerate(shares) if f >= self.flip_at]
            keep = min(moved, key=lambda i: starts[i]["l1"]) if moved else int(np.argmax(shares))
            self.masks_[(s, t)], self.patterns_[(s, t)] = starts[keep]["mask"], starts[keep]["pattern"]
            norms[(s, t)] = starts[keep]["l1"] if moved else self.ceiling_
        self.plain_ = {t: max([float(np.mean(plain[s] == t)) for s in classes if s != t and len(plain[s])],
                              default=0.0) for t in classes}
        return self.fit_norms(norms, examine=self.examined_)

    def _empty(self):
        self.pair_norms_, self.pair_gaps_, self.flagged_pairs_ = {}, {}, []
        self.scores_ = {c: 0.0 for c in self.classes_}
        self.suspect_classes_, self.is_backdoored_, self.inconclusive_ = [], False, None
        return self

    def fit_norms(self, norms, *, ceiling=None, examine=None):
        """Score ``{(source, target): norm}`` (every ordered pair of at least 3 classes, or with
        ``examine`` the rows and columns of those pairs, which alone are scored). Returns ``self``."""
        self._validate_params()
        self.skipped_ = None
        self.examined_ = None if examine is None else sorted((int(s), int(t)) for s, t in examine)
        if ceiling is not None:
            self.ceiling_ = float(ceiling)
        self.pair_norms_ = {(int(s), int(t)): float(v) for (s, t), v in norms.items()}
        missing = [p for p in self.examined_ or [] if p not in self.pair_norms_]
        if missing:
            raise AegisError(f"an examined pair needs its own norm: {', '.join(f'{s}->{t}' for s, t in missing)} "
                             "not among the norms given")
        self.classes_ = sorted({c for p in self.pair_norms_ for c in p})
        if len(self.classes_) < 3:
            raise AegisError("the pair mask probe needs at least 3 classes to compare")
        ceiling = self.ceiling_
        row = {s: sorted(v for (a, _), v in self.pair_norms_.items() if a == s) for s in self.classes_}
        col = {t: sorted(v for (_, b), v in self.pair_norms_.items() if b == t) for t in self.classes_}
        self.pair_gaps_ = {}
        scored = self.pair_norms_ if self.examined_ is None else {p: self.pair_norms_[p] for p in self.examined_}
        for (s, t), own in scored.items():
            own_ = max(own, 1e-12)
            row_rival = _other(row[s], own)
            col_rival = _other(col[t], own)
            col_gap = col_rival / own_
            if len(col[t]) > 2 * GROUP and own <= col[t][GROUP - 1]:  # two sources of one target
                col_gap = max(col_gap, col[t][GROUP] / max(col[t][GROUP - 1], 1e-12))
            self.pair_gaps_[(s, t)] = float(min(row_rival / own_, col_gap))
        bounded = [p for p, g in self.pair_gaps_.items() if g >= self.threshold
                   and self.pair_norms_[p] >= self._resolved_below * ceiling]
        self.flagged_pairs_ = sorted(p for p, g in self.pair_gaps_.items() if g >= self.threshold
                                     and self.pair_norms_[p] < self._resolved_below * ceiling)
        self.scores_ = {c: max([g for (_, t), g in self.pair_gaps_.items() if t == c], default=0.0)
                        for c in self.classes_}
        self.inconclusive_ = None
        if bounded:
            s, t = bounded[0]
            self.inconclusive_ = (f"saturated: pair {s}->{t} stands out at a norm of {self.pair_norms_[(s, t)]:.4g}, "
                                  f"not under {self._resolved_below:g} of the whole image ({ceiling:g}): its gap "
                                  "is set by the bound")
        given = {c: v for c, v in getattr(self, "plain_", {}).items() if v >= self.flip_at}
        if given:
            c, share = max(given.items(), key=lambda kv: kv[1])
            self.inconclusive_ = (f"class {c} takes {100 * share:.0f}% of another class's probes with no trigger "
                                  "at all: the model gives it nearly every image, so no mask norm can be read")
        if self.inconclusive_:
            self.flagged_pairs_ = []
        self.suspect_classes_ = sorted({t for _, t in self.flagged_pairs_})
        self.is_backdoored_ = bool(self.suspect_classes_)
        return self

    _resolved_below = 0.25  # of the ceiling, as for the mask probe

    def describe(self):
        """What the probe's evidence measures, in words (the ``description`` of :meth:`evidence`; fitted)."""
        return (("" if self.examined_ is None else
                 "on the pairs the per-pair view saw transfer without flagging them (at least "
                 f"{CANDIDATE_COUNT} translation{'s' if CANDIDATE_COUNT != 1 else ''}"
                 + (f" and {CANDIDATE_SHARE:g} of them" if CANDIDATE_SHARE > 0 else "")
                 + f"; the {CANDIDATE_MAX} highest shares), ")
                + "per (source, target) pair, the L1 norm of the smallest mask sending the source's images to the "
                f"target (best of {self.restarts} starts, {self.epochs} x {self.steps_per_epoch} steps on "
                f"{self.n_fit} images of the source), counted only when its trigger moves >= "
                f"{100 * self.flip_at:g}% of {self.n_probes} fresh images of the source (else the whole image, "
                f"{self.ceiling_:g} pixels); a pair's gap is the smallest other norm of its source's row and its "
                "target's column over its own (two sources of one target: the third smallest of the column over the "
                "second); a target's score is its largest pair gap")

    def mapping(self):
        """The flagged pairs read as backdoors, as the per-pair view reads its own
        (:meth:`aegis_tf.detect.patch_transfer.PairTransferDetector.mapping`)."""
        return pair_mapping(self.flagged_pairs_)

    def evidence(self, description):
        out = super().evidence(description)
        out["pairs"] = [list(p) for p in self.flagged_pairs_]
        out["mapping"] = self.mapping()
        out["n_sources"] = len(self.classes_)
        if self.inconclusive_:
            out["inconclusive"] = self.inconclusive_
        if self.skipped_:
            out["skipped"] = self.skipped_
        return out

    def report(self):
        out = super().report()
        out["pairs"] = {f"{s}->{t}": {"norm": v, **({"gap": self.pair_gaps_[(s, t)]} if (s, t) in self.pair_gaps_
                                                        else {}),
                                      **({"mask_l1": self.pair_l1_[(s, t)], "fresh_share": self.pair_fresh_[(s, t)]}
                                         if hasattr(self, "pair_l1_") else {})}
                        for (s, t), v in sorted(self.pair_norms_.items())}
        out["flagged_pairs"] = [list(p) for p in self.flagged_pairs_]
        if getattr(self, "examined_", None) is not None:
            out["examined_pairs"] = [list(p) for p in self.examined_]
        out["ceiling"] = self.ceiling_
        if self.inconclusive_:
            out["verdict"], out["inconclusive"] = "inconclusive", self.inconclusive_
        if self.skipped_:
            out["verdict"], out["skipped"] = "not run", self.skipped_
        return out

    def _class_entry(self, c):
        return {self.score_name: self.scores_[c],
                "sources": {str(s): self.pair_gaps_[(s, t)] for (s, t) in sorted(self.pair_gaps_) if t == c}}


def _other(values, own):
    """The smallest of sorted ``values`` once one copy of ``own`` is taken out (inf when none is left)."""
    rest = list(values)
    rest.remove(own)
    return rest[0] if rest else float("inf")
