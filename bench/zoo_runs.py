"""Several scans of one zoo side by side: does each model get the same verdict every run?

    python cli.py scan-zoo ZOO --out OUT_0 --seed 0 ... ; python cli.py scan-zoo ZOO --out OUT_1 --seed 1 ...
    python bench/zoo_runs.py OUT_0 OUT_1 ... --out results/detect/NAME.json

Reads each scan's ``summary.json`` (``scan-zoo`` writes it; the runs differ only by
``--seed``: seed images, probes, PGD starts). For every model: its verdict and classes in
each run, how many runs agree with the most common of them, for a learned backdoor in how
many runs its target was named, and (from each model's ``result.json``) the sources named
of a source-specific backdoor and the true pairs found of an all-to-all one. Totals: models
with the same verdict in at least ``--agree`` runs (default 80%, rounded up: 4 of 5, as
issue 25 asks), learned backdoors flagged with their target in every run, clean models
flagged in any run, and each run's ROC-AUC. Writes ``--out`` (.json)
and a Markdown table beside it.

``--recombine`` recombines every verdict from its ``detect.json`` evidence with this
checkout's verdict rules (scans made before a change of the rules read as after it).
``--without SIGNAL`` (repeatable) reads the same scans as if a signal had not run: each
model's verdict is recombined from its ``detect.json`` evidence without that signal
(:func:`aegis_tf.detect.verdict.combine`, as the scan combines it), and each run's summary is
made again from those verdicts (:func:`aegis_tf.zoo.summary.summarize`). A signal that runs
last and draws its own random numbers (the pair mask probe) leaves every other signal as it
was, so this is the scan without it.
"""

import argparse
import json
import math
import os
import sys
from collections import Counter

from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import atomic_path, write_json
from aegis_tf.detect.verdict import SIGNAL_NAMES as SIGNALS
from aegis_tf.detect.verdict import combine
from aegis_tf.zoo.summary import summarize
from aegis_tf.zoo.worker import VERDICT_KEYS
from family_table import true_pairs_found



def read_runs(folders):
    """The ``summary.json`` of each scan folder; a one-line error when one is missing or the
    scans did not cover the same models."""
    runs = []
    for folder in folders:
        path = os.path.join(folder, "summary.json")
        if not os.path.isfile(path):
            raise AegisError(f"{path} not found: expected the folder of a finished `scan-zoo`")
        with open(path) as f:
            runs.append(json.load(f))
    names = [sorted(r["name"] for r in run["rows"]) for run in runs]
    if any(n != names[0] for n in names):
        raise AegisError("the scans do not cover the same models: give scans of one zoo")
    return runs


def without_signals(runs, folders, signals):
    """Each run's summary and model results with every verdict recombined from the model's
    ``detect.json`` evidence, ``signals`` left out. Returns ``(runs, results)`` (``results``: per
    run, ``{name: result}``)."""
    out_runs, out_results = [], []
    for run, folder in zip(runs, folders):
        results = []
        for row in run["rows"]:
            path = os.path.join(folder, row["name"], "result.json")
            if not os.path.isfile(path):
                raise AegisError(f"{path} not found: --without needs each model's result.json and detect.json")
            with open(path) as f:
                result = json.load(f)
            if result["status"] == "done":
                detect = os.path.join(folder, row["name"], "detect.json")
                if not os.path.isfile(detect):
                    raise AegisError(f"{detect} not found: --without and --recombine need each model's detect.json")
                with open(detect) as f:
                    verdict = json.load(f)["verdict"]
                evidence = {k: e for k, e in verdict["evidence"].items() if k not in signals}
                again = combine(evidence, verdict.get("limits") or [])
                result["verdict"] = {k: again.get(k) for k in VERDICT_KEYS}
            results.append(result)
        out_runs.append(summarize(results, zoo=run.get("zoo")))
        out_results.append({r["name"]: r for r in results})
    return out_runs, out_results


def _result(folder, row):
    """The model's ``result.json`` of a finished scan, or None."""
    path = os.path.join(folder, row["name"], "result.json")
    if row["status"] != "done" or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _call(row, result=None):
    """A run's verdict on one model, as a short, comparable cell. A verdict that read an
    all-to-all mapping is "B:all-to-all" (and any one-target backdoor beside it), whatever
    pairs it found: the pairs go to the detail."""
    if row["status"] != "done":
        return "error"
    if row["verdict"] == "backdoored" and result is not None:
        backdoors = result["verdict"].get("backdoors") or []
        if any(b.get("kind") == "all-to-all" for b in backdoors):
            others = sorted(b["target"] for b in backdoors if b.get("kind") != "all-to-all")
            return "B:all-to-all" + "".join(f",{t}" for t in others)
    classes = ",".join(str(c) for c in row.get("target_classes") or [])
    return {"backdoored": f"B:{classes}", "clean": "clean"}.get(row["verdict"], row["verdict"])


def _detail(result):
    """What a run named of a source-specific backdoor's sources or an all-to-all one's pairs
    (from the model's ``result.json``); None for other models or without the file."""
    if result is None:
        return None
    truth, backdoors = result.get("truth") or {}, result["verdict"].get("backdoors") or []
    if truth.get("family") == "all-to-all":
        n = len(truth["target"])
        return f"{true_pairs_found(backdoors, n)} of {n} pairs"
    if truth.get("family") == "source-specific":
        named = set()
        for b in backdoors:
            if b.get("target") in truth["target"]:
                named |= {"all"} if b.get("sources") == "all" else set(b.get("sources") or [])
        right = "all" in named or set(truth["sources"]) <= named
        return "sources " + (",".join(sorted(map(str, named))) or "none") + (", right" if right else "")
    return None


def _false_classes(row, result):
    """The classes a run named that are no target of the model's backdoors (None without the
    model's ``result.json`` or its truth)."""
    truth = (result or {}).get("truth")
    if row["status"] != "done" or not truth or (truth.get("poisoned") and not truth.get("target")):
        return None  # no truth, or a backdoor whose target the zoo does not know
    return sorted(set(row.get("target_classes") or []) - set(truth.get("target") or []))


def _n_classes(folder, name):
    """How many classes a scan's verdict covers for the model (its ``detect.json``), or None."""
    path = os.path.join(folder, name, "detect.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        aegis = json.load(f).get("aegis", {})
    if "stages" in aegis:  # a staged scan lists its promoted classes; its verdict covers every class
        return aegis["stages"].get("classes") or None
    return len(aegis.get("classes") or {}) or None


def compare(runs, agree=4, folders=None, results=None):
    """Per-model rows and totals of several scans of one zoo (``folders``: where each scan's
    model results are, for the calls and details they refine; ``results``: per run, ``{name:
    result}`` to use instead of the files, as :func:`without_signals` gives)."""
    by_name = {}  # name -> [(summary row, call, detail, false classes)], one per run
    for i, run in enumerate(runs):
        for row in run["rows"]:
            result = (results[i].get(row["name"]) if results is not None else
                      _result(folders[i], row) if folders else None)
            by_name.setdefault(row["name"], []).append((row, _call(row, result), _detail(result),
                                                        _false_classes(row, result)))
    models, learned_always, learned, clean_flagged, clean, stable = [], 0, 0, 0, 0, 0
    false_named, class_verdicts = 0, 0
    for name in sorted(by_name):
        rows, calls, details, false = (list(c) for c in zip(*by_name[name]))
        if rows[0].get("truth") in ("backdoored", "clean") and all(f is not None for f in false):
            n_classes = _n_classes(folders[0], name) if folders else None
            false_named += sum(len(f) for f in false)
            class_verdicts = None if n_classes is None or class_verdicts is None else (
                class_verdicts + n_classes * len(rows))
        top, n_top = Counter(calls).most_common(1)[0]
        right = [r.get("right_target") for r in rows]
        truth = rows[0].get("truth")
        stable += n_top >= agree
        if truth == "backdoored":
            learned += 1
            learned_always += all(x is True for x in right)
        if truth == "clean":
            clean += 1
            clean_flagged += any(r["verdict"] == "backdoored" for r in rows)
        models.append({"name": name, "family": rows[0].get("family"), "truth": truth, "calls": calls,
                       "most_common": top, "agree": n_top, "right_target_runs": sum(x is True for x in right),
                       "scores": [r.get("score") for r in rows], "details": details})
    totals = {"runs": len(runs), "models": len(models), "agree_at_least": agree, "stable": stable,
              "learned_backdoors": learned, "right_target_every_run": learned_always,
              "clean_models": clean, "clean_flagged_any_run": clean_flagged,
              "false_classes": false_named, "class_verdicts": class_verdicts,
              "roc_auc": [run.get("metrics", {}).get("roc_auc") for run in runs]}
    return {"models": models, "totals": totals, "scans": list(folders or []), "without": []}


def markdown(result):
    t = result["totals"]
    runs = t["runs"]
    without = result.get("without") or []
    lines = ["# One zoo, several scans", "", "Scans: " + ", ".join(f"`{f}`" for f in result["scans"]) + ".", "",
             *([f"Verdicts recombined without: {', '.join(without)} (each model's detect.json evidence, the "
                "signal left out).", ""] if without else
               ["Verdicts recombined from each model's detect.json evidence with this checkout's verdict rules.", ""]
               if result.get("recombined") else []),
             "A cell per run: B:classes (backdoored; B:all-to-all for a verdict that read an all-to-all mapping, "
             "its true pairs in brackets), clean, inconclusive or error. Agree: runs with the most common cell "
             "(what is in brackets aside). Right target: runs that named a learned backdoor's target.", "",
             "| model | truth | " + " | ".join(f"run {i}" for i in range(runs)) + " | agree | right target |",
             "|---|---|" + "---|" * runs + "---|---|"]
    for m in result["models"]:
        right = f"{m['right_target_runs']} of {runs}" if m["truth"] == "backdoored" else "-"
        cells = [c if d is None else f"{c} ({d})" for c, d in zip(m["calls"], m["details"])]
        lines.append(f"| {m['name']} | {m['truth']} | " + " | ".join(cells) + f" | {m['agree']} of {runs} | {right} |")
    auc = ", ".join("-" if a is None else f"{a:.3f}" for a in t["roc_auc"])
    lines += ["", f"- the same verdict in at least {t['agree_at_least']} of {runs} runs: {t['stable']} of {t['models']} models",
              f"- learned backdoors flagged with their target in every run: {t['right_target_every_run']} of "
              f"{t['learned_backdoors']}",
              f"- clean models flagged in any run: {t['clean_flagged_any_run']} of {t['clean_models']}",
              *([f"- false classes (named, no target; learned backdoors and clean models): {t['false_classes']}"
                 + (f" of {t['class_verdicts']} class verdicts ({100 * t['false_classes'] / t['class_verdicts']:.1f}%)"
                    if t.get("class_verdicts") else "")] if "false_classes" in t else []),
              f"- ROC-AUC per run: {auc}", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scans", nargs="+", help="folders of finished scan-zoo runs of one zoo")
    p.add_argument("--agree", type=int, default=None,
                   help="runs that must agree (default: 80%% of the scans, rounded up: 4 of 5, as issue 25 asks)")
    p.add_argument("--without", action="append", default=[], metavar="SIGNAL",
                   help="read the scans without this signal (e.g. pair_mask): verdicts recombined from each "
                        "model's detect.json evidence; repeatable")
    p.add_argument("--recombine", action="store_true",
                   help="recombine every verdict from its detect.json evidence with this checkout's verdict rules "
                        "(scans made before a change of those rules read as after it); implied by --without")
    p.add_argument("--out", required=True, help="result .json (a .md is written beside it)")
    args = p.parse_args(argv)
    try:
        if args.agree is None:
            args.agree = math.ceil(0.8 * len(args.scans))
        if not 1 <= args.agree <= len(args.scans):
            raise AegisError(f"--agree must lie in [1, {len(args.scans)}] (the number of scans). Received: {args.agree}")
        runs, results = read_runs(args.scans), None
        unknown = sorted(set(args.without) - set(SIGNALS))
        if unknown:
            raise AegisError(f"--without takes signal names as detect.json spells them ({', '.join(SIGNALS)}). "
                             f"Received: {', '.join(unknown)}")
        if args.without or args.recombine:
            runs, results = without_signals(runs, args.scans, set(args.without))
        result = compare(runs, args.agree, args.scans, results)
        result["without"] = list(args.without)
        result["recombined"] = bool(args.without or args.recombine)
    except AegisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json(args.out, result)
    md = markdown(result)
    with atomic_path(os.path.splitext(args.out)[0] + ".md") as tmp:
        with open(tmp, "w") as f:
            f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
