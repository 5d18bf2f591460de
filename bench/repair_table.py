"""Repair compared: the lab's pruning, fine-pruning, and the repairs from a trigger that `detect` recovered.

    python bench/repair_table.py models/bd_net.h5 out/matrix/mnist_localised_s0.keras ... \
        --out results/repair/repair_table.json

For each model, in this order, each as a user would run it:

1. ``aegis detect`` (default settings, ``--method``, ``--n-seeds``, ``--pair-mask``) on the model's training
   data; its out-dir holds the recovered trigger(s);
2. the lab's pruning (``repair``; the attacker's poisoned validation set,
   which the lab assumes), at 2/4/10% accuracy drop;
3. fine-pruning (the same, plus ``--finetune`` epochs on clean validation data);
4. the data-free defence (``repair --strategy clp``, no data; test images evaluate);
5. trigger-aware pruning and 6. unlearning (``repair --trigger-from`` the
   detect folder, clean validation data only).

The true ASR is measured on the test images with the attacker's real trigger
(the embedded ``bd_test.h5``, or the trigger of the model's ``MODEL.json``),
which no repair from a trigger ever sees. Data: the embedded models use the
embedded CSAW files; a model trained by ``aegis train`` (its ``.keras.json``
names an ``.npz``) uses that file's training split for detection and splits
its test split into validation (first ``--n-valid`` images) and test (the
rest), written as ``.h5`` beside the results. Times are wall-clock seconds of
each command's job on this machine. Writes ``--out`` (.json) and a Markdown
table beside it, updated after each model; ``--resume`` keeps models already done.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from aegis_tf.detect.config import DetectConfig
from aegis_tf.core.embedded import PATHS
from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import write_json
from repair.config import RepairConfig
from repair.pipeline import parse_trigger_classes, repair_job
from repair.trigger_repair import check_unlearn_settings

EMBEDDED = {os.path.abspath(PATHS[k]) for k in ("bd_net", "robust_bd_net", "robust_clean_net")}


def model_data(model, work, n_valid):
    """(training data for detect, clean valid .h5, clean test .h5) for ``model``."""
    if os.path.abspath(model) in EMBEDDED:
        return PATHS["train"], PATHS["valid"], PATHS["test"]
    from aegis_tf.core.data import load_split, save_h5

    with open(model + ".json") as f:
        data = json.load(f)["data"]
    x, y = load_split(data, split="test")
    if len(x) <= n_valid:
        raise AegisError(f"{data}: its test split has {len(x)} images, not more than --n-valid {n_valid}")
    valid, test = os.path.join(work, "valid.h5"), os.path.join(work, "test.h5")
    save_h5(valid, x[:n_valid], y[:n_valid])
    save_h5(test, x[n_valid:], y[n_valid:])
    return data, valid, test


def _timed(fn, **kwargs):
    t = time.perf_counter()
    try:
        out = fn(**kwargs)
    except AegisError as e:
        return {"error": str(e), "seconds": time.perf_counter() - t}
    return {"report": out, "seconds": time.perf_counter() - t}


def _row(method, res, seconds, note=""):
    b, g = res["B_prime"], res["G"]
    return {"method": method, "clean_acc": b["clean_acc"], "asr": b["asr"], "g_clean_acc": g["clean_acc"],
            "g_asr": g["asr"], "g_clean_rejected": g["clean_rejected"], "g_bad_rejected": g["bad_rejected"],
            "recovered_asr": b.get("recovered_asr"), "seconds": seconds, "note": note}


def run_model(model, work, args):
    from aegis_tf.detect.scan import run_detect

    os.makedirs(work, exist_ok=True)
    train, valid, test = model_data(model, work, args.n_valid)
    common = dict(bad_model=model, clean_valid=valid, clean_test=test, threshold=4, quiet=True,
                  clean_images=args.clean_images)
    entry = {"model": model, "data": train, "valid": valid, "test": test, "rows": []}
    rows = entry["rows"]

    det_dir = os.path.join(work, "detect")
    t = time.perf_counter()
    if args.reuse_detect and os.path.isfile(os.path.join(det_dir, "detect.json")):  # the scan's own stage times
        with open(os.path.join(det_dir, "detect.json")) as f:
            result = json.load(f)
        seconds = sum(v for k in ("aegis", "neural_cleanse") if k in result for v in result[k]["seconds"].values()
                      if isinstance(v, (int, float)))
    else:
        config = DetectConfig(pair_mask=args.pair_mask)
        config = config if args.n_seeds is None else config.replace(n_seeds=args.n_seeds)
        scan = run_detect(config=config, bad_model=model, data=train, method=args.method, out_dir=det_dir,
                          echo=lambda *a: None)
        result = next(iter(scan.values()))
        seconds = time.perf_counter() - t
    entry["detect"] = {"line": result["verdict"]["line"], "triggers": result["triggers"], "seconds": seconds}

    lab = _timed(repair_job, out_dir=os.path.join(work, "lab"), **common)
    if "error" in lab:
        rows.append({"method": "lab pruning", "error": lab["error"], "seconds": lab["seconds"]})
    else:
        rep = lab["report"]
        first = next(iter(rep["test"].values()))
        rows.append(_row("B (no repair)", {"B_prime": first["B"], "G": {**first["B"], "clean_rejected": None,
                                                                             "bad_rejected": None}}, None))
        for tag, res in rep["test"].items():
            rows.append(_row(f"lab pruning -{tag}% ({rep['pruned'][tag]['channels_pruned']} ch)", res,
                             lab["seconds"]))
    ft = _timed(repair_job, out_dir=os.path.join(work, "fine_pruning"), finetune=args.finetune, **common)
    if "error" in ft:
        rows.append({"method": "fine-pruning", "error": ft["error"], "seconds": ft["seconds"]})
    else:
        res = ft["report"]["test"].get("4_finetuned")
        rows.append(_row(f"fine-pruning -4% + {args.finetune} epochs", res, ft["seconds"]))

    rows.append(clp_row(model, test, work))
    rows += trigger_rows(model, det_dir, result["triggers"], work, common, ("trigger-prune", "unlearn"),
                         trigger_classes=args.trigger_classes, unlearn=_unlearn_settings(args))
    return entry


def clp_row(model, test, work):
    """The data-free row: ``repair --strategy clp`` at its default u (no clean or poisoned data;
    the test images only evaluate)."""
    out = _timed(repair_job, out_dir=os.path.join(work, "clp"), bad_model=model, clean_test=test, strategy="clp",
                 quiet=True)
    if "error" in out:
        return {"method": "data-free (CLP)", "error": out["error"], "seconds": out["seconds"]}
    info = out["report"]["clp"]
    return _row(f"data-free (CLP, u = {info['u']:g}, {info['channels_pruned']} of {info['n_channels']} ch)",
                out["report"]["test"]["clp"], out["seconds"])


def cover_accuracy(model_path, b_prime_path, test):
    """For a source-specific backdoor (``MODEL.json`` names its sources): the accuracy of B and of
    B' on the test images of the other classes (not sources, not the target) carrying the real
    trigger, which the attack trained to keep their labels (the cover). None for other backdoors."""
    from aegis_tf.attack.sidecar import read_trigger_config
    from aegis_tf.attack.triggers import build_trigger
    from aegis_tf.core.data import load_h5
    from aegis_tf.core.models import load_model, predict_labels

    config, poisoned = read_trigger_config(model_path)
    if config is None or not poisoned or not config.source_classes or config.mapping != "all-to-one":
        return None
    x, y = load_h5(test)
    keep = ~np.isin(y, list(config.source_classes) + [config.target_label])
    fn, _ = build_trigger(config, pixel_max=255.0, x_sample=x)
    xc, yc = fn(x[keep]), y[keep]
    return {name: float(np.mean(predict_labels(load_model(path), xc) == yc))
            for name, path in (("B", model_path), ("B_prime", b_prime_path))}


def per_backdoor_asr(model_path, b_prime_path, test):
    """For a model with two or more backdoors (``MODEL.json``'s ``trigger_configs``): each
    backdoor's true ASR on B and on B' (its own test set: its trigger, its sources, its
    target), as ``[(name, asr_B, asr_B')]``; None for a model with one backdoor."""
    from aegis_tf.attack.evaluation import backdoor_sets
    from aegis_tf.attack.sidecar import read_trigger_configs
    from aegis_tf.core.data import load_h5
    from aegis_tf.core.models import load_model, predict_labels

    configs = read_trigger_configs(model_path)
    if len(configs) < 2:
        return None
    x, y = load_h5(test)
    models = [load_model(model_path), load_model(b_prime_path)]
    return [(f"{c.trigger} -> {c.target_label}", *(float(np.mean(predict_labels(m, xb) == yb)) for m in models))
            for c, xb, yb in backdoor_sets(configs, x, y, n_classes=int(models[0].output_shape[-1]))]


def _repair_note(model, b_prime, test):
    """The unlearning row's note: the cover classes of a source-specific backdoor, or each
    backdoor's own true ASR for a model with two."""
    cover = cover_accuracy(model, b_prime, test)
    if cover:
        return (f"cover classes with the trigger: {100 * cover['B']:.2f}% right on B, "
                f"{100 * cover['B_prime']:.2f}% on B'")
    each = per_backdoor_asr(model, b_prime, test)
    if each:
        return "true ASR per backdoor, B / B': " + "; ".join(f"{n} {100 * a:.2f}% / {100 * b:.2f}%"
                                                             for n, a, b in each)
    return ""


def _unlearn_settings(args):
    """repair's unlearning settings of the command line (given to the unlearning job only)."""
    return {"unlearn_rounds": args.unlearn_rounds, "unlearn_reinvert": args.unlearn_reinvert}


def trigger_rows(model, det_dir, triggers, work, common, strategies, trigger_classes=None, unlearn=None):
    """The rows of the repairs from the recovered trigger(s) in ``det_dir`` (with ``trigger_classes``,
    ``repair --trigger-classes``: the triggers toward those classes only; ``unlearn``: repair settings
    for the unlearning job alone)."""
    rows = []
    only = "" if trigger_classes is None else f"; triggers toward class {trigger_classes} only"
    for strategy in strategies:
        if not triggers:
            rows.append({"method": strategy, "error": "detect recovered no trigger", "seconds": None})
            continue
        extra = (unlearn or {}) if strategy == "unlearn" else {}
        out = _timed(repair_job, out_dir=os.path.join(work, strategy), trigger_from=det_dir, strategy=strategy,
                     trigger_classes=trigger_classes, **common, **extra)
        if "error" in out:
            rows.append({"method": strategy, "error": out["error"], "seconds": out["seconds"]})
            continue
        rep = out["report"]
        for tag, res in rep["test"].items():
            if tag == "unlearned":
                note = _repair_note(model, os.path.join(work, strategy, "B_prime_unlearned.keras"),
                                    common["clean_test"])
                u = rep["unlearned"]
                kept = ", ".join(str(r["kept_epoch"]) for r in u.get("rounds", [u]))
                label = f"{len(u['rounds'])} rounds, epoch {kept} kept" if "rounds" in u else f"epoch {kept} kept"
                if u.get("reinvert"):
                    done = [s for s in u["reinvert"]["steps"] if "stopped" not in s]
                    label += (f"; {len(done)} re-inversion(s), {u['reinvert']['n_triggers']} triggers"
                              + ("; then no new mask worked" if len(done) < len(u["reinvert"]["steps"]) else ""))
                rows.append(_row(f"unlearning ({label}{only})", res, out["seconds"],
                                 note=note))
            else:
                p = rep["pruned"][tag]
                rows.append(_row(f"trigger-aware pruning -{tag}% ({p['channels_pruned']} ch{only})", res,
                                 out["seconds"],
                                 note=p.get("stop_reason", "")))
    return rows


def redo(entry, strategy, args):
    """Run one trigger strategy again for a model already in the table; its rows are replaced in place."""
    work = os.path.join(args.work, os.path.splitext(os.path.basename(entry["model"]))[0])
    common = dict(bad_model=entry["model"], clean_valid=entry["valid"], clean_test=entry["test"], threshold=4,
                  quiet=True, clean_images=args.clean_images)
    prefix = {"unlearn": ("unlearn",), "trigger-prune": ("trigger-aware", "trigger-prune"),
              "clp": ("data-free",)}[strategy]
    if strategy == "clp":
        new = [clp_row(entry["model"], entry["test"], work)]
    else:
        new = trigger_rows(entry["model"], os.path.join(work, "detect"), entry["detect"]["triggers"], work, common,
                           (strategy,), trigger_classes=args.trigger_classes, unlearn=_unlearn_settings(args))
    keep = [r for r in entry["rows"] if not r["method"].startswith(prefix)]
    at = next((i for i, r in enumerate(entry["rows"]) if r["method"].startswith(prefix)), len(keep))
    entry["rows"] = keep[:at] + new + keep[at:]


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}%"


def render(results):
    lines = ["# Repair compared: lab pruning, fine-pruning, and repair from the trigger detect recovered", "",
             f"Commands, in order ({results['machine']}):", ""]
    lines += [f"    {c}" for c in results["commands"]] + [""]
    budget = results.get("clean_images")
    what = f"a random {budget} of the validation images" if budget else "the whole validation set"
    lines += [f"Clean data budget of every repair: {what} "
              "(the embedded set's 359, or the first --n-valid images of an .npz test split; the rest are test images).", ""]
    if any("--redo" in c for c in results["commands"]):
        lines += ["A `--redo` command ran that repair again for the models it lists and replaced its rows.", ""]
    lines += [
             "True ASR: the attacker's real trigger on held-out test images, never given to a repair from a "
             "trigger. B' is the repaired model; GoodNet (G) answers class N when B and B' disagree; \"to N\" is "
             "the share of clean / poisoned test images G sends there. Recovered ASR: the recovered trigger on "
             "the test images. Seconds: the job's wall time (fine-pruning includes its lab pruning run). "
             "A source-specific backdoor's true ASR counts its source classes only, an all-to-all one's every "
             "class (y -> y + 1), a model with two backdoors both test sets together.", ""]
    for e in results["models"]:
        lines += [f"## {e['model']}", "", f"detect ({e['detect']['seconds']:.0f} s): {e['detect']['line']}; "
                  f"triggers: {', '.join(e['detect']['triggers']) or 'none'}", "",
                  "| method | B' clean | B' true ASR | G clean | G true ASR | G to N (clean / poisoned) | "
                  "recovered ASR | s | note |", "|---|---|---|---|---|---|---|---|---|"]
        for r in e["rows"]:
            secs = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
            if "error" in r:
                lines.append(f"| {r['method']} | - | - | - | - | - | - | {secs} | {r['error']} |")
                continue
            to_n = "-" if r["g_clean_rejected"] is None else f"{_pct(r['g_clean_rejected'])} / {_pct(r['g_bad_rejected'])}"
            lines.append(f"| {r['method']} | {_pct(r['clean_acc'])} | {_pct(r['asr'])} | {_pct(r['g_clean_acc'])} | "
                         f"{_pct(r['g_asr'])} | {to_n} | {_pct(r['recovered_asr'])} | {secs} | {r['note']} |")
        lines.append("")
    lines += ["Not in the table: the CSAW DeepID net with the real weights in ../shared/csaw (1,283 face "
              "identities). Only its weights are available, no face images: neither a clean validation set of its "
              "identities nor a poisoned check set with its real (sunglasses) trigger can be built here, so no "
              "repair of it can be measured."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--out", default="results/repair/repair_table.json")
    p.add_argument("--work", default="out/repair_table", help="folder for each model's detect and repair outputs")
    p.add_argument("--method", default="aegis", choices=("aegis", "neural-cleanse", "both"))
    p.add_argument("--n-seeds", type=int, default=None,
                   help="detect's --n-seeds (default: detect's own default)")
    p.add_argument("--pair-mask", action="store_true",
                   help="detect's --pair-mask (the pair mask probe, off by default)")
    p.add_argument("--finetune", type=int, default=5, help="fine-pruning epochs (default 5)")
    p.add_argument("--n-valid", type=int, default=5000, help="validation images from an .npz test split")
    p.add_argument("--clean-images", type=int, default=None,
                   help="every repair's clean data budget: a random N of the validation images (default: all)")
    p.add_argument("--unlearn-reinvert", type=int, default=RepairConfig.unlearn_reinvert, metavar="N",
                   help="repair's --unlearn-reinvert (re-inversion steps after unlearning; default %(default)s: off)")
    p.add_argument("--unlearn-rounds", type=int, default=RepairConfig.unlearn_rounds, metavar="N",
                   help="repair's --unlearn-rounds (default %(default)s, repair's own)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--redo", choices=("trigger-prune", "unlearn", "clp"), default=None,
                   help="run this repair again for the listed models already in --out, replacing its rows")
    p.add_argument("--reuse-detect", action="store_true",
                   help="use a detect folder already in --work (its detect.json's stage times) instead of scanning again")
    p.add_argument("--trigger-classes", default=None, metavar="C[,C]",
                   help="the repairs from a trigger use the triggers toward these classes only "
                        "(`repair --trigger-classes`; for one model, whose other flagged class is a false alarm)")
    args = p.parse_args(argv)
    try:
        parse_trigger_classes(args.trigger_classes)  # a bad value: one line, before any scan
        RepairConfig(**_unlearn_settings(args))
        check_unlearn_settings(epochs=RepairConfig.unlearn_epochs, share=RepairConfig.unlearn_share,
                               rounds=args.unlearn_rounds)
    except AegisError as e:
        raise SystemExit(f"error: {e}") from None
    command = "python bench/repair_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"machine": f"{os.cpu_count()} CPU cores, {platform.machine()}", "commands": [command], "models": [],
               "clean_images": args.clean_images}
    if (args.resume or args.redo) and os.path.isfile(args.out):
        with open(args.out) as f:
            old = json.load(f)
        results["models"] = old["models"]
        results["commands"] = old.get("commands", [old.get("command")]) + [command]
    done = {e["model"]: e for e in results["models"]}

    def save():
        write_json(args.out, results)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(render(results) + "\n")

    for model in args.models:
        print(f"{model} ...", flush=True)
        if args.redo:
            if model not in done:
                raise SystemExit(f"--redo: {model} is not in {args.out}")
            redo(done[model], args.redo, args)
        elif model in done:
            continue
        else:
            name = os.path.splitext(os.path.basename(model))[0]
            results["models"].append(run_model(model, os.path.join(args.work, name), args))
        save()
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
