"""The warp probe alone, on trained models with their truth: what it flags, and at what shift.

    python bench/warp_probe.py MODEL.keras [MODEL.keras ...] --data-dir out/data --out results/detect/NAME.json

Each model needs its training report beside it (``MODEL.keras.json``, written by ``aegis
train``): the data set, the backdoors and their ASR. The probe runs with the scan's default
settings (:class:`aegis_tf.detect.config.DetectConfig`: ``warp_grid``, ``warp_max_shift``,
``warp_steps``, ``warp_fit``, ``wi_probes``, ``wi_threshold``, seed 0) on the model's training
images, exactly as a full scan runs it, and needs no translations; the other signals of the
verdict do not depend on it, so a scan's verdict with the probe is its verdict without it plus
the classes the probe flags. Writes ``--out`` (.json) and a Markdown table beside it: per
model the family and target, each class's shift (pixels), the strongest class and its gap,
what the probe flagged, and the judgement: for a warp backdoor right / missed / wrong class,
for a clean model clean / false positive, for any other family whether it named a class
that is no target (a false class) or none.
"""

import argparse
import os
import sys
import time

import numpy as np
from family_table import model_case

from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import load_model
from aegis_tf.core.utils import atomic_path, write_json
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.warp_probe import WarpProbeDetector


def judge(family, targets, flagged):
    """The probe's flags against the model's truth."""
    if family == "clean":
        return "clean, right" if not flagged else "false positive"
    wrong = [c for c in flagged if c not in targets]
    if family == "warp":
        if not flagged:
            return "missed"
        return ("right" if set(flagged) & set(targets) else "wrong class") + (f", also {wrong}" if wrong and
                                                                              set(flagged) & set(targets) else "")
    if family == "all-to-all":  # every class is some pair's target
        return "no flag" if not flagged else "flags a target"
    if not flagged:
        return "no flag"
    return "flags the target" if not wrong else f"false class {wrong}"


def row(path, data_dir, train_images, config):
    report, (family, truths, learned), (x, y) = model_case(path, data_dir, train_images)
    model = load_model(path)
    classes = sorted(int(c) for c in np.unique(y))
    t = time.perf_counter()
    det = WarpProbeDetector.from_config(config, random_state=0).fit(model, x, y, classes)
    seconds = time.perf_counter() - t
    top = max(det.scores_, key=det.scores_.get)
    targets = sorted({int(b["target"]) for b in truths})
    test = report.get("test") or {}
    return {"model": os.path.basename(path), "file": path, "family": family, "targets": targets,
            "learned": learned, "clean_acc": test.get("clean_acc"),
            "asr": [r.get("asr") for r in test.get("backdoors") or []],
            "trigger": report.get("trigger_config", {}).get("trigger"),
            "warp_strength": report.get("trigger_config", {}).get("warp_strength"),
            "adv_acc": test.get("adv_acc"), "max_shift_px": det.max_shift_px_,
            "shifts": {str(c): det.norms_[c] for c in det.classes_},
            "shares": {str(c): det.shares_[c] for c in det.classes_},
            "top": int(top), "top_gap": det.scores_[top], "flagged": list(det.suspect_classes_),
            "inconclusive": det.inconclusive_,
            "judged": judge(family, targets, list(det.suspect_classes_)) + (" (inconclusive)" if det.inconclusive_
                                                                            else ""),
            "seconds": seconds}


def markdown(rows, command, config):
    lines = ["# The warp probe on trained models", "", f"`{command}`", "",
             f"Settings: grid {config.warp_grid}, bound {config.warp_max_shift:g} of the image side, "
             f"{config.warp_steps} steps on {config.warp_fit} images, {config.wi_probes} fresh probes, flagged at a "
             f"gap of {config.wi_threshold:g}. Shift: the largest offset (pixels) of the class's fitted field that "
             "moves 90% of the probes (the bound: none up to it did). A backdoor under 90% ASR is marked not learned.",
             "", "| model | family -> target | ASR | clean | target's shift | smallest other shift | top (gap) | "
             "flagged | judged | s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shifts = {int(c): v for c, v in r["shifts"].items()}
        own = [f"{shifts[t]:.2f}" for t in r["targets"] if t in shifts] if r["family"] != "all-to-all" else []
        others = [v for c, v in shifts.items() if c not in r["targets"] or r["family"] == "all-to-all"]
        asr = "/".join(f"{100 * a:.1f}" for a in r["asr"] if a is not None) or "-"
        truth = r["family"] + ("" if r["family"] == "clean" else f" -> {','.join(map(str, r['targets']))}")
        if r["family"] == "warp" and r["warp_strength"] is not None:
            truth += f" (s {r['warp_strength']:g})"
        lines.append(f"| {r['model']} | {truth}{'' if r['learned'] else ' (not learned)'} | {asr} | "
                     f"{100 * (r['clean_acc'] or 0):.1f} | {', '.join(own) or '-'} | "
                     f"{min(others):.2f} | {r['top']} ({r['top_gap']:.2f}) | "
                     f"{','.join(map(str, r['flagged'])) or '-'} | {r['judged']} | {r['seconds']:.0f} |")
    warp = [r for r in rows if r["family"] == "warp" and r["learned"]]
    clean = [r for r in rows if r["family"] == "clean"]
    other = [r for r in rows if r["family"] not in ("warp", "clean")]
    lines += ["", f"- learned warp backdoors named right: {sum(r['judged'].startswith('right') for r in warp)} of "
                  f"{len(warp)}",
              f"- clean models flagged: {sum(r['judged'].startswith('false positive') for r in clean)} of "
              f"{len(clean)}",
              f"- inconclusive: {sum(bool(r.get('inconclusive')) for r in rows)} of {len(rows)}",
              f"- other families with a false class: {sum(r['judged'].startswith('false class') for r in other)} "
              f"of {len(other)}",
              f"- seconds per model: {min(r['seconds'] for r in rows):.0f}-{max(r['seconds'] for r in rows):.0f}", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="trained models, each with its report MODEL.keras.json beside it")
    p.add_argument("--data-dir", default=None, help="where the reports' data files are looked up when moved")
    p.add_argument("--train-images", type=int, default=0, help="the first N training images (0: all)")
    p.add_argument("--out", required=True, help="JSON path; the Markdown table goes beside it")
    args = p.parse_args(argv)
    config = DetectConfig()
    try:
        missing = [m for m in args.models if not os.path.isfile(m + ".json")]
        if missing:
            raise AegisError(f"no training report beside {missing[0]} (expected {missing[0]}.json)")
        rows = []
        for m in args.models:
            rows.append(row(m, args.data_dir, args.train_images, config))
            r = rows[-1]
            print(f"{r['model']}: {r['family']} -> {r['targets']}: flagged {r['flagged']} ({r['judged']}), "
                  f"top {r['top']} gap {r['top_gap']:.2f}, {r['seconds']:.0f}s", flush=True)
        command = "python bench/warp_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_json(args.out, {"command": command, "config": config.to_dict(), "rows": rows})
        with atomic_path(os.path.splitext(args.out)[0] + ".md") as tmp, open(tmp, "w") as f:
            f.write(markdown(rows, command, config))
    except AegisError as e:
        raise SystemExit(f"error: {e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
