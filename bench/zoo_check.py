"""Recompute a zoo scan's metrics from its per-model results alone, with scikit-learn, and compare.

    python bench/zoo_check.py out/matrix_scan

Reads every ``OUT/*/result.json`` (not ``summary.json``), keeps the models scanned without
error whose truth says backdoored (poisoned, and learned: ASR >= 90% where given) or clean,
and computes ROC-AUC (``sklearn.metrics.roc_auc_score``), cross-entropy (``log_loss``) and
Brier score (``brier_score_loss``) of ``p = score / (1 + score)``, and the accuracy of
``score >= 1``; then prints them beside ``summary.json``'s and exits with 1 if any differs
by more than 1e-9.
"""

import glob
import json
import os
import sys

from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python bench/zoo_check.py OUT")
    out = argv[0]
    scores, labels = [], []
    for path in sorted(glob.glob(os.path.join(out, "*", "result.json"))):
        with open(path) as f:
            r = json.load(f)
        truth = r.get("truth")
        if r["status"] != "done" or not truth:
            continue
        if truth["poisoned"] and truth.get("asr") is not None and truth["asr"] < 0.9:
            continue
        scores.append(float(r["verdict"]["score"]))
        labels.append(int(truth["poisoned"]))
    p = [s / (1 + s) for s in scores]
    mine = {"models": len(scores), "roc_auc": roc_auc_score(labels, scores), "cross_entropy": log_loss(labels, p),
            "brier": brier_score_loss(labels, p),
            "accuracy": sum((s >= 1) == bool(y) for s, y in zip(scores, labels)) / len(scores)}
    with open(os.path.join(out, "summary.json")) as f:
        theirs = json.load(f)["metrics"]
    bad = False
    for key, value in mine.items():
        differs = abs(value - theirs[key]) > 1e-9
        bad |= differs
        print(f"{key:14s} recomputed {value:.6f}   summary.json {theirs[key]:.6f}{'   DIFFERS' if differs else ''}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
