"""aegis-tf: backdoor attacks, detection (AEGIS) and repair for Keras image classifiers.

The public API (docs/api.md)::

    import aegis_tf

    result = aegis_tf.scan("models/robust_bd_net.keras", "data/train.h5")
    result.backdoored, result.target_classes, result.line
    result.save("out/scan")

``scan``, ``scan_zoo``, ``repair``, ``evaluate_goodnet``, ``poison``, ``train`` and
``evaluate`` are the jobs of the command line; ``DetectConfig``, ``TrainConfig``,
``TriggerConfig`` and ``RepairConfig`` their typed settings; ``ScanResult`` what ``scan`` returns;
``AegisError`` what bad input raises. The stages live in ``aegis_tf.core``,
``aegis_tf.attack``, ``aegis_tf.detect`` and ``aegis_tf.report``, repair in the
``repair`` package (docs/design.md). Keras is imported on first use, not here.
"""

__version__ = "0.3.0"  # the one place: pyproject.toml reads it

_API = {"scan": "aegis_tf.api", "scan_zoo": "aegis_tf.api", "repair": "aegis_tf.api", "evaluate_goodnet": "aegis_tf.api",
        "poison": "aegis_tf.api", "train": "aegis_tf.api", "evaluate": "aegis_tf.api",
        "ScanResult": "aegis_tf.detect.scan", "DetectConfig": "aegis_tf.detect.config",
        "TrainConfig": "aegis_tf.attack.config", "TriggerConfig": "aegis_tf.attack.config",
        "RepairConfig": "repair.config",
        "AegisError": "aegis_tf.core.errors"}

__all__ = ["__version__", *_API]


def __getattr__(name):
    """The public names, imported when first used (PEP 562), so that ``import aegis_tf``
    stays light and the command line can import Keras quietly first."""
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aegis_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
