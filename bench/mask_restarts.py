"""A finished zoo scan with the mask probe fitted again at another number of starts.

    python bench/mask_restarts.py SCAN --seed S --restarts 2 --out OUT
    python bench/zoo_runs.py OUT_0 OUT_1 ... --recombine --out results/detect/NAME.json

``SCAN`` is the folder of a finished ``scan-zoo`` run with detection seed ``S`` (``--seed``
of that run). For every model it scanned, the mask probe is fitted again as that scan fitted it
(the same training images, settings and random state; :meth:`MaskProbeDetector.from_config`),
with ``--restarts`` starts per class, and ``OUT`` gets a copy of the scan (``summary.json``, each
model's ``result.json`` and ``detect.json``) in which only the mask probe's report and evidence
are replaced. Every other signal drew its own random numbers before the mask probe ran, and the
pair mask probe after it draws its own too, so ``zoo_runs.py --recombine`` on ``OUT`` reads the
scan as if it had run with those starts.

The check that makes this an honest replay: start 0 of the new fit draws from the seed the
scan's single start drew from, so its norm must be the stored one. Each model's largest
relative difference between the two is written to ``OUT/mask_restarts.json`` (``first_start``),
and the run stops with an error when it exceeds ``--tolerance`` (default 1%; the fits agree up to
the float order of a batched model call).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from aegis_tf.core.errors import AegisError
from aegis_tf.core.settings import pixel_max_of
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.mask_probe import MaskProbeDetector
from replay import run_replay, scan_inputs


def refit(detect, seed, restarts):
    """The mask probe of one model's ``detect.json`` fitted again with ``restarts`` starts.
    Returns ``(report, first_start_difference, seconds)``."""
    stored = detect["aegis"]["mask_probe"]
    if stored.get("verdict") == "not run" or not stored.get("classes"):
        raise AegisError(f"the scan's mask probe did not run ({stored.get('skipped', 'no classes')}): "
                         "nothing to fit again")
    config = DetectConfig(**{**detect["aegis"]["config"], "mask_restarts": restarts})
    model, x, y = scan_inputs(detect)
    classes = sorted(int(c) for c in stored["classes"])
    t = time.perf_counter()
    mask = MaskProbeDetector.from_config(config, pixel_max=pixel_max_of(detect.get("scale", "raw")),
                                         random_state=seed).fit(model, x, y, classes)
    seconds = time.perf_counter() - t
    report = mask.report()
    report["evidence"] = mask.evidence(mask.describe())
    diff = max(abs(mask.start_l1_[c][0] - stored["classes"][str(c)]["mask_l1"])
               / max(stored["classes"][str(c)]["mask_l1"], 1e-9) for c in classes)
    return report, float(diff), seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scan", help="folder of a finished scan-zoo run")
    p.add_argument("--seed", type=int, required=True, help="the detection seed that scan ran with")
    p.add_argument("--restarts", type=int, default=2, help="starts per class (default 2)")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="largest relative difference allowed between start 0 and the stored norm (default 0.01)")
    p.add_argument("--out", required=True, help="folder for the rescored copy (must not exist)")
    args = p.parse_args(argv)

    def one(name, detect):
        if "mask_probe" not in detect.get("aegis", {}):
            raise AegisError("the scan did not run the mask probe; nothing to fit again")
        report, diff, seconds = refit(detect, args.seed, args.restarts)
        if diff > args.tolerance:
            raise AegisError(f"start 0 differs from the stored norm by {100 * diff:.2f}% (over "
                             f"{100 * args.tolerance:g}%): this is not the scan's fit; was --seed the scan's?")
        detect["aegis"]["mask_probe"] = report
        detect["verdict"]["evidence"]["mask_probe"] = report["evidence"]
        detect["rescored"] = {"mask_probe": {"restarts": args.restarts, "by": "bench/mask_restarts.py"}}
        print(f"{name}: {seconds:.1f} s, start 0 within {100 * diff:.3f}%, flagged {report['suspect_classes']}",
              flush=True)
        return detect, {"first_start": diff, "seconds": seconds, "flagged": report["suspect_classes"],
                        "gaps": {c: e["mask_gap"] for c, e in report["classes"].items()}}

    def check():
        if args.restarts < 1:
            raise AegisError(f"--restarts must be at least 1. Received: {args.restarts}")

    return run_replay("mask_restarts.py", argv, args.scan, args.out, one, {
        "file": "mask_restarts.json", "scan": args.scan, "seed": args.seed, "restarts": args.restarts}, check)

if __name__ == "__main__":
    sys.exit(main())
