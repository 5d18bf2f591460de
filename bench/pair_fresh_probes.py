"""Do a pair's transferring patches keep moving fresh images of their source?

    python bench/pair_fresh_probes.py out/robust/mnist_source-specific_rob_s0.keras@0 \\
        out/robust_fashion/fashion_mnist_clean_rob_s0.keras@1 --data-dir out/data \\
        --out results/detect/pair_fresh_probes.json

Each model is a ``.keras`` file with the ``.keras.json`` report ``cli.py train`` writes beside
it; ``@S`` picks the detection seed (default 0), so a run that flagged a pair can be looked at
again. The model's training images (all of them, as ``scan-zoo`` scans) are translated as the
scan translates them. For every (source, target) pair with a translation whose patch moves at
least 90% of the 10 first source probes (the per-pair view before confirmation): its share, and
the mean share of ``--fresh`` other images of the source that those patches move (from
:func:`aegis_tf.detect.patch_transfer.pair_transfer_rates` with and without confirmation: the
pooled rate less the first probes). Writes ``--out`` (.json) and a Markdown table beside it.
"""

import argparse
import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import write_json
from family_table import model_case


def fresh_rates(model, x, y, seed, n_fresh):
    """``{(source, target): {"share", "n", "transferring", "fresh_mean"}}`` for the pairs with a
    transferring translation (90% of the first probes)."""
    from aegis_tf.core.models import num_classes
    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.patch_transfer import pair_transfer_rates
    from aegis_tf.detect.translation import translate

    config = DetectConfig()
    classes = list(range(num_classes(model)))
    tr = translate(model, x, y, classes, config, pixel_max=255.0, seed=seed, batch_size=256)
    kw = dict(top_frac=config.top_frac, n_probes=config.pair_probes, seed=seed, batch_size=256, flip_at=config.flip_at)
    first = pair_transfer_rates(model, x, y, tr, **kw)
    pooled = pair_transfer_rates(model, x, y, tr, confirm_probes=n_fresh, **kw)
    k = config.pair_probes
    out = {}
    for pair, r in first.items():
        hit = r >= config.flip_at
        if hit.any():
            fresh = (pooled[pair][hit] * (k + n_fresh) - r[hit] * k) / n_fresh
            out[pair] = {"share": float(hit.mean()), "n": len(r), "transferring": int(hit.sum()),
                         "fresh_mean": float(np.mean(fresh)), "fresh_min": float(np.min(fresh))}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="MODEL.keras[@SEED]")
    p.add_argument("--data-dir", default=None, help="folder with the training reports' .npz files")
    p.add_argument("--fresh", type=int, default=50, help="fresh source images per transferring translation")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cases = [(m.rpartition("@")[0], int(m.rpartition("@")[2])) if "@" in m else (m, 0) for m in args.models]
    missing = [m for m, _ in cases if not os.path.isfile(m) or not os.path.isfile(m + ".json")]
    if missing or args.fresh < 1:
        sys.exit(f"error: {missing[0]}: expected a .keras model with its training report (.keras.json)" if missing
                 else f"error: --fresh must be at least 1. Received: {args.fresh}")
    command = "python " + " ".join(map(shlex.quote, sys.argv))
    from aegis_tf.core.models import load_model

    rows = []
    try:
        for path, seed in cases:
            _, (family, backdoors, _), (x, y) = model_case(path, args.data_dir)
            rates = fresh_rates(load_model(path), x, y, seed, args.fresh)
            true = {(s, b["target"]) for b in backdoors for s in (b["sources"] or [])}
            if any(b["kind"] == "all-to-all" for b in backdoors):
                true |= {(s, (s + 1) % 10) for s in range(10)}
            for (s, t), v in sorted(rates.items(), key=lambda kv: -kv[1]["share"]):
                rows.append({"model": os.path.basename(path), "seed": seed, "family": family, "pair": [s, t],
                             "backdoor_pair": (s, t) in true, **v})
            print(f"{os.path.basename(path)}@{seed}: {len(rates)} pairs", flush=True)
    except AegisError as e:
        sys.exit(f"error: {e}")
    write_json(args.out, {"command": command, "fresh": args.fresh, "rows": rows})
    lines = ["# Transferring patches on fresh images of their source", "", f"`{command}`", "",
             f"Pairs with a translation whose patch moved >= 90% of the first 10 source probes; fresh: the mean "
             f"(and least) share of {args.fresh} other source images those patches move.", "",
             "| model | seed | pair | backdoor pair | share | transferring / translations | fresh mean | fresh min |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['seed']} | {r['pair'][0]} -> {r['pair'][1]} | "
                     f"{'yes' if r['backdoor_pair'] else 'no'} | {r['share']:.2f} | {r['transferring']} / {r['n']} | "
                     f"{r['fresh_mean']:.1%} | {r['fresh_min']:.1%} |")
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
