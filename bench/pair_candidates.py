"""A finished zoo scan with the pair mask probe run again on the candidates of this checkout's rule.

    python bench/pair_candidates.py SCAN --seed S --out OUT [--verify]
    python bench/zoo_runs.py OUT_0 OUT_1 ... --recombine --out results/detect/NAME.json

``SCAN`` is the folder of a finished ``scan-zoo`` run with detection seed ``S`` (``--seed`` of
that run), made with the pair mask probe on candidates (the default, ``pair_mask="candidates"``) or
without it (a scan from before the probe, read as if it had run it on candidates).
For every model it scanned, the candidates are read again from the stored per-pair view (each
pair's share of transferring translations, the flagged pairs and the fragile sources) with
:func:`aegis_tf.detect.pair_probe.candidate_pairs` as this checkout defines it. Where they differ
from the pairs the scan examined, the pair mask probe is fitted on them as the scan would fit
it (the same training images, settings and random state; ``PairMaskDetector.from_config``), and
``OUT`` gets a copy of the scan in which only the pair mask probe's report and evidence are
replaced. The pair mask probe runs last and draws its own random numbers, so no other signal
changes, and ``zoo_runs.py --recombine`` on ``OUT`` reads the scan as if it had run with the rule.

The stored per-pair view keeps each pair's *share* of transferring translations, not their
count, so a rule that needs more than one transferring translation cannot be read back; the
bench refuses it. ``--verify`` also fits the models whose candidates did not change and stops
with an error unless every examined pair's norm comes back within ``--tolerance`` (default 1%)
of the stored one: the check that this is the scan's fit. ``OUT/pair_candidates.json`` lists
per model the pairs examined before and after, the seconds and the pairs flagged.
"""

import argparse
import os
import sys
import time
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from aegis_tf.core.errors import AegisError
from aegis_tf.core.settings import pixel_max_of
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.pair_probe import CANDIDATE_COUNT, PairMaskDetector, candidate_pairs
from replay import run_replay, scan_inputs


def stored_view(detect):
    """The stored per-pair view of a ``detect.json`` as :func:`candidate_pairs` reads a fitted one
    (a pair's count of transferring translations is 1 where its share is above 0, which is exact
    for a rule of one translation)."""
    pt = detect["aegis"].get("pair_transfer")
    if pt is None:
        raise AegisError("the scan did not run the per-pair view (pairs off): no candidates to read")
    shares = {(int(s), int(t)): float(v) for t, e in pt["classes"].items() for s, v in e["sources"].items()}
    return SimpleNamespace(pairs_=shares, transferring_pairs_={p: int(v > 0) for p, v in shares.items()},
                           flagged_pairs_=[tuple(p) for p in pt["evidence"]["pairs"]],
                           fragile_sources_=list(pt["evidence"].get("fragile_sources", [])))


def refit(detect, seed, examine):
    """The pair mask probe of one model's ``detect.json`` fitted on the candidates ``examine``.
    Returns ``(detector, seconds)``."""
    config = DetectConfig(**detect["aegis"]["config"])
    model, x, y = scan_inputs(detect)
    classes = sorted(int(c) for c in detect["aegis"]["classes"])
    t = time.perf_counter()
    pm = PairMaskDetector.from_config(config, pixel_max=pixel_max_of(detect.get("scale", "raw")),
                                      random_state=seed).fit(model, x, y, classes, examine=examine)
    return pm, time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scan", help="folder of a finished scan-zoo run")
    p.add_argument("--seed", type=int, required=True, help="the detection seed that scan ran with")
    p.add_argument("--verify", action="store_true",
                   help="fit the models whose candidates did not change too, and check the stored norms come back")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="largest relative difference allowed with --verify (default 0.01)")
    p.add_argument("--out", required=True, help="folder for the rescored copy (must not exist)")
    args = p.parse_args(argv)

    def one(name, detect):
        aegis = detect["aegis"]
        if aegis["config"].get("pair_mask") not in ("candidates", False, None):
            raise AegisError(f"the scan ran the pair mask probe as {aegis['config'].get('pair_mask')!r}, "
                             "not on candidates: nothing to replay")
        aegis["config"]["pair_mask"] = "candidates"  # a scan from before the probe: as if it had run
        stored = aegis.get("pair_mask")
        before = [] if stored is None else [tuple(q) for q in stored.get("examined_pairs", [])]
        classes = sorted(int(c) for c in aegis["classes"])
        after = candidate_pairs(stored_view(detect), classes=classes) if len(classes) >= 3 else []  # as a scan
        entry = {"before": [list(q) for q in before], "after": [list(q) for q in after]}
        if after == before and not (args.verify and after):
            print(f"{name}: candidates unchanged {after}", flush=True)
            return detect, {**entry, "refit": False}
        if not after:  # only a stricter rule can take candidates away: the probe would not run
            aegis.pop("pair_mask", None)
            detect["verdict"]["evidence"].pop("pair_mask", None)
            return detect, {**entry, "refit": False}
        if after == before and (stored.get("skipped") or not stored.get("pairs")):
            raise AegisError(f"the scan's pair mask probe was not run ({stored.get('skipped', 'no pairs')}): "
                             "nothing to verify")
        pm, seconds = refit(detect, args.seed, after)
        if pm.skipped_ and after == before:
            raise AegisError(f"the refit was not run ({pm.skipped_}): nothing to verify")
        report = pm.report()
        report["evidence"] = pm.evidence(pm.describe())
        entry.update(refit=True, seconds=seconds, flagged=[list(q) for q in pm.flagged_pairs_],
                     gaps={f"{s}->{t}": g for (s, t), g in pm.pair_gaps_.items()})
        if after == before:
            old = {k: v["norm"] for k, v in stored["pairs"].items() if "gap" in v}
            diff = max(abs(pm.pair_norms_[tuple(int(v) for v in k.split("->"))] - n) / max(n, 1e-9)
                       for k, n in old.items())
            if diff > args.tolerance:
                raise AegisError(f"an examined pair's norm differs from the stored one by {100 * diff:.2f}% (over "
                                 f"{100 * args.tolerance:g}%): this is not the scan's fit; was --seed the scan's?")
            entry["stored_norms_within"] = float(diff)
            print(f"{name}: verified {after} within {100 * diff:.3f}%, {seconds:.1f} s", flush=True)
            return detect, entry
        aegis["pair_mask"] = report
        detect["verdict"]["evidence"]["pair_mask"] = report["evidence"]
        detect["rescored"] = {**detect.get("rescored", {}),
                              "pair_mask": {"candidates": entry["after"], "by": "bench/pair_candidates.py"}}
        print(f"{name}: {before} -> {after}, {seconds:.1f} s, "
              + (f"not run: {pm.skipped_}" if pm.skipped_ else f"flagged {entry['flagged']}"), flush=True)
        return detect, entry

    def check():
        if CANDIDATE_COUNT > 1:
            raise AegisError(f"the candidate rule needs {CANDIDATE_COUNT} transferring translations, and a stored "
                             "scan keeps shares, not counts: it cannot be replayed")

    return run_replay("pair_candidates.py", argv, args.scan, args.out, one, {
        "file": "pair_candidates.json", "scan": args.scan, "seed": args.seed, "verify": args.verify}, check)

if __name__ == "__main__":
    sys.exit(main())
