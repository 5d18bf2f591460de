"""TensorFlow implementations (tf.GradientTape, tf.function)."""

import weakref

import tensorflow as tf


_GRADS = weakref.WeakKeyDictionary()  # model -> compiled input-gradient function


def _ce(y, logits):
    from aegis_tf.backend import cross_entropy

    return cross_entropy(y, logits)


def enable_determinism():
    """Make TensorFlow ops deterministic (for reproducible training runs)."""
    tf.config.experimental.enable_op_determinism()


def _grad_fn(model):
    fn = _GRADS.get(model)
    if fn is None:

        @tf.function(reduce_retracing=True)
        def fn(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = _ce(y, model(x, training=False))
                total = tf.reduce_sum(loss)
            return tape.gradient(total, x), loss

        _GRADS[model] = fn
    return fn


def input_gradient(model, x, y):
    x = tf.convert_to_tensor(x, dtype=model.inputs[0].dtype)
    return _grad_fn(model)(x, tf.convert_to_tensor(y))


def make_attack(model, step, steps, sign):
    sign = float(sign)

    @tf.function(reduce_retracing=True)
    def run(x0, y, x_init):
        x = x_init
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(x)
                total = tf.reduce_sum(_ce(y, model(x, training=False)))
            grad = tape.gradient(total, x) * sign
            x = step.project(step.step(x, grad), x0)
        return x

    def attack(x0, y, x_init):
        dtype = model.inputs[0].dtype
        return run(tf.convert_to_tensor(x0, dtype), tf.convert_to_tensor(y), tf.convert_to_tensor(x_init, dtype)).numpy()

    return attack


def make_train_step(model, optimizer):
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function(reduce_retracing=True)
    def run(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(_ce(y, model(x, training=True)))
            loss = loss + sum(model.losses) if model.losses else loss
        grads = tape.gradient(loss, variables)
        optimizer.apply(grads, variables)
        return loss

    def train_step(x, y):
        return float(run(tf.convert_to_tensor(x, model.inputs[0].dtype), tf.convert_to_tensor(y)))

    return train_step
