"""TensorFlow implementations (tf.GradientTape)."""

import tensorflow as tf


def enable_determinism():
    """Make TensorFlow ops deterministic (for reproducible training runs)."""
    tf.config.experimental.enable_op_determinism()
