"""The staged scan's probe budget on a many-class model: how soon the warp and mask probes say "not run".

    python bench/probe_budget.py --weights ../shared/csaw/lab3_bd_weights.h5 --images out/data/cifar10.npz \
        --classes 1283 --out results/bench/probe_budget_deepid.json

A staged scan runs the warp and mask probes on every class when each is projected to take at
most ``DetectConfig.probe_budget`` seconds (:func:`aegis_tf.detect.mask_probe.probe_budget`).
This bench fits each probe alone, with that budget, over classes 0..N-1 of the CSAW DeepID net
(the lab's real BadNet weights, ``--weights``; random weights without), on ``--n-images``
CIFAR-10 training images resized to 55x47 and labelled by the model (**not face images**: the
probes' verdicts mean nothing here, the time does), and reports for each: whether it ran, the
projected seconds it gave when it did not, and the wall seconds it spent either way. Writes
``--out`` (JSON) and prints one line per probe.
"""

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench_scale import seed_images  # bench/, beside this file  # noqa: E402

from aegis_tf.core.errors import AegisError  # noqa: E402
from aegis_tf.core.utils import write_json  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=None, help="CSAW DeepID weights (.h5); default: random weights")
    p.add_argument("--images", required=True, help="CIFAR-10 .npz (x_train) for the seed images")
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--classes", type=int, default=1283)
    p.add_argument("--budget", type=float, default=None, help="seconds (default: DetectConfig.probe_budget)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        import keras

        from aegis_tf.core.models import build_deepid, load_weights_into, predict_labels
        from aegis_tf.detect.config import DetectConfig
        from aegis_tf.detect.mask_probe import MaskProbeDetector
        from aegis_tf.detect.warp_probe import WarpProbeDetector

        config = DetectConfig()
        budget = config.probe_budget if args.budget is None else args.budget
        keras.utils.set_random_seed(0)
        model = build_deepid()
        if args.weights:
            load_weights_into(model, args.weights)
        x = seed_images(args.images, args.n_images)
        y = predict_labels(model, x, batch_size=args.batch_size)
        classes = list(range(args.classes))
        rows = []
        for name, make in (("mask_probe", MaskProbeDetector.from_config), ("warp_probe", WarpProbeDetector.from_config)):
            kwargs = {"pixel_max": 255.0} if name == "mask_probe" else {}
            det = make(config, budget_s=budget, batch_size=args.batch_size, **kwargs)
            t = time.perf_counter()
            det.fit(model, x, y, classes)
            seconds = time.perf_counter() - t
            rows.append({"probe": name, "ran": not det.skipped_, "skipped": det.skipped_, "wall_seconds": seconds})
            print(f"{name}: {'ran' if not det.skipped_ else 'not run: ' + det.skipped_} ({seconds:.1f} s)")
    except AegisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json(args.out, {"meta": {"weights": args.weights, "n_images": args.n_images, "classes": args.classes,
                                   "budget_s": budget, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                                   "command": "python bench/probe_budget.py " + " ".join(argv or sys.argv[1:])},
                          "probes": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
