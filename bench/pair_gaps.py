"""The per-pair evidence of finished zoo scans: pairs the per-pair view flagged, with their share,
pairs its second look re-tested, and pairs the pair mask probe examined, with their gap and norm.

    python bench/pair_gaps.py SCAN [SCAN ...] [--min-gap G]

One line per pair, highest first: the scan folder, the model, the signal, the pair, and its
share (per-pair view), its share before and after the second look and whether it stayed flagged
(``pair_retest``), or gap and norm (pair mask probe). Read from each model's ``detect.json``;
the figures of docs/detection.md on natural and true pairs ("One transferring translation is a
candidate") are read this way from the scans and replays its commands make.
"""

import argparse
import json
import os
import sys

from aegis_tf.core.errors import AegisError
from zoo_runs import read_runs


def pair_rows(folder):
    """``(model, signal, "s->t", value, norm)`` for every flagged per-pair-view pair, every pair its second
    look re-tested (``norm`` then says how it went) and every pair the pair mask probe examined (its gap)
    in one scan folder."""
    rows = []
    for row in read_runs([folder])[0]["rows"]:
        path = os.path.join(folder, row["name"], "detect.json")
        if row["status"] != "done" or not os.path.isfile(path):
            continue
        with open(path) as f:
            aegis = json.load(f).get("aegis", {})
        pt = aegis.get("pair_transfer")
        for s, t in (pt or {}).get("evidence", {}).get("pairs", []):
            rows.append((row["name"], "pair_transfer", f"{s}->{t}", pt["classes"][str(t)]["sources"][str(s)], None))
        for r in (pt or {}).get("evidence", {}).get("retested", []):
            (s, t), kept = r["pair"], "kept" if r["flagged"] else "dropped"
            rows.append((row["name"], "pair_retest", f"{s}->{t}", r["share"],
                         f"from {r['share_before']:.2f} on {r['translations']} translations ({kept})"))
        for pair, v in (aegis.get("pair_mask") or {}).get("pairs", {}).items():
            if "gap" in v:  # on candidates only the examined pairs have a gap
                rows.append((row["name"], "pair_mask", pair, v["gap"], v["norm"]))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scans", nargs="+", help="folders of finished scan-zoo runs (or their replays)")
    p.add_argument("--min-gap", type=float, default=0.0, help="print only values at least this (default 0)")
    args = p.parse_args(argv)
    try:
        rows = [(os.path.basename(os.path.normpath(f)), *r) for f in args.scans for r in pair_rows(f)]
    except (AegisError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for scan, name, signal, pair, value, norm in sorted(rows, key=lambda r: -r[4]):
        if value >= args.min_gap:
            print(f"{scan} {name} {signal} {pair} " + (f"share {value:.2f}" if norm is None else
                                                       f"share {value:.2f} {norm}" if isinstance(norm, str) else
                                                       f"gap {value:.2f} norm {norm:.1f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
