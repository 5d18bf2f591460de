"""Repair of backdoored models: last-pooling-layer pruning and GoodNet (the CSAW lab's
defence), repair from the trigger detection recovered, and data-free Channel
Lipschitzness-based Pruning (CLP).

The names below are imported on first use (PEP 562), so that ``repair.config`` and
``repair.thresholds`` stay light enough for the command line's parser.
"""

_NAMES = {
    "GoodNet": "repair.goodnet", "GoodNetDecision": "repair.goodnet", "goodnet_labels": "repair.goodnet",
    "check_threshold": "repair.thresholds", "THRESHOLDS": "repair.thresholds", "RepairConfig": "repair.config",
    "PruneCurve": "repair.prune", "finetune_pruned": "repair.prune", "prune_curve": "repair.prune",
    "prune_curve_naive": "repair.prune", "prune_model": "repair.prune",
    "clp_prune": "repair.clp", "channel_lipschitz": "repair.clp",
}

__all__ = list(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        import importlib

        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'repair' has no attribute {name!r}")
