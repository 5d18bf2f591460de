"""The exploration behind the blend probe: two blend probes, scored on a few models.

    python bench/explore_blend_probe.py out/matrix/mnist_clean_s0.keras out/matrix/fashion_mnist_clean_s0.keras ...

For each model (a ``.keras`` file with its ``.keras.json`` training report),
translates toward every class with ``DetectConfig()`` (detection seed 0) and
prints, per class, the smallest blend weight ``a`` that moves 90% of 50 clean
probes of other classes to the class (the probes and bisection of
:func:`aegis_tf.detect.whole_image.blend_alphas`), and the relative gap (the smallest other
weight over the class's own), for two blend targets:

- ``meanimg``: the mean translated image of the class (what
  :class:`aegis_tf.detect.whole_image.BlendProbeDetector` keeps);
- ``delta+mid``: the mean translation delta around mid-grey, clipped (dropped:
  it flagged a clean Fashion-MNIST model).

Prints only; docs/detection.md ("The blend probe") quotes its output.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from aegis_tf.detect.config import DetectConfig
from aegis_tf.core.data import load_split
from aegis_tf.core.models import load_model
from aegis_tf.detect.translation import translate
from aegis_tf.detect.whole_image import _probes, _smallest_moving, blend_alphas


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    for path in args.models:
        with open(path + ".json") as f:
            info = json.load(f)
        x, y = load_split(info["data"], split="train", data_dir=args.data_dir, scale="raw")
        x, y = x[:20000], y[:20000]
        model = load_model(path)
        n = int(model.output_shape[-1])
        tr = translate(model, x, y, list(range(n)), DetectConfig(), pixel_max=255.0, seed=0, quiet=True)
        target = info["target_label"] if info.get("poison_rate", 0) > 0 else None
        print(os.path.basename(path), info.get("trigger"), "target", target, "clean", info["test"]["clean_acc"],
              "asr", info["test"].get("asr"), flush=True)
        mid_grey = {c: np.clip((t.images.astype("float32") - t.starts.astype("float32")).mean(0) + 127.5, 0, 255)
                    for c, t in tr.items()}
        probes = _probes(x, y, list(range(n)), 50, 0)
        weights = {"meanimg": np.array([a for a, _ in blend_alphas(model, x, y, tr).values()]),
                   "delta+mid": _smallest_moving(model, list(range(n)), probes,
                                                 lambda i, p, a: (1 - a) * p + a * mid_grey[i], 1.0,
                                                 flip_at=0.9, batch_size=512, iters=12)[0]}
        for name, a in weights.items():
            gap = [np.delete(a, i).min() / a[i] for i in range(n)]
            print(f"   {name} weight {a.round(3).tolist()}\n      gap {np.round(gap, 2).tolist()}", flush=True)


if __name__ == "__main__":
    main()
