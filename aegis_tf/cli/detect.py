"""``aegis detect``: is this model backdoored, and toward which class?
(calls :func:`aegis_tf.api.detect`)."""

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


def config_flags(p):
    """The flags of :class:`~aegis_tf.detect.config.DetectConfig` (and ``--preset``), shared by
    ``detect`` and ``scan-zoo``; read back with :func:`detect_config`."""
    from aegis_tf.cli._util import shown
    from aegis_tf.detect.config import PRESETS, DetectConfig

    d, paper = DetectConfig(), PRESETS["paper"]  # the defaults the help texts show, defined once

    def default_and_paper(field):
        a, b = shown(getattr(d, field)), shown(paper[field])
        return f"default and paper {a}" if a == b else f"default {a}; paper {b}"

    def tag(field, choice, paper_word="the paper", default=True):
        """`` (default)``, `` (the paper)``, both or nothing: which of them ``choice`` of ``field`` is."""
        tags = (["default"] if default and getattr(d, field) == choice else []) + \
            ([paper_word] if field in paper and paper[field] == choice else [])
        return f" ({', '.join(tags)})" if tags else ""

    flag(p, "--preset", choices=("default",) + tuple(PRESETS), default="default",
         help=f"default: the best measured configuration; paper: the authors' ({paper['n_seeds']} seeds, "
              f"bandwidth {shown(paper['bandwidth'])}, {paper['runs']} run{'s' * (paper['runs'] != 1)})")
    # The fields of aegis_tf.detect.config.DetectConfig; None keeps the preset's value.
    flag(p, "--n-seeds", "--seeds", type=int, default=None,
         help=f"images translated toward each class ({default_and_paper('n_seeds')})")
    flag(p, "--steps", type=int, default=None, help=f"PGD steps of the translation ({default_and_paper('steps')})")
    flag(p, "--eps", type=float, default=None,
         help=f"L2 radius of the translation, units of [0, 1] (paper: {shown(paper['eps'])} MNIST, 500 CIFAR)")
    flag(p, "--step-size", type=float, default=None,
         help=f"translation step, units of [0, 1] (paper {shown(paper['step_size'])})")
    flag(p, "--start-noise", type=float, default=None,
         help="std of Gaussian noise added to each seed before translating, units of [0, 1] "
              f"({default_and_paper('start_noise')})")
    flag(p, "--score", choices=("transfer", "clusters"), default=None,
         help="transfer: share of translations whose most-changed pixels move other images to the class"
              f"{tag('score', 'transfer')}; clusters: t-SNE + clustering counts{tag('score', 'clusters')}")
    flag(p, "--top-frac", type=float, default=None,
         help=f"share of pixels in a translation's patch (default {shown(d.top_frac)})")
    flag(p, "--n-probes", "--probes", type=int, default=None,
         help=f"clean images each patch is pasted onto (default {d.n_probes})")
    flag(p, "--flip-at", type=float, default=None,
         help=f"share of the probes a patch must move to the class for its translation to count "
              f"(default {shown(d.flip_at)})")
    flag(p, "--layer", default=None, help="feature layer of the cluster analysis (default: the penultimate layer)")
    flag(p, "--reducer", choices=("tsne", "pca"), default=None, help=f"2-D reduction (default {d.reducer})")
    flag(p, "--clusterer", choices=("meanshift", "hdbscan", "affinity"), default=None,
         help=f"clustering (default {d.clusterer})")
    flag(p, "--bandwidth", type=_bandwidth, default=None,
         help=f"mean-shift bandwidth: auto or a number (paper: {shown(paper['bandwidth'])} MNIST)")
    flag(p, "--population", choices=("both", "translated"), default=None,
         help=f"cluster training+translated images{tag('population', 'both', 'paper', default=False)} or translated "
              f"only{tag('population', 'translated', 'paper', default=False)}")
    flag(p, "--criterion", choices=("absolute", "relative"), default=None,
         help=f"absolute: more clusters than a clean class{tag('criterion', 'absolute', 'paper', default=False)}; "
              f"relative: more than the median class{tag('criterion', 'relative', 'paper', default=False)}")
    flag(p, "--runs", type=int, default=None,
         help=f"t-SNE seeds to vote over with --score clusters ({default_and_paper('runs')})")
    flag(p, "--min-cluster-frac", type=float, default=None,
         help=f"clusters smaller than this share are not counted (default {shown(d.min_cluster_frac)})")
    p.add_argument("--whole-image", action=argparse.BooleanOptionalAction, default=None,
                   help="also score whole-image triggers (invisible, blended) from the same translations "
                        f"(default {'on' if d.whole_image else 'off'}; "
                        f"{'on' if paper.get('whole_image', d.whole_image) else 'off'} in the paper preset)")
    flag(p, "--wi-probes", type=int, default=None,
         help=f"clean probes of the whole-image signal (default {d.wi_probes})")
    flag(p, "--wi-threshold", type=float, default=None,
         help="the whole-image signal flags a class that needs this many times less norm than every other "
              f"(default {shown(d.wi_threshold)})")
    p.add_argument("--blend-probe", dest="wi_blend", action=argparse.BooleanOptionalAction, default=None,
                   help="the whole-image signal's blend probe, for blended triggers (default: on with the "
                        "whole-image signal, in both stages of a staged scan; --blend-probe insists, "
                        "--no-blend-probe turns it off)")
    p.add_argument("--warp-probe", action=argparse.BooleanOptionalAction, default=None,
                   help="the warp probe, for warping triggers (WaNet): per class a smooth field fitted to send other "
                        "classes there, and the smallest shift of it that moves them (default: on; in a staged scan "
                        "on every class within --probe-budget; --warp-probe runs it whatever it costs, "
                        "--no-warp-probe turns it off)")
    flag(p, "--warp-max-shift", type=float, default=None,
         help=f"the warp probe's bound on the largest offset, as a share of the image side "
              f"(default {shown(d.warp_max_shift)})")
    p.add_argument("--mask-probe", action=argparse.BooleanOptionalAction, default=None,
                   help="the mask probe, for small patches on standard-trained models: Neural Cleanse's smallest "
                        "mask per class, flagged by the relative gap (default: on; in a staged scan on every class "
                        "within --probe-budget; --mask-probe runs it whatever it costs, --no-mask-probe turns it "
                        "off)")
    flag(p, "--probe-budget", type=float, default=None,
         help="seconds the warp and mask probes may each take in a staged scan, projected from their first "
              f"steps; over it, a probe is reported as not run (default {shown(d.probe_budget)})")
    p.add_argument("--pair-mask", action=argparse.BooleanOptionalAction, default=None,
                   help="the pair mask probe, for source-specific and all-to-all backdoors: the smallest mask per "
                        "(source, target) pair, flagged when it is small against its source's other targets and "
                        "its target's other sources (default: only on the pairs the per-pair view saw transfer "
                        f"without flagging them, within {shown(d.pair_mask_budget)} s; --pair-mask runs it on "
                        "every pair, about a minute per 10-class MNIST model, and on every pair it flagged 1 of 4 "
                        "held-out clean models, see docs/detection.md; --no-pair-mask turns it off)")
    flag(p, "--pair-mask-restarts", type=int, default=None,
         help=f"the pair mask probe's random starts per pair (default {d.pair_mask_restarts}; twice that on the "
              "per-pair view's candidates, the default)")
    # 20 is aegis_tf.detect.staged.STAGED_ABOVE (not imported here: it pulls in Keras; a test pins it).
    flag(p, "--scan", choices=("auto", "full", "staged"), default=None,
         help=f"full{tag('scan', 'full')}: the detector on every class; staged{tag('scan', 'staged')}: screen every "
              "class with short translations, then the full detector on the top-k and any alarmed class; "
              f"auto{tag('scan', 'auto')}: staged above 20 classes")
    flag(p, "--stage1-seeds", type=int, default=None,
         help=f"staged scan: translations per class in stage 1 (default {d.stage1_seeds})")
    flag(p, "--stage1-steps", type=int, default=None,
         help=f"staged scan: PGD steps in stage 1 (default {d.stage1_steps})")
    flag(p, "--top-k", type=int, default=None,
         help=f"staged scan: classes each stage-1 signal promotes to stage 2 (default {d.top_k})")
    flag(p, "--alarm-transfer", type=float, default=None,
         help=f"staged scan: also promote any class whose stage-1 patch share reaches this "
              f"(default {shown(d.alarm_transfer)})")
    flag(p, "--alarm-gap", type=float, default=None,
         help=f"staged scan: also promote any class whose stage-1 whole-image or blend gap reaches this; "
              f"stage 2 flags by a gap only where its stage-1 gap does (default {shown(d.alarm_gap)})")
    flag(p, "--robustness-images", type=int, default=None,
         help="training images on which to measure the model's robustness beside the verdict (untargeted L2 PGD "
              "at the radius robust models are trained at; AEGIS assumes a robust model); 0 skips it "
              f"(default {d.robustness_images})")
    flag(p, "--wi-nonrobust-factor", type=float, default=None,
         help="on a model the robustness check measures as not robust, the whole-image signal needs this many "
              f"times its --wi-threshold (default {shown(d.wi_nonrobust_factor)}; 1: the same)")


def detect_config(args):
    """The :class:`~aegis_tf.detect.config.DetectConfig` the flags of :func:`config_flags` give."""
    from aegis_tf.detect.config import DetectConfig

    return settings(DetectConfig, args, make=DetectConfig.from_preset, name=args.preset)


def add(sub):
    from aegis_tf.cli._util import embedded_name

    p = sub.add_parser(NAME, help="is this model backdoored, and which class is the target? (AEGIS or Neural Cleanse)",
                       description="AEGIS: translate training images toward each class with targeted L2 PGD; flag "
                                   "a class when enough of its translations carry a patch that moves other images "
                                   "to it (default), or, as in the paper, when t-SNE + clustering of features shows "
                                   "more clusters than clean classes. Prints one verdict line per model and writes "
                                   "detect.json and report.html. With no model flag it examines the embedded robust "
                                   "clean and backdoored digits models.")
    model_flags(p)
    flag(p, "--data", default=None,
         help=f"training images: .h5, .npz (train split) or a named set (default {embedded_name('train')})")
    flag(p, "--data-dir", default=None, help="folder with NAME.npz for named sets")
    flag(p, "--method", choices=("aegis", "neural-cleanse", "both"), default="aegis",
         help="detector (default %(default)s); both: AEGIS gives the verdict and Neural Cleanse is reported "
              "beside it as a baseline")
    flag(p, "--classes", default=None, help="comma-separated classes to examine (default all)")
    config_flags(p)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted scan from the progress it saved in --out-dir/scan_state/ (a full "
                        "scan's translations; a staged scan's stage-1 results and stage-2 translations)")
    p.add_argument("--plots", action="store_true",
                   help="also draw the t-SNE embedding figure (runs t-SNE and clustering; the transfer verdict does not need them)")
    flag(p, "--jobs", type=int, default=1,
         help="classes reduced and clustered at once, in threads (default %(default)s; -1: every core); same report")
    flag(p, "--out-dir", default=os.path.join("out", "detect"), help="report folder (default %(default)s)")
    flag(p, "--fail-on-backdoor", action="store_true",
         help="exit with status 1 when any scanned model is flagged or its verdict is inconclusive (0 when all "
              "are clean, 2 on error): a gate for CI and model-registry pipelines, which passes no model it "
              "could not check")
    common_flags(p)
    p.set_defaults(run=run)
    return p


def run(args):
    from aegis_tf.api import detect
    from aegis_tf.core.utils import check_out_file, write_json

    check_out_file(args.out, "--out")
    config = detect_config(args)
    results = detect(config=config, bad_model=args.bad_model, bad_model_weights=args.bad_model_weights,
                     data=args.data, data_dir=args.data_dir, scale=args.scale, method=args.method,
                     classes=args.classes, out_dir=args.out_dir, seed=args.seed, batch_size=args.batch_size,
                     quiet=args.quiet, plots=args.plots, n_jobs=args.jobs, resume=args.resume)
    if args.out:
        write_json(args.out, {"config": config, "models": results})
    flagged = [name for name, result in results.items() if result["verdict"]["backdoored"]]
    unsure = [name for name, result in results.items() if result["verdict"].get("limits")]
    if args.fail_on_backdoor and (flagged or unsure):
        said = [f"{len(flagged)} of {len(results)} model(s) flagged: {', '.join(flagged)}"] if flagged else []
        said += [f"{len(unsure)} inconclusive: {', '.join(unsure)}"] if unsure else []
        print(f"--fail-on-backdoor: {'; '.join(said)}")
        return 1
    return 0
