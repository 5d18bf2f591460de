"""Channel Lipschitzness-based Pruning (``repair --strategy clp``) over a few values of u.

    python bench/clp_sweep.py --u 1,1.5,2,2.5,3,4 --out results/repair/clp_embedded.json

For each model (default: the embedded digits BadNet) and each u it runs the
repair as a user would (``aegis_tf.repair(strategy="clp", clp_u=u)``, no data
at all) and records the channels pruned per convolution layer and the clean
accuracy and true ASR of B, B' and GoodNet on the test sets. The embedded
model uses the embedded ``test.h5``/``bd_test.h5``; a model trained by
``aegis train`` (its ``.keras.json`` names an ``.npz``) uses that file's test
split, written as ``.h5`` under ``--work``, with the trigger of its
``MODEL.json`` (all-to-one backdoors only).

A diagnostic, for analysis only (the repair never sees it): per convolution
layer, how much the attacker's trigger raises each channel's mean activation
on the test images, and where the most raised channel stands among the
layer's channel Lipschitz bounds (its z-score and rank). CLP assumes the
backdoor lives in a few channels with outlying bounds; this says whether it
does here. Writes ``--out`` (.json) and a Markdown table beside it.
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import aegis_tf
from aegis_tf.core.embedded import PATHS
from aegis_tf.core.utils import atomic_path, write_json

EMBEDDED = {os.path.abspath(PATHS[k]) for k in ("bd_net", "robust_bd_net", "robust_clean_net")}


def test_sets(model_path, work):
    """``(clean test .h5 or None, (x, y), (x_bad, y_bad))``: what the repair evaluates on, and the arrays."""
    from aegis_tf.core.data import load_h5, load_split, save_h5

    if os.path.abspath(model_path) in EMBEDDED:
        return None, load_h5(PATHS["test"]), load_h5(PATHS["bd_test"])
    from aegis_tf.attack.evaluation import backdoor_set
    from aegis_tf.attack.sidecar import read_trigger_config
    from aegis_tf.attack.triggers import build_trigger

    with open(model_path + ".json") as f:
        data = json.load(f)["data"]
    x, y = load_split(data, split="test")
    path = os.path.join(work, "test.h5")
    save_h5(path, x, y)
    config, _ = read_trigger_config(model_path)
    fn, _ = build_trigger(config, pixel_max=255.0, x_sample=x)
    return path, (x, y), backdoor_set(x, y, fn, config.target_label)


def spearman(a, b):
    """Spearman's rank correlation (no ties expected among float activations and bounds)."""
    ra, rb = (np.argsort(np.argsort(v)).astype("float64") for v in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def trigger_diagnostic(model_path, clp_layers, clean, bad):
    """Per conv layer: the channel the trigger raises most, its UCLC z-score and rank, and the rank correlation."""
    import keras

    from aegis_tf.core.models import load_model

    model = load_model(model_path)
    (x, y), (xb, yb) = clean, bad
    x_src = x[y != yb[0]]  # the clean images the trigger was put on (all-to-one: every non-target image)
    rows = []
    for layer in clp_layers:
        probe = keras.Model(model.inputs, model.get_layer(layer["layer"]).output)
        mean = lambda a: probe.predict(a, batch_size=256, verbose=0).reshape(-1, layer["n_channels"]).mean(0)  # noqa
        gap = mean(xb) - mean(x_src)
        uclc = np.asarray(layer["uclc"])
        z = (uclc - layer["uclc_mean"]) / (layer["uclc_std"] or np.inf)
        top = int(np.argmax(gap))
        rows.append({"layer": layer["layer"], "most_raised": top, "gap": float(gap[top]), "z": float(z[top]),
                     "rank": int(1 + np.sum(uclc > uclc[top])), "n_channels": layer["n_channels"],
                     "spearman": spearman(gap, uclc), "max_z": layer["max_z"]})
    return rows


def _num(v):
    return "n/a" if v is None else f"{100 * v:.2f}"


def pct(r):
    """``clean / ASR`` in percent (the ASR n/a for a model whose sidecar says it was not poisoned)."""
    return f"{_num(r['clean_acc'])} / {_num(r['asr'])}"


def run_model(model_path, us, work):
    name = os.path.splitext(os.path.basename(model_path))[0]
    folder = os.path.join(work, name)
    os.makedirs(folder, exist_ok=True)
    clean_test, clean, bad = test_sets(model_path, folder)
    runs = []
    for u in us:
        t0 = time.perf_counter()
        report = aegis_tf.repair(bad_model=model_path, clean_test=clean_test, strategy="clp", clp_u=u,
                                 out_dir=os.path.join(folder, f"u{u:g}"))
        res = report["test"]["clp"]
        runs.append({"u": u, "seconds": time.perf_counter() - t0, "clp_seconds": report["clp"]["seconds"],
                     "channels_pruned": report["clp"]["channels_pruned"], "n_channels": report["clp"]["n_channels"],
                     "pruned": {r["layer"]: r["pruned"] for r in report["clp"]["layers"]},
                     "B": res["B"], "B_prime": res["B_prime"], "G": res["G"]})
        print(f"{name} u={u:g}: pruned {runs[-1]['channels_pruned']}/{runs[-1]['n_channels']}, "
              f"B' clean / ASR {pct(res['B_prime'])} %", flush=True)
    layers = report["clp"]["layers"]
    shown = os.path.relpath(model_path) if os.path.abspath(model_path).startswith(os.getcwd() + os.sep) else model_path
    return {"model": shown, "sources": report["sources"], "runs": runs,
            "layers": [{k: r[k] for k in ("layer", "batchnorm", "n_channels", "uclc_mean", "uclc_std", "max_z")}
                       for r in layers],
            "diagnostic": trigger_diagnostic(model_path, layers, clean, bad)}


def markdown(result):
    out = ["# CLP (data-free channel Lipschitzness pruning) over u", "",
           f"Command: `{result['command']}`", "",
           "Clean accuracy / true ASR (%) on the test images; the repair used no data. GoodNet: B and the "
           "CLP-pruned B' voting, class N where they disagree.", ""]
    for m in result["models"]:
        out += [f"## {m['model']}", "",
                "| u | channels pruned (per layer) | B | B' (CLP) | GoodNet | to class N (clean / poisoned) |",
                "|---|---|---|---|---|---|"]
        for r in m["runs"]:
            per = ", ".join(f"{k} {len(v)}" for k, v in r["pruned"].items())
            g = r["G"]
            out.append(f"| {r['u']:g} | {r['channels_pruned']} of {r['n_channels']} ({per}) | {pct(r['B'])} | "
                       f"{pct(r['B_prime'])} | {pct(g)} | {100 * g['clean_rejected']:.2f} / "
                       f"{_num(g['bad_rejected'])} |")
        out += ["", "Largest channel z-score per layer ((UCLC - mean) / std; u below it prunes in that layer): "
                + ", ".join(f"{r['layer']} {r['max_z']:.2f} ({r['n_channels']} channels)" for r in m["layers"])
                + ".", "",
                "Diagnostic (the attacker's test set, for analysis only): the channel the trigger raises most "
                "in each layer and where its UCLC stands.", "",
                "| layer | most raised channel | activation gap | its UCLC z-score | its UCLC rank "
                "| Spearman(gap, UCLC) |",
                "|---|---|---|---|---|---|"]
        out += [f"| {d['layer']} | {d['most_raised']} | {d['gap']:.3f} | {d['z']:.2f} | {d['rank']} of "
                f"{d['n_channels']} | {d['spearman']:.2f} |" for d in m["diagnostic"]]
        out.append("")
    out.append(f"Machine: {result['machine']}.")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=[PATHS["bd_net"]], help="model files (default the embedded BadNet)")
    p.add_argument("--u", default="1,1.5,2,2.5,3,4", help="comma-separated values of u (default %(default)s)")
    p.add_argument("--out", default=None, help="write the JSON here and the Markdown beside it")
    p.add_argument("--work", default=os.path.join("out", "clp_sweep"), help="repair folders (default %(default)s)")
    args = p.parse_args(argv)
    us = [float(u) for u in args.u.split(",")]
    result = {"command": "python bench/clp_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Keras backend "
                         f"{os.environ.get('KERAS_BACKEND', 'tensorflow')}",
              "models": [run_model(m, us, args.work) for m in args.models]}
    if args.out:
        write_json(args.out, result)
        with atomic_path(os.path.splitext(args.out)[0] + ".md") as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(markdown(result))
        print(f"wrote {args.out} and {os.path.splitext(args.out)[0]}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
