"""AEGIS verdicts on a set of trained models, several detection runs each.

    python bench/detect_table.py out/suite/*.keras --runs 5 --seeds 100

For each model (a ``.keras`` file with the ``.keras.json`` report that
``cli.py train`` writes beside it, which names the data, the trigger, the
poison rate and the target class), runs the detector ``--runs`` times with
detection seeds 0, 1, ... (different seed images, probes and t-SNE seeds) and
records the verdict, the suspect classes and the stage times. Ground truth:
poison rate > 0 means backdoored toward ``target_label``. Writes
``--out`` (.json) and a Markdown table beside it, updated after every model.
With ``--resume``, models already in ``--out`` with the same configuration are
kept and not run again; a model with fewer runs than ``--runs`` gets only the
missing ones (run ``r`` always uses detection seed ``r``, so 3 runs extended
to 5 equal 5 runs made at once).

The views of these tables (other transfer rules, each signal's margin, two
tables compared, the summary per trigger family) are ``bench/tables.py``.
"""

import argparse
import glob
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from aegis_tf.core.data import load_split
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.scan import aegis_evidence, run_aegis, run_neural_cleanse
from aegis_tf.detect.verdict import combine
from aegis_tf.core.models import load_model
from aegis_tf.core.utils import atomic_path, write_json
from tables import (GROUPS, IMPLANTED_ASR, group_lines, group_summaries, label, score_run, summarise, summary_lines,
                    truth)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # results/ lives here


def _baseline_cell(row, key):
    b = row.get("baselines", {}).get(key)
    return "-" if b is None else f"{','.join(map(str, b['suspects'])) or 'clean'} ({b['seconds']:.0f} s)"


def markdown(result):
    m = result["meta"]
    lines = [f"# AEGIS on trained models ({m['score']} score)", "",
             f"`{m['command']}` ({m['machine']}, Keras backend {m['backend']}). "
             f"Detection config: {json.dumps(m['config'])}.", "",
             "A cell per detection run: the classes of the scan's one verdict (every deciding signal: patch "
             "transfer, the whole-image signal and, where it ran, its blend probe; - for none). "
             "Truth: the model's target, or clean; "
             f"a poisoned model whose ASR is under {IMPLANTED_ASR:.0%} did not learn the backdoor and is counted "
             "apart (not learned)." + (f" {m['note']}" if m.get("note") else ""), "",
             "| model | data | trigger | poisoned | clean acc | ASR | truth | "
             + " | ".join(f"run {i}" for i in range(m["runs"]))
             + " | flagged with right class | s per run | paper preset (1 run) | Neural Cleanse (1 run) |",
             "|---" * (11 + m["runs"]) + "|"]
    for r in result["rows"]:
        cells = [",".join(map(str, x["suspects"])) or "-" for x in r["runs"]]
        cells += ["not run"] * (m["runs"] - len(cells))  # a row an interrupted --resume has not extended yet
        ok = sum(bool(x["right_class"]) for x in r["runs"]) if r["target"] is not None else "-"
        lines.append(f"| {label(r)} | {r['data']} | {r['trigger']} | {r.get('poison_rate', 0):.0%} | {r['clean_acc']:.2%} | "
                     f"{'-' if r['asr'] is None else format(r['asr'], '.2%')} | {truth(r)} | "
                     + " | ".join(cells) + f" | {ok}/{len(r['runs'])} | {np.mean(r['seconds']):.0f} | "
                     + " | ".join(_baseline_cell(r, k) for k in ("paper", "neural_cleanse")) + " |")
    for by in ("folder", "data", "trigger"):
        lines += group_lines(GROUPS[by][0], result.get(f"summary_by_{by}", {}))
    lines += summary_lines(result["summary"])
    return "\n".join(lines) + "\n"


def _verdict(rep):
    return combine(aegis_evidence(rep))


def _baselines(model, x, y, n_classes, target, seeds):
    """One run each of the paper preset (with the table's seed count) and Neural Cleanse, detection seed 0."""
    out = {}
    t = time.perf_counter()
    paper = run_aegis(model, x, y, classes=list(range(n_classes)), config=DetectConfig.from_preset("paper", n_seeds=seeds),
                      pixel_max=255.0, out_dir=None, seed=0)
    out["paper"] = {**score_run(paper, target, n_classes), "seconds": time.perf_counter() - t}
    t = time.perf_counter()
    nc = run_neural_cleanse(model, x[:2000], classes=list(range(n_classes)), pixel_max=255.0, out_dir=None, plots=False)
    out["neural_cleanse"] = {**score_run(nc, target, n_classes), "seconds": time.perf_counter() - t}
    return out


def _rows_to_write(reached, done):
    """The rows --out gets: those this call has reached, then every row it already held
    that this call has not reached (not listed, or not yet), so that an interrupted
    ``--resume`` loses nothing."""
    seen = {r["path"] for r in reached}
    return reached + [r for p, r in done.items() if p not in seen]


def _missing_runs(row, runs):
    """The detection seeds a row still lacks: all of ``range(runs)`` for a new model,
    the tail for one resumed from a table with fewer runs."""
    return list(range(0 if row is None else len(row["runs"]), runs))


def _run_entry(rep, target, n_classes, config):
    """One detection run's entry in a row: the one verdict scored against the truth, and what re-scoring needs."""
    verdict = _verdict(rep)  # the default's one verdict: every deciding signal of the scan
    run = {**score_run({"suspect_classes": verdict["target_classes"]}, target, n_classes),
           "signals": {k: e["flagged"] for k, e in verdict["evidence"].items()},
           "scores": {c: v.get("transfer_score", v.get("clusters")) for c, v in rep["classes"].items()}}
    if verdict.get("score") is not None:  # one suspicion score per run (bench/tables.py score)
        run["score"] = verdict["score"]
    if "stages" in rep:
        run["promoted"] = rep["stages"]["promoted"]
    if "whole_image" in rep:
        run["whole_image"] = {c: {"gap": v["whole_image_gap"], "norm": v["flip_norm"]}
                              for c, v in rep["whole_image"]["classes"].items()}
    if "blend_probe" in rep:
        run["blend_probe"] = {c: {"gap": v["blend_gap"], "alpha": v["blend_alpha"]}
                              for c, v in rep["blend_probe"]["classes"].items()}
    if config["score"] == "transfer":  # lets bench/tables.py rules re-score the run under other rules
        run["histograms"] = {c: v["probes_moved_histogram"] for c, v in rep["classes"].items()}
    return run


def _same_config(old, new):
    """The configurations match; a setting added since ``old`` was written must hold the value that
    behaves as before it existed (its default; the blend probe, default since, off)."""
    default = {**DetectConfig().to_dict(), "wi_blend": False}
    return all(old.get(k, default.get(k)) == v for k, v in new.items()) and set(old) <= set(new)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help=".keras models with their .keras.json training reports")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=100, help="translations per class")
    p.add_argument("--preset", choices=("default", "paper"), default="default")
    p.add_argument("--start-noise", type=float, default=None, help="override the configuration's start noise")
    p.add_argument("--scan", choices=("auto", "full", "staged"), default=None,
                   help="override the scan (aegis_tf.detect.staged; default auto: full for 10-class models)")
    p.add_argument("--top-k", type=int, default=None, help="staged scan: classes each stage-1 signal promotes")
    p.add_argument("--blend-probe", action=argparse.BooleanOptionalAction, default=None,
                   help="the whole-image blend probe (DetectConfig.wi_blend; default auto: on in a full scan); "
                        "the tables made before it was the default: --no-blend-probe")
    p.add_argument("--train-images", type=int, default=20000, help="first N training images to draw seeds from")
    p.add_argument("--data-dir", default=None, help="folder with NAME.npz for models trained on a named set")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "detect", "detect_table.json"))
    p.add_argument("--note", default="", help="a sentence for the table's header (say what else ran on the machine)")
    p.add_argument("--resume", action="store_true", help="keep the models --out already holds for this configuration")
    p.add_argument("--baselines", action="store_true",
                   help="also one run each of the paper preset and Neural Cleanse per model")
    args = p.parse_args()
    import keras

    config = DetectConfig.from_preset(args.preset, n_seeds=args.seeds, start_noise=args.start_noise, scan=args.scan,
                                      top_k=args.top_k, wi_blend=args.blend_probe)
    paths = sorted(set(sum((glob.glob(m) for m in args.models), [])))
    result = {"meta": {"command": "python bench/detect_table.py " + " ".join(sys.argv[1:]), "runs": args.runs,
                       "config": config.to_dict(), "score": config["score"], "backend": keras.backend.backend(),
                       "machine": f"{os.cpu_count()} CPU cores", "note": args.note}, "rows": []}
    done = {}
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        if _same_config(old["meta"]["config"], config.to_dict()) and old["meta"]["runs"] <= args.runs:
            done = {r["path"]: r for r in old["rows"] if "path" in r}
            result["meta"]["command"] = old["meta"]["command"] + "; then " + result["meta"]["command"]

    def save():
        full = {**result, "rows": _rows_to_write(result["rows"], done)}
        _write(full, args.out)
        return full

    for path in paths:
        row = done.get(path)
        missing = _missing_runs(row, args.runs)
        if not missing and (not args.baselines or "baselines" in row):
            result["rows"].append(row)
            print(f"{row['name']}: kept from {args.out}", flush=True)
            continue
        with open(path + ".json") as f:
            info = json.load(f)
        x, y = load_split(info["data"], split="train", data_dir=args.data_dir, scale="raw")
        x, y = x[:args.train_images], y[:args.train_images]
        model = load_model(path)
        n_classes = int(model.output_shape[-1])
        target = info["target_label"] if info.get("poison_rate", 0) > 0 else None
        if row is None:
            row = {"name": os.path.basename(path), "path": path, "data": os.path.basename(str(info["data"])),
                   "trigger": info["trigger"] if target is not None else "none",
                   "clean_acc": info["test"]["clean_acc"], "asr": info["test"].get("asr") if target is not None else None,
                   "target": target, "poison_rate": info.get("poison_rate", 0), "runs": [], "seconds": []}
        for r in missing:
            t = time.perf_counter()
            rep = run_aegis(model, x, y, classes=list(range(n_classes)), config=config, pixel_max=255.0, out_dir=None,
                            seed=r)
            row["seconds"].append(time.perf_counter() - t)
            row["runs"].append(_run_entry(rep, target, n_classes, config))
            print(f"{row['name']} run {r}: {_verdict(rep)['line']} ({row['seconds'][-1]:.0f} s)", flush=True)
        if args.baselines and "baselines" not in row:
            row["baselines"] = _baselines(model, x, y, n_classes, target, args.seeds)
            print(f"{row['name']} baselines: {row['baselines']}", flush=True)
        result["rows"].append(row)
        save()
    print(markdown(save()))


def _write(result, out):
    result["summary"] = summarise(result["rows"])
    for by in ("folder", "data", "trigger"):
        result[f"summary_by_{by}"] = group_summaries(result["rows"], by)
    write_json(out, result)
    with atomic_path(os.path.splitext(out)[0] + ".md") as tmp:
        with open(tmp, "w") as f:
            f.write(markdown(result))


if __name__ == "__main__":
    main()
