"""``aegis evaluate-model`` (alias ``evaluate``): clean accuracy, ASR and PGD accuracy of a model
(calls :func:`aegis_tf.api.evaluate`)."""

from aegis_tf.cli._util import DATA, common_flags, flag, model_trigger_settings, pgd_flags, trigger_flags

NAME, ALIASES = "evaluate-model", ("evaluate",)


def add(sub):
    p = sub.add_parser(NAME, aliases=list(ALIASES), help="clean accuracy, ASR and PGD adversarial accuracy of a model")
    flag(p, "--model", required=True, help="model to evaluate (.keras or .h5)")
    flag(p, "--data", default=DATA, help="data set or file; its test split is used (default %(default)s)")
    flag(p, "--data-dir", default=None, help="folder with NAME.npz for named sets")
    trigger_flags(p, from_model=True)
    pgd_flags(p)
    flag(p, "--no-adversarial", action="store_true", help="skip the PGD evaluation")
    common_flags(p)
    p.set_defaults(run=run)
    return p


def run(args):
    from aegis_tf.api import evaluate
    from aegis_tf.attack.job import eval_line
    from aegis_tf.core.utils import check_out_file, write_json

    check_out_file(args.out, "--out")
    trigger, source = model_trigger_settings(args, args.model)
    res = evaluate(args.model, args.data, trigger, data_dir=args.data_dir, scale=args.scale,
                   adversarial=not args.no_adversarial, eps=args.eps, steps=args.steps, step_size=args.step_size,
                   norm=args.norm, batch_size=args.batch_size, seed=args.seed)
    res["trigger_from"] = source
    specs = trigger if isinstance(trigger, list) else [trigger]
    print(f"{args.model}: {eval_line(res)} (trigger {'; '.join(s.describe() for s in specs)}, from {source})")
    if args.out:
        write_json(args.out, res)
    return 0
