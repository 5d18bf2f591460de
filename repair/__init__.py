"""Repair of backdoored models: last-pooling-layer pruning and GoodNet."""

from repair.goodnet import GoodNet, GoodNetDecision
from repair.prune import THRESHOLDS, PruneCurve, finetune_pruned, prune_curve, prune_curve_naive, prune_model

__all__ = [
    "GoodNet",
    "GoodNetDecision",
    "THRESHOLDS",
    "PruneCurve",
    "finetune_pruned",
    "prune_curve",
    "prune_curve_naive",
    "prune_model",
]
