"""Do two detection tables give the same verdicts? (The staged scan against the full scan, or any two settings.)

    python bench/compare_scans.py results/detect_matrix_staged.json \
        --against results/detect_matrix.json results/detect_matrix_heldout.json results/bench_scale20.json \
        --out results/staged_vs_full.md

``STAGED`` and each ``--against`` file is a ``bench/detect_table.py`` JSON
(``rows``, each with its detection ``runs``; a row with no run is skipped) or a
``bench/bench_scale.py`` JSON with ``--model`` (its full scan of the most
classes; its verdict: the classes either signal flagged). A model's verdict in a table is
the classes flagged in most of its runs (a tie: the earliest run's), or
``clean``. Models are matched by path. Writes a markdown table: per model, both
verdicts and whether they agree, then the count.
"""

import argparse
import collections
import json
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_scale, beside this file


def majority(runs):
    """The verdict (a tuple of classes; () for clean) flagged in most runs."""
    counts = collections.Counter(tuple(sorted(r)) for r in runs)
    best = max(counts.values())
    return next(tuple(sorted(r)) for r in runs if counts[tuple(sorted(r))] == best), len(runs)


def verdicts(path):
    """``{model path: (verdict, runs)}`` from a detect_table or bench_scale JSON."""
    with open(path) as f:
        data = json.load(f)
    if "rows" in data:
        return {r["path"]: majority([run["suspects"] for run in r["runs"]]) for r in data["rows"] if r["runs"]}
    model = data.get("meta", {}).get("model")
    if not model:
        sys.exit(f"error: {path} is neither a detect_table JSON nor a bench_scale JSON with --model")
    n = max(r["classes"] for r in data["runs"])
    full = [r for r in data["runs"] if r["mode"] == "full" and r["classes"] == n]
    from bench_scale import flagged

    return {model: (tuple(flagged(full[0])), 1)} if full else {}


def fmt(verdict, runs):
    return ("class " + ", ".join(map(str, verdict)) if verdict else "clean") + (f" ({runs} runs)" if runs > 1 else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("staged", nargs="+", help="tables of the staged scan (or of any other setting)")
    p.add_argument("--against", nargs="+", required=True,
                   help="tables of the full scan (or of the setting compared with)")
    p.add_argument("--labels", nargs=2, default=("full scan", "staged scan"), metavar=("AGAINST", "STAGED"),
                   help="column names (default: full scan, staged scan)")
    p.add_argument("--out", default=None, help="markdown file (default: print only)")
    args = p.parse_args(argv)
    staged, full = {}, {}
    for path in args.staged:
        staged.update(verdicts(path))
    for path in args.against:
        full.update(verdicts(path))
    lines = [f"| model | {args.labels[0]} | {args.labels[1]} | same verdict |", "|---|---|---|---|"]
    same = 0
    both = [m for m in staged if m in full]
    for m in both:
        agree = staged[m][0] == full[m][0]
        same += agree
        lines.append(f"| {m} | {fmt(*full[m])} | {fmt(*staged[m])} | {'yes' if agree else '**no**'} |")
    missing = [m for m in staged if m not in full]
    lines += ["", f"Same verdict: {same} of {len(both)} models."]
    if missing:
        lines.append(f"No {args.labels[0]} to compare with: {', '.join(missing)}.")
    cmd = "python bench/compare_scans.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    names = ", ".join(os.path.basename(f) for f in args.staged)
    title = f"{args.labels[1][:1].upper() + args.labels[1][1:]} against {args.labels[0]}: {names}"
    text = title + "\n\n" + "\n".join(lines) + f"\n\nCommand: `{cmd}`\n"
    if args.out:
        from aegis_tf.core.utils import atomic_path

        with atomic_path(args.out) as tmp, open(tmp, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
