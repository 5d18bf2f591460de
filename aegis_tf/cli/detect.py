"""``aegis detect``: is this model backdoored, and toward which class?
(calls :func:`aegis_tf.detect.scan.run_detect`)."""

import argparse
import os

from aegis_tf.cli._util import common_flags, flag, model_flags, settings

NAME, ALIASES = "detect", ()


def _bandwidth(text):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bandwidth must be auto or a number. Received: {text}") from None


def add(sub):
    from aegis_tf.detect.config import PRESETS

    p = sub.add_parser(NAME, help="is this model backdoored, and which class is the target? (AEGIS or Neural Cleanse)",
                       description="AEGIS: translate training images toward each class with targeted L2 PGD; flag "
                                   "a class when enough of its translations carry a patch that moves other images "
                                   "to it (default), or, as in the paper, when t-SNE + clustering of features shows "
                                   "more clusters than clean classes. Prints one verdict line per model and writes "
                                   "detect.json and report.html. With no model flag it examines the embedded robust "
                                   "clean and backdoored digits models.")
    model_flags(p)
    flag(p, "--data", default=None, help="training images: .h5, .npz (train split) or a named set (default data/train.h5)")
    flag(p, "--data-dir", default=None, help="folder with NAME.npz for named sets")
    flag(p, "--method", choices=("aegis", "neural-cleanse", "both"), default="aegis",
         help="detector (default aegis); both gives one verdict from the two")
    flag(p, "--preset", choices=("default",) + tuple(PRESETS), default="default",
         help="default: the best measured configuration; paper: the authors' (500 seeds, bandwidth 35, 1 run)")
    flag(p, "--classes", default=None, help="comma-separated classes to examine (default all)")
    # The fields of aegis_tf.detect.config.DetectConfig; None keeps the preset's value.
    flag(p, "--n-seeds", "--seeds", type=int, default=None, help="images translated toward each class (default 200; paper 500)")
    flag(p, "--steps", type=int, default=None, help="PGD steps of the translation (default and paper 75)")
    flag(p, "--eps", type=float, default=None, help="L2 radius of the translation, units of [0, 1] (paper: 100 MNIST, 500 CIFAR)")
    flag(p, "--step-size", type=float, default=None, help="translation step, units of [0, 1] (paper 0.25)")
    flag(p, "--start-noise", type=float, default=None,
         help="std of Gaussian noise added to each seed before translating, units of [0, 1] (default 0.1; paper 0)")
    flag(p, "--score", choices=("transfer", "clusters"), default=None,
         help="transfer: share of translations whose most-changed pixels move other images to the class "
              "(default); clusters: t-SNE + clustering counts (the paper)")
    flag(p, "--top-frac", type=float, default=None, help="share of pixels in a translation's patch (default 0.02)")
    flag(p, "--n-probes", "--probes", type=int, default=None, help="clean images each patch is pasted onto (default 20)")
    flag(p, "--flip-at", type=float, default=None,
         help="share of the probes a patch must move to the class for its translation to count (default 0.9)")
    flag(p, "--layer", default=None, help="feature layer of the cluster analysis (default: the penultimate layer)")
    flag(p, "--reducer", choices=("tsne", "pca"), default=None, help="2-D reduction (default tsne)")
    flag(p, "--clusterer", choices=("meanshift", "hdbscan", "affinity"), default=None, help="clustering (default meanshift)")
    flag(p, "--bandwidth", type=_bandwidth, default=None, help="mean-shift bandwidth: auto or a number (paper: 35 MNIST)")
    flag(p, "--population", choices=("both", "translated"), default=None,
         help="cluster training+translated images (paper) or translated only")
    flag(p, "--criterion", choices=("absolute", "relative"), default=None,
         help="absolute: more clusters than a clean class (paper); relative: more than the median class")
    flag(p, "--runs", type=int, default=None, help="t-SNE seeds to vote over with --score clusters (default and paper 1)")
    flag(p, "--min-cluster-frac", type=float, default=None, help="clusters smaller than this share are not counted (default 0)")
    p.add_argument("--whole-image", action=argparse.BooleanOptionalAction, default=None,
                   help="also score whole-image triggers (invisible, blended) from the same translations "
                        "(default on; off in the paper preset)")
    flag(p, "--wi-probes", type=int, default=None, help="clean probes of the whole-image signal (default 50)")
    flag(p, "--wi-threshold", type=float, default=None,
         help="the whole-image signal flags a class that needs this many times less norm than every other (default 2)")
    p.add_argument("--blend-probe", dest="wi_blend", action=argparse.BooleanOptionalAction, default=None,
                   help="the whole-image signal's blend probe, for blended triggers (default: on in a full scan "
                        "with the whole-image signal, skipped in a staged one; --blend-probe insists, "
                        "--no-blend-probe turns it off)")
    flag(p, "--scan", choices=("auto", "full", "staged"), default=None,
         help="full: the detector on every class; staged: screen every class with short translations, then the "
              "full detector on the top-k and any alarmed class; auto (default): staged above 20 classes")
    flag(p, "--stage1-seeds", type=int, default=None, help="staged scan: translations per class in stage 1 (default 10)")
    flag(p, "--stage1-steps", type=int, default=None, help="staged scan: PGD steps in stage 1 (default 15)")
    flag(p, "--top-k", type=int, default=None,
         help="staged scan: classes each stage-1 signal promotes to stage 2 (default 5)")
    flag(p, "--alarm-transfer", type=float, default=None,
         help="staged scan: also promote any class whose stage-1 patch share reaches this (default 0.1)")
    flag(p, "--alarm-gap", type=float, default=None,
         help="staged scan: also promote any class whose stage-1 whole-image gap reaches this (default 1.5)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted scan from the progress it saved in --out-dir (a staged scan's "
                        "stage-1 results, scan_state.json, and stage-2 translations, scan_stage2.npz; a full scan's translations, "
                        "scan_translations/)")
    p.add_argument("--plots", action="store_true",
                   help="also draw the t-SNE embedding figure (runs t-SNE and clustering; the transfer verdict does not need them)")
    flag(p, "--jobs", type=int, default=1,
         help="classes reduced and clustered at once, in threads (default 1; -1: every core); same report")
    flag(p, "--out-dir", default=os.path.join("out", "detect"), help="report folder (default out/detect)")
    common_flags(p)
    p.set_defaults(run=run)
    return p


def run(args):
    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.scan import run_detect
    from aegis_tf.detect.staged import ROWS_FILE, STAGE2_FILE, STATE_FILE
    from aegis_tf.core.utils import no_partial_report, write_json

    base = DetectConfig.from_preset(args.preset)
    config = settings(DetectConfig, args, **{k: v for k, v in base.to_dict().items() if getattr(args, k) is None})
    with no_partial_report(args.out_dir, keep=(STATE_FILE, ROWS_FILE, STAGE2_FILE)):  # Ctrl-C leaves no half-made report
        results = run_detect(config=config, bad_model=args.bad_model, bad_model_weights=args.bad_model_weights,
                             data=args.data, data_dir=args.data_dir, scale=args.scale, method=args.method,
                             classes=args.classes, out_dir=args.out_dir, seed=args.seed, batch_size=args.batch_size,
                             quiet=args.quiet, plots=args.plots, n_jobs=args.jobs, resume=args.resume)
    print(f"report: {args.out_dir}")
    for name, result in results.items():  # where `repair --trigger-from` finds the recovered triggers
        if result.get("triggers"):
            folder = os.path.join(args.out_dir, name) if len(results) > 1 else args.out_dir
            print(f"{name}: recovered trigger(s) {', '.join(result['triggers'])}; repair from them with "
                  f"`repair --trigger-from {folder}`")
    if args.out:
        write_json(args.out, {"config": config, "models": results})
    return 0
