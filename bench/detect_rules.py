"""Re-score a detect_table run under other transfer rules, without translating again.

    python bench/detect_rules.py results/detect_table.json --flip-at 0.5,0.6,0.7,0.8,0.9,1.0

``bench/detect_table.py`` stores, for every detection run and class, how many
translations moved 0, 1, ..., ``n_probes`` probes to the class (the
``probes_moved_histogram`` of the report). That is all the transfer score
needs, so :class:`~aegis_tf.detection.PatchTransferDetector` can be fitted
again with another ``flip_at`` and the verdicts compared on the very same
translations. Writes ``--out`` (.json) and a Markdown table beside it.
"""

import argparse
import json
import os
import sys

import numpy as np


from aegis_tf.detect.patch_transfer import PatchTransferDetector, rates_from_histogram
from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import atomic_path, write_json
from detect_table import _label, kind, majority, score_run, stable, summarise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # results/ lives here


def rescore(rows, **detector_params):
    """``rows`` of a detect_table result, with each run's verdict recomputed by a PatchTransferDetector."""
    out = []
    for row in rows:
        n_classes = len(row["runs"][0]["histograms"])
        runs = []
        for run in row["runs"]:
            det = PatchTransferDetector(**detector_params).fit_rates(
                {int(c): rates_from_histogram(h) for c, h in run["histograms"].items()})
            runs.append({**score_run({"suspect_classes": det.suspect_classes_}, row["target"], n_classes),
                         "scores": {str(c): det.scores_[c] for c in det.classes_}})
        out.append({**row, "runs": runs})
    return out


def failures(rows):
    """Per model, what went wrong under this rule (majority of runs; unstable models; false-positive classes)."""
    notes = []
    for r in rows:
        k, runs = kind(r), r["runs"]
        wrong = sorted({c for x in runs for c in x["suspects"] if c != r["target"]})
        if k == "backdoored" and not majority(r, "right_class"):
            notes.append(f"{_label(r)}: target {r['target']} missed")
        if k == "clean" and majority(r, "flagged"):
            notes.append(f"{_label(r)}: clean model flagged")
        if not stable(r):
            notes.append(f"{_label(r)}: flagged in {sum(x['flagged'] for x in runs)} of {len(runs)} runs")
        if wrong:
            notes.append(f"{_label(r)}: false-positive class(es) {','.join(map(str, wrong))}")
    return notes


def separation(rows, values):
    """How far apart the implanted targets and every other class are, per ``flip_at`` in ``values``.

    For the target of each backdoored model: the fewest of its translations that
    transfer in any one run. For every other class (of every model): how many
    translations transfer, out of how many, and the most probes any of them moved.
    """
    target_counts, other_hists = [], []
    for r in rows:
        for run in r["runs"]:
            for c, h in run["histograms"].items():
                h = np.asarray(h)
                if kind(r) == "backdoored" and int(c) == r["target"]:
                    target_counts.append(h)
                else:
                    other_hists.append(h)
    others = np.sum(other_hists, axis=0) if other_hists else np.zeros(1, int)
    n = len(others) - 1
    at = lambda h, f: int(h[int(np.ceil(f * n - 1e-9)):].sum())  # translations moving at least f of the probes
    return {"other_translations": int(others.sum()), "other_most_moved": int(np.nonzero(others)[0].max(initial=0)),
            "by_flip_at": [{"flip_at": f, "target_fewest": min((at(h, f) for h in target_counts), default=None),
                            "other_transferring": at(others, f)} for f in values]}


def markdown(result):
    lines = ["# The transfer rule, re-scored on the same translations", "",
             f"`{result['command']}`, from `{result['source']}` (its command: `{result['source_command'][:120]} ...`, "
             "in full in that file).", "",
             "Each row fits the transfer detector again on the stored per-class histograms of how many of the "
             f"{result['n_probes']} probes each translation's patch moved; nothing else changes. A translation "
             "transfers when its patch moves at least flip_at of the probes.", "",
             "| flip_at | backdoored flagged with right class | clean flagged | not learned, flagged with target | "
             "false-positive classes | same verdict in >= 80% of runs |", "|---" * 6 + "|"]
    for entry in result["rules"]:
        s = entry["summary"]
        lines.append(f"| {entry['flip_at']:g} | {s['backdoored_flagged_right_class']} of {s['backdoored_models']} | "
                     f"{s['clean_flagged']} of {s['clean_models']} | {s['not_learned_flagged_right_class']} of "
                     f"{s['not_learned_models']} | {s['fp_class_share']:.1%} | {s['stable_models']} of {s['models']} |")
    sep = result["separation"]
    lines += ["", f"Separation, over all runs. Target: the fewest of a backdoored model's translations toward its "
              f"target that transfer in one run (of {result['n_seeds']}). Other: translations toward every other class "
              f"that transfer, of {sep['other_translations']}; the most probes any of them moved is "
              f"{sep['other_most_moved']} of {result['n_probes']}.", "",
              "| flip_at | target, fewest in a run | other classes, transferring |", "|---|---|---|"]
    for e in sep["by_flip_at"]:
        lines.append(f"| {e['flip_at']:g} | {'-' if e['target_fewest'] is None else e['target_fewest']} | "
                     f"{e['other_transferring']} |")
    for entry in result["rules"]:
        lines += ["", f"flip_at {entry['flip_at']:g}: " + ("no failures" if not entry["failures"] else "")]
        lines += [f"- {n}" for n in entry["failures"]]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", help="a JSON written by bench/detect_table.py with the transfer score")
    p.add_argument("--flip-at", default="0.5,0.6,0.7,0.8,0.9,1.0", help="comma-separated flip_at values to compare")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "detect_rules.json"))
    args = p.parse_args()
    try:
        with open(args.table) as f:
            table = json.load(f)
        rows = table["rows"]
        if not rows or any("histograms" not in x for r in rows for x in r["runs"]):
            raise AegisError(f"{args.table} has no probes-moved histograms; make it with bench/detect_table.py "
                             "and the transfer score")
        values = [float(v) for v in args.flip_at.split(",") if v.strip()]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"error: cannot read {args.table} as a detect_table result ({e})")
    except AegisError as e:
        raise SystemExit(f"error: {e}")
    result = {"command": "python bench/detect_rules.py " + " ".join(sys.argv[1:]), "source": os.path.relpath(args.table, ROOT),
              "source_command": table["meta"]["command"], "n_probes": table["meta"]["config"]["n_probes"],
              "n_seeds": table["meta"]["config"]["n_seeds"], "separation": separation(rows, values), "rules": []}
    for f in values:
        try:
            rescored = rescore(rows, flip_at=f)
        except AegisError as e:
            raise SystemExit(f"error: {e}")
        result["rules"].append({"flip_at": f, "summary": summarise(rescored), "failures": failures(rescored)})
    write_json(args.out, result)
    with atomic_path(os.path.splitext(args.out)[0] + ".md") as tmp:
        with open(tmp, "w") as fh:
            fh.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
