"""``aegis train``: train a (backdoored) model, standard or Madry-robust
(calls :func:`aegis_tf.attack.job.train_job`)."""

from aegis_tf.cli._util import common_flags, data_flags, flag, pgd_flags, settings, trigger_flags

NAME, ALIASES = "train", ()


def _milestones(text):
    import argparse

    try:
        return tuple(float(m) for m in text.split(",") if m.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr-milestones must be comma-separated fractions. Received: {text}")


def add(sub):
    p = sub.add_parser(NAME, help="train a (backdoored) model, standard or Madry-robust; then evaluate it")
    data_flags(p)
    trigger_flags(p)
    flag(p, "--arch", choices=("compact", "resnet18", "resnet50", "deepid"), default="compact",
         help="architecture (default compact)")
    flag(p, "--width", type=int, default=None, help="channel width (compact 16, resnet 64 by default)")
    flag(p, "--poison-rate", type=float, default=0.01, help="fraction poisoned; 0 trains a clean model")
    flag(p, "--mode", choices=("append", "replace"), default="append", help="append or replace poisoned samples")
    p.add_argument("--robust", dest="robust", action="store_true", default=True,
                   help="Madry adversarial training with PGD (default)")
    p.add_argument("--no-robust", dest="robust", action="store_false", help="standard training")
    pgd_flags(p)
    flag(p, "--eps-warmup", type=int, default=0,
         help="ramp eps linearly over this many first epochs (default 0, as in the paper)")
    p.add_argument("--augment", action="store_true",
                   help="random 4-pixel-padded crops and horizontal flips each epoch (CIFAR-style; off by default)")
    flag(p, "--epochs", type=int, default=20, help="epochs (default 20)")
    flag(p, "--train-batch-size", type=int, default=128, dest="train_batch_size", help="training batch size (default 128)")
    flag(p, "--lr", type=float, default=0.1, dest="learning_rate", help="SGD learning rate (default 0.1)")
    flag(p, "--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    flag(p, "--weight-decay", type=float, default=5e-4, help="weight decay (default 5e-4)")
    flag(p, "--lr-milestones", type=_milestones, default=(0.5, 0.75),
         help="fractions of the epochs where the rate drops (default 0.5,0.75)")
    flag(p, "--lr-drop", type=float, default=0.1, help="factor at each milestone (default 0.1)")
    flag(p, "--checkpoint-dir", default=None,
         help="checkpoint every epoch here and resume from it (default MODEL_OUT.ckpt/)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing checkpoint")
    flag(p, "--no-eval", action="store_true", help="skip the evaluation after training")
    flag(p, "--model-out", default="model.keras", help="where to save the model (.keras or .h5; default model.keras)")
    common_flags(p, out=False)
    flag(p, "--out", "--report", default=None, help="the training and evaluation JSON (default MODEL_OUT.json)")
    p.set_defaults(run=run)
    return p


def run(args):
    from aegis_tf.attack.config import TrainConfig, TriggerConfig
    from aegis_tf.core.settings import pixel_max_of
    from aegis_tf.attack.job import eval_line, train_job
    from aegis_tf.core.utils import write_json

    config = settings(TrainConfig, args, batch_size=args.train_batch_size, pixel_max=pixel_max_of(args.scale))
    report = train_job(data=args.data, trigger=settings(TriggerConfig, args), config=config, arch=args.arch,
                       width=args.width, poison_rate=args.poison_rate, mode=args.mode, model_out=args.model_out,
                       test_data=args.test_data, data_dir=args.data_dir, scale=args.scale,
                       checkpoint_dir=args.checkpoint_dir, resume=args.resume, evaluate=not args.no_eval,
                       batch_size=args.batch_size, quiet=args.quiet)
    if "test" in report:
        print(f"{args.model_out}: {eval_line(report['test'])}")
    write_json(args.out or args.model_out + ".json", report)
    return 0
