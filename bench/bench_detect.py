"""AEGIS detection speed: time per stage, and translation throughput against the model's own limit.

    python bench/bench_detect.py                                   # embedded robust_bd_net, digits
    python bench/bench_detect.py --model results/attack/models/mnist_compact_robust_localised.keras \
        --data mnist --data-dir DATA --train-images 20000          # an MNIST-size model
    KERAS_BACKEND=jax python bench/bench_detect.py ...             # the JAX path (GPU when lent)

Runs the whole default detection job (``aegis_tf.detect.scan.run_aegis`` with
the CLI's default configuration and its figures) and reports the seconds of
each stage: translate (targeted L2 PGD toward every class, compilation
included), patch_transfer (the default score), features, reduce (PCA +
t-SNE), cluster (mean shift) and report (figures); plus the end-to-end time.

Translation is ``steps`` forward+backward passes per image, so its limit is
the model's forward+backward throughput: a compiled input gradient of the
cross-entropy at the same batch size, timed in the same run (best of
``--repeats``). The bench reports the PGD loop's image-steps per second as a
ratio of that, once in steady state (the compiled loop timed on the same
seeds after a warm-up batch) and once for the translate stage as a user sees
it (compilation and the final prediction included).

``--loaded`` runs the scan a second time while another process keeps every
core busy (NumPy matrix products on ``os.cpu_count()`` BLAS threads, the way a
training job would), and reports both sets of stage times (``idle`` and
``loaded``): a stage whose threads oversubscribe the cores (t-SNE, once) shows
up there. Use ``--plots`` to include t-SNE and clustering. "Idle" means no
other job of ours: stop other work first.

Writes ``results/bench/bench_detect_<backend>_<device>.json`` and prints a summary.
"""

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from aegis_tf.core import backend
from aegis_tf.core.pgd import make_step
from aegis_tf.core.data import check_fits_model, load_split
from aegis_tf.core.embedded import PATHS
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.scan import aegis_evidence, run_aegis
from aegis_tf.detect.verdict import combine
from aegis_tf.core.models import load_model, logits_model
from aegis_tf.core.utils import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # results/ lives here


def forward_backward_rate(model, x, y, *, batch_size, repeats):
    """Images per second of the compiled input gradient (forward + backward) at ``batch_size``."""
    lm = logits_model(model)
    xb = keras.ops.convert_to_tensor(x[:batch_size])
    yb = keras.ops.convert_to_tensor(y[:batch_size].astype("int64"))
    np.asarray(backend.input_gradient(lm, xb, yb)[0])  # compile
    reps = max(3, int(np.ceil(2048 / batch_size)))
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(reps):
            g, _ = backend.input_gradient(lm, xb, yb)
        np.asarray(g)  # wait for the last (JAX dispatches asynchronously)
        best = min(best, time.perf_counter() - t)
    return reps * batch_size / best


def pgd_steady_rate(model, x, y, *, config, pixel_max, batch_size, repeats):
    """Image-steps per second of the compiled translation loop, after a warm-up call."""
    lm = logits_model(model)
    step = make_step(norm=2, eps=config["eps"] * pixel_max, step_size=config["step_size"] * pixel_max, clip_min=0.0,
                     clip_max=pixel_max)
    attack = backend.make_attack(lm, step, int(config["steps"]), -1.0)
    xb, yb = x[:batch_size], y[:batch_size].astype("int64")
    attack(xb, yb, xb)  # compile
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        attack(xb, yb, xb)  # returns NumPy: waits for the result
        best = min(best, time.perf_counter() - t)
    return len(xb) * int(config["steps"]) / best


BUSY = """
import numpy as np
a = np.random.default_rng(0).standard_normal((1024, 1024)).astype("float32")
while True:
    a = np.tanh(a @ a / 32.0)
"""


@contextlib.contextmanager
def busy_cores():
    """A second process that keeps every core busy (BLAS threads = cores) until the block ends."""
    n = str(os.cpu_count())
    env = {**os.environ, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n}
    proc = subprocess.Popen([sys.executable, "-c", BUSY], env=env)
    try:
        time.sleep(2.0)  # let it start
        yield
    finally:
        proc.kill()
        proc.wait()


def scan(model, x, y, *, config, args):
    """One default detection job; returns (report, end-to-end seconds)."""
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        report = run_aegis(model, x, y, classes=list(range(int(model.output_shape[-1]))), config=config,
                           pixel_max=255.0, out_dir=out_dir, seed=0, batch_size=args.batch_size, plots=args.plots,
                           n_jobs=args.n_jobs)
    return report, time.perf_counter() - t


def _verdict(report):
    """The library's one verdict line (every signal of the scan), as ``aegis detect`` prints it."""
    return combine(aegis_evidence(report))["line"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=PATHS["robust_bd_net"], help="model to examine (default the embedded robust_bd_net)")
    p.add_argument("--data", default=PATHS["train"], help="training images (.h5, .npz or a named set)")
    p.add_argument("--data-dir", default=None, help="folder with NAME.npz for named sets")
    p.add_argument("--train-images", type=int, default=0, help="first N training images only (0: all)")
    p.add_argument("--seeds", type=int, default=DetectConfig()["n_seeds"], help="translations per class (default as the CLI)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-jobs", type=int, default=1, help="classes reduced and clustered at once (threads; -1: all cores)")
    p.add_argument("--plots", action="store_true",
                   help="also the t-SNE embedding figure, as detect --plots (the default scan skips it)")
    p.add_argument("--loaded", action="store_true",
                   help="also time the scan while a second process keeps every core busy")
    p.add_argument("--out", default=None, help="JSON path (default results/bench/bench_detect_<backend>_<device>.json)")
    args = p.parse_args()

    name = keras.backend.backend()
    device = "cpu"
    if name == "jax":
        import jax

        device = jax.devices()[0].platform
    model = load_model(args.model)
    x, y = load_split(args.data, split="train", data_dir=args.data_dir, scale="raw")
    if args.train_images:
        x, y = x[:args.train_images], y[:args.train_images]
    x = check_fits_model(x, y, model, f"--data {args.data}").astype("float32")
    n_classes = int(model.output_shape[-1])
    config = DetectConfig(n_seeds=args.seeds)

    report, total = scan(model, x, y, config=config, args=args)
    stages = report["seconds"]
    n_translated = n_classes * min(args.seeds, len(x))
    user_rate = n_translated * config["steps"] / stages["translate"]
    fb = forward_backward_rate(model, x, y, batch_size=args.batch_size, repeats=args.repeats)
    steady = pgd_steady_rate(model, x, y, config=config, pixel_max=255.0, batch_size=args.batch_size,
                             repeats=args.repeats)
    result = {
        "meta": {"backend": name, "device": device, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "model": os.path.relpath(args.model, ROOT) if os.path.isabs(args.model) else args.model,
                 "input_shape": list(model.input_shape[1:]), "classes": n_classes, "train_images": len(x),
                 "seeds_per_class": args.seeds, "steps": config["steps"], "batch_size": args.batch_size,
                 "n_jobs": args.n_jobs, "plots": args.plots,
                 "command": f"KERAS_BACKEND={name} python bench/bench_detect.py " + " ".join(sys.argv[1:])},
        "verdict": _verdict(report), "suspect_classes": report["suspect_classes"],
        "seconds": {**stages, "end_to_end": total},
        "forward_backward_images_per_s": fb,
        "translate_image_steps_per_s": {"steady": steady, "stage": user_rate},
        "ratio_to_forward_backward": {"steady": steady / fb, "stage": user_rate / fb},
    }
    if args.loaded:
        with busy_cores():
            loaded, loaded_total = scan(model, x, y, config=config, args=args)
        result["loaded"] = {"seconds": {**loaded["seconds"], "end_to_end": loaded_total},
                            "verdict": _verdict(loaded), "suspect_classes": loaded["suspect_classes"],
                            "busy": f"a second process: NumPy matrix products on {os.cpu_count()} BLAS threads"}
    out = args.out or os.path.join(ROOT, "results", "bench", f"bench_detect_{name}_{device}.json")
    write_json(out, result)
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in result["seconds"].items())
    print(f"{name}/{device} {result['meta']['model']}: {n_classes} classes x {args.seeds} seeds x {config['steps']} steps; "
          f"verdict {result['verdict']}")
    print(f"  stages{' (idle)' if args.loaded else ''}: {secs}")
    if args.loaded:
        print("  stages (loaded): " + ", ".join(f"{k} {v:.1f}s" for k, v in result["loaded"]["seconds"].items()))
    print(f"  forward+backward {fb:.0f} images/s; translation {steady:.0f} image-steps/s steady "
          f"(ratio {steady / fb:.2f}), {user_rate:.0f} in the translate stage (ratio {user_rate / fb:.2f})")
    print(f"  wrote {out}")


if __name__ == "__main__":
    main()
