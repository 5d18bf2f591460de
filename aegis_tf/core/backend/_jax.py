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
    from aegis_tf.core.backend import cross_entropy

    return cross_entropy(y, logits)


def enable_determinism():
    """JAX ops are deterministic on CPU; nothing to switch on."""


def _state(model):
    return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]


def _loss_of_input(model):
    def f(x, tv, ntv, y):
        logits, _ = model.stateless_call(tv, ntv, x, training=False)
        loss = _ce(y, logits)
        return jnp.sum(loss), (loss, logits)

    return f


def input_gradient(model, x, y, *, with_logits=False):
    fn = _GRADS.get(model)
    if fn is None:
        fn = jax.jit(jax.grad(_loss_of_input(model), has_aux=True))
        _GRADS[model] = fn
    tv, ntv = _state(model)
    dtype = model.inputs[0].dtype
    grad, (loss, logits) = fn(jnp.asarray(x, dtype), tv, ntv, jnp.asarray(y))
    return (grad, loss, logits) if with_logits else (grad, loss)


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


def _crop_flip(x, oy, ox, flip, pad=4):
    """``aegis_tf.core.augment.apply_crop_flip`` on the device."""
    h, w, c = x.shape[1:]
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    crop = jax.vmap(lambda im, a, b: jax.lax.dynamic_slice(im, (a, b, 0), (h, w, c)))(padded, oy, ox)
    return jnp.where(flip[:, None, None, None] > 0, crop[:, :, ::-1, :], crop)


class Trainer:
    """Epochs of (optionally adversarial) training; see ``aegis_tf.core.backend``.

    The training set lives on the device. Each call runs ``_chunk()`` batches
    (in one jitted ``lax.scan`` on accelerators; augmentation, PGD and the
    optimizer step fused), so the host only dispatches; model and optimizer state stay on the device
    during an epoch and go back into the Keras variables at its end. PGD
    random starts come from ``jax.random`` with a key drawn from the epoch's
    NumPy generator. Only full batches are used: the last ``n % batch_size``
    examples of each epoch's permutation are skipped (they differ every epoch).
    """

    chunk = 32

    def _chunk(self):
        """Batches per call: XLA:CPU runs a convolution network inside a loop
        about 8x slower than the same steps called one by one (measured with
        bench/bench_train.py), so the CPU gets one batch per call."""
        return 1 if jax.default_backend() == "cpu" else self.chunk

    def __init__(self, model, optimizer, x, y):
        optimizer.build(model.trainable_variables)
        self.model, self.optimizer = model, optimizer
        self.x = jnp.asarray(x, model.inputs[0].dtype)
        self.y = jnp.asarray(y)
        self._fns = {}

    def _fn(self, attack, augment):
        key = (None if attack is None else (id(attack[0]), attack[1]), augment)
        if key in self._fns:
            return self._fns[key][1]
        model, optimizer = self.model, self.optimizer
        attack_grad = jax.grad(lambda x, tv, ntv, y: _loss_of_input(model)(x, tv, ntv, y)[0])

        def loss_fn(tv, ntv, x, y):
            logits, ntv = model.stateless_call(tv, ntv, x, training=True)
            return jnp.mean(_ce(y, logits)), ntv

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def one(carry, inputs):
            tv, ntv, ov, x_all, y_all = carry
            idx, key, aug, valid = inputs
            x, y = x_all[idx], y_all[idx]
            if augment:
                x = _crop_flip(x, *aug)
            if attack is not None:
                step, steps = attack
                k1, k2 = jax.random.split(key)
                x0 = x
                x = step.start_from_noise(x0, jax.random.normal(k1, x.shape, x.dtype),
                                          jax.random.uniform(k2, x.shape, x.dtype))
                x = jax.lax.fori_loop(
                    0, steps, lambda _, z: step.project(step.step(z, attack_grad(z, tv, ntv, y)), x0), x)
            (loss, new_ntv), grads = grad_fn(tv, ntv, jax.lax.stop_gradient(x), y)
            new_tv, new_ov = optimizer.stateless_apply(ov, grads, tv)
            # Padding batches (valid == 0) of the last chunk leave the state as it was.
            keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(valid, a, b), new, old)
            return (keep(new_tv, tv), keep(new_ntv, ntv), keep(new_ov, ov), x_all, y_all), loss

        @jax.jit
        def run(tv, ntv, ov, x_all, y_all, *inputs):
            if self._chunk() == 1:  # one batch per call, no loop
                (tv, ntv, ov, _, _), loss = one((tv, ntv, ov, x_all, y_all), [a[0] for a in inputs])
                return tv, ntv, ov, loss[None]
            (tv, ntv, ov, _, _), losses = jax.lax.scan(one, (tv, ntv, ov, x_all, y_all), inputs)
            return tv, ntv, ov, losses

        self._fns[key] = (attack, run)  # keep the step object alive while its id is a key
        return run

    def epoch(self, order, rng, *, batch_size, attack=None, augment=None, on_batches=None):
        import numpy as np

        n_batches = len(order) // batch_size
        if n_batches == 0:
            from aegis_tf.core.errors import AegisError

            raise AegisError(f"the training set ({len(order)} images) is smaller than one batch ({batch_size})")
        run = self._fn(attack, augment is not None)
        chunk = min(self._chunk(), n_batches)
        padded = -(-n_batches // chunk) * chunk  # whole chunks: one compiled scan length
        used = n_batches * batch_size
        idx = np.zeros((padded, batch_size), "int32")
        idx[:n_batches] = np.asarray(order[:used]).reshape(n_batches, batch_size)
        keys = jax.random.split(jax.random.PRNGKey(int(rng.integers(2**31))), padded)
        aug = np.zeros((padded, 3, batch_size if augment is not None else 1), "int32")
        if augment is not None:  # per position in the epoch's order, like the NumPy path
            aug[:n_batches] = np.stack([np.asarray(a[:used]).reshape(n_batches, batch_size) for a in augment], 1)
        valid = np.arange(padded) < n_batches
        tv, ntv = _state(self.model)
        ov = [v.value for v in self.optimizer.variables]
        losses, pending = [], 0
        for i in range(0, padded, chunk):
            sl = slice(i, i + chunk)
            tv, ntv, ov, chunk_losses = run(tv, ntv, ov, self.x, self.y, idx[sl], keys[sl], aug[sl], valid[sl])
            losses.append(chunk_losses)
            if on_batches is not None:  # report the previous chunk once it has finished
                if len(losses) > 1:
                    losses[-2].block_until_ready()
                on_batches(pending)
                pending = int(valid[sl].sum())
        if on_batches is not None:
            losses[-1].block_until_ready()
            on_batches(pending)
        for v, val in zip(self.model.trainable_variables, tv):
            v.assign(val)
        for v, val in zip(self.model.non_trainable_variables, ntv):
            v.assign(val)
        for v, val in zip(self.optimizer.variables, ov):
            v.assign(val)
        return float(jnp.mean(jnp.concatenate(losses)[:n_batches]))


def make_trainer(model, optimizer, x, y):
    return Trainer(model, optimizer, x, y)
