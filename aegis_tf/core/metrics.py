"""Clean accuracy and attack success rate, from predicted labels."""

import numpy as np

__all__ = ["clean_accuracy", "attack_success_rate", "rejection_rate", "summarize"]


def clean_accuracy(pred, y):
    """Fraction of clean images predicted as their true label."""
    return float(np.mean(np.asarray(pred) == np.asarray(y)))


def attack_success_rate(pred, target):
    """Fraction of poisoned images predicted as the attacker's target.

    ``target`` is one label per image (as in the CSAW ``bd_*.h5`` files, whose
    labels hold the target) or a single int.
    """
    pred = np.asarray(pred)
    return float(np.mean(pred == np.broadcast_to(np.asarray(target), pred.shape)))


def rejection_rate(pred, reject_class):
    """Fraction of images sent to ``reject_class`` (GoodNet's class N)."""
    return float(np.mean(np.asarray(pred) == reject_class))


def summarize(pred_clean, y_clean, pred_bad, y_bad, reject_class=None):
    """Clean accuracy and ASR, plus rejection rates when ``reject_class`` is given."""
    out = {
        "clean_acc": clean_accuracy(pred_clean, y_clean),
        "asr": attack_success_rate(pred_bad, y_bad),
    }
    if reject_class is not None:
        out["clean_rejected"] = rejection_rate(pred_clean, reject_class)
        out["bad_rejected"] = rejection_rate(pred_bad, reject_class)
    return out
