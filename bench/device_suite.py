"""The accelerator suite's steps (run by bench/device_suite.sh) and its report.

    KERAS_BACKEND=tensorflow python bench/device_suite.py run --size full --out OUT/tensorflow.json
    KERAS_BACKEND=jax python bench/device_suite.py run --size full --out OUT/jax.json
    python bench/device_suite.py report OUT        # OUT/suite.json and OUT/suite.md

``run`` measures, on the current Keras backend and device:

- training throughput (``bench_train.ours``: ``aegis_tf.attack.training.train``),
  standard and L2 PGD, on the compact CNN (28x28x1) and ResNet-18 (32x32x3),
  random pixels, 10 classes; under JAX also the hand-written jitted JAX loop
  (``bench_train.jax_reference``) on the same model, batch and PGD steps;
- AEGIS detection end to end (``run_aegis``, default scan, figures included)
  with the seconds of each stage and the library's one verdict
  (``combine(aegis_evidence(report))``), plus the model's forward+backward rate and
  the translation loop's rate (``bench_detect``);
- Neural Cleanse (``run_neural_cleanse``) on the same model and images;
- the staged scan of the 1,283-class DeepID net (``--weights``, else random
  weights) on random 55x47x3 images (not faces: time only).

``--size tiny`` runs the same steps, small, so that the suite finishes on a CPU
in about a minute on 2 cores (ResNet-18 at width 16, a few hundred images, few
seeds and steps, the mask probe at 2 epochs of one start, the staged scan on 24
of the 1,283 classes with its mask and warp probes at their smallest); ``full`` are the sizes
meant for the accelerator. ``report`` merges every ``*.json`` of the folder
into one JSON and one markdown table; the training ratio is computed there as
images/s of our trainer over images/s of the hand-written JAX loop on the same
device, the JAX loop taken from the JAX run of the same suite.
"""

import argparse
import json
import os
import platform
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each size: training (arch -> images, batch, PGD steps, width), detection, Neural Cleanse, staged scan.
SIZES = {
    "full": {
        "train": {"compact": dict(images=65536, batch_size=256, pgd_steps=20, width=None),
                  "resnet18": dict(images=16384, batch_size=256, pgd_steps=7, width=None)},
        "repeats": 2,
        "detect": dict(seeds=200, steps=75, train_images=20000),
        "nc": dict(epochs=10, steps_per_epoch=20, images=2000),
        "staged": dict(classes=1283, config={}, images=2000),
    },
    "tiny": {
        "train": {"compact": dict(images=256, batch_size=64, pgd_steps=2, width=None),
                  "resnet18": dict(images=64, batch_size=32, pgd_steps=2, width=16)},
        "repeats": 1,
        "detect": dict(seeds=10, steps=10, train_images=1000, probes=dict(mask_epochs=2, mask_restarts=1)),
        "nc": dict(epochs=1, steps_per_epoch=2, images=200),
        # the probes that run on every class (mask, warp) at their smallest: at full size they took 264 of
        # the tiny suite's 314 s on 2 cores
        "staged": dict(classes=24, config=dict(n_seeds=5, steps=5, stage1_seeds=2, stage1_steps=2, top_k=2,
                                               wi_probes=10, mask_epochs=1, mask_restarts=1, mask_fit=64,
                                               warp_steps=2, warp_fit=8),
                       images=200),
    },
}


def device_name():
    """The backend's device, in words (e.g. ``gpu: NVIDIA H100 80GB HBM3`` or ``cpu: x86_64, 2 cores``)."""
    import keras

    cpu = f"cpu: {platform.machine()}, {os.cpu_count()} cores"
    if keras.backend.backend() == "jax":
        import jax

        d = jax.devices()[0]
        return cpu if d.platform == "cpu" else f"{d.platform}: {d.device_kind}"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"gpu: {details.get('device_name', gpus[0].name)}"
    return cpu


def training_rows(size):
    import keras
    import numpy as np

    import bench_train  # bench/, beside this script

    rows = []
    for arch, s in SIZES[size]["train"].items():
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(s["images"],) + bench_train.SHAPES[arch]).astype("float32")
        y = rng.integers(0, 10, size=s["images"])
        for robust in (False, True):
            kw = dict(robust=robust, steps=s["pgd_steps"], batch_size=s["batch_size"], repeats=SIZES[size]["repeats"],
                      width=s["width"])
            row = {"arch": arch, "kind": f"PGD {s['pgd_steps']} steps" if robust else "standard",
                   "images": s["images"], "batch_size": s["batch_size"], "width": s["width"] or "default",
                   "ours_images_per_s": bench_train.ours(arch, x, y, **kw)}
            if keras.backend.backend() == "jax":
                row["reference_images_per_s"] = bench_train.jax_reference(arch, x, y, **kw)
            rows.append(row)
            print(f"  train {arch} {row['kind']}: {row['ours_images_per_s']:.0f} images/s", flush=True)
    return rows


def detection_rows(size, model_path, data, data_dir):
    import numpy as np

    import bench_detect  # bench/, beside this script
    from aegis_tf.core.data import check_fits_model, load_split
    from aegis_tf.core.models import load_model
    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.scan import aegis_evidence, run_aegis, run_neural_cleanse
    from aegis_tf.detect.verdict import combine

    s, nc = SIZES[size]["detect"], SIZES[size]["nc"]
    model = load_model(model_path)
    x, y = load_split(data, split="train", data_dir=data_dir, scale="raw")
    x, y = x[:s["train_images"]], y[:s["train_images"]]
    x = check_fits_model(x, y, model, data).astype("float32")
    classes = list(range(int(model.output_shape[-1])))
    config = DetectConfig(n_seeds=s["seeds"], steps=s["steps"], **s.get("probes", {}))
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        report = run_aegis(model, x, y, classes=classes, config=config, pixel_max=255.0, out_dir=out_dir)
    total = time.perf_counter() - t
    verdict = combine(aegis_evidence(report))  # the library's one verdict: every deciding signal of the scan
    fb = bench_detect.forward_backward_rate(model, x, y, batch_size=512, repeats=SIZES[size]["repeats"] + 1)
    steady = bench_detect.pgd_steady_rate(model, x, y, config=config, pixel_max=255.0, batch_size=512,
                                          repeats=SIZES[size]["repeats"] + 1)
    aegis = {"model": os.path.relpath(model_path, ROOT), "data": data, "classes": len(classes),
             "seeds": s["seeds"], "steps": s["steps"], "probes": s.get("probes", {}), "train_images": len(x),
             "seconds": report["seconds"],
             "end_to_end_s": total, "verdict": verdict["target_classes"], "line": verdict["line"],
             "forward_backward_images_per_s": fb, "translate_image_steps_per_s": steady}
    print(f"  aegis: {total:.1f} s end to end, {verdict['line']}", flush=True)
    idx = np.random.default_rng(0).choice(len(x), size=min(nc["images"], len(x)), replace=False)
    t = time.perf_counter()
    nc_report = run_neural_cleanse(model, x[idx], classes=classes, pixel_max=255.0, out_dir=None, plots=False,
                                   epochs=nc["epochs"], steps_per_epoch=nc["steps_per_epoch"])
    neural_cleanse = {"images": len(idx), "epochs": nc["epochs"], "steps_per_epoch": nc["steps_per_epoch"],
                      "seconds": time.perf_counter() - t, "suspect_classes": nc_report["suspect_classes"]}
    print(f"  neural cleanse: {neural_cleanse['seconds']:.1f} s, suspects {nc_report['suspect_classes']}", flush=True)
    return aegis, neural_cleanse


def staged_row(size, weights):
    import keras
    import numpy as np

    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.scan import run_aegis
    from aegis_tf.core.models import build_deepid, load_weights_into, predict_labels

    s = SIZES[size]["staged"]
    keras.utils.set_random_seed(0)
    model = build_deepid()
    if weights:
        load_weights_into(model, weights)
    x = np.random.default_rng(0).integers(0, 256, size=(s["images"], 55, 47, 3)).astype("float32")
    y = predict_labels(model, x)
    config = DetectConfig(scan="staged", **s["config"])
    t = time.perf_counter()
    report = run_aegis(model, x, y, classes=list(range(s["classes"])), config=config, pixel_max=255.0, out_dir=None)
    row = {"model": f"DeepID, {os.path.basename(weights) if weights else 'random weights'}",
           "model_classes": 1283, "classes_scanned": s["classes"], "images": s["images"], "settings": s["config"],
           "seconds": time.perf_counter() - t, "stage_seconds": report["seconds"],
           "promoted": report["stages"]["promoted"]}
    print(f"  staged scan, {s['classes']} classes: {row['seconds']:.1f} s", flush=True)
    return row


def run(args):
    import keras

    from aegis_tf.core.utils import write_json

    t = time.perf_counter()
    result = {"backend": keras.backend.backend(), "device": device_name(), "size": args.size}
    print(f"{result['backend']} on {result['device']}, size {args.size}", flush=True)
    result["training"] = training_rows(args.size)
    result["aegis"], result["neural_cleanse"] = detection_rows(args.size, args.model, args.data, args.data_dir)
    result["staged"] = staged_row(args.size, args.weights)
    result["seconds"] = time.perf_counter() - t
    write_json(args.out, result)


def _fmt(v, spec=".0f"):
    return "" if v is None else format(v, spec)


def report(folder):
    """Merge the backend runs of ``folder`` into ``suite.json`` and ``suite.md``; returns the merged dict."""
    runs = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json") and name != "suite.json":
            with open(os.path.join(folder, name)) as f:
                runs.append(json.load(f))
    if not runs:
        raise SystemExit(f"no backend results (*.json) in {folder}")
    # The hand-written JAX loop's rate per (arch, kind), from the JAX run, is every backend's reference.
    ref = {(r["arch"], r["kind"]): r["reference_images_per_s"] for run in runs if run["backend"] == "jax"
           for r in run["training"] if "reference_images_per_s" in r}
    for run in runs:
        for r in run["training"]:
            base = ref.get((r["arch"], r["kind"]))
            r["ratio_to_jax_reference"] = r["ours_images_per_s"] / base if base else None
    merged = {"devices": sorted({r["device"] for r in runs}), "size": runs[0]["size"], "runs": runs}
    lines = [f"# Device suite ({merged['size']}): {', '.join(merged['devices'])}", "",
             "Training throughput (images/s; ratio: ours over the hand-written jitted JAX loop on the same device, "
             "same model, batch and PGD steps; empty when JAX is not installed):", "",
             "| backend | model | training | images/s | JAX reference images/s | ratio |", "|---|---|---|---|---|---|"]
    for run in runs:
        for r in run["training"]:
            lines.append(f"| {run['backend']} | {r['arch']} (width {r['width']}) | {r['kind']} | "
                         f"{r['ours_images_per_s']:.0f} | {_fmt(ref.get((r['arch'], r['kind'])))} | "
                         f"{_fmt(r['ratio_to_jax_reference'], '.2f')} |")
    lines += ["", "Detection (seconds):", "",
              "| backend | model | AEGIS end to end | AEGIS stages | forward+backward images/s | "
              "translation image-steps/s | Neural Cleanse | staged scan (classes) |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        a, nc, st = run["aegis"], run["neural_cleanse"], run["staged"]
        stages = ", ".join(f"{k} {v:.1f}" for k, v in a["seconds"].items())
        lines.append(f"| {run['backend']} | {a['model']} ({a['classes']} classes, {a['seeds']} seeds x {a['steps']} "
                     f"steps) | {a['end_to_end_s']:.1f} | {stages} | {a['forward_backward_images_per_s']:.0f} | "
                     f"{a['translate_image_steps_per_s']:.0f} | {nc['seconds']:.1f} | "
                     f"{st['seconds']:.1f} ({st['classes_scanned']} of {st['model_classes']}, {st['model']}) |")
    lines += ["", "Whole suite: " + ", ".join(f"{r['backend']} {r['seconds']:.0f} s" for r in runs)]
    from aegis_tf.core.utils import write_json  # light: no Keras import

    write_json(os.path.join(folder, "suite.json"), merged)
    with open(os.path.join(folder, "suite.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return merged


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure every step on the current backend")
    r.add_argument("--size", choices=sorted(SIZES), default="full")
    r.add_argument("--out", required=True)
    r.add_argument("--model", default=os.path.join(ROOT, "models", "robust_bd_net.keras"),
                   help="model for detection and Neural Cleanse (default the embedded robust digits model)")
    r.add_argument("--data", default=os.path.join(ROOT, "data", "train.h5"), help="its training images")
    r.add_argument("--data-dir", default=None)
    r.add_argument("--weights", default=None, help="CSAW DeepID weights for the staged scan (default random)")
    m = sub.add_parser("report", help="merge a suite folder into suite.json and suite.md")
    m.add_argument("folder")
    args = p.parse_args()
    if args.cmd == "run":
        run(args)
    else:
        report(args.folder)


if __name__ == "__main__":
    main()
