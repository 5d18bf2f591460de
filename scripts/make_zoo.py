"""Lay trained models out as a zoo for ``aegis scan-zoo``, with the truth each training report gives.

    python scripts/make_zoo.py MODELS_DIR ZOO [--embedded] [--broken NAME]
    python scripts/make_zoo.py --embedded --broken broken ZOO     # the embedded models and a damaged file

Every ``MODELS_DIR/NAME.keras`` with its training report ``NAME.keras.json`` (written by
``aegis train`` and scripts/train_families.sh) becomes ``ZOO/NAME/model.keras`` (a hard
link, or a copy across file systems) and ``ZOO/NAME/config.json``: the data it was trained
on, ``scale: raw``, and the truth (poisoned or not, every backdoor's target and sources,
the family from the file name ``<data>_<family>_<std|rob>_s<seed>``, and the lowest ASR
of its backdoors on the test split (an all-to-all backdoor's on the test images the model
classifies right, where its report measured it: ``aegis_tf.detect.ranking.learned_asrs``),
so that a backdoor the model did not learn is left out of the metrics). ``--embedded`` adds the
three embedded digits models on ``data/train.h5``;
``--broken NAME`` a folder whose model file is damaged (the first 5000 bytes of
``robust_bd_net.keras``), to see what a zoo does with a model it cannot load.
A model folder already in ZOO is left as it is. Loads no model (the all-to-all truth
takes the class count from the data set's name: 10 for the shared sets).
"""

import argparse
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from aegis_tf.attack.sidecar import read_trigger_configs  # noqa: E402
from aegis_tf.core.utils import write_json  # noqa: E402
from aegis_tf.detect.ranking import learned_asrs  # noqa: E402

TEN_CLASSES = ("mnist", "fashion_mnist", "cifar10")


def _family(name):
    parts = name.split("_")
    for i, p in enumerate(parts):  # <data>_<family>_<std|rob>_s<seed>, data may hold "_"
        if p in ("std", "rob") and i >= 2:
            return parts[i - 1]
    return None


def truth_of(model_path, report):
    """The truth of one trained model from its report and trigger sidecar."""
    poisoned = bool(report.get("n_poisoned")) and float(report.get("poison_rate") or 0) > 0
    out = {"poisoned": poisoned}
    name = os.path.splitext(os.path.basename(model_path))[0]
    family = _family(name) or (report.get("trigger") if poisoned else "clean")
    if family:
        out["family"] = family
    if not poisoned:
        return out
    data = os.path.splitext(os.path.basename(str(report.get("data", ""))))[0]
    targets, sources = [], []
    configs = read_trigger_configs(model_path)
    if not configs:  # an older report: the trigger's family and target only, every class a source
        targets, sources = [int(report["target_label"])], "all"
    for config in configs:
        if config.mapping == "all-to-all":
            if data not in TEN_CLASSES:
                raise SystemExit(f"error: {model_path}: all-to-all truth needs the class count of {data}")
            targets += list(range(10))
            sources = "all"
        else:
            targets.append(config.target_label)
            if sources != "all":
                sources = sorted(set(sources) | set(config.source_classes)) if config.source_classes else "all"
    out["target"] = sorted(set(targets))
    out["sources"] = sources
    asrs = [a for a in learned_asrs(report.get("test", {}), [c.mapping for c in configs]) if a is not None]
    if asrs:
        out["asr"] = float(min(asrs))
    return out


def _place(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def add_model(zoo, model_path, data, truth, *, name=None, data_dir=None):
    name = name or os.path.splitext(os.path.basename(model_path))[0]
    folder = os.path.join(zoo, name)
    if os.path.isdir(folder):
        return False
    tmp = os.path.join(zoo, f".{name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model_name = "model" + os.path.splitext(model_path)[1]
    _place(model_path, os.path.join(tmp, model_name))
    named = os.sep not in data and not os.path.splitext(data)[1]  # a set name (mnist), read from data_dir
    config = {"model": model_name, "data": data if named else os.path.abspath(data), "scale": "raw", "truth": truth}
    if named:
        if not data_dir:
            raise SystemExit(f"error: {model_path} was trained on the named set {data}; give --data-dir")
        config["data_dir"] = os.path.abspath(data_dir)
    write_json(os.path.join(tmp, "config.json"), config)
    os.replace(tmp, folder)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", metavar="[MODELS_DIR] ZOO",
                   help="folder of NAME.keras models with their NAME.keras.json reports (optional with --embedded), "
                        "and the zoo folder to fill")
    p.add_argument("--embedded", action="store_true", help="also add the embedded digits models")
    p.add_argument("--broken", default=None, metavar="NAME", help="also add a folder NAME with a damaged model file")
    p.add_argument("--data-dir", default=None, help="where NAME.npz lives for models trained on a named set (mnist)")
    args = p.parse_args(argv)
    if len(args.paths) > 2 or (len(args.paths) == 1 and not (args.embedded or args.broken)):
        p.error("give MODELS_DIR ZOO, or ZOO with --embedded/--broken")
    args.models, args.zoo = (None, args.paths[0]) if len(args.paths) == 1 else args.paths
    os.makedirs(args.zoo, exist_ok=True)
    added = kept = 0
    for n in sorted(os.listdir(args.models)) if args.models else ():
        if not n.endswith(".keras"):
            continue
        path = os.path.join(args.models, n)
        report_path = path + ".json"
        if not os.path.isfile(report_path):
            print(f"skip {path}: no training report {report_path} (still training?)")
            continue
        with open(report_path) as f:
            report = json.load(f)
        if "test" not in report:
            print(f"skip {path}: its report has no test results")
            continue
        if add_model(args.zoo, path, report["data"], truth_of(path, report), data_dir=args.data_dir):
            added += 1
        else:
            kept += 1
    if args.embedded:
        from aegis_tf.core.embedded import PATHS

        for name, truth in (("bd_net", {"poisoned": True, "target": [7], "sources": "all", "family": "embedded"}),
                            ("robust_bd_net", {"poisoned": True, "target": [7], "sources": "all",
                                               "family": "embedded"}),
                            ("robust_clean_net", {"poisoned": False, "family": "embedded"})):
            if add_model(args.zoo, PATHS[name], PATHS["train"], truth, name=name):
                added += 1
            else:
                kept += 1
    if args.broken and not os.path.isdir(os.path.join(args.zoo, args.broken)):
        from aegis_tf.core.embedded import PATHS

        tmp = os.path.join(args.zoo, f".{args.broken}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        with open(PATHS["robust_bd_net"], "rb") as f, open(os.path.join(tmp, "model.keras"), "wb") as g:
            g.write(f.read(5000))
        write_json(os.path.join(tmp, "config.json"), {"data": os.path.abspath(PATHS["train"])})
        os.replace(tmp, os.path.join(args.zoo, args.broken))
        added += 1
    print(f"{args.zoo}: {added} model(s) added, {kept} already there")


if __name__ == "__main__":
    main()
