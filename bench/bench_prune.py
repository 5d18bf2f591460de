"""Pruning speed: the lab's naive loop against cached activations.

    python bench/bench_prune.py [--csaw ../shared/csaw/lab3_bd_weights.h5] [--repeats 3]

Runs both on the same model and data and checks they give the same curve.
Cases: the embedded default (digits BadNet, data/valid.h5 and bd_valid.h5),
and, when the CSAW weights are there, the 1283-class DeepID net on random
images (the YouTube Face data is not available, so this measures speed and
mechanics only). Writes results/bench/bench_prune.json and results/bench/bench_prune.md.
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from aegis_tf.core.data import load_h5
from aegis_tf.core.embedded import PATHS
from aegis_tf.core.models import load_model, predict_labels
from aegis_tf.core.utils import atomic_path, write_json
from repair.prune import prune_curve, prune_curve_naive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # results/ lives here


def _time(fn, repeats):
    fn()  # warm-up: traces the predict functions once
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def bench_case(name, model, xc, yc, xb, yb, repeats):
    naive_s, naive = _time(lambda: prune_curve_naive(model, xc, yc, xb, yb, quiet=True), repeats)
    cached_s, cached = _time(lambda: prune_curve(model, xc, yc, xb, yb, quiet=True), repeats)
    same = bool(np.array_equal(naive.clean_acc, cached.clean_acc) and np.array_equal(naive.asr, cached.asr))
    row = {
        "case": name,
        "images_clean": int(len(xc)),
        "images_poisoned": int(len(xb)),
        "channels": int(cached.n_channels),
        "naive_s": naive_s,
        "cached_s": cached_s,
        "speedup": naive_s / cached_s,
        "same_curve": same,
    }
    print(f"{name}: naive {naive_s:.2f} s, cached {cached_s:.2f} s, speed-up {row['speedup']:.1f}x, same curve: {same}")
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csaw", default=os.path.join(ROOT, "..", "shared", "csaw", "lab3_bd_weights.h5"))
    p.add_argument("--csaw-images", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out-dir", default=os.path.join(ROOT, "results", "bench"))
    args = p.parse_args()
    keras.utils.set_random_seed(0)

    rows = []
    model = load_model(PATHS["bd_net"])
    (xc, yc), (xb, yb) = load_h5(PATHS["valid"]), load_h5(PATHS["bd_valid"])
    rows.append(bench_case("embedded default (digits BadNet)", model, xc, yc, xb, yb, args.repeats))

    if os.path.isfile(args.csaw):
        deepid = load_model(None, args.csaw)
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(args.csaw_images, 55, 47, 3)).astype("float32")
        y = predict_labels(deepid, x)  # no labelled data here: use B's own labels
        half = args.csaw_images // 2
        rows.append(bench_case(f"CSAW DeepID, 1283 classes ({os.path.basename(args.csaw)}, random images)",
                               deepid, x[:half], y[:half], x[half:], y[half:], max(1, args.repeats - 2)))
    else:
        print(f"skipping the CSAW case: {args.csaw} not found")

    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "backend": keras.backend.backend(),
            "command": "python bench/bench_prune.py", "timing": f"best of {args.repeats} after one warm-up"}
    write_json(os.path.join(args.out_dir, "bench_prune.json"), {"meta": meta, "rows": rows})
    lines = ["# Pruning benchmark", "", f"`{meta['command']}` on {meta['machine']}, Keras backend {meta['backend']}, "
             f"{meta['timing']}.", "", "| case | clean / poisoned images | channels | naive loop (s) | cached (s) | speed-up | same curve |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['images_clean']} / {r['images_poisoned']} | {r['channels']} | "
                     f"{r['naive_s']:.2f} | {r['cached_s']:.2f} | {r['speedup']:.1f}x | {r['same_curve']} |")
    with atomic_path(os.path.join(args.out_dir, "bench_prune.md")) as tmp:
        open(tmp, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
