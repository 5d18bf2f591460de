"""``aegis scan-zoo``: scan every model of a zoo, resumable, on local workers or Ray
(calls :func:`aegis_tf.api.scan_zoo`)."""

import os

from aegis_tf.cli._util import flag

NAME, ALIASES = "scan-zoo", ()


def add(sub):
    from aegis_tf.cli.detect import config_flags

    p = sub.add_parser(NAME, help="scan a zoo of models (a folder of model folders, or a manifest): one result "
                                  "per model, a summary, resumable; local workers or Ray",
                       description="Scan every model of ZOO with the detector of `aegis detect`. ZOO is a folder "
                                   "with one sub-folder per model (the model file and a config.json naming its data, "
                                   "its --scale and optionally the truth), or a .json/.csv manifest listing the same "
                                   "(docs/zoo.md). Each model gets OUT/NAME/result.json (written atomically; a rerun "
                                   "skips the models done) and its report page; a model that cannot be loaded or "
                                   "scanned gets an error result and the scan goes on. OUT gets summary.json, "
                                   "summary.md and an index report.html, with ROC-AUC, cross-entropy and Brier score "
                                   "where the truth is given.")
    p.add_argument("zoo", metavar="ZOO", help="folder of model folders (each: model file + config.json), or a "
                                              ".json/.csv manifest")
    flag(p, "--out", default=os.path.join("out", "zoo"),
         help="folder of the results, the summary and the index report (default %(default)s)")
    flag(p, "--engine", choices=("local", "ray"), default="local",
         help="local: worker processes on this machine (default); ray: one Ray task per model, on the cluster at "
              "--address or on a local Ray instance (pip install 'aegis-tf[ray]')")
    flag(p, "--workers", type=int, default=1,
         help="local engine: models scanned at once, each in its own process (default %(default)s; at most the "
              "cores)")
    flag(p, "--threads", type=int, default=None,
         help="math threads per worker (local; default the cores divided among the workers) or CPUs declared "
              "per Ray task (default 1)")
    flag(p, "--address", default=None,
         help="ray engine: the cluster to join (ray.init(address=...), e.g. 'auto' or HOST:6379); default: start "
              "a local instance for this scan")
    flag(p, "--gpus-per-task", type=float, default=0.0, help="ray engine: GPUs declared per task (default 0)")
    flag(p, "--retries", type=int, default=1,
         help="times a model is tried again when its worker dies mid-scan (default %(default)s); then it gets "
              "an error result")
    p.add_argument("--retry-errors", action="store_true",
                   help="scan again the models whose earlier result is an error (they are kept otherwise)")
    flag(p, "--method", choices=("aegis", "neural-cleanse", "both"), default="aegis",
         help="detector (default %(default)s), as in `aegis detect`")
    config_flags(p)
    flag(p, "--batch-size", type=int, default=256, help="inference batch size (default %(default)s)")
    flag(p, "--seed", type=int, default=0, help="random seed of every scan (default %(default)s)")
    p.add_argument("--fail-on-backdoor", action="store_true",
                   help="a registry gate: exit with status 1 when any model is flagged, could not be scanned (an "
                        "error result is no pass) or could not be read (an INCONCLUSIVE verdict: too few classes or "
                        "images, translations that did not converge); 0 when every model is clean or only a signal "
                        "saturated (no class named; listed); 2 on bad input")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-model lines, summary only")
    p.set_defaults(run=run, needs_keras=False)  # the workers import Keras and seed each scan
    return p


def run(args):
    from aegis_tf.api import scan_zoo
    from aegis_tf.cli.detect import detect_config

    config = detect_config(args)
    summary = scan_zoo(args.zoo, args.out, config=config, method=args.method, engine=args.engine,
                       workers=args.workers, threads=args.threads, address=args.address,
                       gpus_per_task=args.gpus_per_task, retries=args.retries, seed=args.seed,
                       batch_size=args.batch_size, retry_errors=args.retry_errors, quiet=args.quiet, echo=print)
    if not args.fail_on_backdoor:
        return 0
    rows = summary["rows"]
    flagged = [r["name"] for r in rows if r["verdict"] == "backdoored"]
    errors = [r["name"] for r in rows if r["verdict"] == "error"]
    unread = [r["name"] for r in rows if r["verdict"] == "inconclusive" and r.get("limits")]
    unsure = [r["name"] for r in rows if r["verdict"] == "inconclusive" and not r.get("limits")]
    if unsure:
        print(f"--fail-on-backdoor: {len(unsure)} inconclusive model(s) pass (no class named; read with care): "
              f"{', '.join(unsure)}")
    if flagged or errors or unread:
        parts = ([f"{len(flagged)} flagged: {', '.join(flagged)}"] if flagged else []) + \
                ([f"{len(errors)} not scanned: {', '.join(errors)}"] if errors else []) + \
                ([f"{len(unread)} could not be read: {', '.join(unread)}"] if unread else [])
        print(f"--fail-on-backdoor: {len(flagged) + len(errors) + len(unread)} of {summary['models']} model(s) "
              "do not pass; " + "; ".join(parts))
        return 1
    return 0
