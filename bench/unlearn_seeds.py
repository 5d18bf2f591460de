"""Unlearning on the embedded BadNet over several seeds: the mean of epochs (the default)
against the best single epoch (``average=False``), from the trigger ``detect`` recovered.

    python cli.py detect --bad_model models/bd_net.h5 --out-dir out/detect_bd
    python bench/unlearn_seeds.py out/detect_bd --out results/repair/unlearn_seeds.json

The seed draws the held-out split, the shifts and the triggered images; the true ASR is
the embedded ``bd_test.h5`` (the attacker's trigger, never seen by the repair), the clean
accuracy the embedded ``test.h5``. Writes ``--out`` and a Markdown table beside it.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from aegis_tf.core.data import load_h5
from aegis_tf.core.embedded import PATHS
from aegis_tf.core.models import load_model, predict_labels
from aegis_tf.core.utils import write_json
from aegis_tf.detect.recovered import triggers_from_detect_dir
from repair.trigger_repair import unlearn


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("detect_dir", help="a `detect --out-dir` folder of the embedded bd_net.h5")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--rounds", type=int, default=1,
                   help="unlearning rounds (default 1: the committed table predates rounds; repair's default is 2)")
    p.add_argument("--out", default="results/repair/unlearn_seeds.json")
    args = p.parse_args(argv)
    model = load_model(PATHS["bd_net"])
    triggers, _ = triggers_from_detect_dir(args.detect_dir)
    xv, yv = load_h5(PATHS["valid"])
    xt, yt = load_h5(PATHS["test"])
    xb, yb = load_h5(PATHS["bd_test"])

    def measure(m):
        return float(np.mean(predict_labels(m, xt) == yt)), float(np.mean(predict_labels(m, xb) == yb))

    acc0, asr0 = measure(model)
    rows = []
    for average in (True, False):
        for seed in range(args.seeds):
            t = time.perf_counter()
            tuned, hist = unlearn(model, triggers, xv, yv, seed=seed, average=average, rounds=args.rounds,
                                  quiet=True)
            acc, asr = measure(tuned)
            rows.append({"average": average, "seed": seed, "kept": hist["kept_epoch"], "clean_acc": acc, "asr": asr,
                         "seconds": time.perf_counter() - t})
            print(rows[-1], flush=True)
    command = "python bench/unlearn_seeds.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json(args.out, {"command": command, "triggers": [t.describe() for t in triggers], "B": [acc0, asr0],
                          "rows": rows})
    lines = ["# Unlearning the embedded BadNet: mean of epochs vs best single epoch", "", f"    {command}", "",
             f"B: {100 * acc0:.2f}% clean, {100 * asr0:.2f}% true ASR (test.h5 / bd_test.h5). Triggers: "
             f"{'; '.join(t.describe() for t in triggers)}. Target (issue 27): true ASR <= 2% at <= 1 point of "
             "clean accuracy lost.", "",
             "| kept | seed | epoch kept | clean | true ASR | clean lost (points) | meets target | s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lost = 100 * (acc0 - r["clean_acc"])
        ok = "yes" if r["asr"] <= 0.02 and lost <= 1.0 + 1e-9 else "no"
        lines.append(f"| {'mean of epochs' if r['average'] else 'best single epoch'} | {r['seed']} | {r['kept']} | "
                     f"{100 * r['clean_acc']:.2f}% | {100 * r['asr']:.2f}% | {lost:.2f} | {ok} | {r['seconds']:.0f} |")
    for average in (True, False):
        sel = [r for r in rows if r["average"] == average]
        met = sum(r["asr"] <= 0.02 and 100 * (acc0 - r["clean_acc"]) <= 1.0 + 1e-9 for r in sel)
        lines += ["", f"{'Mean of epochs' if average else 'Best single epoch'}: clean "
                      f"{100 * min(r['clean_acc'] for r in sel):.2f}-{100 * max(r['clean_acc'] for r in sel):.2f}%, "
                      f"true ASR {100 * min(r['asr'] for r in sel):.2f}-{100 * max(r['asr'] for r in sel):.2f}%; "
                      f"target met on {met} of {len(sel)} seeds."]
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
