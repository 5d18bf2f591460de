"""Detection cost against the number of classes: time and peak memory of the full and the staged scan.

    python ../shared/datasets/prepare.py out/data cifar10         # seed images (CIFAR-10, resized)
    python bench/bench_scale.py --weights ../shared/csaw/lab3_bd_weights.h5 --images out/data/cifar10.npz \
        --runs full:10 staged:1283 staged:100 --out results/bench/bench_scale.json

The model is the CSAW DeepID net (input 55x47x3, 1,283 classes) with the real
BadNet weights (``--weights``; Keras 2 weights-only ``.h5``), or, without
``--weights``, the same architecture with random weights. A run ``MODE:N``
scans classes 0..N-1 of it with the CLI's default settings
(``aegis_tf.detect.scan.run_aegis``, ``scan=MODE``), so the cost per class is
the real model's. The seed images are ``--n-images`` CIFAR-10 training
images resized to 55x47: **not face images**, so the scan's verdicts here mean
nothing; this bench measures time and memory only. Their labels are the
model's own predictions (AEGIS draws seeds and probes from other classes).

With ``--model M.keras --data D`` it scans a Keras model of your own on its
training images instead (the first ``--n-images``, with their labels), for
example the 20-class robust MNIST + Fashion-MNIST model of
``scripts/merge_datasets.py``; there the verdicts are real and the table shows
them.

Each run is a fresh process (``--one``), so its peak memory (``ru_maxrss``, the
process's peak resident set: TensorFlow, the model, the images and the scan)
is its own; time is the scan alone (``run_aegis``, figures included), not the
start-up. Runs already in ``--out`` are kept and skipped (``--redo`` runs them
again). Writes ``--out`` (JSON) and the same name with ``.md`` (a table with
the estimated full scans: the measured full scan's time per class x N).
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # results/ lives here
SHAPE = (55, 47, 3)


def seed_images(path, n):
    """``n`` CIFAR-10 training images resized to 55x47 (H x W), float32 in 0..255."""
    import cv2
    import numpy as np

    from aegis_tf.core.data import load_split

    x, _ = load_split(path, split="train", scale="raw")
    x = np.asarray(x[:n])
    return np.stack([cv2.resize(np.asarray(img, "uint8"), (SHAPE[1], SHAPE[0]), interpolation=cv2.INTER_LINEAR)
                     for img in x]).astype("float32")


def settings(pairs):
    """``{field: value}`` from ``KEY=VALUE`` overrides of DetectConfig (numbers, true and false parsed)."""
    out = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        booleans = {"true": True, "false": False}
        out[key] = (json.loads(value) if value[:1].isdigit() or value[:1] == "-"
                    else booleans.get(value.lower(), value))
    return out


def one_run(mode, n_classes, args):
    """Scan classes 0..n_classes-1 in this process; returns the row (JSON-ready)."""
    import keras

    from aegis_tf.core.models import build_deepid, load_weights_into, predict_labels
    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.scan import aegis_evidence, run_aegis
    from aegis_tf.detect.verdict import combine

    keras.utils.set_random_seed(0)
    if args.model:
        from aegis_tf.core.data import check_fits_model, load_split
        from aegis_tf.core.models import load_model

        model = load_model(args.model)
        x, y = load_split(args.data, split="train", scale="raw")
        x, y = x[:args.n_images], y[:args.n_images]
        x = check_fits_model(x, y, model, f"--data {args.data}").astype("float32")
    else:
        model = build_deepid()
        if args.weights:
            load_weights_into(model, args.weights)
        x = seed_images(args.images, args.n_images)
        y = predict_labels(model, x, batch_size=args.batch_size)
    config = DetectConfig(scan=mode, **settings(args.set))
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        report = run_aegis(model, x, y, classes=list(range(n_classes)), config=config, pixel_max=255.0,
                           out_dir=out_dir, seed=0, batch_size=args.batch_size, quiet=True)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    stages = report.get("stages", {})
    verdict = combine(aegis_evidence(report))  # the library's one verdict: every deciding signal of the scan
    return {"mode": mode, "classes": n_classes, "seconds": seconds, "peak_rss_gib": peak,
            "stage_seconds": report["seconds"], "promoted": stages.get("promoted"),
            "verdict": verdict["target_classes"], "line": verdict["line"],
            "suspect_classes": report["suspect_classes"],
            "whole_image_suspects": report.get("whole_image", {}).get("suspect_classes")}


def verdict_classes(row):
    """The classes a run's verdict names: the scan's one verdict
    (``combine(aegis_evidence(report))``, stored as ``verdict``). Rows recorded before
    this bench stored it hold only the patch-transfer and whole-image suspects, the
    two deciding signals of those scans (no blend probe ran): their union."""
    if "verdict" in row:
        return list(row["verdict"])
    return sorted(set(row["suspect_classes"]) | set(row.get("whole_image_suspects") or []))


def markdown(result):
    rows = {(r["mode"], r["classes"]): r for r in result["runs"]}
    base = rows.get(("full", 10))
    per_class = base["seconds"] / 10 if base else None
    meta = result["meta"]
    if meta.get("model"):
        head = (f"Detection cost against the number of classes: {meta['model']} on the first {meta['n_images']} "
                f"training images of {meta['data']}, {meta['machine']}. Classes 0..N-1 scanned; verdict: the "
                "classes flagged. Ratio: a run's time over the full 10-class scan's.")
    else:
        head = (f"Detection cost against the number of classes: DeepID ({meta['weights']}), {meta['machine']}, "
                f"{meta['n_images']} CIFAR-10 images resized to 55x47 (not face images: time and memory only). "
                "Ratio: a run's time over the full 10-class scan's.")
    lines = [head, "",
             "| classes | scan | time (s) | ratio to full 10-class | peak memory (GiB) | promoted to stage 2 | verdict | stage times (s) |",
             "|---|---|---|---|---|---|---|---|"]
    counts = {r["classes"] for r in result["runs"]}
    for n in sorted(counts | ({10, 20, 100, 1283} if not meta.get("model") else set())):  # estimates: DeepID only
        for mode in ("full", "staged"):
            r = rows.get((mode, n))
            if r is None and mode == "full" and per_class:
                est = per_class * n
                lines.append(f"| {n} | full | ~{est:.0f} (estimate: {per_class:.1f} s/class x {n}; not run) | "
                             f"~{est / base['seconds']:.0f} | | all | | |")
                continue
            if r is None:
                continue
            ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else ""
            stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stage_seconds"].items())
            promoted = "all" if r["promoted"] is None else f"{len(r['promoted'])}"
            verdict = ", ".join(map(str, verdict_classes(r))) or "clean"
            lines.append(f"| {n} | {mode} | {r['seconds']:.0f} | {ratio} | {r['peak_rss_gib']:.2f} | {promoted} | "
                         f"{verdict} | {stages} |")
    lines += ["", f"Command: `{result['meta']['command']}`"]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="CSAW DeepID weights (.h5); default: random weights")
    p.add_argument("--images", default=None, help="CIFAR-10 .npz (x_train) for the DeepID seed images")
    p.add_argument("--model", default=None, help="a Keras model of your own to scan instead of DeepID")
    p.add_argument("--data", default=None, help="with --model: its training data (.npz or .h5)")
    p.add_argument("--n-images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--runs", nargs="+", default=["full:10", "staged:1283"], help="MODE:N (MODE full or staged)")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench", "bench_scale.json"))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="DetectConfig overrides (default: none, the CLI's defaults), e.g. n_seeds=20")
    p.add_argument("--redo", action="store_true", help="run again the runs already in --out")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # MODE:N in this process; prints the row
    args = p.parse_args()
    if bool(args.model) != bool(args.data) or not (args.model or args.images):
        p.error("give --images (DeepID), or --model and --data")
    if args.one:
        mode, n = args.one.split(":")
        print("ROW " + json.dumps(one_run(mode, int(n), args)))
        return
    from aegis_tf.core.utils import atomic_path, write_json

    result = {"runs": []}
    if os.path.exists(args.out):
        with open(args.out) as f:
            result = json.load(f)
    result["meta"] = {"weights": os.path.basename(args.weights) if args.weights else "random weights",
                      "model": args.model, "data": args.data,
                      "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU", "n_images": args.n_images,
                      "batch_size": args.batch_size, "settings": settings(args.set),
                      "command": "python bench/bench_scale.py " + " ".join(a for a in sys.argv[1:] if a != "--redo")}
    limit = 1283 if not args.model else None
    for run in args.runs:
        mode, n = run.split(":")
        if mode not in ("full", "staged"):
            raise SystemExit(f"--runs: MODE must be full or staged. Received: {run}")
        if limit is None:
            from aegis_tf.core.models import load_model

            limit = int(load_model(args.model).output_shape[-1])
        if not 1 <= int(n) <= limit:
            raise SystemExit(f"--runs: N must lie in 1..{limit} (the model's classes). Received: {run}")
        done = [r for r in result["runs"] if (r["mode"], r["classes"]) == (mode, int(n))]
        if done and not args.redo:
            print(f"{run}: kept from {args.out}")
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--one", run,
               "--n-images", str(args.n_images), "--batch-size", str(args.batch_size)]
        cmd += ["--model", args.model, "--data", args.data] if args.model else ["--images", args.images]
        cmd += ["--weights", args.weights] if args.weights else []
        cmd += ["--set", *args.set] if args.set else []
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        rows = [line[4:] for line in out.stdout.splitlines() if line.startswith("ROW ")]
        if out.returncode != 0 or not rows:
            raise SystemExit(f"{run} failed:\n{out.stderr[-2000:]}")
        row = json.loads(rows[0])
        result["runs"] = [r for r in result["runs"] if (r["mode"], r["classes"]) != (mode, int(n))] + [row]
        print(f"{run}: {row['seconds']:.1f} s, peak {row['peak_rss_gib']:.2f} GiB, "
              f"promoted {row['promoted']}", flush=True)
        write_json(args.out, result)
    with atomic_path(os.path.splitext(args.out)[0] + ".md") as md, open(md, "w") as f:
        f.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
