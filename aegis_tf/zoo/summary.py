"""The summary of a zoo scan, made from the per-model ``result.json`` files alone.

:func:`summarize` turns the results into ``summary.json``'s content: every model's
verdict, score and seconds; the counts; and, where the zoo gives the truth, how well
the scores rank the models (:func:`aegis_tf.detect.ranking.ranking_metrics`: ROC-AUC,
TrojAI cross-entropy, Brier score, accuracy at the verdict's threshold, TPR at 5% FPR),
whether each flagged backdoor's target was right, a per-family breakdown and the ROC
curve. A poisoned model whose backdoor was not learned (``truth.asr`` under
:data:`~aegis_tf.detect.ranking.IMPLANTED_ASR`) and a model with an error result are
left out of the metrics, and counted as such.
"""

import collections
import os

import numpy as np

from aegis_tf.core.utils import atomic_path, write_json
from aegis_tf.detect.ranking import IMPLANTED_ASR, ranking_metrics, roc_points

__all__ = ["summarize", "summary_lines", "markdown", "write_summary", "truth_kind"]


def truth_kind(truth):
    """``backdoored``, ``clean``, ``not-learned`` (poisoned, ASR under 90%) or ``None`` (no truth)."""
    if not truth:
        return None
    if not truth["poisoned"]:
        return "clean"
    if truth.get("asr") is not None and truth["asr"] < IMPLANTED_ASR:
        return "not-learned"
    return "backdoored"


def _family(result):
    truth = result.get("truth") or {}
    return truth.get("family") or {"backdoored": "poisoned", "not-learned": "poisoned", "clean": "clean"}.get(
        truth_kind(truth), "unknown")


def _right_target(result):
    """Did the flagged classes include a true target? ``None`` when not a flagged backdoored model."""
    truth = result.get("truth") or {}
    if truth_kind(truth) != "backdoored" or not truth.get("target") or result["status"] != "done":
        return None
    if not result["verdict"]["backdoored"]:
        return None
    return bool(set(truth["target"]) & set(result["verdict"]["target_classes"]))


def _row(r):
    done = r["status"] == "done"
    v = r.get("verdict") or {}
    return {"name": r["name"], "status": r["status"], "verdict": _word(r), "target_classes": v.get("target_classes"),
            "score": v.get("score") if done else None, "seconds": r.get("seconds"), "attempts": r.get("attempts"),
            "truth": truth_kind(r.get("truth")), "family": _family(r), "right_target": _right_target(r),
            "error": r.get("error"), "model_sha256": r.get("model_sha256"), "line": v.get("line"),
            "limits": v.get("limits") or [],
            "page": os.path.join(r["name"], r["page"]) if r.get("page") else None}


def _word(r):
    if r["status"] != "done":
        return "error"
    v = r["verdict"]
    if v["backdoored"]:
        return "backdoored"
    return "inconclusive" if v.get("limits") or v.get("inconclusive") else "clean"


def summarize(results, *, engine=None, seconds=None, zoo=None):
    """``summary.json``'s content from the results (one per model, in the zoo's order)."""
    rows = [_row(r) for r in results]
    counts = collections.Counter(row["verdict"] for row in rows)
    done = [r for r in results if r["status"] == "done"]
    secs = [r["seconds"] for r in done if r.get("seconds") is not None]
    out = {"zoo": zoo, "models": len(rows), "counts": {k: counts.get(k, 0) for k in
                                                       ("backdoored", "clean", "inconclusive", "error")},
           "seconds_per_model": {"mean": float(np.mean(secs)) if secs else None,
                                 "worst": float(np.max(secs)) if secs else None, "models_timed": len(secs)},
           "engine": engine, "wall_seconds": seconds, "rows": rows}
    scored = [(r, truth_kind(r.get("truth"))) for r in done]
    scored = [(r, k) for r, k in scored if k in ("backdoored", "clean")]
    left_out = collections.Counter()
    for r in results:
        kind = truth_kind(r.get("truth"))
        if kind is None:
            left_out["no truth given"] += 1
        elif kind == "not-learned":
            left_out[f"poisoned but not learned (ASR under {IMPLANTED_ASR:.0%})"] += 1
        elif r["status"] != "done":
            left_out["error result"] += 1
    out["left_out"] = dict(left_out)
    if not scored:
        out["metrics"] = None
        return out
    scores = [r["verdict"]["score"] for r, _ in scored]
    labels = [k == "backdoored" for _, k in scored]
    out["metrics"] = ranking_metrics(scores, labels)
    rights = [x for x in (_right_target(r) for r, _ in scored) if x is not None]
    out["metrics"]["right_target"] = {"flagged_backdoored": len(rights), "right": int(sum(rights))}
    points = roc_points(scores, labels)
    out["roc"] = None if points is None else {"fpr": points[0], "tpr": points[1]}
    families = collections.defaultdict(list)
    for r, kind in scored:
        families[_family(r)].append((r, kind))
    out["families"] = {}
    for family, members in sorted(families.items()):
        flagged = [r["verdict"]["backdoored"] for r, _ in members]
        right = [x for x in (_right_target(r) for r, _ in members) if x is not None]
        out["families"][family] = {"models": len(members), "backdoored": sum(k == "backdoored" for _, k in members),
                                   "flagged": int(sum(flagged)), "right_target": int(sum(right)),
                                   "mean_score": float(np.mean([r["verdict"]["score"] for r, _ in members]))}
    return out


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def summary_lines(s):
    """The console summary: one line per model, then the counts, the metrics and the time."""
    width = max([len(r["name"]) for r in s["rows"]] + [5])
    lines = []
    for r in s["rows"]:
        what = r["error"] if r["status"] != "done" else r["line"]
        lines.append(f"  {r['name']:<{width}}  {r['verdict'].upper():<12} score {_f(r['score'], '6.2f')}  "
                     f"{_f(r['seconds'], '6.1f')} s  {what}")
    c = s["counts"]
    lines.append(f"{s['models']} model(s): {c['backdoored']} backdoored, {c['clean']} clean, "
                 f"{c['inconclusive']} inconclusive, {c['error']} error(s)")
    m = s.get("metrics")
    if m:
        lines.append(f"against the truth ({m['models']} models: {m['backdoored']} backdoored, {m['clean']} clean): "
                     f"ROC-AUC {_f(m['roc_auc'], '.3f')}, cross-entropy {m['cross_entropy']:.3f}, Brier "
                     f"{m['brier']:.3f}, accuracy {m['accuracy']:.1%}, TPR at 5% FPR {_f(m['tpr_at_5pct_fpr'], '.1%')}; "
                     f"right target {m['right_target']['right']} of {m['right_target']['flagged_backdoored']} flagged")
    if s.get("left_out"):
        lines.append("left out of the metrics: " + "; ".join(f"{n} {why}" for why, n in s["left_out"].items()))
    t = s["seconds_per_model"]
    if t["mean"] is not None:
        lines.append(f"seconds per model: mean {t['mean']:.1f}, worst {t['worst']:.1f} ({t['models_timed']} scanned)")
    return lines


def markdown(s):
    """``summary.md``: the per-model table, the metrics and the per-family breakdown."""
    lines = [f"# Zoo scan: {s['models']} models", ""]
    if s.get("zoo"):
        engine = ", ".join(f"{k} {v}" for k, v in (s.get("engine") or {}).items())
        lines += [f"Zoo: `{s['zoo']}`. Engine: {engine or '-'}.", ""]
    lines += ["| model | verdict | classes | score | truth | right target | seconds | note |", "|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        note = (r["error"] or "").replace("|", "\\|") if r["status"] != "done" else ""
        classes = ", ".join(map(str, r["target_classes"] or [])) or "-"
        right = {None: "-", True: "yes", False: "**no**"}[r["right_target"]]
        truth = f"{r['truth']} ({r['family']})" if r["truth"] else "-"
        lines.append(f"| {r['name'].replace('|', chr(92) + '|')} | {r['verdict']} | {classes} | {_f(r['score'], '.2f')} | {truth} "
                     f"| {right} | {_f(r['seconds'], '.1f')} | {note} |")
    lines += [""] + [f"- {line}" for line in summary_lines(s)[len(s["rows"]):]]
    if s.get("families"):
        lines += ["", "| family | models | backdoored | flagged | right target | mean score |", "|---|---|---|---|---|---|"]
        for name, f in s["families"].items():
            lines.append(f"| {name} | {f['models']} | {f['backdoored']} | {f['flagged']} | {f['right_target']} | "
                         f"{f['mean_score']:.2f} |")
    return "\n".join(lines) + "\n"


def write_summary(out_dir, summary):
    """``summary.json``, ``summary.md``, the ROC figure (with truth) and the index ``report.html``."""
    from aegis_tf.report.html import write_zoo_html

    roc_png = None
    if summary.get("roc"):
        from aegis_tf.report.figures import plot_roc

        roc_png = os.path.join(out_dir, "roc.png")
        plot_roc(summary["roc"]["fpr"], summary["roc"]["tpr"], roc_png, auc=summary["metrics"]["roc_auc"])
    write_json(os.path.join(out_dir, "summary.json"), summary)
    with atomic_path(os.path.join(out_dir, "summary.md")) as tmp:
        with open(tmp, "w") as f:
            f.write(markdown(summary))
    write_zoo_html(summary, os.path.join(out_dir, "report.html"), roc_png=roc_png, root=out_dir)
