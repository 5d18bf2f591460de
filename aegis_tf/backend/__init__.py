"""The only place that knows the Keras backend.

Everything backend-specific (gradients, train steps, determinism switches)
lives in ``_tensorflow.py`` or ``_jax.py``; this module picks one by
``keras.backend.backend()``, as Keras itself does. Nothing else in aegis-tf
imports tensorflow or jax.
"""

import keras

_name = keras.backend.backend()
if _name == "tensorflow":
    from aegis_tf.backend import _tensorflow as _impl
elif _name == "jax":
    from aegis_tf.backend import _jax as _impl
else:  # pragma: no cover - torch/numpy backends are not supported
    raise ImportError(f"aegis-tf supports the tensorflow and jax Keras backends. Received: {_name}")

enable_determinism = _impl.enable_determinism

__all__ = ["enable_determinism"]
