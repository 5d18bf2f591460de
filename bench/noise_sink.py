"""Where a model sends random noise: is a flagged class just the model's sink for any perturbation?

    python bench/noise_sink.py MODEL DATA --norm 7.08 [--n-images 500] [--seed 0]

Adds Gaussian noise scaled to L2 norms of 0.5, 1 and 2 times ``--norm`` (in units of the [0, 1]
range, as ``detect.json`` gives the whole-image signal's ``flip_norm``) to ``--n-images`` random
test images of DATA (``.npz`` with a test split, or a named set with AEGIS_DATA_DIR), clips them
to the pixel range, and prints the share of each predicted class. A class that random noise of
the flagged norm already reaches is a noise sink; a class it does not reach needed the direction
the scan found.
"""

import argparse
import sys

import numpy as np

from aegis_tf.core.data import load_split
from aegis_tf.core.models import load_model, predict_labels


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--norm", type=float, required=True, help="the flagged class's flip_norm")
    p.add_argument("--n-images", type=int, default=500)
    p.add_argument("--pixel-max", type=float, default=255.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    model = load_model(args.model)
    x, _ = load_split(args.data, split="test")
    rng = np.random.default_rng(args.seed)
    xp = np.asarray(x[rng.choice(len(x), min(args.n_images, len(x)), replace=False)], "float32")
    n_classes = int(model.output_shape[-1])
    for scale in (0.5, 1.0, 2.0):
        noise = rng.normal(size=xp.shape).astype("float32")
        noise /= np.sqrt((noise.reshape(len(xp), -1) ** 2).sum(1)).reshape(-1, *([1] * (xp.ndim - 1)))
        pred = predict_labels(model, np.clip(xp + args.pixel_max * scale * args.norm * noise, 0, args.pixel_max))
        shares = np.bincount(pred, minlength=n_classes) / len(pred)
        print(f"noise L2 {scale * args.norm:.4g}: " + ", ".join(f"{c}:{s:.3f}" for c, s in enumerate(shares)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
