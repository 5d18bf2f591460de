"""The pair mask probe alone on trained models: which (source, target) pairs it names.

    python bench/pair_mask.py out/std/*.keras --data-dir out/data --out results/detect/pair_mask.json
    python bench/pair_mask.py --render --out results/detect/pair_mask.json   # the table again from the JSON

Each model is a ``.keras`` file with the report ``cli.py train`` wrote beside it
(``scripts/train_families.sh``). The probe (:class:`aegis_tf.detect.pair_probe.PairMaskDetector`,
the scan's default settings, seed 0) runs on the first ``--train-images`` training images.
Judged against the truth (``bench/family_table.py`` ``truth``; a backdoor under 90% ASR is not
learned):

- clean: right when no pair is flagged;
- source-specific: right when every true (source, target) pair is flagged, "also" when other
  pairs are flagged beside them;
- all-to-all: right when at least half the true pairs (y -> y + 1) are flagged;
- every other family (all sources to one target, which this probe is not built for): "false
  target" when a flagged pair's target is not a true target, else "no false target".

Writes ``--out`` (JSON rows, with every pair's norm) and a Markdown table beside it.
"""

import argparse
import os
import shlex
import sys
import time

import numpy as np
from family_table import model_case
from tables import stored_rows

from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import load_model
from aegis_tf.core.utils import atomic_path, write_json
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.pair_probe import PairMaskDetector


def judge(family, truths, flagged, n_classes):
    """How the flagged pairs ``[(s, t)]`` read against the truth (see the module docstring)."""
    flagged = {tuple(p) for p in flagged}
    if family == "clean":
        return "false positive" if flagged else "clean, right"
    if family == "source-specific":
        true = {(int(s), int(b["target"])) for b in truths for s in b["sources"]}
        if not true <= flagged:
            return "missed"
        return "right" + (f", also {', '.join(f'{s}->{t}' for s, t in sorted(flagged - true))}"
                          if flagged - true else "")
    if family == "all-to-all":
        true = {(s, (s + 1) % n_classes) for s in range(n_classes)}
        found = len(true & flagged)
        return f"{'right' if 2 * found >= len(true) else 'missed'} ({found} of {len(true)} pairs)"
    targets = {int(b["target"]) for b in truths}
    wrong = sorted(p for p in flagged if p[1] not in targets)
    return "false target " + ", ".join(f"{s}->{t}" for s, t in wrong) if wrong else "no false target"


def row(path, data_dir, train_images, config):
    report, (family, truths, learned), (x, y) = model_case(path, data_dir, train_images)
    model = load_model(path)
    classes = sorted(int(c) for c in np.unique(y))
    t = time.perf_counter()
    det = PairMaskDetector.from_config(config.replace(pair_mask=True), pixel_max=255.0, random_state=0).fit(
        model, x, y, classes)  # True: no time budget (the scan's default skips a fit projected over it)
    seconds = time.perf_counter() - t
    top = sorted(det.pair_gaps_.items(), key=lambda kv: -kv[1])[:3]
    true = ([(int(s), int(b["target"])) for b in truths for s in b["sources"]] if family == "source-specific" else
            [(s, (s + 1) % len(classes)) for s in classes] if family == "all-to-all" else [])
    test = report.get("test") or {}
    return {"model": os.path.basename(path), "file": path, "family": family, "truths": truths, "learned": learned,
            "clean_acc": test.get("clean_acc"), "asr": [r.get("asr") for r in test.get("backdoors") or []],
            "ceiling": det.ceiling_, "norms": {f"{s}->{t}": v for (s, t), v in sorted(det.pair_norms_.items())},
            "top": [[s, t, g, det.pair_norms_[(s, t)]] for (s, t), g in top],
            "true_pairs": [[s, t, det.pair_gaps_[(s, t)], det.pair_norms_[(s, t)]] for s, t in true],
            "flagged": [list(p) for p in det.flagged_pairs_], "inconclusive": det.inconclusive_,
            "judged": judge(family, truths, det.flagged_pairs_, len(classes))
            + (" (inconclusive)" if det.inconclusive_ else ""), "seconds": seconds}


def markdown(rows, command, config):
    lines = ["# The pair mask probe on trained models", "", f"`{command}`", "",
             f"Settings: per ordered pair, Neural Cleanse's reverse engineering ({config.pair_mask_epochs} x 20 "
             f"steps, 4 images of the source per step, best of {config.pair_mask_restarts} starts, on 100 training "
             f"images of the source), the trigger tried on {config.wi_probes} fresh images of the source, flagged at "
             f"a gap of {config.wi_threshold:g} against the pair's row and column. Norm: the mask's L1 norm "
             "(pixels), or the whole image where no start's trigger moved 90% of the fresh images. A backdoor under "
             "90% ASR is marked not learned.", "",
             "| model | family | ASR | clean | true pairs (gap, norm) | top pairs (gap, norm) | flagged | judged | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        truth = r["family"] + "".join(
            f" {','.join(map(str, b['sources'])) if b.get('sources') else 'all'} -> {b['target']}"
            for b in r["truths"] if r["family"] != "all-to-all")
        asr = "/".join(f"{100 * a:.1f}" for a in r["asr"] if a is not None) or "-"
        pairs = (lambda ps: ", ".join(f"{s}->{t} ({g:.2f}, {n:.1f})" for s, t, g, n in ps) or "-")
        true = r["true_pairs"]
        if r["family"] == "all-to-all" and true:
            gaps = [g for *_, g, _ in true]
            true_text = f"{len(gaps)} pairs: gaps {min(gaps):.2f}-{max(gaps):.2f}"
        else:
            true_text = pairs(true)
        lines.append(f"| {r['model']} | {truth}{'' if r['learned'] else ' (not learned)'} | {asr} | "
                     f"{100 * (r['clean_acc'] or 0):.1f} | {true_text} | {pairs(r['top'])} | "
                     f"{', '.join(f'{s}->{t}' for s, t in r['flagged']) or '-'} | {r['judged']} | {r['seconds']:.0f} |")
    learned = [r for r in rows if r["learned"]]

    def count(family, word="right"):
        group = [r for r in learned if r["family"] == family]
        return f"{sum(r['judged'].startswith(word) for r in group)} of {len(group)}"

    clean = [r for r in rows if r["family"] == "clean"]
    other = [r for r in learned if r["family"] not in ("clean", "source-specific", "all-to-all")]
    ss_gaps = [g for r in learned if r["family"] == "source-specific" for *_, g, _ in r["true_pairs"]]
    clean_top = [r["top"][0][2] for r in clean if r["top"]]
    lines += ["", f"- learned source-specific backdoors named with their source: {count('source-specific')}",
              f"- learned all-to-all backdoors with at least half the true pairs: {count('all-to-all')}",
              f"- clean models with a flagged pair: {sum(r['judged'].startswith('false') for r in clean)} of "
              f"{len(clean)}",
              f"- models of other families with a pair to a false target: "
              f"{sum(r['judged'].startswith('false target') for r in other)} of {len(other)}",
              f"- inconclusive: {sum(bool(r.get('inconclusive')) for r in rows)} of {len(rows)}"]
    if ss_gaps and clean_top:
        lines.append(f"- margin: smallest true source-specific pair gap {min(ss_gaps):.2f}; largest pair gap on a "
                     f"clean model {max(clean_top):.2f} (threshold {config.wi_threshold:g})")
    lines += [f"- seconds per model: {min(r['seconds'] for r in rows):.0f}-{max(r['seconds'] for r in rows):.0f}", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", help="trained models, each with its report MODEL.keras.json beside it")
    p.add_argument("--data-dir", default=None, help="where the reports' data files are looked up when moved")
    p.add_argument("--train-images", type=int, default=20000, help="the first N training images (0: all)")
    p.add_argument("--out", required=True, help="JSON path; the Markdown table goes beside it")
    p.add_argument("--render", action="store_true",
                   help="only write the Markdown table again from the rows already in --out (no model is run)")
    args = p.parse_args(argv)
    md = os.path.splitext(args.out)[0] + ".md"
    try:
        if args.render:
            done = stored_rows(args.out)
            with atomic_path(md) as tmp, open(tmp, "w") as f:
                f.write(markdown(done["rows"], done["command"], DetectConfig(**done["config"])))
            print(f"wrote {md}")
            return
        if not args.models:
            raise AegisError("no model given (or --render to redo the table of --out)")
        missing = [m for m in args.models if not os.path.isfile(m + ".json")]
        if missing:
            raise AegisError(f"no training report beside {missing[0]} (expected {missing[0]}.json)")
        config = DetectConfig()
        command = "python bench/pair_mask.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                                  else argv))
        rows = []
        for m in args.models:
            rows.append(row(m, args.data_dir, args.train_images, config))
            r = rows[-1]
            print(f"{r['model']}: {r['judged']}, top pair {r['top'][0][0]}->{r['top'][0][1]} gap "
                  f"{r['top'][0][2]:.2f}, {r['seconds']:.0f}s", flush=True)
            write_json(args.out, {"command": command, "config": config.to_dict(), "rows": rows})  # as it goes
        with atomic_path(md) as tmp, open(tmp, "w") as f:
            f.write(markdown(rows, command, config))
    except AegisError as e:
        raise SystemExit(f"error: {e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
