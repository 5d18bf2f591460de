"""One verdict from every signal a scan ran.

Each detector contributes its ``evidence`` (:meth:`aegis_tf.core.params.Detector.evidence`):
per-class scores, its threshold, and the classes it flags. :func:`combine`
turns them into the one verdict of ``detect.json`` and the one console line.
A class is a target when any signal that decides flags it; signals marked
``"decides": False`` are shown but do not vote (the cluster picture drawn
beside the transfer score, Neural Cleanse when it runs beside AEGIS).

One number per model, to rank a set of models (:func:`suspicion_score`): each
deciding signal's per-class score over its threshold (``score / threshold`` for a
signal flagged above its threshold, ``threshold / score`` for one flagged below
it), the largest over signals and classes. It is at least 1 exactly when the
verdict is BACKDOORED: a class that must meet a second condition (``"also"``, a
staged scan's stage-1 gap) counts with the smaller of its two ratios, and a
class that reaches the threshold but fails the rest of its signal's rule (patch
transfer's count and relative rules, the cluster vote's strict majority, Neural
Cleanse's below-the-median rule) counts :data:`NOT_FLAGGED_MAX`, just under 1.
:func:`probability` maps it to [0, 1), 0.5 at the threshold; it is not calibrated.
"""

import math

__all__ = ["combine", "verdict_line", "suspicion_score", "class_ratio", "probability", "scan_limits",
           "NOT_FLAGGED_MAX", "RATIO_MAX", "PAIR_SIGNALS", "SIGNAL_NAMES", "MIN_CLASSES", "MIN_CLASS_IMAGES",
           "MIN_REACHED"]

# A class that reaches its signal's threshold without being flagged counts this much: the largest
# number below 1, so every ratio under 1 keeps its value and its order.
NOT_FLAGGED_MAX = math.nextafter(1.0, 0.0)
# Ratios are capped here (a score of 0 under a "below" threshold, a threshold of 0), so JSON stays finite.
RATIO_MAX = 1e6
_TINY = 1e-12

# How each signal is named on the console line.
_SHORT = {"patch_transfer": "patch share", "clusters": "cluster vote", "neural_cleanse": "NC index",
          "whole_image": "whole-image gap", "blend_probe": "blend gap", "pair_transfer": "pair share",
          "pair_breadth": "source breadth", "warp_probe": "warp gap",
          "mask_probe": "mask gap", "pair_mask": "pair mask gap"}
# Every signal a verdict may hold, as detect.json names them.
SIGNAL_NAMES = tuple(_SHORT)
# What a scan needs before any signal can be read (:func:`scan_limits`): classes in the model
# (every signal compares a class with the others), training images of each examined class, and
# the mean share of translations that reached their class.
MIN_CLASSES = 3
MIN_CLASS_IMAGES = 10
MIN_REACHED = 0.5
# A target whose flagged sources cover at least this share of the other examined classes is read as
# "every source" (an all-to-one backdoor), not as a source-specific one.
ALL_SOURCES_SHARE = 2 / 3
# The signals that flag (source, target) pairs and read them as backdoors (their evidence's ``mapping``).
PAIR_SIGNALS = ("pair_transfer", "pair_mask")


def combine(evidence, limits=()):
    """``{"backdoored", "target_classes", "backdoors", "inconclusive", "limits", "evidence", "line",
    "score", "probability"}`` from ``{signal: evidence}``: ``backdoors`` names each backdoor as
    source -> target (:func:`backdoors`), ``inconclusive`` the signals whose measurement
    saturated (they name no class), ``score`` is :func:`suspicion_score` (>= 1 exactly when
    backdoored), ``probability`` its :func:`probability`.

    ``limits`` (:func:`scan_limits`: why no signal of this scan can be read) make the whole
    verdict inconclusive: no class is named, whatever the signals flagged (their evidence
    stays), the line starts ``INCONCLUSIVE`` with the reasons, and the score stays under 1."""
    limits = list(limits)
    targets = [] if limits else sorted({c for e in evidence.values() if e.get("decides", True)
                                        for c in e["flagged"]})
    verdict = {"backdoored": bool(targets), "target_classes": targets,
               "backdoors": backdoors(evidence, targets) if targets else [],
               "inconclusive": {k: e["inconclusive"] for k, e in evidence.items()
                                if e.get("inconclusive") and e.get("decides", True)},
               "limits": limits, "evidence": evidence}
    verdict["line"] = verdict_line(verdict)
    verdict["score"] = suspicion_score(evidence)
    if limits:
        verdict["score"] = min(verdict["score"], NOT_FLAGGED_MAX)
    verdict["probability"] = probability(verdict["score"])
    return verdict


def scan_limits(*, n_classes, class_counts, reached=None):
    """Why no signal of a scan can be read, as one-line reasons (empty: none).

    ``n_classes``: the model's classes (every signal compares a class with the others, so
    fewer than :data:`MIN_CLASSES` single out none); ``class_counts``: ``{class: training
    images}`` of the examined classes (fewer than :data:`MIN_CLASS_IMAGES` of one are too few
    probes and seeds to measure it); ``reached``: ``{class: share of its translations that
    reached it}`` (a mean under :data:`MIN_REACHED`: the translations did not converge, so
    their patches and directions carry nothing to read)."""
    out = []
    if n_classes < MIN_CLASSES:
        out.append(f"the model has {n_classes} classes; every signal compares a class with at least "
                   f"{MIN_CLASSES - 1} others")
    few = {int(c): int(n) for c, n in class_counts.items() if n < MIN_CLASS_IMAGES}
    if few:
        listed = ", ".join(f"class {c}: {n}" for c, n in sorted(few.items()))
        out.append(f"too few training images ({listed}; at least {MIN_CLASS_IMAGES} per examined class expected)")
    if reached:
        mean = sum(reached.values()) / len(reached)
        if mean < MIN_REACHED:
            out.append(f"the translations did not converge (on average {100 * mean:.0f}% reached their class, "
                       f"at least {100 * MIN_REACHED:.0f}% expected); raise --eps or --steps")
    return out


def backdoors(evidence, targets=None):
    """Each backdoor the deciding signals found, source -> target:
    ``[{"target", "sources", "signals", "score"}]`` (``sources`` is ``"all"`` for an all-to-one
    backdoor, else the source classes the per-pair signals flagged), or one
    ``{"kind": "all-to-all", "mapping": [[source, target], ...], "signals", "score"}`` when a
    per-pair signal (:data:`PAIR_SIGNALS`) found a mapping of several sources to distinct targets."""
    deciding = {k: e for k, e in evidence.items() if e.get("decides", True)}
    if targets is None:
        targets = sorted({c for e in deciding.values() for c in e["flagged"]})
    per_pair = {k: deciding[k] for k in PAIR_SIGNALS if k in deciding and "mapping" in deciding[k]}
    n_sources = max([e.get("n_sources") or 0 for e in per_pair.values()], default=0)
    examined = sorted({int(c) for e in deciding.values() for c in (e.get("scores") or {})})
    out = []
    a2a = {k: e for k, e in per_pair.items() if e["mapping"].get("kind") == "all-to-all"}
    if a2a:
        # another per-pair signal's pairs join the mapping when they too send each target at most two
        # sources (a few pairs of the same permutation, not a many-to-one backdoor)
        from aegis_tf.detect.patch_transfer import pair_mapping  # here: the verdict module stays free of Keras

        def pairs_of(signals):
            return sorted({tuple(map(int, p)) for e in signals.values()
                           for p in (e["mapping"].get("pairs") or e.get("pairs") or [])})

        for k, e in per_pair.items():  # and only while the union stays a mapping (each target from at most 2)
            if k not in a2a and e.get("pairs") and pair_mapping(pairs_of({**a2a, k: e}))["kind"] == "all-to-all":
                a2a[k] = e
        pairs = pairs_of(a2a)
        mapped = {t for _, t in pairs}
        score = max([class_ratio(e, str(t)) for e in a2a.values() for t in mapped], default=0.0)
        out.append({"kind": "all-to-all", "mapping": [list(p) for p in pairs], "signals": sorted(a2a),
                    "score": score})
        targets = [t for t in targets if t not in mapped or any(
            t in e["flagged"] for k, e in deciding.items() if k not in a2a)]
        per_pair = {k: e for k, e in per_pair.items() if k not in a2a}
    per_target = {}
    for e in per_pair.values():
        for t, s in (e["mapping"].get("backdoors") or {}).items():
            per_target.setdefault(int(t), set()).update(map(int, s))
    broad = {int(t): list(map(int, s)) for t, s in ((deciding.get("pair_breadth") or {}).get("sources") or {}).items()}
    for t in targets:
        signals = [k for k, e in deciding.items() if t in e["flagged"]]
        score = max([class_ratio(deciding[k], str(t)) for k in signals], default=0.0)
        sources = sorted(per_target.get(int(t), set()) | set(broad.get(int(t), []))) or None
        n_others = (n_sources or len(examined)) - 1  # every possible source, examined or not
        # A class-level signal moves probes of every class: its backdoor is all-to-one; so does a
        # per-pair one whose sources cover most classes.
        if (not sources or not set(signals) <= {*PAIR_SIGNALS, "pair_breadth"}
                or len(sources) >= ALL_SOURCES_SHARE * n_others):
            sources = "all"
        out.append({"target": int(t), "sources": sources, "signals": signals, "score": score})
    return out


def _ratio(score, threshold, direction):
    """How far ``score`` lies past ``threshold``: >= 1 when it reaches it (capped at :data:`RATIO_MAX`)."""
    score, threshold = float(score), float(threshold)
    if math.isnan(score) or math.isnan(threshold):
        return 0.0
    if direction == "below":
        r = threshold / max(score, _TINY) if threshold > 0 else (1.0 if score <= threshold else 0.0)
    else:
        r = score / max(threshold, _TINY) if threshold > 0 else (1.0 if score >= threshold else 0.0)
    return min(max(r, 0.0), RATIO_MAX)


def class_ratio(e, c):
    """Class ``c``'s (a string) score over its signal's threshold, as :func:`suspicion_score` counts it:
    the smaller of its two ratios when the signal has a second condition (``also``), then at
    least 1 when the signal flags ``c`` and at most :data:`NOT_FLAGGED_MAX` when it does not."""
    score = (e.get("scores") or {}).get(c)
    r = 0.0 if score is None else _ratio(score, e["threshold"], e.get("direction", "above"))
    also = e.get("also")
    if also:
        second = (also.get("scores") or {}).get(c)
        r = min(r, 0.0 if second is None else _ratio(second, also["threshold"], also.get("direction", "above")))
    if c in {str(f) for f in e.get("flagged") or []}:
        return max(r, 1.0)
    return min(r, NOT_FLAGGED_MAX)


def suspicion_score(evidence):
    """One number per model, higher = more suspicious: the largest :func:`class_ratio` over the
    deciding signals of ``evidence`` and their classes (0 with none). ``>= 1`` exactly when
    :func:`combine` says BACKDOORED."""
    ratios = [class_ratio(e, c) for e in evidence.values() if e.get("decides", True) and not e.get("inconclusive")
              for c in {*map(str, e.get("scores") or {}), *map(str, e.get("flagged") or [])}]
    return max(ratios, default=0.0)


def probability(score):
    """``score / (1 + score)``: a monotone map of :func:`suspicion_score` to [0, 1), 0.5 at the
    threshold (score 1). Not calibrated: it ranks models, it is not a measured frequency."""
    score = max(float(score), 0.0)
    return score / (1.0 + score)


def verdict_line(verdict):
    """``BACKDOORED: class 5 (patch share 0.00 vs 0.02; whole-image gap 7.30 vs 2; blend gap 0.80 vs 2)``
    or ``CLEAN (...)``: each deciding signal's score for the flagged classes (the highest when clean)."""
    targets = verdict["target_classes"]
    parts = []
    for name, e in verdict["evidence"].items():
        if not e.get("decides", True):
            continue
        if e.get("skipped"):
            parts.append(f"{_SHORT.get(name, name)} not run")
            continue
        if e.get("inconclusive"):
            parts.append(f"{_SHORT.get(name, name)} inconclusive ({_why_short(e['inconclusive'])})")
            continue
        scores = e["scores"]
        if targets:
            shown_classes = [str(c) for c in targets if str(c) in scores]
            # "-": a class this signal did not score (a staged scan's stage 2 sees its promoted classes only)
            shown = "/".join(f"{scores[c]:.2f}" for c in shown_classes) or "-"
        else:  # the strongest class against the threshold
            pick = max if e["direction"] == "above" else min
            shown_classes = [pick(scores, key=scores.get)]
            shown = f"{pick.__name__} {scores[shown_classes[0]]:.2f}"
        part = f"{_SHORT.get(name, name)} {shown} vs {e['threshold']:.3g}"
        also = e.get("also")  # a second condition a flagged class must meet too
        if also and shown_classes:
            part += (f" ({also['name']} " + "/".join(f"{also['scores'][c]:.2f}" for c in shown_classes)
                     + f" vs {also['threshold']:g})")
        parts.append(part)
    detail = f" ({'; '.join(parts)})" if parts else ""
    if verdict.get("limits"):
        return f"INCONCLUSIVE: {'; '.join(verdict['limits'])}" + detail
    if not targets:
        return "CLEAN" + detail
    noun = "class" if len(targets) == 1 else "classes"
    named = [_named(b) for b in verdict.get("backdoors") or [] if b.get("kind") == "all-to-all"
             or b.get("sources") not in (None, "all")]
    return f"BACKDOORED: {noun} {', '.join(map(str, targets))}{detail}" + (f": {'; '.join(named)}" if named else "")


def _why_short(reason):
    """A few words for the console line on why a signal was inconclusive (the report has the sentence)."""
    if reason.startswith("saturated"):
        return "saturated"
    if "no trigger at all" in reason or "no warp at all" in reason:
        return "one class takes every image"
    return "see the report"


def _named(b):
    """``3 -> 7`` or ``all-to-all 0->1, 1->2, ...``."""
    if b.get("kind") == "all-to-all":
        return "all-to-all " + ", ".join(f"{s}->{t}" for s, t in b["mapping"])
    return f"{','.join(map(str, b['sources']))} -> {b['target']}"
