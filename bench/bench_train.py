"""Training throughput: standard and PGD training, images per second.

    python bench/bench_train.py                       # the current Keras backend
    KERAS_BACKEND=jax python bench/bench_train.py     # adds the hand-written JAX reference

Measures ``aegis_tf.attack.training.train`` on ``--model compact`` with MNIST-shaped
data (28x28x1) or ``--model resnet18`` with CIFAR-shaped data (32x32x3), 10
classes, random pixels (throughput does not depend on content), standard and
with L2 PGD of ``--pgd-steps`` steps. Under JAX it also
runs a minimal hand-written jitted loop for the same model (one jitted
function per batch: PGD by ``lax.fori_loop``, then SGD with momentum, all on
``model.stateless_call``) and reports our figure as a ratio of it. Each
figure is the best of ``--repeats`` timed epochs after one warm-up epoch
(compilation excluded). Writes results/bench/bench_train_<backend>_<device>_<model>.json.

    KERAS_BACKEND=jax python bench/bench_train.py --images 65536 --batch-size 256            # GPU, MNIST CNN
    KERAS_BACKEND=jax python bench/bench_train.py --model resnet18 --pgd-steps 7 --images 16384 --batch-size 256
"""

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from aegis_tf.core.models import build_model, logits_model
from aegis_tf.attack.training import train
from aegis_tf.core.utils import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # results/ lives here


SHAPES = {"compact": (28, 28, 1), "resnet18": (32, 32, 3)}


def build(arch, width=None):
    keras.utils.set_random_seed(0)
    return build_model(arch, input_shape=SHAPES[arch], num_classes=10, width=width)


def ours(arch, x, y, *, robust, steps, batch_size, repeats, width=None):
    model = build(arch, width)
    stamps = []
    cfg = {"epochs": repeats + 1, "batch_size": batch_size, "robust": robust, "steps": steps, "eps": 0.5,
           "lr_milestones": []}
    stamps.append(time.perf_counter())
    train(model, x, y, config=cfg, quiet=True, on_epoch_end=lambda e, r: stamps.append(time.perf_counter()))
    epoch_times = np.diff(stamps)[1:]  # drop the warm-up epoch
    return len(x) / epoch_times.min()


def jax_reference(arch, x, y, *, robust, steps, batch_size, repeats, width=None):
    import jax
    import jax.numpy as jnp

    model = logits_model(build(arch, width))
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    mom = [jnp.zeros_like(v) for v in tv]
    eps, step_size, lr, mu = 0.5 * 255, 2.5 * 0.5 * 255 / steps, 0.1, 0.9

    def ce(tv, x, y):
        logits, _ = model.stateless_call(tv, ntv, x, training=True)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def pgd(tv, x0, y):
        g = jax.grad(lambda x: ce(tv, x, y))

        def body(_, x):
            d = g(x)
            d = d / jnp.sqrt(jnp.sum(d**2, axis=(1, 2, 3), keepdims=True) + 1e-12)
            x = x + step_size * d
            delta = x - x0
            n = jnp.sqrt(jnp.sum(delta**2, axis=(1, 2, 3), keepdims=True) + 1e-12)
            return jnp.clip(x0 + delta * jnp.minimum(1.0, eps / n), 0.0, 255.0)

        return jax.lax.fori_loop(0, steps, body, x0)

    @jax.jit
    def step(tv, mom, x, y):
        if robust:
            x = pgd(tv, x, y)
        grads = jax.grad(ce)(tv, x, y)
        mom = [mu * m + g + 5e-4 * v for m, g, v in zip(mom, grads, tv)]
        tv = [v - lr * m for v, m in zip(tv, mom)]
        return tv, mom

    xj, yj = jnp.asarray(x), jnp.asarray(y)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        for i in range(0, len(x) - batch_size + 1, batch_size):
            tv, mom = step(tv, mom, xj[i:i + batch_size], yj[i:i + batch_size])
        jax.block_until_ready(tv)
        times.append(time.perf_counter() - t)
    return (len(x) // batch_size * batch_size) / min(times[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(SHAPES), default="compact")
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out-dir", default=os.path.join(ROOT, "results", "bench"))
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(args.images,) + SHAPES[args.model]).astype("float32")
    y = rng.integers(0, 10, size=args.images)
    backend = keras.backend.backend()
    device = "cpu"
    if backend == "jax":
        import jax

        device = jax.devices()[0].platform
    rows = []
    for robust in (False, True):
        kind = f"PGD training ({args.pgd_steps} steps)" if robust else "standard training"
        row = {"kind": kind, "ours_images_per_s": ours(args.model, x, y, robust=robust, steps=args.pgd_steps,
                                                       batch_size=args.batch_size, repeats=args.repeats)}
        if backend == "jax":
            row["reference_images_per_s"] = jax_reference(args.model, x, y, robust=robust, steps=args.pgd_steps,
                                                          batch_size=args.batch_size, repeats=args.repeats)
            row["ratio"] = row["ours_images_per_s"] / row["reference_images_per_s"]
        rows.append(row)
        ref = f", hand-written JAX {row['reference_images_per_s']:.0f}/s, ratio {row['ratio']:.2f}" if "ratio" in row else ""
        print(f"{backend}/{device} {args.model} {kind}: ours {row['ours_images_per_s']:.0f} images/s{ref}")
    write_json(os.path.join(args.out_dir, f"bench_train_{backend}_{device}_{args.model}.json"), {
        "meta": {"backend": backend, "device": device, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "images": args.images, "batch_size": args.batch_size, "model": args.model, "input_shape": list(SHAPES[args.model]),
                 "command": f"KERAS_BACKEND={backend} python bench/bench_train.py " + " ".join(sys.argv[1:])},
        "rows": rows})


if __name__ == "__main__":
    main()
