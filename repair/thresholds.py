"""The lab's pruning levels, a repair rule."""

from aegis_tf.core.errors import AegisError

__all__ = ["THRESHOLDS", "check_threshold"]

# The lab's pruning levels: accuracy drops, in percentage points, at which B' is kept.
THRESHOLDS = (2, 4, 10)


def check_threshold(threshold):
    """``threshold`` as an int of :data:`THRESHOLDS`, or a one-line error."""
    t = int(threshold) if str(threshold).strip().isdigit() else None
    if t not in THRESHOLDS:
        raise AegisError(f"--threshold must be one of 2, 4, 10 (percent accuracy drop). Received: {threshold}")
    return t
