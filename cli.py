"""aegis-tf command line: parses arguments and calls the library.

    python cli.py repair --threshold 4
    python cli.py eval --clean_set data/test.h5 --bad_set data/bd_test.h5 \
        --bad_model models/bd_net.h5 --threshold 4 \
        --pruned_bad_model_weights out/repair/B_prime_4.weights.h5

Every command prints a summary, writes JSON (``--out``), and turns bad input
into a one-line error with exit status 2.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from aegis_tf.errors import AegisError  # noqa: E402

THRESHOLD_CHOICES = (2, 4, 10)


class _Parser(argparse.ArgumentParser):
    """argparse that raises AegisError (one line) instead of printing usage."""

    def error(self, message):
        raise AegisError(f"{self.prog}: {message}")


def _threshold(value):
    try:
        t = int(value)
    except ValueError:
        t = None
    if t not in THRESHOLD_CHOICES:
        raise argparse.ArgumentTypeError(
            f"--threshold must be one of 2, 4, 10 (percent accuracy drop). Received: {value}"
        )
    return t


def _flag(parser, name, **kwargs):
    """Add ``--a_b`` with its alias ``--a-b`` (or the reverse)."""
    body = name[2:]
    alias = "--" + (body.replace("_", "-") if "_" in body else body.replace("-", "_"))
    names = [name] if alias == name else [name, alias]
    kwargs.setdefault("dest", body.replace("-", "_"))
    parser.add_argument(*names, **kwargs)


def _common(p):
    _flag(p, "--scale", choices=("raw", "unit"), default="raw",
          help="pixel scaling fed to the model: raw (0-255 as stored; CSAW lab3, default) or unit (divided by 255)")
    _flag(p, "--batch_size", type=int, default=256, help="inference batch size (default 256)")
    _flag(p, "--seed", type=int, default=0, help="global random seed (default 0)")
    _flag(p, "--out", default=None, help="also write the result JSON to this path")
    p.add_argument("--quiet", action="store_true", help="no progress bars, summary only")


def _model_flags(p):
    _flag(p, "--bad_model", default=None,
          help="backdoored model B, .keras or full-model .h5 (default: models/bd_net.h5 unless only weights are given)")
    _flag(p, "--bad_model_weights", default=None,
          help="weights for B; without --bad_model they load into the built-in CSAW DeepID net")


def build_parser():
    parser = _Parser(prog="cli.py", description="aegis-tf: backdoor attack, detection and repair for Keras models")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True

    r = sub.add_parser("repair", help="prune the last pooling layer, build GoodNet, evaluate",
                       description="Prune B's last pooling layer (lowest mean clean activation first), save B' at "
                                   "2/4/10%% accuracy drop, wrap B and B' into GoodNet and evaluate all three.")
    _model_flags(r)
    _flag(r, "--clean_set", default=None, help="clean validation .h5 used for pruning (default data/valid.h5)")
    _flag(r, "--bad_set", default=None, help="poisoned validation .h5, labels = target (default data/bd_valid.h5)")
    _flag(r, "--clean_test", default=None, help="clean test .h5 for evaluation (default data/test.h5)")
    _flag(r, "--bad_test", default=None, help="poisoned test .h5 for evaluation (default data/bd_test.h5)")
    _flag(r, "--threshold", type=_threshold, default=4,
          help="accuracy drop (percentage points) of the B' that GoodNet headlines: 2, 4 or 10 (default 4); all three are saved")
    _flag(r, "--layer", default=None, help="pooling layer to prune (default: the last pooling layer)")
    _flag(r, "--method", choices=("cached", "naive"), default="cached",
          help="cached activations (fast, default) or the lab's full-model loop")
    _flag(r, "--finetune", type=int, default=0, metavar="EPOCHS",
          help="also fine-tune each B' on the clean validation set for EPOCHS (fine-pruning); 0 = off")
    _flag(r, "--finetune_lr", type=float, default=1e-4, help="fine-tuning learning rate (Adam, default 1e-4)")
    _flag(r, "--out-dir", default=os.path.join("out", "repair"), help="folder for models, curve and plot (default out/repair)")
    _common(r)

    e = sub.add_parser("eval", help="evaluate B, B' and GoodNet (the seed's new_eval.py)")
    _model_flags(e)
    _flag(e, "--clean_set", default=None, help="clean test .h5 (default data/test.h5)")
    _flag(e, "--bad_set", default=None, help="poisoned test .h5, labels = target (default data/bd_test.h5)")
    _flag(e, "--threshold", type=_threshold, default=4,
          help="which B' to use when --pruned_bad_model_weights is not given: OUT_DIR/B_prime_T.weights.h5")
    _flag(e, "--pruned_bad_model_weights", default=None, help="weights of the pruned model B'")
    _flag(e, "--goodnet", default=None, help="a GoodNet .keras file written by repair (instead of B and B')")
    _flag(e, "--out-dir", default=os.path.join("out", "repair"), help="where repair wrote B' (default out/repair)")
    _common(e)
    return parser


def _resolve_model_paths(args):
    """Apply the embedded default only when the user named no model at all."""
    from aegis_tf.defaults import PATHS

    if args.bad_model is None and args.bad_model_weights is None:
        return PATHS["bd_net"], None
    return args.bad_model, args.bad_model_weights


def _load_set(path, default_key, model, scale, what):
    from aegis_tf.data import check_fits_model, load_h5
    from aegis_tf.defaults import PATHS

    path = path or PATHS[default_key]
    x, y = load_h5(path, scale=scale)
    x = check_fits_model(x, y, model, f"{what} {path}")
    return (x, y), path


def _say(args, text):
    print(text)


def cmd_repair(args):
    from aegis_tf.models import load_model
    from aegis_tf.utils import write_json
    from repair.pipeline import format_table, run_repair

    model_path, weights = _resolve_model_paths(args)
    model = load_model(model_path, weights)
    valid, pv = _load_set(args.clean_set, "valid", model, args.scale, "--clean_set")
    bad_valid, pbv = _load_set(args.bad_set, "bd_valid", model, args.scale, "--bad_set")
    test, pt = _load_set(args.clean_test, "test", model, args.scale, "--clean_test")
    bad_test, pbt = _load_set(args.bad_test, "bd_test", model, args.scale, "--bad_test")
    if args.finetune < 0:
        raise AegisError(f"--finetune must be 0 or a positive number of epochs. Received: {args.finetune}")
    report = run_repair(
        model, valid, bad_valid, test, bad_test,
        out_dir=args.out_dir, threshold=args.threshold, layer=args.layer, method=args.method,
        finetune_epochs=args.finetune, finetune_lr=args.finetune_lr, batch_size=args.batch_size,
        seed=args.seed, quiet=args.quiet,
        sources={"bad_model": model_path, "bad_model_weights": weights, "clean_set": pv, "bad_set": pbv,
                 "clean_test": pt, "bad_test": pbt, "scale": args.scale},
    )
    if report["pruned"][str(args.threshold)] is None:
        raise AegisError(f"accuracy never dropped by {args.threshold}% while pruning {report['layer']}; no B' for it")
    _say(args, format_table(report))
    _say(args, f"wrote {report['files']['report']}, {report['files']['curve_plot']} and B'/GoodNet files to {args.out_dir}")
    if args.out:
        write_json(args.out, report)
    return 0


def cmd_eval(args):
    from aegis_tf.models import load_model
    from aegis_tf.utils import write_json
    from repair.goodnet import GoodNet
    from repair.pipeline import evaluate_goodnet

    if args.goodnet:
        g = GoodNet.load(args.goodnet)
        sources = {"goodnet": args.goodnet}
    else:
        model_path, weights = _resolve_model_paths(args)
        pruned = args.pruned_bad_model_weights or os.path.join(args.out_dir, f"B_prime_{args.threshold}.weights.h5")
        base = load_model(model_path, weights)
        g = GoodNet(base).load_weights(None, pruned)
        sources = {"bad_model": model_path, "bad_model_weights": weights, "pruned_bad_model_weights": pruned}
    test, pt = _load_set(args.clean_set, "test", g.B, args.scale, "--clean_set")
    bad, pb = _load_set(args.bad_set, "bd_test", g.B, args.scale, "--bad_set")
    res = evaluate_goodnet(g, *test, *bad, batch_size=args.batch_size)
    sources.update(clean_set=pt, bad_set=pb, scale=args.scale)
    for name, label in (("B", "B (backdoored)"), ("B_prime", "B' (pruned)"), ("G", "GoodNet")):
        m = res[name]
        line = f"{label:<16} clean accuracy {100 * m['clean_acc']:6.2f}%   attack success rate {100 * m['asr']:6.2f}%"
        if name == "G":
            line += f"   poisoned sent to class N={g.num_classes}: {100 * m['bad_rejected']:.2f}%"
        print(line)
    if args.out:
        write_json(args.out, {"sources": sources, **res})
    return 0


COMMANDS = {"repair": cmd_repair, "eval": cmd_eval}


def _import_keras_quietly():
    """Import Keras (and TensorFlow) with C++ start-up chatter kept off stderr.

    TensorFlow's C++ runtime prints absl/CUDA notices straight to file
    descriptor 2 on import; they would drown the one-line errors. Set
    AEGIS_DEBUG=1 to see them.
    """
    import logging

    if os.environ.get("AEGIS_DEBUG"):
        import keras
    else:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            import keras
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return keras


def main(argv=None):
    """Run the CLI; returns the exit status (2 for bad input)."""
    try:
        args = build_parser().parse_args(argv)
        keras = _import_keras_quietly()
        keras.utils.set_random_seed(args.seed)
        return COMMANDS[args.command](args)
    except AegisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
