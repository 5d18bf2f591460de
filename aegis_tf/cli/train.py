"""``aegis train``: train a (backdoored) model, standard or Madry-robust
(calls :func:`aegis_tf.api.train`)."""

from aegis_tf.cli._util import (POISON_MODE, POISON_RATE, common_flags, data_flags, field_defaults, flag, pgd_flags,
                                settings, shown, trigger_flags, trigger_settings)

NAME, ALIASES = "train", ()


def _milestones(text):
    import argparse

    try:
        return tuple(float(m) for m in text.split(",") if m.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr-milestones must be comma-separated fractions. Received: {text}")


def add(sub):
    from aegis_tf.attack.config import TrainConfig

    t = field_defaults(TrainConfig)  # the training flags' defaults, defined once
    p = sub.add_parser(NAME, help="train a (backdoored) model, standard or Madry-robust; then evaluate it")
    data_flags(p)
    trigger_flags(p)
    flag(p, "--arch", choices=("compact", "resnet18", "resnet50", "deepid"), default="compact",
         help="architecture (default %(default)s)")
    flag(p, "--width", type=int, default=None, help="channel width (compact 16, resnet 64 by default)")
    flag(p, "--poison-rate", type=float, default=POISON_RATE, help="fraction poisoned; 0 trains a clean model")
    flag(p, "--mode", choices=("append", "replace"), default=POISON_MODE, help="append or replace poisoned samples")
    p.add_argument("--robust", dest="robust", action="store_true", default=t["robust"],
                   help="Madry adversarial training with PGD" + (" (default)" if t["robust"] else ""))
    p.add_argument("--no-robust", dest="robust", action="store_false",
                   help="standard training" + ("" if t["robust"] else " (default)"))
    pgd_flags(p)
    flag(p, "--eps-warmup", type=int, default=t["eps_warmup"],
         help="ramp eps linearly over this many first epochs (default %(default)s, as in the paper)")
    p.add_argument("--augment", action="store_true", default=t["augment"],
                   help="random 4-pixel-padded crops and horizontal flips each epoch "
                        f"(CIFAR-style; {'on' if t['augment'] else 'off'} by default)")
    flag(p, "--epochs", type=int, default=t["epochs"], help="epochs (default %(default)s)")
    flag(p, "--train-batch-size", type=int, default=t["batch_size"], dest="train_batch_size",
         help="training batch size (default %(default)s)")
    flag(p, "--lr", type=float, default=t["learning_rate"], dest="learning_rate",
         help=f"SGD learning rate (default {shown(t['learning_rate'])})")
    flag(p, "--momentum", type=float, default=t["momentum"], help=f"SGD momentum (default {shown(t['momentum'])})")
    flag(p, "--weight-decay", type=float, default=t["weight_decay"],
         help=f"weight decay (default {shown(t['weight_decay'])})")
    flag(p, "--lr-milestones", type=_milestones, default=t["lr_milestones"],
         help=f"fractions of the epochs where the rate drops (default {shown(t['lr_milestones'])})")
    flag(p, "--lr-drop", type=float, default=t["lr_drop"], help=f"factor at each milestone (default {shown(t['lr_drop'])})")
    flag(p, "--checkpoint-dir", default=None,
         help="checkpoint every epoch here and resume from it (default MODEL_OUT.ckpt/)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing checkpoint")
    flag(p, "--no-eval", action="store_true", help="skip the evaluation after training")
    flag(p, "--model-out", default="model.keras",
         help="where to save the model (.keras or .h5; default %(default)s)")
    common_flags(p, out=False)
    flag(p, "--out", "--report", default=None, help="the training and evaluation JSON (default MODEL_OUT.json)")
    p.set_defaults(run=run)
    return p


def run(args):
    from aegis_tf.api import train
    from aegis_tf.attack.config import TrainConfig
    from aegis_tf.attack.job import eval_line
    from aegis_tf.core.settings import pixel_max_of
    from aegis_tf.core.utils import check_out_file, write_json

    check_out_file(args.model_out, "--model-out")  # its report goes beside it unless --out says elsewhere
    check_out_file(args.out, "--out")
    config = settings(TrainConfig, args, batch_size=args.train_batch_size, pixel_max=pixel_max_of(args.scale))
    report = train(args.data, trigger_settings(args), config, arch=args.arch, width=args.width,
                   poison_rate=args.poison_rate, mode=args.mode, model_out=args.model_out, test_data=args.test_data,
                   data_dir=args.data_dir, scale=args.scale, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                   evaluate=not args.no_eval, batch_size=args.batch_size, quiet=args.quiet)
    if "test" in report:
        print(f"{args.model_out}: {eval_line(report['test'])}")
    if args.out:  # the job wrote MODEL.json beside the model
        write_json(args.out, report)
    return 0
