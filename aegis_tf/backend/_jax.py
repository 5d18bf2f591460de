"""JAX implementations (jax.grad over model.stateless_call, jax.jit).

Variables go into jitted code as arguments and come back as results; their
values are read fresh on every call (Keras' fit/predict donate buffers on JAX,
so no value is kept across calls).
"""

import weakref

import jax
import jax.numpy as jnp


_GRADS = weakref.WeakKeyDictionary()  # model -> compiled input-gradient function


def _ce(y, logits):
    from aegis_tf.backend import cross_entropy

    return cross_entropy(y, logits)


def enable_determinism():
    """JAX ops are deterministic on CPU; nothing to switch on."""


def _state(model):
    return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]


def _loss_of_input(model):
    def f(x, tv, ntv, y):
        logits, _ = model.stateless_call(tv, ntv, x, training=False)
        loss = _ce(y, logits)
        return jnp.sum(loss), loss

    return f


def input_gradient(model, x, y):
    fn = _GRADS.get(model)
    if fn is None:
        fn = jax.jit(jax.grad(_loss_of_input(model), has_aux=True))
        _GRADS[model] = fn
    tv, ntv = _state(model)
    dtype = model.inputs[0].dtype
    return fn(jnp.asarray(x, dtype), tv, ntv, jnp.asarray(y))


def make_attack(model, step, steps, sign):
    grad = jax.grad(lambda x, tv, ntv, y: _loss_of_input(model)(x, tv, ntv, y)[0])

    @jax.jit
    def run(tv, ntv, x0, y, x_init):
        def body(_, x):
            g = grad(x, tv, ntv, y) * sign
            return step.project(step.step(x, g), x0)

        return jax.lax.fori_loop(0, steps, body, x_init)

    def attack(x0, y, x_init):
        tv, ntv = _state(model)
        dtype = model.inputs[0].dtype
        import numpy as np

        return np.asarray(run(tv, ntv, jnp.asarray(x0, dtype), jnp.asarray(y), jnp.asarray(x_init, dtype)))

    return attack


def make_train_step(model, optimizer):
    optimizer.build(model.trainable_variables)

    def loss_fn(tv, ntv, x, y):
        logits, ntv = model.stateless_call(tv, ntv, x, training=True)
        return jnp.mean(_ce(y, logits)), ntv

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def run(tv, ntv, ov, x, y):
        (loss, ntv), grads = grad_fn(tv, ntv, x, y)
        tv, ov = optimizer.stateless_apply(ov, grads, tv)
        return loss, tv, ntv, ov

    def train_step(x, y):
        tv, ntv = _state(model)
        ov = [v.value for v in optimizer.variables]
        loss, tv, ntv, ov = run(tv, ntv, ov, jnp.asarray(x, model.inputs[0].dtype), jnp.asarray(y))
        for v, val in zip(model.trainable_variables, tv):
            v.assign(val)
        for v, val in zip(model.non_trainable_variables, ntv):
            v.assign(val)
        for v, val in zip(optimizer.variables, ov):
            v.assign(val)
        return float(loss)

    return train_step
