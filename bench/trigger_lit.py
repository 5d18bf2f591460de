"""How often AEGIS translations draw the trigger, by PGD start.

    python bench/trigger_lit.py results/models/mnist_compact_robust_localised.keras \
        results/models/mnist_compact_robust_clean.keras --trigger localised --data mnist --data-dir DATA

For each model and each start (``seed``: the paper's, PGD from the clean seed
image; ``noise S``: Gaussian noise of std S, units of [0, 1], added first, as
``--start-noise`` does), translates ``--seeds`` training images of other
classes toward every class with the detector's own ``translate_all`` and the
default translation (L2 eps 100, step 0.25, 75 steps), then reports per
class the share of translations whose trigger region is lit (mean above half
the pixel range) although it was not lit at the start. A backdoored model
should light it toward its target and nowhere else; a clean model nowhere.

Writes ``--out`` (.json) and a Markdown table beside it.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from aegis_tf.core.data import load_split
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.translation import translate_all
from aegis_tf.core.models import load_model
from aegis_tf.attack.triggers import make_trigger
from aegis_tf.core.utils import atomic_path, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # results/ lives here


def trigger_mask(trigger, shape, pixel_max):
    """Boolean (H, W) mask of the pixels ``trigger`` sets on a black image."""
    stamped = make_trigger(trigger, pixel_max=pixel_max)(np.zeros((1,) + shape, "float32"))
    return np.any(stamped[0] != 0, axis=-1)


def lit_share(images, starts, mask, pixel_max):
    lit = lambda a: a[:, mask].reshape(len(a), -1).mean(axis=1) > pixel_max / 2
    return float(np.mean(lit(images) & ~lit(starts)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--trigger", choices=("localised", "distributed"), default="localised")
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-images", type=int, default=20000)
    p.add_argument("--seeds", type=int, default=200, help="translations per class")
    p.add_argument("--noise", default="0.05,0.1,0.2", help="start-noise stds to try besides the clean seed")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "trigger_lit.json"))
    args = p.parse_args()
    pixel_max = 255.0
    x, y = load_split(args.data, split="train", data_dir=args.data_dir, scale="raw")
    x, y = x[:args.train_images], y[:args.train_images]
    mask = trigger_mask(args.trigger, x.shape[1:], pixel_max)
    starts = [0.0] + [float(s) for s in args.noise.split(",")]
    rows = []
    for path in args.models:
        model = load_model(path)
        classes = list(range(int(model.output_shape[-1])))
        for s in starts:
            t = time.perf_counter()
            tr = translate_all(model, x, y, classes, n_seeds=args.seeds, eps=DetectConfig()["eps"] * pixel_max,
                               step_size=DetectConfig()["step_size"] * pixel_max, steps=DetectConfig()["steps"], clip_min=0.0,
                               clip_max=pixel_max, seed=0, start_noise=s * pixel_max)
            row = {"model": os.path.basename(path), "start_noise": s,
                   "lit": {c: lit_share(tr[c].images, tr[c].starts, mask, pixel_max) for c in classes},
                   "reached": {c: tr[c].reached for c in classes}, "seconds": time.perf_counter() - t}
            rows.append(row)
            print(f"{row['model']} start noise {s}: lit " + " ".join(f"{v:.2f}" for v in row["lit"].values())
                  + f" ({row['seconds']:.0f} s)", flush=True)
    result = {"command": "python bench/trigger_lit.py " + " ".join(sys.argv[1:]), "trigger": args.trigger,
              "n_seeds": args.seeds, "rows": rows}
    write_json(args.out, result)
    n = len(rows[0]["lit"])
    lines = ["# Translations that draw the trigger, by PGD start", "", f"`{result['command']}`", "",
             f"Share of the {args.seeds} translations toward each class whose {args.trigger} trigger region ends lit "
             "(mean above half the pixel range) and was not lit at the start. Start noise in units of [0, 1] "
             "(0: the paper's start from the clean seed).", "",
             "| model | start noise | " + " | ".join(f"class {c}" for c in range(n)) + " | min reached |",
             "|---" * (n + 3) + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['start_noise']} | " + " | ".join(f"{v:.2f}" for v in r["lit"].values())
                     + f" | {min(r['reached'].values()):.2f} |")
    with atomic_path(os.path.splitext(args.out)[0] + ".md") as tmp:
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
