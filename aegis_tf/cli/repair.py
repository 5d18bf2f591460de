"""``aegis repair``: the lab's pruning defence and GoodNet (calls :func:`aegis_tf.api.repair`)."""

import argparse
import os

from aegis_tf.cli._util import common_flags, embedded_name, flag, model_flags, shown

NAME, ALIASES = "repair", ()

# Where repair writes (shared with evaluate-goodnet, which reads B' there).
OUT_DIR = os.path.join("out", "repair")


def threshold_type(value):
    from repair.thresholds import check_threshold
    from aegis_tf.core.errors import AegisError

    try:
        return check_threshold(value)
    except AegisError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add(sub):
    p = sub.add_parser(NAME, help="prune the last pooling layer, build GoodNet, evaluate",
                       description="Prune B's last pooling layer (lowest mean clean activation first), keep B' at "
                                   "2/4/10% accuracy drop, wrap B and B' into GoodNet and evaluate them; or repair "
                                   "from a recovered trigger (--trigger-from), or with no data at all (--strategy "
                                   "clp). Writes repair.json and report.html in --out-dir.")
    from repair.config import METHODS, RepairConfig

    d = RepairConfig()
    model_flags(p)
    flag(p, "--clean-valid", "--clean_set", default=None,
         help=f"clean validation .h5 used for pruning (default {embedded_name('valid')}; lab name --clean_set)")
    flag(p, "--bad-valid", "--bad_set", default=None,
         help=f"poisoned validation .h5, labels = target (lab strategy; default {embedded_name('bd_valid')} for the "
              "embedded model, else built from the model's MODEL.json trigger file, else none: ASR not measured; "
              "lab name --bad_set)")
    flag(p, "--clean-test", default=None, help=f"clean test .h5 for evaluation (default {embedded_name('test')})")
    flag(p, "--bad-test", default=None,
         help="poisoned test .h5 for evaluation only, the true ASR (default as --bad-valid, from the test set)")
    flag(p, "--threshold", type=threshold_type, default=d.threshold,
         help="accuracy drop (percentage points) of the B' that GoodNet headlines: 2, 4 or 10 (default %(default)s); "
              "B' is kept at all three")
    flag(p, "--layer", default=None, help="pooling layer to prune (default: the last pooling layer)")
    flag(p, "--method", choices=METHODS, default=d.method,
         help=f"cached activations (fast{', default' if d.method == 'cached' else ''}) or the lab's full-model loop"
              f"{' (default)' if d.method == 'naive' else ''}")
    flag(p, "--finetune", type=int, default=d.finetune, metavar="EPOCHS",
         help="also fine-tune each B' on the clean validation set for EPOCHS (fine-pruning); 0 = off")
    flag(p, "--finetune-lr", type=float, default=d.finetune_lr,
         help=f"fine-tuning learning rate (Adam, default {shown(d.finetune_lr)})")
    flag(p, "--trigger-from", default=None, metavar="DETECT_OUT_DIR",
         help="repair from the trigger(s) `aegis detect` recovered, written in this --out-dir (clean data only; "
              "no --bad-valid). B defaults to the model the scan examined")
    flag(p, "--trigger-file", default=None, metavar="FILE",
         help="repair from one recovered trigger file (trigger_<class>_<source>.json written by detect)")
    flag(p, "--trigger-classes", default=None, metavar="C[,C]",
         help="with --trigger-from: repair from the triggers toward these classes only (leave out a class you "
              "judge a false alarm); an error when the scan saved none for one of them")
    flag(p, "--strategy", default=d.strategy,
         help="comma-separated: lab (prune lowest mean clean activation first, with --bad-valid; the default "
              "without a trigger), trigger-prune (prune the channels the recovered trigger raises most), unlearn "
              "(fine-tune on clean images plus recovered-trigger images with their true labels); default with a "
              "trigger: trigger-prune,unlearn; or clp alone (Channel Lipschitzness-based Pruning: no data, no "
              "trigger; the test sets only evaluate)")
    flag(p, "--stop-asr", type=float, default=d.stop_asr,
         help="trigger-prune: stop when the recovered trigger's ASR on the validation images is at most this "
              "(default %(default)s), or when the threshold's accuracy drop comes first")
    flag(p, "--unlearn-epochs", type=int, default=d.unlearn_epochs, help="unlearn: at most this many epochs (default %(default)s)")
    flag(p, "--unlearn-rounds", type=int, default=d.unlearn_rounds,
         help="unlearn: run it this many times, each from the weights the last kept, with a fresh optimiser "
              "(default %(default)s; 1 is the single round of before 2026-12-04)")
    flag(p, "--unlearn-reinvert", type=int, default=d.unlearn_reinvert, metavar="N",
         help="unlearn: then up to N times reverse a trigger again on the repaired model toward each target and, "
              "while one still works, unlearn B again with every trigger found (default %(default)s: off; for a "
              "position-free trigger, docs/repair.md)")
    flag(p, "--unlearn-lr", type=float, default=d.unlearn_lr,
         help="unlearn: Adam learning rate (default 1e-3, or 1e-4 for a model with batch normalisation, whose "
              "statistics stay frozen while it unlearns)")
    flag(p, "--unlearn-share", type=float, default=d.unlearn_share,
         help="unlearn: share of the training images outside the triggers' target classes added again with a "
              "recovered trigger (default %(default)s)")
    flag(p, "--clean-images", type=int, default=d.clean_images, metavar="N",
         help="the clean data budget: repair with a random N of the --clean-valid images (default: all; an error "
              "when the set holds fewer)")
    flag(p, "--clp-u", type=float, default=d.clp_u, metavar="U",
         help="clp: prune each convolution channel whose Lipschitz upper bound exceeds its layer's mean by more "
              "than U standard deviations (default %(default)s, the paper's)")
    flag(p, "--out-dir", default=OUT_DIR,
         help="folder for models, curve, repair.json and report.html (default %(default)s)")
    common_flags(p)
    p.set_defaults(run=run)
    return p


def run(args):
    from aegis_tf.api import repair
    from aegis_tf.cli._util import settings
    from aegis_tf.core.utils import check_out_file, write_json
    from repair.config import RepairConfig
    from repair.pipeline import format_table

    check_out_file(args.out, "--out")
    report = repair(config=settings(RepairConfig, args), bad_model=args.bad_model,
                    bad_model_weights=args.bad_model_weights, clean_valid=args.clean_valid, bad_valid=args.bad_valid,
                    clean_test=args.clean_test, bad_test=args.bad_test, trigger_from=args.trigger_from,
                    trigger_file=args.trigger_file, trigger_classes=args.trigger_classes, out_dir=args.out_dir,
                    scale=args.scale, batch_size=args.batch_size, seed=args.seed, quiet=args.quiet)
    print(format_table(report))
    print(f"wrote {report['files']['report']}, {report['files']['html']} and B'/GoodNet files to {args.out_dir}")
    if args.out:
        write_json(args.out, report)
    return 0
