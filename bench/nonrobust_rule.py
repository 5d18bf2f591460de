"""The whole-image signal on models that are not robust: each verdict with and without the raised threshold.

    python bench/nonrobust_rule.py ZOO_SCAN [ZOO_SCAN ...] [--detect FILE.json[=clean|=T] ...] --out results/detect/NAME.json

A scan measures the model's robustness first; on a model it measures as not robust the
whole-image signal needs ``wi_threshold * wi_nonrobust_factor`` (4 by default) instead of
``wi_threshold`` (2) (:func:`aegis_tf.detect.scan.whole_image_threshold`). The rule changes
only which classes that signal flags: its gaps are the same measurement either way. So one
scan gives both verdicts: this reads each model's ``detect.json`` (every model of a finished
``scan-zoo`` folder, with the truth its ``config.json`` gave; ``--detect`` adds a single
scan's file, ``=clean`` or ``=T`` saying it is a clean model or one with target T), flags
the whole-image classes again at each threshold, and recombines the verdict with
:func:`aegis_tf.detect.verdict.combine`. Writes ``--out`` (.json) and a Markdown table
beside it: per model its robustness, its strongest whole-image class and gap, and the
verdict with the rule off (threshold 2 everywhere) and on.
"""

import argparse
import json
import os

from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import atomic_path, write_json
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.ranking import IMPLANTED_ASR
from aegis_tf.detect.verdict import combine


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise AegisError(f"{path}: not a readable detect.json ({e})") from None


def reflagged(evidence, threshold):
    """The whole-image evidence flagged again at ``threshold`` (a saturated signal flags nothing either way)."""
    e = dict(evidence)
    also = e.get("also")
    e["threshold"] = float(threshold)
    e["flagged"] = [] if e.get("inconclusive") else sorted(
        int(c) for c, s in e["scores"].items() if s >= threshold
        and (not also or also["scores"].get(c, 0.0) >= also["threshold"]))
    return e


def both_verdicts(result):
    """``(off, on, info)``: the verdict of ``result`` (a ``detect.json``) with the whole-image threshold
    at ``wi_threshold`` for every model, and raised on a model measured as not robust."""
    evidence = result["verdict"]["evidence"]
    config = {**DetectConfig().to_dict(), **((result.get("aegis") or {}).get("config") or {})}
    robustness = result.get("robustness") or {}
    robust = robustness.get("robust")
    base = float(config["wi_threshold"])
    raised = base * (float(config["wi_nonrobust_factor"]) if robust is False else 1.0)
    limits = result["verdict"].get("limits") or []
    wi = evidence.get("whole_image")
    off = combine({**evidence, "whole_image": reflagged(wi, base)} if wi else evidence, limits)
    on = combine({**evidence, "whole_image": reflagged(wi, raised)} if wi else evidence, limits)
    top = max(wi["scores"], key=wi["scores"].get) if wi and wi.get("scores") else None
    info = {"robust": robust, "pgd_acc": robustness.get("pgd_acc"), "clean_acc": robustness.get("clean_acc"),
            "threshold_off": base, "threshold_on": raised,
            "whole_image_top": None if top is None else int(top),
            "whole_image_gap": None if top is None else float(wi["scores"][top]),
            "whole_image_saturated": bool(wi and wi.get("inconclusive"))}
    return off, on, info


def _truth_of_zoo(folder, name):
    path = os.path.join(folder, name, "result.json")
    truth = (_load(path).get("truth") if os.path.isfile(path) else None) or {}
    if not truth:
        return None
    if not truth.get("poisoned"):
        return {"poisoned": False}
    return {"poisoned": True, "target": list(truth.get("target") or []), "family": truth.get("family"),
            "asr": truth.get("asr")}


def _judge(verdict, truth):
    """right / missed / false positive / wrong class (a named class that is no target) / unknown."""
    named = list(verdict["target_classes"])
    if truth is None:
        return "unknown"
    if not truth["poisoned"]:
        return "clean, right" if not named else "false positive"
    if not named:
        return "missed"
    targets = set(truth["target"])
    wrong = [c for c in named if c not in targets]
    if truth.get("family") == "all-to-all":  # every class is some pair's target
        return "flagged" if not wrong else "flagged, wrong class"
    return ("right" if targets & set(named) else "wrong class") + (f", also {wrong}" if wrong and targets & set(named)
                                                                   else "")


def rows(scans, singles):
    out = []
    for folder in scans:
        summary = os.path.join(folder, "summary.json")
        if not os.path.isfile(summary):
            raise AegisError(f"{summary} not found: expected the folder of a finished `scan-zoo`")
        for row in _load(summary)["rows"]:
            path = os.path.join(folder, row["name"], "detect.json")
            if row["status"] != "done" or not os.path.isfile(path):
                continue
            out.append((row["name"], path, _truth_of_zoo(folder, row["name"])))
    for spec in singles:
        path, _, label = spec.partition("=")
        truth = None if not label else ({"poisoned": False} if label == "clean"
                                        else {"poisoned": True, "target": [int(label)]})
        out.append((os.path.splitext(os.path.basename(path))[0], path, truth))
    table = []
    for name, path, truth in out:
        off, on, info = both_verdicts(_load(path))
        learned = truth is None or not truth["poisoned"] or truth.get("asr") is None or truth["asr"] >= IMPLANTED_ASR
        table.append({"name": name, "file": path, "truth": truth, "learned": learned, **info,
                      "off": {"targets": off["target_classes"], "line": off["line"], "judged": _judge(off, truth)},
                      "on": {"targets": on["target_classes"], "line": on["line"], "judged": _judge(on, truth)},
                      "changed": off["target_classes"] != on["target_classes"]})
    return table


def markdown(table, command):
    lines = ["# The whole-image signal on models that are not robust", "", f"`{command}`", "",
             "Each model's verdict with the whole-image threshold at 2 for every model (rule off) and at 2 x "
             "`wi_nonrobust_factor` on a model the robustness check measures as not robust (rule on, the default). "
             "Robust: PGD accuracy at L2 0.5 over clean accuracy (robust when at least half). Gap: the strongest "
             "whole-image class and its gap. A backdoor under 90% ASR is marked not learned.", "",
             "| model | truth | robust (PGD / clean) | whole-image top (gap) | rule off | rule on |",
             "|---|---|---|---|---|---|"]
    for r in table:
        t = r["truth"]
        truth = ("?" if t is None else "clean" if not t["poisoned"] else
                 f"{t.get('family') or 'backdoor'} -> {','.join(map(str, t['target'][:3]))}"
                 + ("..." if len(t["target"]) > 3 else "") + ("" if r["learned"] else " (not learned)"))
        rob = ("-" if r["robust"] is None else
               f"{'yes' if r['robust'] else 'no'} ({100 * r['pgd_acc']:.0f}% / {100 * r['clean_acc']:.0f}%)")
        gap = ("-" if r["whole_image_top"] is None else
               f"{r['whole_image_top']} ({r['whole_image_gap']:.2f}{', saturated' if r['whole_image_saturated'] else ''})")

        def cell(v):
            return f"{','.join(map(str, v['targets'])) or 'clean'}: {v['judged']}"

        on = cell(r["on"]) if not r["changed"] else f"**{cell(r['on'])}**"
        lines.append(f"| {r['name']} | {truth} | {rob} | {gap} | {cell(r['off'])} | {on} |")
    changed = [r for r in table if r["changed"]]
    clean = [r for r in table if r["truth"] is not None and not r["truth"]["poisoned"]]
    lines += ["", f"- verdicts changed: {len(changed)} of {len(table)}",
              f"- clean models flagged: rule off {sum(r['off']['judged'] == 'false positive' for r in clean)} of "
              f"{len(clean)}, rule on {sum(r['on']['judged'] == 'false positive' for r in clean)} of {len(clean)}", ""]
    return "\n".join(lines)


def main(argv=None):
    import sys

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("scans", nargs="*", help="folders of finished scan-zoo runs")
    p.add_argument("--detect", action="append", default=[], help="a single scan's detect.json[=clean|=TARGET]")
    p.add_argument("--out", required=True, help="JSON path; the Markdown table goes beside it")
    args = p.parse_args(argv)
    try:
        if not args.scans and not args.detect:
            raise AegisError("give at least one scan-zoo folder or --detect file")
        table = rows(args.scans, args.detect)
        command = "python bench/nonrobust_rule.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_json(args.out, {"command": command, "rows": table})
        with atomic_path(os.path.splitext(args.out)[0] + ".md") as tmp, open(tmp, "w") as f:
            f.write(markdown(table, command))
    except AegisError as e:
        raise SystemExit(f"error: {e}")
    print(f"wrote {args.out}: {sum(r['changed'] for r in table)} of {len(table)} verdicts changed")


if __name__ == "__main__":
    main()
