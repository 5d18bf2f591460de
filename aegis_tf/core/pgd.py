"""Projected gradient descent: one implementation for training, evaluation and translation.

Norms are small step objects in the manner of MadryLab robustness
(``L2Step``, ``LinfStep``). Each has ``random_start(x, rng)`` (NumPy),
``step(x, grad)`` and ``project(x, x0)`` (``keras.ops``, so they run inside
compiled TensorFlow and JAX code alike). The attack is a plain function with
keyword-only hyperparameters, in the manner of cleverhans'
``projected_gradient_descent``. Value bounds are arguments, never hard-coded.
"""

import numpy as np
from keras import ops

from aegis_tf.core import backend
from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import logits_model
from aegis_tf.core.settings import parse_norm

__all__ = ["Step", "L2Step", "LinfStep", "make_step", "projected_gradient_descent", "parse_norm", "check_norm"]

_TINY = 1e-12

# 2 or np.inf from any spelling; anything else raises ValueError, as the house style says.
# Defined in aegis_tf.core.settings (no Keras import), the one place norms are parsed.
check_norm = parse_norm


def _per_example(v, x):
    """Reshape a per-example vector to broadcast against the batch ``x``."""
    return ops.reshape(v, (-1,) + (1,) * (len(x.shape) - 1))


class Step:
    """A norm ball of radius ``eps`` around ``x0``, inside [clip_min, clip_max]."""

    def __init__(self, *, eps, step_size, clip_min, clip_max):
        if eps < 0 or step_size <= 0:
            raise AegisError(f"eps must be >= 0 and step_size > 0. Received: eps={eps}, step_size={step_size}")
        if clip_min >= clip_max:
            raise AegisError(f"clip_min must be below clip_max. Received: {clip_min}, {clip_max}")
        self.eps = float(eps)
        self.step_size = float(step_size)
        self.clip_min = float(clip_min)
        self.clip_max = float(clip_max)

    def random_start(self, x, rng):
        raise NotImplementedError

    def start_from_noise(self, x, normal, uniform):
        """``random_start`` inside compiled code: ``normal`` (standard normal) and
        ``uniform`` (on [0, 1)) are noise tensors of ``x``'s shape, drawn by the caller."""
        raise NotImplementedError

    def step(self, x, grad):
        raise NotImplementedError

    def project(self, x, x0):
        raise NotImplementedError


class L2Step(Step):
    """Steps along the L2-normalised gradient; projection clips into the L2 ball."""

    def random_start(self, x, rng):
        x = np.asarray(x, dtype="float32")
        noise = rng.standard_normal(x.shape).astype("float32")
        flat = noise.reshape(len(x), -1)
        norms = np.sqrt((flat**2).sum(axis=1) + _TINY)
        radius = self.eps * rng.random(len(x)).astype("float32")
        delta = noise * (radius / norms).reshape((-1,) + (1,) * (x.ndim - 1))
        return np.clip(x + delta, self.clip_min, self.clip_max)

    def start_from_noise(self, x, normal, uniform):
        axes = tuple(range(1, len(x.shape)))
        norms = ops.sqrt(ops.sum(ops.square(normal), axis=axes) + _TINY)
        radius = self.eps * ops.reshape(uniform, (uniform.shape[0], -1))[:, 0]  # one radius per example
        return ops.clip(x + normal * _per_example(radius / norms, x), self.clip_min, self.clip_max)

    def step(self, x, grad):
        axes = tuple(range(1, len(x.shape)))
        norm = ops.sqrt(ops.sum(ops.square(grad), axis=axes) + _TINY)
        return x + self.step_size * grad / _per_example(norm, grad)

    def project(self, x, x0):
        axes = tuple(range(1, len(x.shape)))
        delta = x - x0
        norm = ops.sqrt(ops.sum(ops.square(delta), axis=axes) + _TINY)
        factor = ops.minimum(1.0, self.eps / norm)  # clip into the ball, never onto its surface
        return ops.clip(x0 + delta * _per_example(factor, delta), self.clip_min, self.clip_max)


class LinfStep(Step):
    """Signed-gradient steps; projection clips each pixel into [x0 - eps, x0 + eps]."""

    def random_start(self, x, rng):
        x = np.asarray(x, dtype="float32")
        delta = rng.uniform(-self.eps, self.eps, size=x.shape).astype("float32")
        return np.clip(x + delta, self.clip_min, self.clip_max)

    def start_from_noise(self, x, normal, uniform):
        return ops.clip(x + self.eps * (2.0 * uniform - 1.0), self.clip_min, self.clip_max)

    def step(self, x, grad):
        return x + self.step_size * ops.sign(grad)

    def project(self, x, x0):
        delta = ops.clip(x - x0, -self.eps, self.eps)
        return ops.clip(x0 + delta, self.clip_min, self.clip_max)


def make_step(*, norm, eps, step_size, clip_min, clip_max):
    cls = L2Step if parse_norm(norm) == 2 else LinfStep
    return cls(eps=eps, step_size=step_size, clip_min=clip_min, clip_max=clip_max)


def projected_gradient_descent(
    model,
    x,
    *,
    eps,
    step_size,
    steps,
    norm=2,
    y=None,
    targeted=False,
    random_start=True,
    clip_min=0.0,
    clip_max=1.0,
    seed=0,
    batch_size=256,
    attack_fn=None,
):
    """PGD on a batch of images; returns adversarial images as a NumPy array.

    Untargeted (``targeted=False``) raises the cross-entropy of the labels
    ``y`` (default: the model's own predictions); targeted lowers that of the
    target labels ``y``. The model's logits are used when its output is a
    softmax (see :func:`aegis_tf.core.models.logits_model`), so gradients do not
    vanish on saturated probabilities. ``seed`` fixes the random start.
    ``attack_fn`` reuses a compiled loop from an earlier call with the same
    model and hyperparameters (``make_attack`` binds them at build time).
    """
    if steps < 0:
        raise AegisError(f"steps must be >= 0. Received: {steps}")
    step = make_step(norm=norm, eps=eps, step_size=step_size, clip_min=clip_min, clip_max=clip_max)
    x = np.asarray(x, dtype="float32")
    if y is None:
        if targeted:
            raise AegisError("a targeted attack needs target labels y")
        from aegis_tf.core.models import predict_labels

        y = predict_labels(model, x, batch_size=batch_size)
    y = np.broadcast_to(np.asarray(y, dtype="int64"), (len(x),))
    rng = np.random.default_rng(seed)
    x_init = step.random_start(x, rng) if random_start else x
    if attack_fn is None:
        attack_fn = backend.make_attack(logits_model(model), step, int(steps), -1.0 if targeted else 1.0)
    out = np.empty_like(x)
    for i in range(0, len(x), batch_size):
        sl = slice(i, i + batch_size)
        out[sl] = attack_fn(x[sl], y[sl], x_init[sl])
    return out
