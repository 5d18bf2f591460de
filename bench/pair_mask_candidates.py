"""What the pair mask probe costs on candidate pairs: one fit of their rows and columns, timed.

    python bench/pair_mask_candidates.py --model M.keras --data cifar10 --data-dir out/data \
        --pairs 3,5 --train-images 20000 [--budget 300] --out results/bench/NAME.json

The default scan runs the pair mask probe only on the per-pair view's candidates
(``DetectConfig.pair_mask="candidates"``), each against its whole row and column, with twice
the starts. This fits those pairs as the scan would (``PairMaskDetector.from_config`` of the
default settings, ``fit(..., examine=pairs)``) on the first ``--train-images`` training images
and writes the seconds, the pairs fitted, each examined pair's gap and norm, and whether the
budget stopped it. Wall time on this machine, whatever else runs on it (say so when citing it).
"""

import argparse
import os
import platform
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from aegis_tf.core.data import load_split
from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import load_model
from aegis_tf.core.utils import write_json
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.pair_probe import PairMaskDetector, row_and_column


def parse_pairs(text):
    """``"3,5;1,7"`` -> ``[(3, 5), (1, 7)]``; a one-line error otherwise."""
    try:
        pairs = [tuple(int(v) for v in p.split(",")) for p in text.split(";") if p.strip()]
    except ValueError:
        pairs = None
    if not pairs or any(len(p) != 2 or p[0] == p[1] or min(p) < 0 for p in pairs):
        raise AegisError(f"--pairs must be SOURCE,TARGET pairs of two different classes, ';'-separated. "
                         f"Received: {text!r}")
    return pairs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help=".keras or .h5 model")
    p.add_argument("--data", required=True, help="a data set name (mnist, fashion_mnist, cifar10) or an .npz")
    p.add_argument("--data-dir", default=None, help="the folder holding DATA.npz")
    p.add_argument("--pairs", required=True, help="candidate pairs, e.g. 3,5 or '3,5;1,7'")
    p.add_argument("--train-images", type=int, default=20000, help="the first N training images (default 20000)")
    p.add_argument("--seed", type=int, default=0, help="the probe's random state (default 0)")
    p.add_argument("--budget", type=float, default=DetectConfig().pair_mask_budget,
                   help="seconds the fit may take, projected from its third step (default: the scan's "
                        "pair_mask_budget, %(default)g); more lets a whole mapping's pairs be fitted")
    p.add_argument("--out", required=True, help="result .json")
    args = p.parse_args(argv)
    try:
        pairs = parse_pairs(args.pairs)
        if not args.budget > 0:
            raise AegisError(f"--budget must be a number of seconds > 0. Received: {args.budget:g}")
        data = args.data
        model = load_model(args.model)
        n_classes = int(model.output_shape[-1])
        if max(max(pair) for pair in pairs) >= n_classes:  # before the data is read
            raise AegisError(f"--pairs name a class the model does not have (it has {n_classes})")
        x, y = load_split(data, split="train", data_dir=args.data_dir)
        x, y = x[:args.train_images], y[:args.train_images]
        det = PairMaskDetector.from_config(DetectConfig(pair_mask_budget=args.budget), random_state=args.seed)
        t = time.perf_counter()
        det.fit(model, x, y, range(n_classes), examine=pairs)
        seconds = time.perf_counter() - t
    except AegisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"model": args.model, "data": data, "train_images": int(len(x)), "pairs": [list(q) for q in pairs],
              "pairs_fitted": len(row_and_column(pairs, range(n_classes))), "restarts": det.restarts,
              "budget_s": det.budget_s, "seconds": seconds, "skipped": det.skipped_,
              "gaps": {f"{s}->{t}": {"gap": det.pair_gaps_[(s, t)], "norm": det.pair_norms_[(s, t)]}
                       for s, t in pairs if (s, t) in det.pair_gaps_},
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "command": "python bench/pair_mask_candidates.py "
                         + shlex.join(argv if argv is not None else sys.argv[1:])}
    write_json(args.out, result)
    print(f"{args.model}: {result['pairs_fitted']} pairs x {det.restarts} starts for {len(pairs)} candidate(s): "
          f"{seconds:.1f} s" + (f" (not run: {det.skipped_})" if det.skipped_ else "")
          + "".join(f"; {k} gap {v['gap']:.2f}, norm {v['norm']:.1f}" for k, v in result["gaps"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
