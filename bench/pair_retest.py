"""A finished zoo scan with the per-pair view's second look (``PairTransferDetector.retest``) replayed.

    python bench/pair_retest.py SCAN --seed S --out OUT [--retest K] [--below B]
    python bench/zoo_runs.py OUT_0 OUT_1 ... --recombine --out results/detect/NAME.json

``SCAN`` is the folder of a finished full ``scan-zoo`` run with detection seed ``S``. A scan
draws the seeds of its translations from ``S`` alone (:func:`aegis_tf.detect.translation.translate_all`),
so the bench draws them again without translating, counts each (source, target) pair's
translations, and reads each pair's count of transferring ones from its stored share (an
error unless every share is a whole count over that many: the check that ``S`` is the scan's
seed). The per-pair view is scored again from those counts (an error unless it flags what the
scan flagged), then the second look runs as a live scan runs it
(:meth:`~aegis_tf.detect.patch_transfer.PairTransferDetector.second_look`: fresh translations of
the weak flags' sources, drawn from their own stream, measured on the scan's probes), with
``--retest`` and ``--below`` (default: this checkout's ``DetectConfig``). Where that changes the
pair mask probe's candidates, the probe is fitted again on the new ones, as
``pair_candidates.py`` does. ``OUT`` gets a copy of the scan with the per-pair view (and the pair
mask probe where refitted) replaced; ``zoo_runs.py --recombine`` reads it as a scan.
``OUT/pair_retest.json`` lists per model each re-tested pair's share before and after.
"""

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from aegis_tf.core.errors import AegisError
from aegis_tf.core.settings import pixel_max_of
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.patch_transfer import PairTransferDetector
from aegis_tf.detect.pair_probe import candidate_pairs
from aegis_tf.detect.translation import draw_seeds
from pair_candidates import refit
from replay import run_replay, scan_inputs

_VIEW = ("flip_at", "min_score", "min_count", "relative", "min_sources", "source_share", "max_targets", "top_frac",
         "n_probes", "confirm_probes", "random_state", "batch_size")


def stored_rates(pt, y, seeds):
    """Per pair, rates that give the stored share: its count of transferring translations as 1.0,
    the rest 0.0. Raises :class:`AegisError` when a share is no whole count over the pair's translations."""
    rates = {}
    for t, entry in pt["classes"].items():
        src = y[seeds[int(t)]]
        for s, share in entry["sources"].items():
            n = int(np.sum(src == int(s)))
            k = int(round(float(share) * n))
            if n == 0 or abs(k / n - float(share)) > 1e-9:
                raise AegisError(f"pair {s}->{t}: share {share} is no count over {n} translations; "
                                 "was --seed the scan's, and the scan a full one?")
            rates[(int(s), int(t))] = np.r_[np.ones(k), np.zeros(n - k)]
    return rates


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scan", help="folder of a finished full scan-zoo run")
    p.add_argument("--seed", type=int, required=True, help="the detection seed that scan ran with")
    p.add_argument("--retest", type=int, default=None, help="translations added per weak flag, times its count")
    p.add_argument("--below", type=float, default=None, help="shares under this are weak flags")
    p.add_argument("--sets", type=int, default=None,
                   help="probe sets the second look's translations are shared over (default: the detector's)")
    p.add_argument("--probes", type=int, default=None,
                   help="fresh probes of the second look's confirmation (default: the detector's)")
    p.add_argument("--out", required=True, help="folder for the rescored copy (must not exist)")
    args = p.parse_args(argv)
    default = DetectConfig()
    retest = default.pair_retest if args.retest is None else args.retest
    below = default.pair_retest_below if args.below is None else args.below

    def one(name, detect):
        aegis = detect["aegis"]
        pt = aegis.get("pair_transfer")
        if pt is None:
            raise AegisError("the scan did not run the per-pair view (pairs off): nothing to replay")
        if "stages" in aegis:
            raise AegisError("a staged scan: its translations cannot be drawn again here (full scans only)")
        config = DetectConfig(**aegis["config"])
        classes = sorted(int(c) for c in aegis["classes"])
        model, x, y = scan_inputs(detect)
        seeds = draw_seeds(np.random.default_rng(args.seed), y, classes, config.n_seeds)  # as the scan drew them
        params = {k: pt["params"][k] for k in _VIEW}
        if params["random_state"] != args.seed:
            raise AegisError(f"the per-pair view ran with random state {params['random_state']}, not --seed "
                             f"{args.seed}")
        det = PairTransferDetector(**params, retest=retest, retest_below=below, retest_probes=args.probes,
                                   **({} if args.sets is None else {"retest_sets": args.sets}),
                                   translation=config,
                                   pixel_max=pixel_max_of(detect.get("scale", "raw")))
        det.fit_rates(stored_rates(pt, y, seeds), classes=classes)
        stored = [tuple(q) for q in pt["evidence"]["pairs"]]
        if det.flagged_pairs_ != stored:
            raise AegisError(f"scored again, the per-pair view flags {det.flagged_pairs_}, the scan {stored}")
        t0 = time.perf_counter()
        det.second_look(model, x, y, seeds)
        seconds = time.perf_counter() - t0
        entry = {"retested": {f"{s}->{t}": v for (s, t), v in det.retested_.items()}, "seconds": seconds,
                 "flagged_before": [list(q) for q in stored], "flagged": [list(q) for q in det.flagged_pairs_]}
        if not det.retested_:
            print(f"{name}: no weak flag", flush=True)
            return None, entry
        report = det.report()
        report["evidence"] = det.evidence(pt["evidence"]["description"])
        for key in ("n_sources", "fragile_sources", "max_targets"):
            report["evidence"][key] = pt["evidence"].get(key, report["evidence"].get(key))
        aegis["pair_transfer"] = report
        detect["verdict"]["evidence"]["pair_transfer"] = report["evidence"]
        pm = aegis.get("pair_mask")
        before = [] if pm is None else [tuple(q) for q in pm.get("examined_pairs", [])]
        after = candidate_pairs(det, classes=classes) if len(classes) >= 3 else []
        entry.update(candidates_before=[list(q) for q in before], candidates=[list(q) for q in after])
        refit_mask = after != before and config.pair_mask == "candidates"
        if refit_mask:
            if after:
                pmd, s2 = refit(detect, args.seed, after)
                rep = pmd.report()
                rep["evidence"] = pmd.evidence(pmd.describe())
                aegis["pair_mask"] = rep
                detect["verdict"]["evidence"]["pair_mask"] = rep["evidence"]
                entry.update(pair_mask_seconds=s2, pair_mask_flagged=[list(q) for q in pmd.flagged_pairs_],
                             pair_mask_gaps={f"{s}->{t}": g for (s, t), g in pmd.pair_gaps_.items()})
            else:
                aegis.pop("pair_mask", None)
                detect["verdict"]["evidence"].pop("pair_mask", None)
        detect["rescored"] = {**detect.get("rescored", {}),
                              "pair_transfer": {"retest": retest, "below": below, "sets": det.retest_sets,
                                                "probes": args.probes, "by": "bench/pair_retest.py"}}
        print(f"{name}: " + ", ".join(f"{k} {v['share_before']:.2f}->{v['share']:.2f}"
                                      + ("" if v["flagged"] else " (dropped)") for k, v in entry["retested"].items())
              + (f"; pair mask on {entry['candidates']}: {entry.get('pair_mask_flagged')}"
                 if refit_mask else ""), flush=True)
        return detect, entry

    def check():
        if retest < 0 or not 0 < below <= 1:
            raise AegisError(f"--retest must be >= 0 and --below in (0, 1]. Received: {retest}, {below}")

    return run_replay("pair_retest.py", argv, args.scan, args.out, one, {
        "file": "pair_retest.json", "scan": args.scan, "seed": args.seed, "retest": retest, "below": below,
        "sets": args.sets, "probes": args.probes}, check)


if __name__ == "__main__":
    sys.exit(main())
