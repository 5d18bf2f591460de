"""TensorFlow implementations (tf.GradientTape, tf.function)."""

import weakref

import tensorflow as tf


_GRADS = weakref.WeakKeyDictionary()  # model -> compiled input-gradient function


def _ce(y, logits):
    from aegis_tf.core.backend import cross_entropy

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
                logits = model(x, training=False)
                loss = _ce(y, logits)
                total = tf.reduce_sum(loss)
            return tape.gradient(total, x), loss, logits

        _GRADS[model] = fn
    return fn


def input_gradient(model, x, y, *, with_logits=False):
    x = tf.convert_to_tensor(x, dtype=model.inputs[0].dtype)
    grad, loss, logits = _grad_fn(model)(x, tf.convert_to_tensor(y))
    return (grad, loss, logits) if with_logits else (grad, loss)


def make_attack(model, step, steps, sign):
    sign = float(sign)

    @tf.function(reduce_retracing=True)
    def run(x0, y, x_init):
        return _pgd(model, step, steps, sign, x0, y, x_init)

    def attack(x0, y, x_init):
        dtype = model.inputs[0].dtype
        return run(tf.convert_to_tensor(x0, dtype), tf.convert_to_tensor(y), tf.convert_to_tensor(x_init, dtype)).numpy()

    return attack


def _pgd(model, step, steps, sign, x0, y, x):
    """``steps`` PGD iterations from ``x`` (inside a tf.function)."""
    for _ in tf.range(steps):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(_ce(y, model(x, training=False)))
        x = step.project(step.step(x, tape.gradient(total, x) * sign), x0)
    return x


class Trainer:
    """Epochs of (optionally adversarial) training; see ``aegis_tf.core.backend``.

    One tf.function per attack does PGD and the optimizer step. Batches,
    augmentation and PGD random starts come from the host's NumPy generator.
    """

    def __init__(self, model, optimizer, x, y):
        self.model, self.optimizer, self.x, self.y = model, optimizer, x, y
        optimizer.build(model.trainable_variables)
        self._fns = {}

    def _fn(self, attack):
        key = None if attack is None else (id(attack[0]), attack[1])
        if key not in self._fns:
            model, optimizer, variables = self.model, self.optimizer, self.model.trainable_variables

            @tf.function(reduce_retracing=True)
            def run(x, y, x_init):
                if attack is not None:
                    x = _pgd(model, attack[0], attack[1], 1.0, x, y, x_init)
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(_ce(y, model(x, training=True)))
                    loss = loss + sum(model.losses) if model.losses else loss
                optimizer.apply(tape.gradient(loss, variables), variables)
                return loss

            self._fns[key] = (attack, run)  # keep the step object alive while its id is a key
        return self._fns[key][1]

    def epoch(self, order, rng, *, batch_size, attack=None, augment=None, on_batches=None):
        from aegis_tf.core.augment import apply_crop_flip

        run, dtype = self._fn(attack), self.model.inputs[0].dtype
        losses = []
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb, yb = self.x[idx], self.y[idx]
            if augment is not None:
                xb = apply_crop_flip(xb, *(a[i:i + batch_size] for a in augment))
            x_init = attack[0].random_start(xb, rng) if attack is not None else xb
            losses.append(run(tf.convert_to_tensor(xb, dtype), tf.convert_to_tensor(yb),
                              tf.convert_to_tensor(x_init, dtype)))
            if on_batches is not None:
                on_batches(1)
        return float(tf.reduce_mean(tf.stack(losses)))


def make_trainer(model, optimizer, x, y):
    return Trainer(model, optimizer, x, y)
