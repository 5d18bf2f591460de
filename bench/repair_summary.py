"""One line per model from repair tables (``bench/repair_table.py``'s JSON), at one or two clean budgets.

    python bench/repair_summary.py results/repair/repair_cifar_1pct.json results/repair/repair_cifar_5pct.json \\
        ... --title "CIFAR-10" --out results/repair/cifar_summary.md

Each table holds the repairs of its models at one clean data budget (its ``clean_images``). A model
found at two budgets gets both unlearning columns; every other column comes from its smaller budget.
A model in two tables at the same budget is an error (name the tables to summarise). Clean accuracy /
true ASR in %: B, and the -4% row of each method (the lab's pruning and fine-pruning through their
GoodNet, trigger-aware pruning's B'), CLP's B' (data-free), unlearning's B'. A repair meets the
target (issue 27) at a true ASR of at most 2% with at most 1 point of B's clean accuracy lost; the
last column names the repairs that do. Writes ``--out`` (.md) and the same rows beside it as .json.
BackdoorBench's CIFAR-10 figures (PreAct-ResNet18, 10% poisoning) follow as the anchor.
"""

import argparse
import json
import os
import shlex
import sys

from aegis_tf.core.utils import write_json
from tables import write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MAX_ASR, MAX_DROP = 0.02, 0.01  # issue 27's target: true ASR <= 2% at <= 1 point of clean accuracy lost

# (row prefix, column name, the numbers read: GoodNet's "g_" or B-prime's "") for each column at the smaller
# budget; the -4% rows as the lab's threshold 4. Unlearning has a column per budget.
COLUMNS = [("lab pruning -4%", "lab pruning -4%, GoodNet", "g_"),
           ("fine-pruning -4%", "fine-pruning -4%, GoodNet", "g_"),
           ("trigger-aware pruning -4%", "trigger-aware pruning -4%, B'", ""),
           ("data-free (CLP", "CLP (data-free), B'", "")]

# BackdoorBench's CIFAR-10 leaderboard (PreAct-ResNet18, 10% poisoning; clean accuracy / ASR, %), as quoted
# in issue 27.
BACKDOORBENCH = {
    "BadNets": {"no defence": "91.32/95.03", "fine-tuning": "89.96/1.48", "fine-pruning": "91.31/57.13",
                "NAD": "89.87/2.14", "Neural Cleanse": "89.05/1.27", "ANP": "84.17/0.73", "CLP": "90.07/77.56",
                "i-BAU": "89.16/1.29"},
    "Blended": {"no defence": "93.47/99.92", "fine-tuning": "92.78/96.11", "fine-pruning": "93.17/99.26",
                "NAD": "92.17/97.69", "Neural Cleanse": "93.47/99.92", "ANP": "86.58/2.19", "CLP": "91.32/99.74",
                "i-BAU": "87.00/50.53"},
    "WaNet": {"no defence": "91.25/89.73", "fine-tuning": "93.48/17.10", "fine-pruning": "91.46/1.09",
              "NAD": "93.17/22.98", "Neural Cleanse": "91.80/7.53", "ANP": "85.73/0.43", "CLP": "81.91/78.42",
              "i-BAU": "89.49/5.21"},
}


def _row(rows, prefix):
    return next((r for r in rows if r["method"].startswith(prefix) and r.get("clean_acc") is not None), None)


def _pair(row, g=""):
    return None if row is None else (row[g + "clean_acc"], row[g + "asr"])


def meets(b, pair):
    """Whether a repair's (clean accuracy, true ASR) meets the target against B's."""
    return pair is not None and pair[1] <= MAX_ASR and b[0] - pair[0] <= MAX_DROP + 1e-9


def summarize(tables):
    """``[{model, budgets, b, columns: {name: (clean, asr) or None}, unlearn: {budget: pair}, met}]``."""
    models = {}
    for path, table in tables:
        budget = table.get("clean_images")
        for m in table["models"]:
            seen = models.setdefault(m["model"], {})
            if budget in seen:
                raise SystemExit(f"error: {m['model']} is in two tables at {budget} clean images "
                                 f"({seen[budget][0]} and {path}); name one")
            seen[budget] = (path, m)
    out = []
    for model, by_budget in models.items():
        budgets = sorted(by_budget, key=lambda b: (b is None, b))
        rows = by_budget[budgets[0]][1]["rows"]
        b = _pair(_row(rows, "B (no repair)"))
        columns = {name: _pair(_row(rows, prefix), g) for prefix, name, g in COLUMNS}
        unlearn = {bud: _pair(_row(by_budget[bud][1]["rows"], "unlearning")) for bud in budgets}
        met = [f"{name.split(',')[0]} ({budgets[0]})" for name, pair in columns.items() if meets(b, pair)]
        met += [f"unlearning ({bud})" for bud, pair in unlearn.items() if meets(b, pair)]
        out.append({"model": model, "budgets": budgets, "tables": [by_budget[bud][0] for bud in budgets], "b": b,
                    "columns": columns, "unlearn": unlearn, "met": met})
    return out


def _fmt(pair):
    return "-" if pair is None else f"{100 * pair[0]:.2f} / {100 * pair[1]:.2f}"


def markdown(summary, title, command):
    budgets = sorted({bud for s in summary for bud in s["budgets"]}, key=lambda b: (b is None, b))
    head = ["model", "B"] + [name for _, name, _ in COLUMNS] + [f"unlearning, B', {bud} images"
                                                                      for bud in budgets] + ["meets the target"]
    lines = [f"# Repair summary: {title}", "", f"`{command}`", "",
             f"Clean accuracy / true ASR, %; every column but the last unlearning one(s) at the smaller budget "
             f"of each model ({', '.join(str(b) for b in budgets)} clean images). The target: true ASR <= "
             f"{100 * MAX_ASR:.0f}% with <= {100 * MAX_DROP:.0f} point of B's clean accuracy lost.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [os.path.basename(s["model"]), _fmt(s["b"])] + [_fmt(s["columns"][name]) for _, name, _ in COLUMNS]
        cells += [_fmt(s["unlearn"].get(bud)) for bud in budgets]
        cells.append(", ".join(s["met"]) or "**none**")
        lines.append("| " + " | ".join(cells) + " |")
    n = sum(bool(s["met"]) for s in summary)
    lines += ["", f"Models where some repair meets the target: {n} of {len(summary)}.", "",
              "Tables: " + "; ".join(f"`{os.path.relpath(t, ROOT)}`"  # each once, in the order first read
                                     for t in dict.fromkeys(t for s in summary for t in s["tables"])), "",
              "BackdoorBench's CIFAR-10 leaderboard (PreAct-ResNet18, 10% poisoning; clean accuracy / ASR, %) as "
              "quoted in issue 27, the anchor (another net, poisoning rate, trigger and budget):", "",
              "| attack | " + " | ".join(BACKDOORBENCH["BadNets"]) + " |", "|---|" + "---|" * len(BACKDOORBENCH["BadNets"])]
    lines += [f"| {attack} | " + " | ".join(v.values()) + " |" for attack, v in BACKDOORBENCH.items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", nargs="+", help="bench/repair_table.py JSON files")
    p.add_argument("--title", default="repair tables")
    p.add_argument("--out", required=True, help="the Markdown file (.md); the rows go beside it as .json")
    args = p.parse_args(argv)
    if not args.out.endswith(".md"):
        raise SystemExit(f"error: --out must name a .md file. Received: {args.out}")
    tables = []
    for path in args.tables:
        try:
            with open(path) as f:
                table = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: {path}: not a readable repair table ({e})")
        if not isinstance(table, dict) or "models" not in table:
            raise SystemExit(f"error: {path}: not a bench/repair_table.py table (no 'models')")
        tables.append((path, table))
    summary = summarize(tables)
    command = "python bench/repair_summary.py " + shlex.join(argv or sys.argv[1:])
    text = markdown(summary, args.title, command)
    write_json(os.path.splitext(args.out)[0] + ".json", {"command": command, "rows": summary})
    write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
