"""The default verdict on the backdoor families that break one-trigger, every-class-to-one-target:
source-specific, all-to-all, warping, position-free and two backdoors in one model.

    python bench/family_table.py out/families/*.keras --data-dir ../shared/datasets --runs 1 \\
        --out results/detect/families.json

Each model is a ``.keras`` file with the ``.keras.json`` report ``cli.py train`` writes beside
it (``scripts/train_families.sh`` makes them): its data, its backdoor(s) (``trigger_config``,
``trigger_configs``) and each backdoor's test ASR. A backdoor is learned when its ASR on its
sources is at least 90% (an all-to-all one: on the test images the model classifies right, where
the report measured it; ``aegis_tf.detect.ranking.learned_asrs``), the ASR the table shows.
Each run scans with ``aegis_tf.scan`` (the default verdict, detection seed ``r``) and is scored
against the truth:

- clean: right when nothing is flagged;
- all-to-one: right when the target is flagged;
- source-specific: right when the target is flagged with its true source among the named ones
  (an all-to-one reading, sources "all", counts as naming it, and is counted apart);
- all-to-all: right when read as all-to-all, or when at least half the true pairs are flagged;
- two backdoors: right when both targets are flagged.

Writes ``--out`` (.json) and a Markdown table beside it, with the suspicion score's ROC-AUC,
cross-entropy and Brier score over the models (``bench/tables.py`` ``ranking_metrics``).
"""

import argparse
import json
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from aegis_tf.core.utils import write_json
from tables import IMPLANTED_ASR, learned_asrs, ranking_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def truth(report):
    """``(family, [backdoor truth], learned)`` from a training report."""
    specs = report.get("trigger_configs") or [report["trigger_config"]]
    if not report.get("poison_rate"):
        return "clean", [], True
    asrs = learned_asrs(report.get("test") or {}, [s.get("mapping") for s in specs]) or [None]
    learned = all((a or 0.0) >= IMPLANTED_ASR for a in asrs)  # all-to-all: on the images it classifies right
    out = []
    for spec in specs:
        kind = ("all-to-all" if spec.get("mapping") == "all-to-all" else
                "source-specific" if spec.get("source_classes") else "all-to-one")
        out.append({"kind": kind, "trigger": spec["trigger"], "target": spec["target_label"],
                    "sources": spec.get("source_classes")})
    family = "two" if len(specs) > 1 else (out[0]["kind"] if out[0]["kind"] != "all-to-one" else out[0]["trigger"])
    return family, out, learned


def model_case(path, data_dir=None, train_images=0):
    """A trained model's report (``PATH.json``), its :func:`truth` and its first ``train_images``
    training images (0: all), the data file looked up in ``data_dir`` when its path is gone."""
    from aegis_tf.core.data import NAMED_SETS, load_split

    report = json.load(open(path + ".json"))
    data = report["data"]
    if data_dir and not os.path.exists(data) and data not in NAMED_SETS:
        data = os.path.join(data_dir, os.path.basename(data))
    x, y = load_split(data, split="train", data_dir=data_dir)  # a named set is looked up in data_dir too
    if train_images:
        x, y = x[:train_images], y[:train_images]
    return report, truth(report), (x, y)


def true_pairs_found(found, n_classes):
    """How many of an all-to-all backdoor's true pairs (y -> y + 1) the verdict's backdoors
    ``found`` name: the pairs of its all-to-all mappings, and each named source of a backdoor
    toward one target (a pair the verdict did not read as part of an all-to-all mapping)."""
    pairs = {tuple(p) for f in found if f.get("kind") == "all-to-all" for p in f["mapping"]}
    pairs |= {(s, f["target"]) for f in found if f.get("kind") != "all-to-all" and isinstance(f.get("sources"), list)
              for s in f["sources"]}
    return sum((s, (s + 1) % n_classes) in pairs for s in range(n_classes))


def judge(verdict, backdoors, n_classes):
    """Whether a verdict finds every true backdoor (or, for a clean model, flags nothing)."""
    if not backdoors:
        return not verdict["backdoored"]
    found = verdict.get("backdoors") or []
    flagged = set(verdict["target_classes"])
    for b in backdoors:
        if b["kind"] == "all-to-all":
            a2a = [f for f in found if f.get("kind") == "all-to-all"]
            if not a2a and true_pairs_found(found, n_classes) * 2 < n_classes:
                return False
        elif b["target"] not in flagged:
            return False
        elif b["kind"] == "source-specific":
            named = [f for f in found if f.get("target") == b["target"]]
            if not any(f["sources"] == "all" or set(b["sources"]) & set(f["sources"]) for f in named):
                return False
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--data-dir", default=None, help="folder with mnist.npz, fashion_mnist.npz")
    p.add_argument("--train-images", type=int, default=20000, help="first N training images scanned (0: all)")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "detect", "families.json"))
    p.add_argument("--render", action="store_true",
                   help="the arguments are earlier --out JSON files: join their rows and write --out and its table, "
                        "scanning nothing")
    args = p.parse_args()
    command = "python " + " ".join(map(shlex.quote, sys.argv))
    if args.render:
        rows, commands = [], []
        for path in args.models:
            done = json.load(open(path))
            rows += done["rows"]
            commands.append(done["command"])
        return write(rows, args.out, command, commands)

    import aegis_tf

    rows = []
    for path in args.models:
        report, (family, backdoors, learned), (x, y) = model_case(path, args.data_dir, args.train_images)
        runs = []
        for r in range(args.runs):
            t = time.perf_counter()
            res = aegis_tf.scan(path, (x, y), seed=r)
            v = res.verdict
            n_classes = len(v["evidence"]["patch_transfer"]["scores"])
            runs.append({"line": v["line"], "targets": v["target_classes"], "backdoors": v["backdoors"],
                         "inconclusive": sorted(v["inconclusive"]), "score": v["score"],
                         "right": judge(v, backdoors, n_classes), "seconds": time.perf_counter() - t,
                         "robustness": res.to_dict().get("robustness")})
            print(f"{os.path.basename(path)} run {r}: {v['line']}", flush=True)
        test = report.get("test") or {}
        rows.append({"model": os.path.relpath(path), "family": family, "truth": backdoors, "learned": learned,
                     "clean_acc": test.get("clean_acc"), "pgd_acc": test.get("adv_acc"),
                     "asr": [a for a in learned_asrs(test, [b["kind"] for b in backdoors]) if a is not None],
                     "robust": report.get("config", {}).get("robust"), "runs": runs})
        write_json(args.out, {"command": command, "rows": rows})
    write(rows, args.out, command, [command])


def write(rows, out_path, command, commands):
    """Write the rows, their metrics and the Markdown table."""
    scored = [r for r in rows if r["learned"]]
    metrics = ranking_metrics([float(np.median([x["score"] for x in r["runs"]])) for r in scored],
                              [r["family"] != "clean" for r in scored]) if len({r["family"] == "clean"
                                                                               for r in scored}) == 2 else None
    out = {"command": command, "made_by": commands, "rows": rows, "metrics": metrics}
    write_json(out_path, out)
    md = os.path.splitext(out_path)[0] + ".md"
    lines = ["# The default verdict on the new backdoor families", "", f"`{command}`", "",
             "Rows made by: " + "; ".join(f"`{c}`" for c in commands), "",
             "| model | family | trained | clean acc | L2 PGD acc (eps 0.5) | ASR (all-to-all: of those classified right) "
             "| learned | verdict (run 0) | right | "
             "score | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        run = r["runs"][0]
        right = sum(x["right"] for x in r["runs"])
        asr = ", ".join(f"{a:.1%}" for a in r["asr"]) or "-"
        lines.append(f"| {os.path.basename(r['model'])} | {r['family']} | {'robust' if r['robust'] else 'standard'} | "
                     f"{r['clean_acc']:.2%} | {'-' if r['pgd_acc'] is None else format(r['pgd_acc'], '.2%')} | {asr} | {'yes' if r['learned'] else 'no'} | {run['line']} | "
                     f"{right}/{len(r['runs'])} | {run['score']:.2f} | {run['seconds']:.0f} |")
    learned = [r for r in rows if r["learned"] and r["family"] != "clean"]
    clean = [r for r in rows if r["family"] == "clean"]
    lines += ["", f"Learned backdoors found (every run right): {sum(all(x['right'] for x in r['runs']) for r in learned)} "
                  f"of {len(learned)}; clean models flagged (any run): "
                  f"{sum(any(not x['right'] for x in r['runs']) for r in clean)} of {len(clean)}; not learned "
                  f"(ASR under {IMPLANTED_ASR:.0%}), not counted: {sum(not r['learned'] for r in rows)}."]
    if metrics:
        lines += ["", "Suspicion score over the learned and clean models: "
                  + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())]
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out_path} and {md}")


if __name__ == "__main__":
    main()
