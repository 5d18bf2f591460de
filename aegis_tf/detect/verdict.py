"""One verdict from every signal a scan ran.

Each detector contributes its ``evidence`` (:meth:`aegis_tf.core.params.Detector.evidence`):
per-class scores, its threshold, and the classes it flags. :func:`combine`
turns them into the one verdict of ``detect.json`` and the one console line.
A class is a target when any signal that decides flags it; signals marked
``"decides": False`` are shown but do not vote (the cluster picture drawn
beside the transfer score, for instance).
"""

__all__ = ["combine", "verdict_line"]

# How each signal is named on the console line.
_SHORT = {"patch_transfer": "patch share", "clusters": "cluster vote", "neural_cleanse": "NC index",
          "whole_image": "whole-image gap", "blend_probe": "blend gap"}


def combine(evidence):
    """``{"backdoored", "target_classes", "evidence", "line"}`` from ``{signal: evidence}``."""
    targets = sorted({c for e in evidence.values() if e.get("decides", True) for c in e["flagged"]})
    verdict = {"backdoored": bool(targets), "target_classes": targets, "evidence": evidence}
    verdict["line"] = verdict_line(verdict)
    return verdict


def verdict_line(verdict):
    """``BACKDOORED: class 5 (patch share 0.00 vs 0.02; whole-image gap 7.30 vs 2; blend gap 0.80 vs 2)``
    or ``CLEAN (...)``: each deciding signal's score for the flagged classes (the highest when clean)."""
    targets = verdict["target_classes"]
    parts = []
    for name, e in verdict["evidence"].items():
        if not e.get("decides", True):
            continue
        scores = e["scores"]
        if targets:
            shown_classes = [str(c) for c in targets if str(c) in scores]
            shown = "/".join(f"{scores[c]:.2f}" for c in shown_classes)
        else:  # the strongest class against the threshold
            pick = max if e["direction"] == "above" else min
            shown_classes = [pick(scores, key=scores.get)]
            shown = f"{pick.__name__} {scores[shown_classes[0]]:.2f}"
        part = f"{_SHORT.get(name, name)} {shown} vs {e['threshold']:g}"
        also = e.get("also")  # a second condition a flagged class must meet too
        if also and shown_classes:
            part += (f" ({also['name']} " + "/".join(f"{also['scores'][c]:.2f}" for c in shown_classes)
                     + f" vs {also['threshold']:g})")
        parts.append(part)
    detail = f" ({'; '.join(parts)})" if parts else ""
    if not targets:
        return "CLEAN" + detail
    noun = "class" if len(targets) == 1 else "classes"
    return f"BACKDOORED: {noun} {', '.join(map(str, targets))}{detail}"
