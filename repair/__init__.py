"""Repair of backdoored models: last-pooling-layer pruning and GoodNet."""

from repair.goodnet import GoodNet, GoodNetDecision, goodnet_labels
from repair.prune import THRESHOLDS, check_threshold, PruneCurve, finetune_pruned, prune_curve, prune_curve_naive, prune_model

__all__ = [
    "GoodNet",
    "GoodNetDecision",
    "goodnet_labels",
    "check_threshold",
    "THRESHOLDS",
    "PruneCurve",
    "finetune_pruned",
    "prune_curve",
    "prune_curve_naive",
    "prune_model",
]
