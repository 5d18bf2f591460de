"""The views of bench/detect_table.py results: one tool, a subcommand per view. Reads only the JSON.

    python bench/tables.py rules results/detect/detect_table.json --flip-at 0.5,0.6,0.7,0.8,0.85,0.9,0.95,1.0
    python bench/tables.py gaps results/detect/detect_blend_probe.json results/detect/detect_blend_probe_heldout.json \
        results/detect/detect_blend_probe_cifar.json --out results/detect/signal_gaps_blend_probe.md
    python bench/tables.py compare results/detect/detect_matrix_staged.json \
        --against results/detect/detect_matrix.json results/detect/detect_matrix_heldout.json \
        results/bench/bench_scale20.json --out results/detect/staged_vs_full.md
    python bench/tables.py families results/detect/detect_matrix.json results/detect/detect_matrix_heldout.json

- ``rules``: re-score the transfer signal under other ``flip_at`` rules, without
  translating again. ``bench/detect_table.py`` stores, for every detection run
  and class, how many translations moved 0, 1, ..., ``n_probes`` probes to the
  class (the report's ``probes_moved_histogram``); that is all the transfer score
  needs, so :class:`aegis_tf.detect.patch_transfer.PatchTransferDetector` is
  fitted again on the very same translations. Writes ``--out`` (.json) and a
  Markdown table beside it.
- ``gaps``: each signal's margin per model: the runs in which it flagged the
  right class, the range of the target's gap over the runs and the highest gap
  of any other class (the false-positive margin: the threshold is 2), for the
  whole-image signal and, where it ran, the blend probe.
- ``compare``: do two sets of tables give the same verdicts (the staged scan
  against the full scan, or any two settings)? A model's verdict in a table is
  the classes flagged in most of its runs (a tie: the earliest run's), or clean;
  models are matched by path. A ``--against`` file may also be a
  ``bench/bench_scale.py`` JSON made with ``--model`` (its full scan of the most
  classes).
- ``families``: the summary of one or more tables merged (a model in several:
  the last table's row), per trigger family (``--by trigger``), data set or folder.
- ``score``: how well the one suspicion score per model (the verdict's ``score``,
  :func:`aegis_tf.detect.verdict.suspicion_score`; >= 1 is flagged) ranks a set of
  models: :func:`ranking_metrics` (ROC-AUC, TrojAI cross-entropy, Brier score,
  accuracy at the threshold, TPR at 5% FPR) over a JSON list of ``{"score",
  "backdoored"}`` rows, or over detect_table results whose runs carry a ``score``
  (a model's score: the median of its runs; not-learned models left out).

    python bench/tables.py score results/detect/detect_table.json

The helpers that say what a row of a table means (its truth, a majority of its
runs, the summaries) are public here; ``bench/detect_table.py`` uses them too.
"""

import argparse
import collections
import json
import os
import shlex
import sys

import numpy as np

from aegis_tf.core.utils import atomic_path, write_json
from aegis_tf.detect.ranking import (  # noqa: F401 (public here too)
    IMPLANTED_ASR, learned_asrs, ranking_metrics, roc_auc, tpr_at_fpr)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # results/ lives here
RESULTS = os.path.join(ROOT, "results", "detect")

# ---------------------------------------------------------------------------
# What a row of a detect_table result means
# ---------------------------------------------------------------------------

# IMPLANTED_ASR: a poisoned model counts as backdoored only at this ASR; below it, "not learned".


def score_run(report, target, n_classes):
    """One detection run scored against the truth: flagged, suspects, right class, share of wrong classes flagged."""
    suspects = report["suspect_classes"]
    wrong = [c for c in suspects if c != target]
    return {"flagged": bool(suspects), "suspects": suspects,
            "right_class": target in suspects if target is not None else None,
            "fp_share": len(wrong) / (n_classes - (target is not None))}


def kind(row):
    """backdoored, clean, or not-learned (poisoned, but the trigger does not work)."""
    if row["target"] is None:
        return "clean"
    return "backdoored" if (row["asr"] or 0.0) >= IMPLANTED_ASR else "not-learned"


def truth(row):
    """The row's truth as the tables write it: its target, ``clean``, or ``T (not learned)``."""
    return {"clean": "clean", "backdoored": row["target"], "not-learned": f"{row['target']} (not learned)"}[kind(row)]


def label(row):
    """The model's path as given (suites in different folders reuse file names)."""
    return row.get("path", row["name"])


def majority(row, key):
    """Whether ``key`` (flagged, right_class) holds in more than half of the row's runs."""
    return sum(bool(x[key]) for x in row["runs"]) > len(row["runs"]) / 2


def stable(row):
    """Whether at least 80% of the row's runs give the same verdict."""
    flagged = sum(x["flagged"] for x in row["runs"])
    return max(flagged, len(row["runs"]) - flagged) >= 0.8 * len(row["runs"])


def summarise(rows):
    """The counts of a set of rows (backdoored caught, clean flagged, false-positive share, stability, time)."""
    bd = [r for r in rows if kind(r) == "backdoored"]
    clean = [r for r in rows if kind(r) == "clean"]
    weak = [r for r in rows if kind(r) == "not-learned"]
    fp = [x["fp_share"] for r in rows for x in r["runs"]]
    return {
        "backdoored_models": len(bd), "backdoored_flagged_right_class": sum(majority(r, "right_class") for r in bd),
        "clean_models": len(clean), "clean_flagged": sum(majority(r, "flagged") for r in clean),
        "not_learned_models": len(weak),
        "not_learned_flagged_right_class": sum(majority(r, "right_class") for r in weak),
        "fp_class_share": float(np.mean(fp)) if fp else None,
        "stable_models": sum(stable(r) for r in rows), "models": len(rows),
        "seconds_per_run": float(np.mean([t for r in rows for t in r["seconds"]])) if rows else None,
    }


GROUPS = {"folder": ("By folder", lambda r: os.path.dirname(r.get("path", ""))),
          "data": ("By data set", lambda r: r["data"]),
          "trigger": ("By trigger family", lambda r: r["trigger"])}


def group_summaries(rows, by):
    """``{group: summarise(rows of the group)}``, groups sorted, ``by`` one of :data:`GROUPS`."""
    key = GROUPS[by][1]
    return {g: summarise([r for r in rows if key(r) == g]) for g in sorted({key(r) for r in rows})}


def group_lines(title, groups):
    """A Markdown table of :func:`group_summaries`, under ``title``."""
    lines = ["", f"{title}:", "", "| group | backdoored (ASR >= 90%) flagged with right class | clean flagged | "
             "not learned, flagged with target | false-positive classes | same verdict in >= 80% of runs | "
             "s per run |", "|---" * 7 + "|"]
    for group, g in groups.items():
        lines.append(f"| {group} | {g['backdoored_flagged_right_class']} of {g['backdoored_models']} | "
                     f"{g['clean_flagged']} of {g['clean_models']} | {g['not_learned_flagged_right_class']} of "
                     f"{g['not_learned_models']} | "
                     + ("-" if g["fp_class_share"] is None else f"{g['fp_class_share']:.1%}")
                     + f" | {g['stable_models']} of {g['models']} | "
                     + ("-" if g.get("seconds_per_run") is None else f"{g['seconds_per_run']:.0f}") + " |")
    return lines


def summary_lines(s):
    """The "All models" list of a :func:`summarise` result."""
    return ["", "All models:", "", f"- backdoored models flagged with the right class (majority of runs): "
            f"{s['backdoored_flagged_right_class']} of {s['backdoored_models']}",
            f"- clean models flagged (majority of runs): {s['clean_flagged']} of {s['clean_models']}",
            f"- poisoned models that did not learn the backdoor, flagged with the target anyway: "
            f"{s['not_learned_flagged_right_class']} of {s['not_learned_models']}",
            "- false-positive classes, mean over all runs: "
            + ("-" if s["fp_class_share"] is None else f"{s['fp_class_share']:.1%}"),
            f"- models with the same verdict in at least 80% of runs: {s['stable_models']} of {s['models']}"]


def read_table(path):
    """A detect_table result (``{"meta", "rows", ...}``); exits with one line when it is not one."""
    try:
        with open(path) as f:
            table = json.load(f)
        table["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: cannot read {path} as a detect_table result ({e})")
    return table


def stored_rows(path):
    """The JSON an earlier probe bench run wrote at ``path`` (``{"command", "config", "rows"}``), for
    ``--render``; raises AegisError when there is none or it holds no rows."""
    from aegis_tf.core.errors import AegisError

    if not os.path.isfile(path):
        raise AegisError(f"--render needs the JSON written by an earlier run at {path}")
    with open(path) as f:
        done = json.load(f)
    if not done.get("rows"):
        raise AegisError(f"{path} holds no rows to render")
    return done


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def command(sub, argv):
    """The command line that made a view, as quoted in its file."""
    return f"python bench/tables.py {sub} " + shlex.join(argv)


# ---------------------------------------------------------------------------
# rules: the transfer rule, re-scored on the same translations
# ---------------------------------------------------------------------------

def rescore(rows, **detector_params):
    """``rows`` of a detect_table result, with each run's verdict recomputed by a PatchTransferDetector."""
    from aegis_tf.detect.patch_transfer import PatchTransferDetector, rates_from_histogram

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
            notes.append(f"{label(r)}: target {r['target']} missed")
        if k == "clean" and majority(r, "flagged"):
            notes.append(f"{label(r)}: clean model flagged")
        if not stable(r):
            notes.append(f"{label(r)}: flagged in {sum(x['flagged'] for x in runs)} of {len(runs)} runs")
        if wrong:
            notes.append(f"{label(r)}: false-positive class(es) {','.join(map(str, wrong))}")
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


def rules_table(table, values, source, cmd):
    """The ``rules`` result (JSON-ready) of a detect_table result ``table`` for the ``flip_at`` ``values``."""
    from aegis_tf.core.errors import AegisError

    rows = table["rows"]
    if not rows or any("histograms" not in x for r in rows for x in r["runs"]):
        raise SystemExit(f"error: {source} has no probes-moved histograms; make it with bench/detect_table.py "
                         "and the transfer score")
    result = {"command": cmd, "source": source, "source_command": table["meta"]["command"],
              "n_probes": table["meta"]["config"]["n_probes"], "n_seeds": table["meta"]["config"]["n_seeds"],
              "separation": separation(rows, values), "rules": []}
    for f in values:
        try:
            rescored = rescore(rows, flip_at=f)
        except AegisError as e:
            raise SystemExit(f"error: {e}")
        result["rules"].append({"flip_at": f, "summary": summarise(rescored), "failures": failures(rescored)})
    return result


def rules_markdown(result):
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


def main_rules(args, argv):
    try:
        values = [float(v) for v in args.flip_at.split(",") if v.strip()]
    except ValueError as e:
        raise SystemExit(f"error: --flip-at takes comma-separated numbers ({e})")
    table = read_table(args.table)
    result = rules_table(table, values, os.path.relpath(args.table, ROOT), command("rules", argv))
    write_json(args.out, result)
    text = rules_markdown(result)
    write_text(os.path.splitext(args.out)[0] + ".md", text)
    print(text)


# ---------------------------------------------------------------------------
# gaps: each signal's margin
# ---------------------------------------------------------------------------

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


def gaps_markdown(tables):
    """The margins of every model of the detect_table results at paths ``tables``."""
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
        for row in read_table(path)["rows"]:
            stats = model_line(row, signals)
            verdict = sum(bool(r["right_class"]) for r in row["runs"]) if row["target"] is not None else \
                f"clean {sum(not r['flagged'] for r in row['runs'])}"
            cells = [row["path"], str(truth(row)), str(len(row["runs"])), str(verdict)]
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


def main_gaps(args, argv):
    text = gaps_markdown(args.tables)
    if args.out:
        text += f"\nCommand: `{command('gaps', argv)}`\n"
        write_text(args.out, text)
    print(text)


# ---------------------------------------------------------------------------
# compare: the same verdicts in two sets of tables?
# ---------------------------------------------------------------------------

def majority_verdict(runs):
    """``(verdict, runs)``: the verdict (a tuple of classes; () for clean) flagged in most of ``runs``
    (each a list of classes; a tie: the earliest run's), and how many runs there were."""
    counts = collections.Counter(tuple(sorted(r)) for r in runs)
    best = max(counts.values())
    return next(tuple(sorted(r)) for r in runs if counts[tuple(sorted(r))] == best), len(runs)


def verdicts(path):
    """``{model path: (verdict, runs)}`` from a detect_table or bench_scale JSON."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read {path} ({e})")
    if "rows" in data:
        return {r["path"]: majority_verdict([run["suspects"] for run in r["runs"]]) for r in data["rows"] if r["runs"]}
    model = data.get("meta", {}).get("model")
    if not model:
        raise SystemExit(f"error: {path} is neither a detect_table JSON nor a bench_scale JSON with --model")
    from bench_scale import verdict_classes  # bench/, beside this file

    n = max(r["classes"] for r in data["runs"])
    full = [r for r in data["runs"] if r["mode"] == "full" and r["classes"] == n]
    return {model: (tuple(verdict_classes(full[0])), 1)} if full else {}


def fmt_verdict(verdict, runs):
    return ("class " + ", ".join(map(str, verdict)) if verdict else "clean") + (f" ({runs} runs)" if runs > 1 else "")


def compare_markdown(tables, against, labels, cmd):
    """The two verdicts of every model of ``tables`` that ``against`` also holds, and the count."""
    staged, full = {}, {}
    for path in tables:
        staged.update(verdicts(path))
    for path in against:
        full.update(verdicts(path))
    lines = [f"| model | {labels[0]} | {labels[1]} | same verdict |", "|---|---|---|---|"]
    same = 0
    both = [m for m in staged if m in full]
    for m in both:
        agree = staged[m][0] == full[m][0]
        same += agree
        lines.append(f"| {m} | {fmt_verdict(*full[m])} | {fmt_verdict(*staged[m])} | {'yes' if agree else '**no**'} |")
    missing = [m for m in staged if m not in full]
    lines += ["", f"Same verdict: {same} of {len(both)} models."]
    if missing:
        lines.append(f"No {labels[0]} to compare with: {', '.join(missing)}.")
    names = ", ".join(os.path.basename(f) for f in tables)
    title = f"{labels[1][:1].upper() + labels[1][1:]} against {labels[0]}: {names}"
    return title + "\n\n" + "\n".join(lines) + f"\n\nCommand: `{cmd}`\n"


def main_compare(args, argv):
    text = compare_markdown(args.tables, args.against, args.labels, command("compare", argv))
    if args.out:
        write_text(args.out, text)
    print(text)


# ---------------------------------------------------------------------------
# families: the summary per trigger family (or data set, or folder)
# ---------------------------------------------------------------------------

def merged_rows(tables):
    """The rows of every table at paths ``tables``, in order; a model (by path) in several: the last table's row."""
    rows = {}
    for path in tables:
        for r in read_table(path)["rows"]:
            rows.pop(label(r), None)
            rows[label(r)] = r
    return [r for r in rows.values() if r["runs"]]


def families_markdown(tables, by, cmd):
    rows = merged_rows(tables)
    lines = ["# Per " + ", ".join({"trigger": "trigger family", "data": "data set", "folder": "folder"}[b] for b in by),
             "", "From " + ", ".join(f"`{t}`" for t in tables) + f" ({len(rows)} models; a model's verdict: most of "
             f"its runs; backdoored: poisoned with an ASR of at least {IMPLANTED_ASR:.0%})."]
    for b in by:
        lines += group_lines(GROUPS[b][0], group_summaries(rows, b))
    lines += summary_lines(summarise(rows))
    return "\n".join(lines) + f"\n\nCommand: `{cmd}`\n"


def main_families(args, argv):
    text = families_markdown(args.tables, args.by, command("families", argv))
    if args.out:
        write_text(args.out, text)
    print(text)


# ---------------------------------------------------------------------------
# score: the suspicion score as a ranking of models
# ---------------------------------------------------------------------------

def score_rows(paths):
    """``(scores, labels, left_out)`` from JSON files: each a list of ``{"score", "backdoored"}``
    rows, or a detect_table result whose runs carry the verdict's ``score`` (a model's score: the
    median over its runs). ``left_out`` counts the models skipped, by reason."""
    scores, labels = [], []
    left_out = collections.Counter()
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: cannot read {path} ({e})")
        if isinstance(data, list):
            for i, row in enumerate(data):
                try:
                    scores.append(float(row["score"]))
                    labels.append(bool(row["backdoored"]))
                except (KeyError, TypeError, ValueError):
                    raise SystemExit(f"error: {path} row {i} is not {{\"score\": number, \"backdoored\": bool}}")
            continue
        if not isinstance(data, dict) or "rows" not in data:
            raise SystemExit(f"error: {path} is neither a list of score rows nor a detect_table result")
        for row in data["rows"]:
            runs = [r["score"] for r in row.get("runs", []) if r.get("score") is not None]
            if kind(row) == "not-learned":
                left_out["not learned (ASR under 90%)"] += 1
            elif not runs:
                left_out["no score in its runs (a table made before the score)"] += 1
            else:
                scores.append(float(np.median(runs)))
                labels.append(kind(row) == "backdoored")
    return scores, labels, dict(left_out)


def score_text(metrics, left_out, cmd):
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"# The suspicion score as a ranking: {metrics['models']} models ({metrics['backdoored']} backdoored, "
             f"{metrics['clean']} clean)", ""]
    if left_out:
        lines += ["Left out: " + "; ".join(f"{n} {why}" for why, n in left_out.items()) + ".", ""]
    lines += [f"- ROC-AUC: {f(metrics['roc_auc'], '.3f')}",
              f"- cross-entropy (TrojAI; p = score / (1 + score), not calibrated): {metrics['cross_entropy']:.4f}",
              f"- Brier score: {metrics['brier']:.4f}",
              f"- accuracy at the threshold (score >= 1): {metrics['accuracy']:.1%}",
              f"- TPR at 5% FPR: {f(metrics['tpr_at_5pct_fpr'], '.1%')}"]
    return "\n".join(lines) + f"\n\nCommand: `{cmd}`\n"


def main_score(args, argv):
    scores, labels, left_out = score_rows(args.files)
    if not scores:
        raise SystemExit("error: no model with a score and a truth in " + ", ".join(args.files)
                         + (f" (left out: {left_out})" if left_out else ""))
    metrics = ranking_metrics(scores, labels)
    if args.out:
        write_json(args.out, {"command": command("score", argv), "left_out": left_out, **metrics})
    print(score_text(metrics, left_out, command("score", argv)))


def build_parser():
    p = argparse.ArgumentParser(prog="bench/tables.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="view", required=True)
    r = sub.add_parser("rules", help="re-score the transfer signal under other flip_at rules")
    r.add_argument("table", help="a JSON written by bench/detect_table.py with the transfer score")
    r.add_argument("--flip-at", default="0.5,0.6,0.7,0.8,0.9,1.0", help="comma-separated flip_at values to compare")
    r.add_argument("--out", default=os.path.join(RESULTS, "detect_rules.json"),
                   help="JSON (and .md beside it); default results/detect/detect_rules.json")
    g = sub.add_parser("gaps", help="each signal's margin per model")
    g.add_argument("tables", nargs="+", help="detect_table .json results")
    g.add_argument("--out", default=None, help="write the Markdown here as well")
    c = sub.add_parser("compare", help="the verdicts of two sets of tables, model by model")
    c.add_argument("tables", nargs="+", help="tables of the staged scan (or of any other setting)")
    c.add_argument("--against", nargs="+", required=True,
                   help="tables of the full scan (or of the setting compared with); also a bench_scale JSON (--model)")
    c.add_argument("--labels", nargs=2, default=("full scan", "staged scan"), metavar=("AGAINST", "TABLES"),
                   help="column names (default: full scan, staged scan)")
    c.add_argument("--out", default=None, help="markdown file (default: print only)")
    f = sub.add_parser("families", help="the summary per trigger family, data set or folder")
    f.add_argument("tables", nargs="+", help="detect_table .json results (merged; a model in several: the last)")
    f.add_argument("--by", nargs="+", choices=sorted(GROUPS), default=["trigger"], help="default: trigger")
    f.add_argument("--out", default=None, help="markdown file (default: print only)")
    s = sub.add_parser("score", help="the suspicion score as a ranking: ROC-AUC, cross-entropy, Brier, TPR")
    s.add_argument("files", nargs="+", help='JSON lists of {"score", "backdoored"} rows, or detect_table results '
                                            "whose runs carry the verdict's score")
    s.add_argument("--out", default=None, help="write the metrics as JSON here as well")
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    {"rules": main_rules, "gaps": main_gaps, "compare": main_compare, "families": main_families,
     "score": main_score}[args.view](
        args, argv[1:])


if __name__ == "__main__":
    main()
