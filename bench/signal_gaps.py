"""Each signal's margin on the models of detect_table results: which signal caught what, and how close the rest came.

    python bench/signal_gaps.py results/detect_blend_probe.json results/detect_blend_probe_heldout.json \
        --out results/signal_gaps_blend_probe.md

``bench/detect_table.py`` keeps, for every run, the classes each signal of
the verdict flagged (``signals``) and the per-class gaps of the whole-image
signal and, where it ran (default since the blend-probe tables), of the blend probe. For every model this
prints, per signal, the runs in which it flagged the right class, the range
of the target's gap over the runs and the highest gap of any other class
(the false-positive margin: the threshold is 2). Reads only the JSON files.
"""

import argparse
import json

from aegis_tf.core.utils import atomic_path
from detect_table import kind

GAP_SIGNALS = {"whole_image": "whole-image", "blend_probe": "blend probe"}


def model_line(row, signals):
    """``{signal: (right-class runs, target gap range, highest other-class gap)}`` for one row."""
    out = {}
    target = row["target"]
    for key in signals:
        runs = row["runs"]
        right = sum(target is not None and target in r["signals"].get(key, []) for r in runs)
        gaps = [r.get(key) for r in runs if r.get(key)]
        own = [g[str(target)]["gap"] for g in gaps if target is not None and str(target) in g]
        other = [v["gap"] for g in gaps for c, v in g.items() if target is None or c != str(target)]
        out[key] = (right, (min(own), max(own)) if own else None, max(other) if other else None)
    return out


def markdown(tables):
    signals = ["patch_transfer"] + list(GAP_SIGNALS)
    lines = ["# Each signal's margin", "", "From " + ", ".join(f"`{t}`" for t in tables) + ". Per signal: runs "
             "in which it flagged the right class; for the gap signals also the target's gap (lowest-highest over "
             "the runs) and the highest gap of any other class (threshold 2 for both).", ""]
    head = ["model", "truth", "runs", "verdict right"]
    for key in signals:
        name = GAP_SIGNALS.get(key, "patch transfer")
        head += [f"{name}: right"] + ([f"{name}: target gap", f"{name}: highest other"] if key in GAP_SIGNALS else [])
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    worst = {k: None for k in GAP_SIGNALS}
    for path in tables:
        with open(path) as f:
            rows = json.load(f)["rows"]
        for row in rows:
            truth = {"clean": "clean", "backdoored": f"{row['target']}",
                     "not-learned": f"{row['target']} (not learned)"}[kind(row)]
            stats = model_line(row, signals)
            verdict = sum(bool(r["right_class"]) for r in row["runs"]) if row["target"] is not None else \
                f"clean {sum(not r['flagged'] for r in row['runs'])}"
            cells = [row["path"], truth, str(len(row["runs"])), str(verdict)]
            for key in signals:
                right, own, other = stats[key]
                cells.append(str(right) if row["target"] is not None else "-")
                if key in GAP_SIGNALS:
                    cells.append("-" if own is None else f"{own[0]:.2f}-{own[1]:.2f}")
                    cells.append("-" if other is None else f"{other:.2f}")
                    if other is not None and kind(row) != "not-learned":
                        worst[key] = max(worst[key] or 0.0, other)
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Highest gap of a class that is not a learned backdoor's target, over every run of every "
              "clean or backdoored model (not-learned models left out): "
              + "; ".join(f"{GAP_SIGNALS[k]} " + ("not run" if v is None else f"{v:.2f}") for k, v in worst.items())
              + "."]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", nargs="+", help="detect_table .json results")
    p.add_argument("--out", default=None, help="write the Markdown here as well")
    args = p.parse_args()
    text = markdown(args.tables)
    print(text)
    if args.out:
        with atomic_path(args.out) as tmp:
            with open(tmp, "w") as f:
                f.write(text)


if __name__ == "__main__":
    main()
