"""The ASR a model shows with no trigger at all: the floor a repaired model's true ASR is read against.

    python bench/asr_floor.py --trigger-of out/cifar_std/cifar10_warp_std_s0.keras --test W/test.h5 \
        out/cifar_std/cifar10_warp_std_s0.keras W/unlearn/B_prime_unlearned.keras --out results/repair/F.json

For each model and each backdoor of ``--trigger-of``'s trigger file (``MODEL.json``): the clean
accuracy on ``--test``, the true ASR (that trigger on the test images of the classes it poisons, as
``aegis repair`` measures it), and ``untriggered_asr``: the share of those same images, untriggered,
the model already gives the label the backdoor would (the target; y + 1 for an all-to-all backdoor;
for an all-to-one backdoor the column "ASR without trigger" of ``aegis repair``). A model at 82%
clean accuracy sends a few percent of them there by mistake, so a repaired model's true ASR cannot
fall much below it. Writes ``--out`` (.json) and a Markdown table beside it.
"""

import argparse
import os
import shlex
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import write_json
from tables import write_text


def measure(trigger_of, test, models):
    """One row per (model, backdoor): ``{model, backdoor, clean_acc, asr, untriggered_asr}``."""
    from aegis_tf.attack.evaluation import backdoor_set, backdoor_sets
    from aegis_tf.attack.sidecar import read_trigger_configs
    from aegis_tf.core.data import check_fits_model, load_h5
    from aegis_tf.core.metrics import attack_success_rate, clean_accuracy
    from aegis_tf.core.models import load_model, predict_labels

    configs = read_trigger_configs(trigger_of)
    if not configs:
        raise AegisError(f"{trigger_of}: no trigger file ({trigger_of}.json) naming a trigger; nothing to measure")
    x, y = load_h5(test)
    nets = [(m, load_model(m)) for m in models]  # every model read before any work
    for m, net in nets:
        check_fits_model(x, y, net, f"--test {test} for {m}")
    n_classes = int(nets[0][1].output_shape[-1])
    sets = backdoor_sets(configs, x, y, pixel_max=255.0, n_classes=n_classes)
    # which test images each backdoor is measured on, and the label it sends them to (every mapping: all-to-all
    # too): backdoor_set on the images' indices with no trigger, so the clean predictions are read, not redone
    plain = [backdoor_set(np.arange(len(y)), y, lambda a: a, c.target_label, sources=c.source_classes,
                          mapping=c.mapping, n_classes=n_classes) for c in configs]
    for c, (idx, _) in zip(configs, plain):
        if len(idx) == 0:
            raise AegisError(f"--test {test} holds no image the backdoor {c.describe()} is measured on")
    rows = []
    for m, net in nets:
        pred = predict_labels(net, x)
        for (name, xb, yb), (idx, labels) in zip(sets, plain):
            rows.append({"model": m, "backdoor": name.describe(), "clean_acc": clean_accuracy(pred, y),
                         "asr": attack_success_rate(predict_labels(net, xb), yb),
                         "untriggered_asr": float(np.mean(pred[idx] == labels))})
    return rows


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f}"


def markdown(rows, command):
    lines = ["# The ASR without a trigger", "", f"`{command}`", "",
             "Clean accuracy, true ASR and the ASR without trigger (the share of the same test images, untriggered, "
             "the model already gives the backdoor's label), %.", "",
             "| model | backdoor | clean | true ASR | ASR without trigger |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['backdoor']} | {_pct(r['clean_acc'])} | {_pct(r['asr'])} | "
              f"{_pct(r['untriggered_asr'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="B and any repaired B' (.keras or .h5)")
    p.add_argument("--trigger-of", required=True, help="the model whose trigger file (MODEL.json) gives the trigger")
    p.add_argument("--test", required=True, help="clean test images (.h5 with data and label)")
    p.add_argument("--out", required=True, help="the .json file; the Markdown table goes beside it")
    args = p.parse_args(argv)
    if not args.out.endswith(".json"):
        raise SystemExit(f"error: --out must name a .json file. Received: {args.out}")
    try:
        rows = measure(args.trigger_of, args.test, args.models)
    except (AegisError, OSError) as e:
        raise SystemExit(f"error: {e}")
    command = "python bench/asr_floor.py " + shlex.join(argv or sys.argv[1:])
    text = markdown(rows, command)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, {"command": command, "rows": rows})
    write_text(os.path.splitext(args.out)[0] + ".md", text)
    print(text)


if __name__ == "__main__":
    main()
