"""The warp probe (or, with ``--probe mask``, the mask probe) alone, on trained models with their truth.

    python bench/warp_probe.py MODEL.keras [MODEL.keras ...] --data-dir out/data --out results/detect/NAME.json
    python bench/warp_probe.py MODEL.keras [...] --probe mask --data-dir out/data --out results/detect/NAME.json

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

``--probe mask`` runs :class:`aegis_tf.detect.mask_probe.MaskProbeDetector` instead (``mask_fit``,
``mask_epochs``, ``wi_probes``, ``wi_threshold``), as every full scan runs it; the table then shows mask norms (L1, pixels; the
whole image where the mask did not move the fresh probes), every backdoor family but
all-to-all is judged right / missed / wrong class, beside the model's measured robustness
(the scan's check: L2 PGD accuracy at its eps over clean accuracy, on 300 training images).
"""

import argparse
import os
import sys
import time

import numpy as np
from family_table import model_case
from tables import stored_rows

from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import load_model
from aegis_tf.core.utils import atomic_path, write_json
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.mask_probe import MaskProbeDetector
from aegis_tf.detect.robustness import ROBUST_EPS, measure_robustness
from aegis_tf.detect.warp_probe import WarpProbeDetector

PROBES = {"warp": WarpProbeDetector, "mask": MaskProbeDetector}
AIMED = {"warp": ("warp",), "mask": ("localised", "random-position", "two", "source-specific", "distributed",
                                     "blended", "invisible-static", "invisible-adversarial", "warp")}


def judge(family, targets, flagged, aimed=("warp",)):
    """The probe's flags against the model's truth; a family in ``aimed`` is judged right /
    missed / wrong class, any other by whether it named a class that is no target."""
    if family == "clean":
        return "clean, right" if not flagged else "false positive"
    wrong = [c for c in flagged if c not in targets]
    if family in aimed:
        if not flagged:
            return "missed"
        return ("right" if set(flagged) & set(targets) else "wrong class") + (f", also {wrong}" if wrong and
                                                                              set(flagged) & set(targets) else "")
    if family == "all-to-all":  # every class is some pair's target
        return "no flag" if not flagged else "flags a target"
    if not flagged:
        return "no flag"
    return "flags the target" if not wrong else f"false class {wrong}"


def row(path, data_dir, train_images, config, probe="warp"):
    report, (family, truths, learned), (x, y) = model_case(path, data_dir, train_images)
    model = load_model(path)
    classes = sorted(int(c) for c in np.unique(y))
    pixel_max = 255.0  # load_split's default scale, as in a scan
    robust = None
    if probe == "mask":  # whether a default scan runs it: the scan's own robustness check
        robust = measure_robustness(model, x, y, eps=ROBUST_EPS, pixel_max=pixel_max,
                                    n_images=config.robustness_images, seed=0)
    t = time.perf_counter()
    kwargs = {"pixel_max": pixel_max} if probe == "mask" else {}
    det = PROBES[probe].from_config(config, random_state=0, **kwargs).fit(model, x, y, classes)
    seconds = time.perf_counter() - t
    top = max(det.scores_, key=det.scores_.get)
    targets = sorted({int(b["target"]) for b in truths})
    test = report.get("test") or {}
    return {"model": os.path.basename(path), "file": path, "family": family, "targets": targets,
            "learned": learned, "clean_acc": test.get("clean_acc"),
            "asr": [r.get("asr") for r in test.get("backdoors") or []],
            "trigger": report.get("trigger_config", {}).get("trigger"),
            "warp_strength": report.get("trigger_config", {}).get("warp_strength"),
            "adv_acc": test.get("adv_acc"), "probe": probe,
            **({"max_shift_px": det.max_shift_px_} if probe == "warp" else {"ceiling": det.ceiling_}),
            "shifts": {str(c): det.norms_[c] for c in det.classes_},
            "shares": {str(c): det.shares_[c] for c in det.classes_},
            "top": int(top), "top_gap": det.scores_[top], "flagged": list(det.suspect_classes_),
            "inconclusive": det.inconclusive_,
            "judged": judge(family, targets, list(det.suspect_classes_), AIMED[probe])
            + (" (inconclusive)" if det.inconclusive_ else ""),
            "robust": None if robust is None else {k: robust[k] for k in ("robust", "clean_acc", "pgd_acc")},
            "seconds": seconds}


def rescore(r, config):
    """Row ``r`` scored again from its stored norms (``shifts``) by today's rule of its probe, with the
    run's settings ``config``."""
    if r.get("inconclusive") and "saturated" not in r["inconclusive"]:
        return r  # a collapsed model: the norms do not say so, the row stays
    det = PROBES[r.get("probe", "warp")].from_config(config).fit_norms(
        {int(c): v for c, v in r["shifts"].items()}, ceiling=r.get("ceiling", r.get("max_shift_px")))
    top = max(det.scores_, key=det.scores_.get)
    flagged = list(det.suspect_classes_)
    return {**r, "top": int(top), "top_gap": det.scores_[top], "flagged": flagged, "inconclusive": det.inconclusive_,
            "judged": judge(r["family"], r["targets"], flagged, AIMED[r.get("probe", "warp")])
            + (" (inconclusive)" if det.inconclusive_ else "")}


def markdown(rows, command, config, probe="warp"):
    what = {"warp": "shift", "mask": "norm"}[probe]
    if probe == "warp":
        head = ["# The warp probe on trained models", "", f"`{command}`", "",
                f"Settings: grid {config.warp_grid}, bound {config.warp_max_shift:g} of the image side, "
                f"{config.warp_steps} steps on {config.warp_fit} images, {config.wi_probes} fresh probes, flagged at a "
                f"gap of {config.wi_threshold:g}. Shift: the largest offset (pixels) of the class's fitted field that "
                "moves 90% of the probes (the bound: none up to it did). A backdoor under 90% ASR is marked not "
                "learned."]
    else:
        head = ["# The mask probe on trained models", "", f"`{command}`", "",
                f"Settings: Neural Cleanse's reverse engineering ({config.mask_epochs} x 20 steps on "
                f"{config.mask_fit} training images), the trigger tried on {config.wi_probes} fresh probes of other "
                f"classes, flagged at a gap of {config.wi_threshold:g}. Norm: the L1 norm (pixels) of the class's "
                "mask, or the whole image where its trigger moved fewer than 90% of the probes. Robust: L2 PGD "
                f"accuracy at eps {ROBUST_EPS:g} over clean accuracy on {config.robustness_images} training images "
                "(robust when at least half). A backdoor under 90% ASR is marked not learned."]
    lines = head + ["", f"| model | family -> target | ASR | clean | target's {what} | smallest other {what} | "
                        "top (gap) | flagged | judged |" + (" robust (PGD / clean) |" if probe == "mask" else "")
                    + " s |", "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if probe == "mask" else "")]
    for r in rows:
        shifts = {int(c): v for c, v in r["shifts"].items()}
        own = [f"{shifts[t]:.2f}" for t in r["targets"] if t in shifts] if r["family"] != "all-to-all" else []
        others = [v for c, v in shifts.items() if c not in r["targets"] or r["family"] == "all-to-all"]
        asr = "/".join(f"{100 * a:.1f}" for a in r["asr"] if a is not None) or "-"
        truth = r["family"] + ("" if r["family"] == "clean" else f" -> {','.join(map(str, r['targets']))}")
        if r["family"] == "warp" and r["warp_strength"] is not None:
            truth += f" (s {r['warp_strength']:g})"
        rob = ""
        if probe == "mask":
            rb = r.get("robust")
            rob = (f" {'yes' if rb['robust'] else 'no'} ({100 * rb['pgd_acc']:.0f}% / {100 * rb['clean_acc']:.0f}%) |"
                   if rb else " - |")
        lines.append(f"| {r['model']} | {truth}{'' if r['learned'] else ' (not learned)'} | {asr} | "
                     f"{100 * (r['clean_acc'] or 0):.1f} | {', '.join(own) or '-'} | "
                     f"{min(others):.2f} | {r['top']} ({r['top_gap']:.2f}) | "
                     f"{','.join(map(str, r['flagged'])) or '-'} | {r['judged']} |{rob} {r['seconds']:.0f} |")
    aimed = [r for r in rows if r["family"] in AIMED[probe] and r["learned"]]
    clean = [r for r in rows if r["family"] == "clean"]
    other = [r for r in rows if r["family"] not in AIMED[probe] + ("clean",)]
    right = sum(r["judged"].startswith("right") for r in aimed)
    lines += ["", f"- learned {'warp' if probe == 'warp' else 'non-all-to-all'} backdoors named right: {right} of "
                  f"{len(aimed)}",
              f"- clean models flagged: {sum(r['judged'].startswith('false positive') for r in clean)} of "
              f"{len(clean)}",
              f"- inconclusive: {sum(bool(r.get('inconclusive')) for r in rows)} of {len(rows)}"]
    if probe == "warp":
        lines.append(f"- other families with a false class: "
                     f"{sum(r['judged'].startswith('false class') for r in other)} of {len(other)}")
    else:
        fams = sorted({r["family"] for r in aimed})
        lines.append("- named right, per family: " + ", ".join(
            f"{f} {sum(r['judged'].startswith('right') for r in aimed if r['family'] == f)} of "
            f"{sum(r['family'] == f for r in aimed)}" for f in fams))
        lines += [f"- wrong class or a false class beside the right one: "
                  f"{sum('wrong class' in r['judged'] or 'also' in r['judged'] for r in aimed)} of {len(aimed)}",
                  f"- all-to-all models with a flag: {sum(bool(r['flagged']) for r in other)} of {len(other)}"]
        weak = [r for r in rows if r.get("robust") and not r["robust"]["robust"]]
        weak_aimed = [r for r in weak if r in aimed]
        lines.append(f"- on the {len(weak)} models measured not robust: "
                     f"{sum(r['judged'].startswith('right') for r in weak_aimed)} of {len(weak_aimed)} learned "
                     f"backdoors right, {sum(r['judged'].startswith('false positive') for r in weak if r in clean)} of "
                     f"{sum(r in clean for r in weak)} clean models flagged")
    lines += [f"- seconds per model: {min(r['seconds'] for r in rows):.0f}-{max(r['seconds'] for r in rows):.0f}", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", help="trained models, each with its report MODEL.keras.json beside it")
    p.add_argument("--data-dir", default=None, help="where the reports' data files are looked up when moved")
    p.add_argument("--train-images", type=int, default=0, help="the first N training images (0: all)")
    p.add_argument("--probe", choices=sorted(PROBES), default="warp", help="which probe (default warp)")
    p.add_argument("--out", required=True, help="JSON path; the Markdown table goes beside it")
    p.add_argument("--render", action="store_true",
                   help="only write the Markdown table again from the rows already in --out (no model is run)")
    p.add_argument("--rescore", action="store_true",
                   help="with --render: score each row's stored norms again with today's rule (the probe's "
                        "fit_norms; a row the probe found inconclusive for a reason the norms do not hold stays as it "
                        "was), and write the rows back to --out")
    args = p.parse_args(argv)
    config = DetectConfig()
    try:
        if args.render:
            done = stored_rows(args.out)
            if args.rescore:
                done["rows"] = [rescore(r, DetectConfig(**done["config"])) for r in done["rows"]]
                done["rescored"] = "python bench/warp_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
                write_json(args.out, done)
            with atomic_path(os.path.splitext(args.out)[0] + ".md") as tmp, open(tmp, "w") as f:
                command = done["command"] + (f"` (run); rescored by `{done['rescored']}" if "rescored" in done
                                             else "")
                f.write(markdown(done["rows"], command, DetectConfig(**done["config"]),
                                 done["rows"][0].get("probe", "warp")))
            print(f"wrote {os.path.splitext(args.out)[0]}.md")
            return
        if not args.models:
            raise AegisError("no model given (or --render to redo the table of --out)")
        missing = [m for m in args.models if not os.path.isfile(m + ".json")]
        if missing:
            raise AegisError(f"no training report beside {missing[0]} (expected {missing[0]}.json)")
        rows = []
        for m in args.models:
            rows.append(row(m, args.data_dir, args.train_images, config, args.probe))
            r = rows[-1]
            print(f"{r['model']}: {r['family']} -> {r['targets']}: flagged {r['flagged']} ({r['judged']}), "
                  f"top {r['top']} gap {r['top_gap']:.2f}, {r['seconds']:.0f}s", flush=True)
        command = "python bench/warp_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_json(args.out, {"command": command, "config": config.to_dict(), "rows": rows})
        with atomic_path(os.path.splitext(args.out)[0] + ".md") as tmp, open(tmp, "w") as f:
            f.write(markdown(rows, command, config, args.probe))
    except AegisError as e:
        raise SystemExit(f"error: {e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
