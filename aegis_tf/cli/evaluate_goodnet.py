"""``aegis evaluate-goodnet`` (the lab's ``eval``): B, B' and GoodNet on the test sets
(calls :func:`aegis_tf.api.evaluate_goodnet`)."""

from aegis_tf.cli._util import common_flags, embedded_name, flag, model_flags
from aegis_tf.cli.repair import OUT_DIR, threshold_type
from repair.config import RepairConfig

NAME, ALIASES = "evaluate-goodnet", ("eval",)


def add(sub):
    p = sub.add_parser(NAME, aliases=list(ALIASES),
                       help="clean accuracy and ASR of B, B' and GoodNet on test data (the lab's eval)",
                       description="Evaluate the backdoored net B, its pruned copy B' and GoodNet (class N when "
                                   "they disagree) on clean and poisoned test sets.")
    model_flags(p)
    flag(p, "--clean-test", "--clean_set", default=None,
         help=f"clean test .h5 (default {embedded_name('test')}; lab name --clean_set)")
    flag(p, "--bad-test", "--bad_set", default=None,
         help=f"poisoned test .h5, labels = target (default {embedded_name('bd_test')}; lab name --bad_set)")
    flag(p, "--threshold", type=threshold_type, default=RepairConfig().threshold,
         help="which B' to use when --pruned-bad-model-weights is not given: OUT_DIR/B_prime_T.weights.h5")
    flag(p, "--pruned-bad-model-weights", default=None, help="weights of the pruned model B'")
    flag(p, "--goodnet", default=None, help="a goodnet_T.keras file written by repair (instead of B and B')")
    flag(p, "--out-dir", default=OUT_DIR, help="where repair wrote B' (default %(default)s)")
    common_flags(p)
    p.set_defaults(run=run)
    return p


def run(args):
    from aegis_tf.api import evaluate_goodnet
    from aegis_tf.core.utils import check_out_file, write_json
    from repair.pipeline import format_goodnet_eval

    check_out_file(args.out, "--out")
    res = evaluate_goodnet(
        goodnet=args.goodnet, bad_model=args.bad_model, bad_model_weights=args.bad_model_weights,
        pruned_bad_model_weights=args.pruned_bad_model_weights, threshold=args.threshold, out_dir=args.out_dir,
        clean_test=args.clean_test, bad_test=args.bad_test, scale=args.scale, batch_size=args.batch_size)
    print(format_goodnet_eval(res))
    if args.out:
        write_json(args.out, res)
    return 0
