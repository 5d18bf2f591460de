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
    """Clean accuracy and ASR, plus rejection rates when ``reject_class`` is given.

    Where every poisoned image has one target (all-to-one), ``clean_to_target`` is the share of
    clean images of the other classes predicted as that target: the ASR the model shows with no
    trigger at all, the floor a repaired model's ASR is read against (a model at 82% clean
    accuracy sends a few percent of them there by mistake). None where the targets differ
    (all-to-all) or no clean image is of another class."""
    out = {
        "clean_acc": clean_accuracy(pred_clean, y_clean),
        "asr": attack_success_rate(pred_bad, y_bad),
        "clean_to_target": None,
    }
    targets = np.unique(np.asarray(y_bad))
    if len(targets) == 1:
        other = np.asarray(y_clean) != targets[0]
        if other.any():
            out["clean_to_target"] = float(np.mean(np.asarray(pred_clean)[other] == targets[0]))
    if reject_class is not None:
        out["clean_rejected"] = rejection_rate(pred_clean, reject_class)
        out["bad_rejected"] = rejection_rate(pred_bad, reject_class)
    return out
