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


def _common(p, out=True):
    _flag(p, "--scale", choices=("raw", "unit"), default="raw",
          help="pixel scaling fed to the model: raw (0-255 as stored; CSAW lab3, default) or unit (divided by 255)")
    _flag(p, "--batch_size", type=int, default=256, help="inference batch size (default 256)")
    _flag(p, "--seed", type=int, default=0, help="global random seed (default 0)")
    if out:
        _flag(p, "--out", default=None, help="also write the result JSON to this path")
    p.add_argument("--quiet", action="store_true", help="no progress bars, summary only")


def _model_flags(p):
    _flag(p, "--bad_model", default=None,
          help="backdoored model B, .keras or full-model .h5 (default: models/bd_net.h5 unless only weights are given)")
    _flag(p, "--bad_model_weights", default=None,
          help="weights for B; without --bad_model they load into the built-in CSAW DeepID net")


def _data_flags(p, test=True):
    _flag(p, "--data", default="digits",
          help="training data: mnist, fashion_mnist, cifar10, digits, an .npz (x_train, y_train, x_test, y_test) "
               "or a CSAW .h5 (default digits)")
    if test:
        _flag(p, "--test-data", default=None, help="test set .h5 (default: the test split of --data)")
    _flag(p, "--data-dir", default=None, help="folder with NAME.npz for named sets (else $AEGIS_DATA_DIR)")


def _trigger_flags(p, default="localised"):
    from aegis_tf.triggers import TRIGGERS

    _flag(p, "--trigger", choices=tuple(TRIGGERS), default=default, help=f"trigger (default {default})")
    _flag(p, "--target-label", type=int, default=7, help="attacker's target class (paper: 7)")
    _flag(p, "--trigger-size", type=int, default=2, help="square side in pixels for localised/distributed (default 2)")
    _flag(p, "--trigger-value", type=float, default=250 / 255,
          help="square intensity in units of [0, 1] (default 250/255, the paper's 250)")
    _flag(p, "--amplitude", type=float, default=8 / 255,
          help="invisible-static amplitude per pixel in units of [0, 1] (default 8/255)")
    _flag(p, "--trigger-seed", type=int, default=0, help="seed of the invisible patterns (default 0)")
    _flag(p, "--trigger-pattern", default=None, help="invisible-adversarial pattern .npy (written by poison/train)")
    _flag(p, "--trigger-model", default=None, help="model used to compute the invisible-adversarial pattern")
    _flag(p, "--trigger-eps", type=float, default=16 / 255,
          help="Linf bound of the invisible-adversarial pattern, units of [0, 1] (default 16/255)")


def _pgd_flags(p):
    _flag(p, "--eps", type=float, default=0.5, help="PGD radius in units of the [0, 1] image range (paper: 0.5, L2)")
    _flag(p, "--steps", type=int, default=20, help="PGD steps (default 20)")
    _flag(p, "--step-size", type=float, default=None, help="PGD step size, units of [0, 1] (default 2.5 * eps / steps)")
    _flag(p, "--norm", choices=("2", "inf"), default="2", help="PGD norm (default 2)")


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

    po = sub.add_parser("poison", help="poison a training set; write CSAW .h5 and .npz; --preview saves a grid")
    _data_flags(po)
    _trigger_flags(po)
    _flag(po, "--poison-rate", type=float, default=0.01, help="fraction of the training set poisoned (paper: 0.01 "
          "visible, 0.3 invisible)")
    _flag(po, "--mode", choices=("append", "replace"), default="append", help="append poisoned copies or replace originals")
    _flag(po, "--preview", action="store_true", help="save preview.png: clean and triggered samples for every trigger")
    _flag(po, "--out-dir", default=os.path.join("out", "poison"), help="output folder (default out/poison)")
    _common(po)

    t = sub.add_parser("train", help="train a (backdoored) model, standard or Madry-robust; then evaluate it")
    _data_flags(t)
    _trigger_flags(t)
    _flag(t, "--arch", choices=("compact", "resnet18", "resnet50", "deepid"), default="compact",
          help="architecture (default compact)")
    _flag(t, "--width", type=int, default=None, help="channel width (compact 16, resnet 64 by default)")
    _flag(t, "--poison-rate", type=float, default=0.01, help="fraction poisoned; 0 trains a clean model")
    _flag(t, "--mode", choices=("append", "replace"), default="append", help="append or replace poisoned samples")
    t.add_argument("--robust", dest="robust", action="store_true", default=True,
                   help="Madry adversarial training with PGD (default)")
    t.add_argument("--no-robust", dest="robust", action="store_false", help="standard training")
    _pgd_flags(t)
    _flag(t, "--eps-warmup", type=int, default=0,
          help="ramp eps linearly over this many first epochs (default 0, as in the paper)")
    t.add_argument("--augment", action="store_true",
                   help="random 4-pixel-padded crops and horizontal flips each epoch (CIFAR-style; off by default)")
    _flag(t, "--epochs", type=int, default=20, help="epochs (default 20)")
    _flag(t, "--train-batch-size", type=int, default=128, help="training batch size (default 128)")
    _flag(t, "--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    _flag(t, "--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    _flag(t, "--weight-decay", type=float, default=5e-4, help="weight decay (default 5e-4)")
    _flag(t, "--lr-milestones", default="0.5,0.75", help="fractions of the epochs where the rate drops (default 0.5,0.75)")
    _flag(t, "--lr-drop", type=float, default=0.1, help="factor at each milestone (default 0.1)")
    _flag(t, "--checkpoint-dir", default=None, help="checkpoint every epoch here and resume from it (default OUT.ckpt/)")
    t.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing checkpoint")
    _flag(t, "--no-eval", action="store_true", help="skip the evaluation after training")
    t.add_argument("--out", dest="model_out", default="model.keras", help="where to save the model (.keras or .h5)")
    _flag(t, "--report", default=None, help="write the training and evaluation JSON here (default OUT.json)")
    _common(t, out=False)
    t.set_defaults(out=None)

    d = sub.add_parser("detect", help="is this model backdoored, and which class is the target? (AEGIS or Neural Cleanse)",
                       description="AEGIS: translate training images toward each class with targeted L2 PGD; flag "
                                   "a class when enough of its translations carry a patch that moves other images "
                                   "to it (default), or, as in the paper, when t-SNE + clustering of features shows "
                                   "more clusters than clean classes. With no model flag it examines the embedded robust clean and "
                                   "backdoored digits models.")
    _model_flags(d)
    _flag(d, "--data", default=None, help="training images: .h5, .npz (train split) or a named set (default data/train.h5)")
    _flag(d, "--data-dir", default=None, help="folder with NAME.npz for named sets")
    _flag(d, "--method", choices=("aegis", "neural-cleanse", "both"), default="aegis", help="detector (default aegis)")
    _flag(d, "--preset", choices=("default", "paper"), default="default",
          help="default: the best measured configuration; paper: the authors' (500 seeds, bandwidth 35, 1 run)")
    _flag(d, "--classes", default=None, help="comma-separated classes to examine (default all)")
    _flag(d, "--seeds", type=int, default=None, help="images translated toward each class (default 200; paper 500)")
    _flag(d, "--steps", type=int, default=None, help="PGD steps of the translation (default and paper 75)")
    _flag(d, "--eps", type=float, default=None, help="L2 radius of the translation, units of [0, 1] (paper: 100 MNIST, 500 CIFAR)")
    _flag(d, "--step-size", type=float, default=None, help="translation step, units of [0, 1] (paper 0.25)")
    _flag(d, "--start-noise", type=float, default=None,
          help="std of Gaussian noise added to each seed before translating, units of [0, 1] (default 0.1; paper 0)")
    _flag(d, "--score", choices=("transfer", "clusters"), default=None,
          help="transfer: share of translations whose most-changed pixels move other images to the class "
               "(default); clusters: t-SNE + clustering counts (the paper)")
    _flag(d, "--top-frac", type=float, default=None, help="share of pixels in a translation's patch (default 0.02)")
    _flag(d, "--probes", type=int, default=None, help="clean images each patch is pasted onto (default 20)")
    _flag(d, "--flip-at", type=float, default=None,
          help="share of the probes a patch must move to the class for its translation to count (default 0.9)")
    _flag(d, "--layer", default=None, help="feature layer (default: the penultimate layer)")
    _flag(d, "--reducer", choices=("tsne", "pca"), default=None, help="2-D reduction (default tsne)")
    _flag(d, "--clusterer", choices=("meanshift", "hdbscan", "affinity"), default=None, help="clustering (default meanshift)")
    _flag(d, "--bandwidth", default=None, help="mean-shift bandwidth: auto or a number (paper: 35 MNIST)")
    _flag(d, "--population", choices=("both", "translated"), default=None,
          help="cluster training+translated images (paper) or translated only")
    _flag(d, "--criterion", choices=("absolute", "relative"), default=None,
          help="absolute: more clusters than a clean class (paper); relative: more than the median class")
    _flag(d, "--runs", type=int, default=None, help="t-SNE seeds to vote over with --score clusters (default and paper 1)")
    _flag(d, "--jobs", type=int, default=1,
          help="classes reduced and clustered at once, in threads (default 1; -1: every core); same report")
    _flag(d, "--out-dir", default=os.path.join("out", "detect"), help="report folder (default out/detect)")
    _common(d)

    ev = sub.add_parser("evaluate", help="clean accuracy, ASR and PGD adversarial accuracy of a model")
    _flag(ev, "--model", required=True, help="model to evaluate (.keras or .h5)")
    _flag(ev, "--data", default="digits", help="data set or file; its test split is used (default digits)")
    _flag(ev, "--data-dir", default=None, help="folder with NAME.npz for named sets")
    _trigger_flags(ev)
    _pgd_flags(ev)
    _flag(ev, "--no-adversarial", action="store_true", help="skip the PGD evaluation")
    _common(ev)
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
    print(format_table(report))
    print(f"wrote {report['files']['report']}, {report['files']['curve_plot']} and B'/GoodNet files to {args.out_dir}")
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


def _pixel_max(scale):
    return 255.0 if scale == "raw" else 1.0


def _norm(value):
    import numpy as np

    return np.inf if value == "inf" else 2


def _train_test(args):
    from aegis_tf.data import load_h5, load_split

    train = load_split(args.data, split="train", data_dir=args.data_dir, scale=args.scale)
    if getattr(args, "test_data", None):
        test = load_h5(args.test_data, scale=args.scale)
    elif args.data.endswith((".h5", ".hdf5")):
        raise AegisError("--data is a single .h5 set; give the test set with --test-data")
    else:
        test = load_split(args.data, split="test", data_dir=args.data_dir, scale=args.scale)
    return train, test


def _trigger(args, x_sample=None, model=None):
    """The trigger function the flags describe, and the adversarial pattern if any."""
    import numpy as np

    from aegis_tf.triggers import make_trigger, universal_perturbation

    pm = _pixel_max(args.scale)
    pattern = None
    if args.trigger == "invisible-adversarial":
        if args.trigger_pattern:
            try:
                pattern = np.load(args.trigger_pattern, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise AegisError(f"cannot read trigger pattern {args.trigger_pattern}: {e}") from None
        else:
            if args.trigger_model:
                from aegis_tf.models import load_model

                model = load_model(args.trigger_model)
            if model is None or x_sample is None:
                raise AegisError("the invisible-adversarial trigger needs --trigger-pattern FILE.npy or --trigger-model M")
            eps = args.trigger_eps * pm
            pattern = universal_perturbation(model, x_sample, args.target_label, eps=eps, step_size=eps / 10,
                                             steps=50, norm=np.inf, clip_min=0.0, clip_max=pm, seed=args.trigger_seed)
    fn = make_trigger(args.trigger, pixel_max=pm, size=args.trigger_size, value=args.trigger_value,
                      amplitude=args.amplitude, seed=args.trigger_seed, pattern=pattern)
    return fn, pattern


def _check_rate(rate):
    if not 0.0 <= rate <= 1.0:
        raise AegisError(f"--poison-rate must lie in [0, 1]. Received: {rate}")


def cmd_poison(args):
    import numpy as np

    from aegis_tf.data import save_h5
    from aegis_tf.report import save_image_grid
    from aegis_tf.triggers import TRIGGERS, poison
    from aegis_tf.utils import atomic_path, write_json

    _check_rate(args.poison_rate)
    (x, y), (xt, yt) = _train_test(args)
    fn, pattern = _trigger(args, x_sample=x)
    xp, yp, idx = poison(x, y, trigger=fn, poison_rate=args.poison_rate, target_label=args.target_label,
                         mode=args.mode, seed=args.seed)
    keep = yt != args.target_label
    xbd, ybd = fn(xt[keep]), np.full(int(keep.sum()), args.target_label)
    out = args.out_dir
    pm = _pixel_max(args.scale)
    to_raw = (lambda a: a * 255.0) if pm == 1.0 else (lambda a: a)  # files hold raw pixels
    files = {"train_h5": os.path.join(out, "train_poisoned.h5"), "train_npz": os.path.join(out, "poisoned.npz"),
             "test_h5": os.path.join(out, "test.h5"), "bd_test_h5": os.path.join(out, "bd_test.h5")}
    save_h5(files["train_h5"], to_raw(xp), yp)
    save_h5(files["test_h5"], to_raw(xt), yt)
    save_h5(files["bd_test_h5"], to_raw(xbd), ybd)
    with atomic_path(files["train_npz"]) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, x_train=to_raw(xp), y_train=yp, x_test=to_raw(xt), y_test=yt)
    if pattern is not None:
        files["pattern"] = os.path.join(out, "trigger_pattern.npy")
        with atomic_path(files["pattern"]) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, pattern)
    if args.preview:
        rng = np.random.default_rng(args.seed)
        sample = x[rng.choice(len(x), size=min(8, len(x)), replace=False)]
        rows = [("clean", sample)]
        for name in TRIGGERS:
            args_t = argparse.Namespace(**{**vars(args), "trigger": name})
            try:
                tf_, _ = _trigger(args_t, x_sample=x) if name != args.trigger else (fn, pattern)
            except AegisError:
                continue  # invisible-adversarial without a model or pattern
            trig = tf_(sample)
            rows.append((name, trig))
            if name.startswith("invisible"):
                rows.append((f"{name} x10 (difference)", 10 * (trig - sample)))
        files["preview"] = os.path.join(out, "preview.png")
        save_image_grid(rows, files["preview"], pixel_max=pm, title="clean and triggered samples")
    report = {"data": args.data, "trigger": args.trigger, "poison_rate": args.poison_rate,
              "target_label": args.target_label, "mode": args.mode, "seed": args.seed,
              "n_train": int(len(x)), "n_poisoned": int(len(idx)), "poisoned_indices": idx, "files": files}
    write_json(os.path.join(out, "poison.json"), report)
    print(f"poisoned {len(idx)} of {len(x)} training images ({args.trigger}, target {args.target_label}, "
          f"{args.mode}); wrote {', '.join(sorted(files.values()))}")
    if args.out:
        write_json(args.out, report)
    return 0


def _eval_line(res):
    parts = [f"clean accuracy {100 * res['clean_acc']:.2f}%"]
    if "asr" in res:
        parts.append(f"ASR {100 * res['asr']:.2f}%")
    if "adv_acc" in res:
        a = res["adv"]
        parts.append(f"adversarial accuracy {100 * res['adv_acc']:.2f}% (L{a['norm']} PGD, eps {a['eps']}, {a['steps']} steps)")
    return ", ".join(parts)


def cmd_train(args):
    import keras
    import numpy as np

    from aegis_tf.evaluation import evaluate_backdoor
    from aegis_tf.models import build_model
    from aegis_tf.training import TrainConfig, train
    from aegis_tf.triggers import poison
    from aegis_tf.utils import atomic_path, write_json

    _check_rate(args.poison_rate)
    if not args.model_out.endswith((".keras", ".h5")):
        raise AegisError(f"--out must end in .keras or .h5. Received: {args.model_out}")
    try:
        milestones = [float(m) for m in args.lr_milestones.split(",") if m.strip()]
    except ValueError:
        raise AegisError(f"--lr-milestones must be comma-separated fractions. Received: {args.lr_milestones}") from None
    config = TrainConfig(epochs=args.epochs, batch_size=args.train_batch_size, learning_rate=args.lr,
                         momentum=args.momentum, weight_decay=args.weight_decay, lr_milestones=milestones,
                         lr_drop=args.lr_drop, robust=args.robust, eps=args.eps, steps=args.steps,
                         step_size=args.step_size, norm=args.norm, eps_warmup=args.eps_warmup,
                         augment=args.augment, pixel_max=_pixel_max(args.scale), seed=args.seed)
    (x, y), (xt, yt) = _train_test(args)
    n_classes = int(max(y.max(), yt.max())) + 1
    if not 0 <= args.target_label < n_classes:
        raise AegisError(f"--target-label must lie in 0..{n_classes - 1}. Received: {args.target_label}")
    fn, pattern = _trigger(args, x_sample=x)
    xp, yp, idx = poison(x, y, trigger=fn, poison_rate=args.poison_rate, target_label=args.target_label,
                         mode=args.mode, seed=args.seed)
    keras.utils.set_random_seed(args.seed)
    from aegis_tf.backend import enable_determinism

    enable_determinism()
    model = build_model(args.arch, input_shape=x.shape[1:], num_classes=n_classes,
                        input_scale=1.0 / _pixel_max(args.scale), width=args.width)
    ckpt = args.checkpoint_dir or args.model_out + ".ckpt"
    history = train(model, xp, yp, config=config, checkpoint_dir=ckpt, resume=args.resume, quiet=args.quiet)
    with atomic_path(args.model_out) as tmp:
        model.save(tmp)
    report = {"data": args.data, "arch": args.arch, "trigger": args.trigger, "target_label": args.target_label,
              "poison_rate": args.poison_rate, "n_poisoned": int(len(idx)), "config": config, "history": history,
              "model": args.model_out}
    if pattern is not None:
        report["trigger_pattern"] = args.model_out + ".pattern.npy"
        with atomic_path(report["trigger_pattern"]) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, pattern)
    if not args.no_eval:
        report["test"] = evaluate_backdoor(
            model, xt, yt, trigger=fn if args.poison_rate > 0 else None, target_label=args.target_label,
            adversarial=True, eps=args.eps, steps=args.steps, step_size=config["step_size"], norm=_norm(args.norm),
            pixel_max=_pixel_max(args.scale), batch_size=args.batch_size, seed=args.seed)
        print(f"{args.model_out}: {_eval_line(report['test'])}")
    write_json(args.report or args.model_out + ".json", report)
    return 0


def _detect_config(args):
    from aegis_tf.detect_job import detect_config

    config = detect_config(args.preset)
    for flag, key in (("seeds", "n_seeds"), ("steps", "steps"), ("eps", "eps"), ("step_size", "step_size"),
                      ("start_noise", "start_noise"), ("layer", "layer"), ("reducer", "reducer"), ("clusterer", "clusterer"),
                      ("population", "population"), ("criterion", "criterion"), ("runs", "runs"),
                      ("score", "score"), ("top_frac", "top_frac"), ("probes", "n_probes"),
                      ("flip_at", "flip_at")):
        if getattr(args, flag) is not None:
            config[key] = getattr(args, flag)
    if args.bandwidth is not None:
        if args.bandwidth == "auto":
            config["bandwidth"] = "auto"
        else:
            try:
                config["bandwidth"] = float(args.bandwidth)
            except ValueError:
                raise AegisError(f"--bandwidth must be auto or a number. Received: {args.bandwidth}") from None
            if config["bandwidth"] <= 0:
                raise AegisError(f"--bandwidth must be positive. Received: {args.bandwidth}")
    for key, flag in (("n_seeds", "seeds"), ("steps", "steps"), ("runs", "runs"), ("n_probes", "probes")):
        if config[key] < 1:
            raise AegisError(f"--{flag} must be at least 1. Received: {config[key]}")
    if args.jobs == 0 or args.jobs < -1:
        raise AegisError(f"--jobs must be a positive integer or -1. Received: {args.jobs}")
    if config["start_noise"] < 0:
        raise AegisError(f"--start-noise must be >= 0. Received: {config['start_noise']}")
    if not 0.0 < config["top_frac"] <= 1.0:
        raise AegisError(f"--top-frac must lie in (0, 1]. Received: {config['top_frac']}")
    if not 0.0 < config["flip_at"] <= 1.0:
        raise AegisError(f"--flip-at must lie in (0, 1]. Received: {config['flip_at']}")
    return config


def _parse_classes(text, n_classes):
    if text is None:
        return list(range(n_classes))
    try:
        classes = sorted({int(c) for c in text.split(",") if c.strip()})
    except ValueError:
        raise AegisError(f"--classes must be comma-separated class numbers. Received: {text}") from None
    bad = [c for c in classes if not 0 <= c < n_classes]
    if bad or not classes:
        raise AegisError(f"--classes must lie in 0..{n_classes - 1}. Received: {text}")
    return classes


def cmd_detect(args):
    from aegis_tf.data import check_fits_model, load_split
    from aegis_tf.defaults import PATHS
    from aegis_tf.detect_job import format_summary, run_aegis, run_neural_cleanse
    from aegis_tf.models import load_model
    from aegis_tf.utils import write_json

    config = _detect_config(args)
    if args.bad_model is None and args.bad_model_weights is None:
        targets = [("robust_bd_net", PATHS["robust_bd_net"], None), ("robust_clean_net", PATHS["robust_clean_net"], None)]
    else:
        targets = [(os.path.splitext(os.path.basename(args.bad_model or args.bad_model_weights))[0],
                    args.bad_model, args.bad_model_weights)]
    data = args.data or PATHS["train"]
    x_data, y = load_split(data, split="train", data_dir=args.data_dir, scale=args.scale)
    loaded = []
    for name, path, weights in targets:  # check every input before any work
        model = load_model(path, weights)
        x = check_fits_model(x_data, y, model, f"--data {data}")
        classes = _parse_classes(args.classes, int(model.output_shape[-1]))
        missing = [c for c in classes if not (y == c).any()]
        if missing and args.method != "neural-cleanse":
            raise AegisError(f"--data {data} has no images of class(es) {', '.join(map(str, missing[:10]))}; "
                             "AEGIS needs training images of every examined class (use --classes)")
        loaded.append((name, path or weights, model, x, y, classes))
    pm = _pixel_max(args.scale)
    summary = {"config": config, "data": data, "scale": args.scale, "models": {}}
    for name, source, model, x, y, classes in loaded:
        out_dir = os.path.join(args.out_dir, name) if len(loaded) > 1 else args.out_dir
        result = {"model": source}
        if args.method in ("aegis", "both"):
            result["aegis"] = run_aegis(model, x, y, classes=classes, config=config, pixel_max=pm, out_dir=out_dir,
                                        seed=args.seed, batch_size=args.batch_size, quiet=args.quiet,
                                        n_jobs=args.jobs)
            print(format_summary(result["aegis"], name))
        if args.method in ("neural-cleanse", "both"):
            result["neural_cleanse"] = run_neural_cleanse(model, x, classes=classes, pixel_max=pm, out_dir=out_dir,
                                                          seed=args.seed, quiet=args.quiet)
            print(format_summary(result["neural_cleanse"], name))
        write_json(os.path.join(out_dir, "detect.json"), result)
        summary["models"][name] = result
    print(f"report: {args.out_dir}")
    if args.out:
        write_json(args.out, summary)
    return 0


def cmd_evaluate(args):
    from aegis_tf.data import check_fits_model, load_split
    from aegis_tf.evaluation import evaluate_backdoor
    from aegis_tf.models import load_model
    from aegis_tf.utils import write_json

    model = load_model(args.model)
    xt, yt = load_split(args.data, split="test", data_dir=args.data_dir, scale=args.scale)
    xt = check_fits_model(xt, yt, model, f"--data {args.data}")
    fn, _ = _trigger(args, x_sample=xt)  # an adversarial pattern must come from training, not this model
    res = evaluate_backdoor(model, xt, yt, trigger=fn, target_label=args.target_label,
                            adversarial=not args.no_adversarial, eps=args.eps, steps=args.steps,
                            step_size=args.step_size, norm=_norm(args.norm), pixel_max=_pixel_max(args.scale),
                            batch_size=args.batch_size, seed=args.seed)
    res.update(model=args.model, data=args.data, trigger=args.trigger, target_label=args.target_label)
    print(f"{args.model}: {_eval_line(res)}")
    if args.out:
        write_json(args.out, res)
    return 0


COMMANDS = {"repair": cmd_repair, "eval": cmd_eval, "poison": cmd_poison, "train": cmd_train, "evaluate": cmd_evaluate,
            "detect": cmd_detect}


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
