"""Two scoring settings on the same translations: which verdicts does a change of rule move?

    python bench/scoring_ab.py out/std/*.keras --set pair_confirm_probes=0 --runs 3 \\
        --data-dir out/data --out results/detect/pair_confirm_std.json

Each model is a ``.keras`` file with the ``.keras.json`` report ``cli.py train`` writes beside
it (``bench/family_table.py`` reads its truth the same way). Per run ``r`` the model's training
images are translated once, as ``aegis_tf.scan(..., seed=r)`` translates them (the default
:class:`~aegis_tf.detect.config.DetectConfig`, a full scan), and scored twice: with the default
("B", what the scan says today) and with the ``--set`` settings ("A"). Only settings that do
not touch the translations can be set (``aegis_tf.detect.state.SCORING_ONLY``), so the two
verdicts differ by the rule alone. Each verdict is judged against the truth with
``family_table.judge``. Writes ``--out`` (.json) and a Markdown table beside it: every
verdict that changed, and per side learned backdoors found in every run, clean models flagged
in any run, and the suspicion score's ROC-AUC (median over runs).
"""

import argparse
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import write_json
from bench_scale import settings
from family_table import judge, model_case
from tables import ranking_metrics


def parse_settings(pairs):
    """``["key=value", ...]`` (``bench_scale.settings``) as DetectConfig overrides of scoring-only
    settings; a one-line error for any other key or a value the config refuses."""
    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.state import SCORING_ONLY

    bad = [p for p in pairs if p.partition("=")[0] not in SCORING_ONLY or "=" not in p]
    if bad:
        raise AegisError(f"--set takes KEY=VALUE with KEY one of {', '.join(sorted(SCORING_ONLY))}. "
                         f"Received: {bad[0]!r}")
    out = settings(pairs)
    DetectConfig(**out)  # checked like any config
    return out


def verdicts(model, x, y, overrides, seed):
    """The default verdict and the verdict with ``overrides``, on one set of translations (raw
    pixels, 0-255, as the models ``cli.py train`` writes take them)."""
    from aegis_tf.core.models import num_classes
    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.scan import aegis_evidence, model_limits, score_translations
    from aegis_tf.detect.translation import translate
    from aegis_tf.detect.verdict import combine

    classes = list(range(num_classes(model)))
    base = DetectConfig()
    tr = translate(model, x, y, classes, base, pixel_max=255.0, seed=seed, batch_size=256)
    out = {}
    for side, config in (("B", base), ("A", base.replace(**overrides))):
        report, _ = score_translations(model, x, y, classes=classes, config=config, translations=tr,
                                       pixel_max=255.0, seed=seed, batch_size=256)
        out[side] = combine(aegis_evidence(report), model_limits(model, y, classes, report))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--set", dest="settings", action="append", required=True, metavar="KEY=VALUE",
                   help="a scoring-only DetectConfig setting of side A (repeatable)")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--data-dir", default=None, help="folder with the training reports' .npz files")
    p.add_argument("--train-images", type=int, default=20000, help="first N training images scanned (0: all)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    try:
        overrides = parse_settings(args.settings)
        missing = [m for m in args.models if not os.path.isfile(m) or not os.path.isfile(m + ".json")]
        if missing:
            raise AegisError(f"{missing[0]}: expected a .keras model with its training report (.keras.json)")
    except AegisError as e:
        sys.exit(f"error: {e}")
    command = "python " + " ".join(map(shlex.quote, sys.argv))

    from aegis_tf.core.models import load_model

    rows = []
    for path in args.models:
        report, (family, backdoors, learned), (x, y) = model_case(path, args.data_dir, args.train_images)
        model = load_model(path)
        runs = []
        for r in range(args.runs):
            t = time.perf_counter()
            both = verdicts(model, x, y, overrides, r)
            n_classes = len(both["B"]["evidence"]["patch_transfer"]["scores"])
            runs.append({side: {"line": v["line"], "targets": v["target_classes"], "score": v["score"],
                                "right": judge(v, backdoors, n_classes)} for side, v in both.items()})
            runs[-1]["seconds"] = time.perf_counter() - t
            print(f"{os.path.basename(path)} run {r}: B {both['B']['line']}\n    A {both['A']['line']}", flush=True)
        rows.append({"model": os.path.relpath(path), "family": family, "learned": learned,
                     "robust": report.get("config", {}).get("robust"), "runs": runs})
        write_json(args.out, {"command": command, "settings": overrides, "rows": rows})
    write(rows, overrides, args.out, command)


def side_totals(rows, side):
    """Learned backdoors right in every run, clean models flagged in any run, ROC-AUC."""
    learned = [r for r in rows if r["learned"] and r["family"] != "clean"]
    clean = [r for r in rows if r["family"] == "clean"]
    scored = [r for r in rows if r["learned"]]
    auc = None
    if learned and clean:
        auc = ranking_metrics([float(np.median([x[side]["score"] for x in r["runs"]])) for r in scored],
                              [r["family"] != "clean" for r in scored])["roc_auc"]
    return {"learned_found": sum(all(x[side]["right"] for x in r["runs"]) for r in learned),
            "learned": len(learned),
            "clean_flagged": sum(any(not x[side]["right"] for x in r["runs"]) for r in clean), "clean": len(clean),
            "roc_auc": auc}


def write(rows, overrides, out_path, command):
    totals = {side: side_totals(rows, side) for side in ("A", "B")}
    write_json(out_path, {"command": command, "settings": overrides, "rows": rows, "totals": totals})
    changed = [(r, i, run) for r in rows for i, run in enumerate(r["runs"]) if run["A"]["line"] != run["B"]["line"]]
    a = ", ".join(f"{k}={v}" for k, v in overrides.items())
    lines = ["# One scoring rule, with and without", "", f"`{command}`", "",
             f"B: the default scoring. A: the same translations scored with {a}.", "",
             f"{len(changed)} of {sum(len(r['runs']) for r in rows)} verdicts changed.", ""]
    if changed:
        lines += ["| model | family | trained | run | A | right | B (default) | right |", "|---|---|---|---|---|---|---|---|"]
        for r, i, run in changed:
            lines.append(f"| {os.path.basename(r['model'])} | {r['family']} | "
                         f"{'robust' if r['robust'] else 'standard'} | {i} | {run['A']['line']} | "
                         f"{'yes' if run['A']['right'] else 'no'} | {run['B']['line']} | "
                         f"{'yes' if run['B']['right'] else 'no'} |")
        lines.append("")
    for side, name in (("A", a), ("B", "default")):
        t = totals[side]
        lines.append(f"- {side} ({name}): learned backdoors right in every run {t['learned_found']} of {t['learned']}; "
                     f"clean models flagged in any run {t['clean_flagged']} of {t['clean']}; ROC-AUC "
                     + ("-" if t["roc_auc"] is None else f"{t['roc_auc']:.3f}"))
    lines += ["", "| model | family | learned | runs right (A) | runs right (B) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {os.path.basename(r['model'])} | {r['family']} | {'yes' if r['learned'] else 'no'} | "
                     f"{sum(x['A']['right'] for x in r['runs'])}/{len(r['runs'])} | "
                     f"{sum(x['B']['right'] for x in r['runs'])}/{len(r['runs'])} |")
    md = os.path.splitext(out_path)[0] + ".md"
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out_path} and {md}")


if __name__ == "__main__":
    main()
