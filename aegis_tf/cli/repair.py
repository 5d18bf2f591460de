"""``aegis repair``: the lab's pruning defence and GoodNet (calls :func:`repair.pipeline.repair_job`)."""

import argparse
import os

from aegis_tf.cli._util import common_flags, flag, model_flags

NAME, ALIASES = "repair", ()


def _threshold(value):
    from repair.thresholds import check_threshold
    from aegis_tf.core.errors import AegisError

    try:
        return check_threshold(value)
    except AegisError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add(sub):
    p = sub.add_parser(NAME, help="prune the last pooling layer, build GoodNet, evaluate",
                       description="Prune B's last pooling layer (lowest mean clean activation first), keep B' at "
                                   "2/4/10% accuracy drop, wrap B and B' into GoodNet and evaluate them. Writes "
                                   "repair.json and report.html in --out-dir.")
    model_flags(p)
    flag(p, "--clean-valid", "--clean_set", default=None,
         help="clean validation .h5 used for pruning (default data/valid.h5; lab name --clean_set)")
    flag(p, "--bad-valid", "--bad_set", default=None,
         help="poisoned validation .h5, labels = target (lab strategy; default data/bd_valid.h5 for the embedded "
              "model, else built from the model's MODEL.json trigger file, else none: ASR not measured; "
              "lab name --bad_set)")
    flag(p, "--clean-test", default=None, help="clean test .h5 for evaluation (default data/test.h5)")
    flag(p, "--bad-test", default=None,
         help="poisoned test .h5 for evaluation only, the true ASR (default as --bad-valid, from the test set)")
    flag(p, "--threshold", type=_threshold, default=4,
         help="accuracy drop (percentage points) of the B' that GoodNet headlines: 2, 4 or 10 (default 4); "
              "B' is kept at all three")
    flag(p, "--layer", default=None, help="pooling layer to prune (default: the last pooling layer)")
    flag(p, "--method", choices=("cached", "naive"), default="cached",
         help="cached activations (fast, default) or the lab's full-model loop")
    flag(p, "--finetune", type=int, default=0, metavar="EPOCHS",
         help="also fine-tune each B' on the clean validation set for EPOCHS (fine-pruning); 0 = off")
    flag(p, "--finetune-lr", type=float, default=1e-4, help="fine-tuning learning rate (Adam, default 1e-4)")
    flag(p, "--trigger-from", default=None, metavar="DETECT_OUT_DIR",
         help="repair from the trigger(s) `aegis detect` recovered, written in this --out-dir (clean data only; "
              "no --bad-valid). B defaults to the model the scan examined")
    flag(p, "--trigger-file", default=None, metavar="FILE",
         help="repair from one recovered trigger file (trigger_<class>_<source>.json written by detect)")
    flag(p, "--strategy", default=None,
         help="comma-separated: lab (prune lowest mean clean activation first, with --bad-valid; the default "
              "without a trigger), trigger-prune (prune the channels the recovered trigger raises most), unlearn "
              "(fine-tune on clean images plus recovered-trigger images with their true labels); default with a "
              "trigger: trigger-prune,unlearn")
    flag(p, "--stop-asr", type=float, default=0.05,
         help="trigger-prune: stop when the recovered trigger's ASR on the validation images is at most this "
              "(default 0.05), or when the threshold's accuracy drop comes first")
    flag(p, "--unlearn-epochs", type=int, default=20, help="unlearn: at most this many epochs (default 20)")
    flag(p, "--unlearn-lr", type=float, default=1e-3, help="unlearn: Adam learning rate (default 1e-3)")
    flag(p, "--unlearn-share", type=float, default=0.5,
         help="unlearn: share of the training images added again with the recovered trigger (default 0.5)")
    flag(p, "--out-dir", default=os.path.join("out", "repair"),
         help="folder for models, curve, repair.json and report.html (default out/repair)")
    common_flags(p)
    p.set_defaults(run=run)
    return p


def run(args):
    from aegis_tf.core.utils import write_json
    from repair.pipeline import format_table, repair_job

    report = repair_job(
        bad_model=args.bad_model, bad_model_weights=args.bad_model_weights, clean_valid=args.clean_valid,
        bad_valid=args.bad_valid, clean_test=args.clean_test, bad_test=args.bad_test, threshold=args.threshold,
        layer=args.layer, method=args.method, finetune=args.finetune, finetune_lr=args.finetune_lr,
        trigger_from=args.trigger_from, trigger_file=args.trigger_file, strategy=args.strategy,
        stop_asr=args.stop_asr, unlearn_epochs=args.unlearn_epochs, unlearn_lr=args.unlearn_lr,
        unlearn_share=args.unlearn_share, out_dir=args.out_dir, scale=args.scale, batch_size=args.batch_size, seed=args.seed, quiet=args.quiet)
    print(format_table(report))
    print(f"wrote {report['files']['report']}, {report['files']['html']} and B'/GoodNet files to {args.out_dir}")
    if args.out:
        write_json(args.out, report)
    return 0
