"""The only place that knows the Keras backend.

Everything backend-specific (input gradients, compiled PGD loops, train
steps, determinism switches) lives in ``_tensorflow.py`` (``tf.GradientTape``,
``tf.function``) or ``_jax.py`` (``jax.grad`` over ``model.stateless_call``,
``jax.jit``). This module picks one by ``keras.backend.backend()``, as Keras
itself does. Nothing else in aegis-tf imports tensorflow or jax.

The API, identical in both files:

* ``enable_determinism()``
* ``input_gradient(logits_model, x, y, *, with_logits=False)`` -> ``(grad, loss)``:
  gradient of the summed cross-entropy (from logits) with respect to ``x``, and
  the per-example loss; ``with_logits=True`` adds the logits of the same forward
  pass (``(grad, loss, logits)``), so a caller that also needs the predictions
  does not run the model twice.
* ``make_attack(logits_model, step, steps, sign)`` -> ``attack(x0, y, x_init)``:
  ``steps`` PGD iterations compiled as one function; ``sign`` is +1 to raise
  the loss (untargeted) or -1 to lower it (targeted).
* ``make_trainer(logits_model, optimizer, x, y)`` -> ``trainer`` whose
  ``trainer.epoch(order, rng, *, batch_size, attack=None, augment=None,
  on_batches=None)`` trains one epoch over ``x[order]`` and returns the mean
  loss. ``attack`` is ``(step, steps)`` for Madry training (PGD from a random
  start, then the optimizer step on the adversarial batch); ``augment`` is
  ``aegis_tf.core.augment.crop_flip_params`` output; ``on_batches(k)`` reports
  progress. TensorFlow draws random starts from ``rng`` on the host; JAX keeps
  the data on the device and draws them with ``jax.random`` from a key taken
  from ``rng``, and skips the last partial batch.
"""

import keras

_name = keras.backend.backend()
if _name == "tensorflow":
    from aegis_tf.core.backend import _tensorflow as _impl
elif _name == "jax":
    from aegis_tf.core.backend import _jax as _impl
else:  # pragma: no cover - torch/numpy backends are not supported
    raise ImportError(f"aegis-tf supports the tensorflow and jax Keras backends. Received: {_name}")

enable_determinism = _impl.enable_determinism
input_gradient = _impl.input_gradient
make_attack = _impl.make_attack
make_trainer = _impl.make_trainer

__all__ = ["enable_determinism", "input_gradient", "make_attack", "make_trainer"]


def cross_entropy(y, logits):
    """Per-example sparse cross-entropy from logits (backend-neutral ``keras.ops``)."""
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
