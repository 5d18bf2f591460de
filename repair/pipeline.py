"""The whole repair job: curve, B' at each threshold, GoodNet, evaluation, files.

``aegis repair`` and ``aegis evaluate-goodnet`` (the lab's ``eval``) call
:func:`repair_job` and :func:`evaluate_goodnet_job`; :func:`run_repair`,
:func:`run_trigger_repair`, :func:`run_clp_repair` and :func:`evaluate_goodnet`
work on models and arrays already in memory.
"""

import dataclasses
import os
import time

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.metrics import attack_success_rate, clean_accuracy, rejection_rate, summarize
from aegis_tf.core.models import predict_labels
from aegis_tf.core.utils import atomic_path, check_out_dir, replaced_dir, write_json
from repair.config import STRATEGIES
from repair.goodnet import GoodNet, goodnet_labels
from repair.prune import THRESHOLDS, check_threshold, finetune_pruned, prune_curve, prune_curve_naive, prune_model

__all__ = ["evaluate_goodnet", "run_repair", "run_trigger_repair", "run_clp_repair", "repair_job",
           "evaluate_goodnet_job", "format_table", "format_goodnet_eval", "pruned_weights_name", "check_repair_out_dir"]


def pruned_weights_name(tag):
    """The file name of B' at a threshold (``4``, or ``"4_finetuned"``)."""
    return f"B_prime_{tag}.weights.h5"


def evaluate_goodnet(goodnet, x_clean, y_clean, x_bad=None, y_bad=None, *, recovered=None, batch_size=256):
    """Clean accuracy and ASR of B, B' and G; for G also the share sent to class N.

    With no poisoned set (``x_bad`` None) the ASR is None: it was not
    measured. ``recovered`` (images with a recovered trigger and the
    trigger's target) adds ``recovered_asr``, the rate that trigger reaches.
    """
    n = goodnet.num_classes
    sets = {"clean": (x_clean, y_clean)}
    if x_bad is not None:
        sets["bad"] = (x_bad, y_bad)
    if recovered is not None:
        sets["recovered"] = recovered
    preds = {name: {k: predict_labels(m, x, batch_size=batch_size) for k, (x, _) in sets.items()}
             for name, m in (("B", goodnet.B), ("B_prime", goodnet.B_prime))}
    # G from the two predictions already made.
    preds["G"] = {k: goodnet_labels(preds["B"][k], preds["B_prime"][k], n) for k in sets}
    out = {}
    for name, p in preds.items():
        reject = n if name == "G" else None
        if "bad" in sets:
            out[name] = summarize(p["clean"], y_clean, p["bad"], y_bad, reject_class=reject)
        else:
            out[name] = {"clean_acc": clean_accuracy(p["clean"], y_clean), "asr": None}
            if reject is not None:
                out[name].update(clean_rejected=rejection_rate(p["clean"], n), bad_rejected=None)
        if "recovered" in sets:
            out[name]["recovered_asr"] = attack_success_rate(p["recovered"], sets["recovered"][1])
            if reject is not None:
                out[name]["recovered_rejected"] = rejection_rate(p["recovered"], n)
    return out


NO_ASR = ("ASR not measured: no poisoned set was given (--bad-valid/--bad-test) and the model has no "
          "trigger file (MODEL.json) to build one from")


def run_repair(
    model,
    valid,
    bad_valid,
    test,
    bad_test,
    *,
    out_dir,
    threshold=4,
    layer=None,
    method="cached",
    finetune_epochs=0,
    finetune_lr=1e-4,
    batch_size=256,
    seed=0,
    quiet=False,
    sources=None,
):
    """Run the lab's repair job and write its files to ``out_dir``. Returns the report dict.

    ``valid``/``bad_valid`` drive the pruning; ``test``/``bad_test`` are only
    used to evaluate. Either poisoned set may be None: the pruning then
    watches clean accuracy only and the ASR is reported as not measured.
    B' is kept at every threshold (2, 4 and 10); ``threshold`` is the one
    GoodNet headlines, and it must be reached, or nothing is written. Files
    written (each atomically): ``prune_curve.json``, ``prune_curve.png``,
    ``B_prime_{t}.keras`` (the full model) and ``B_prime_{t}.weights.h5``,
    ``goodnet_{t}.keras`` for each threshold reached, ``repair.json`` and
    ``report.html``. They are written to a temporary folder beside ``out_dir``
    that then replaces ``out_dir`` whole (:func:`check_repair_out_dir`).
    """
    check_threshold(threshold)
    check_repair_out_dir(out_dir)
    if method not in ("cached", "naive"):
        raise AegisError(f"--method must be cached or naive. Received: {method!r}")
    _check_epochs(finetune_epochs)
    xv, yv = valid
    xbv, ybv = bad_valid if bad_valid is not None else (xv[:0], yv[:0])
    curve_fn = prune_curve if method == "cached" else prune_curve_naive
    curve = curve_fn(model, xv, yv, xbv, ybv, layer=layer, thresholds=THRESHOLDS, batch_size=batch_size, quiet=quiet)
    _check_reached(curve, threshold)
    report = _report_head(curve, threshold, sources, strategy=["lab"])
    report["clean_images"] = int(len(xv))  # the clean validation images the pruning saw
    report["validation"] = {"clean_acc": float(curve.clean_acc[0]), "asr": _maybe(curve.asr[0])}
    if bad_test is None:
        report["asr_note"] = (NO_ASR if bad_valid is None else
                              "test ASR not measured: no --bad-test, and the model has no trigger file to build one")
    elif bad_valid is None:
        report["asr_note"] = "validation ASR not measured (no --bad-valid): the pruning watched clean accuracy only"
    models_out = _pruned_models(model, curve, report, xv, yv, test, bad_test, finetune_epochs=finetune_epochs,
                                finetune_lr=finetune_lr, seed=seed, quiet=quiet, batch_size=batch_size)
    return _write_outputs(out_dir, model, curve, models_out, report)


# Trigger sources that are reversed masks, fitted at one place of the image (a position-free trigger
# works anywhere): the repair suggests re-inversion when they are all it has.
REVERSED_MASKS = ("mask_probe", "pair_mask", "neural_cleanse")


def run_trigger_repair(model, triggers, valid, test, bad_test=None, *, out_dir, strategies=("trigger-prune", "unlearn"),
                       threshold=4, layer=None, stop_asr=0.05, finetune_epochs=0, finetune_lr=1e-4,
                       unlearn_epochs=20, unlearn_lr=None, unlearn_share=1.0, unlearn_rounds=2, unlearn_reinvert=0,
                       batch_size=256, seed=0,
                       quiet=False, sources=None):
    """Repair from recovered triggers (:mod:`aegis_tf.detect.recovered`) with clean data only.

    ``strategies``: ``trigger-prune`` (:func:`repair.trigger_repair.trigger_prune_curve`,
    B' and GoodNet at 2/4/10 as in the lab) and/or ``unlearn``
    (:func:`repair.trigger_repair.unlearn`, one B' tagged ``unlearned``, and its
    GoodNet). The test sets only evaluate: ``bad_test`` (the attacker's real
    trigger, when known) gives the true ASR; the recovered triggers applied
    to ``test`` give the recovered-trigger ASR. Writes the same files as
    :func:`run_repair`.
    """
    from repair.trigger_repair import trigger_prune_curve, triggered_set, unlearn

    strategies = _check_strategies(strategies, trigger=True)
    check_threshold(threshold)
    check_repair_out_dir(out_dir)
    _check_epochs(finetune_epochs)
    (xv, yv), (xt, yt) = valid, test
    recovered_test = triggered_set(triggers, xt, yt)
    trig_info = {"files": [t.path for t in triggers], "targets": sorted({t.target for t in triggers}),
                 "found": [t.describe() for t in triggers]}
    curve, models_out, notes = None, {}, []
    if "trigger-prune" in strategies:
        try:
            curve = trigger_prune_curve(model, triggers, xv, yv, layer=layer, stop_asr=stop_asr,
                                        batch_size=batch_size, quiet=quiet)
            _check_reached(curve, threshold, why="and the recovered trigger's ASR never fell to --stop-asr")
        except AegisError as e:
            if "unlearn" not in strategies:
                raise
            curve, notes = None, [f"trigger-prune: {e}"]  # unlearning still runs
    report = _report_head(curve, threshold, sources, strategy=list(strategies))
    report["notes"] = notes
    report["trigger"] = trig_info
    clean0 = (curve.clean_acc[0] if curve is not None  # the curve measured B already
              else np.mean(predict_labels(model, xv, batch_size=batch_size) == yv))
    report["validation"] = {"clean_acc": float(clean0), "recovered_asr": None, "asr": None}
    report["clean_images"] = int(len(xv))  # the clean data budget: the repair saw these images and no others
    report["asr_note"] = ("true ASR measured on the attacker's poisoned test set, which the repair never saw"
                          if bad_test is not None else NO_ASR)
    if curve is not None:
        report["validation"]["recovered_asr"] = float(curve.asr[0])
        report["stop_asr"] = stop_asr
        report["channel_gap"] = curve.gap
        models_out = _pruned_models(model, curve, report, xv, yv, test, bad_test, recovered=recovered_test,
                                    finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, seed=seed,
                                    quiet=quiet, batch_size=batch_size)
        for t, k in curve.saved.items():
            if report["pruned"].get(str(t)):
                report["pruned"][str(t)]["stop_reason"] = curve.stop_reason[t]
    if "unlearn" in strategies:
        t0 = time.perf_counter()
        tuned, history = unlearn(model, triggers, xv, yv, epochs=unlearn_epochs, learning_rate=unlearn_lr,
                                 share=unlearn_share, rounds=unlearn_rounds, reinvert=unlearn_reinvert, seed=seed,
                                 quiet=quiet)
        history["seconds"] = time.perf_counter() - t0
        report["unlearned"] = history
        models_out["unlearned"] = tuned
        if not unlearn_reinvert and all(t.source in REVERSED_MASKS for t in triggers):
            report["notes"].append(
                "every recovered trigger is a reversed mask (no patch of the translations moved the probes): if the "
                "backdoor may be position-free, --unlearn-reinvert 3 closes it a place at a time (docs/repair.md)")
        g = GoodNet.from_models(model, tuned)
        report["test"]["unlearned"] = evaluate_goodnet(g, xt, yt, *(bad_test or (None, None)),
                                                       recovered=recovered_test, batch_size=batch_size)
    return _write_outputs(out_dir, model, curve, models_out, report)


def run_clp_repair(model, test, bad_test=None, *, out_dir, u=3.0, batch_size=256, sources=None):
    """Channel Lipschitzness-based Pruning (:func:`repair.clp.clp_prune`): a repair with no data at all.

    The pruned copy is B' tagged ``clp``, with its GoodNet; ``test`` and
    ``bad_test`` (the attacker's poisoned test set, None when unknown) only
    evaluate B, B' and G. Writes ``B_prime_clp.keras``, ``B_prime_clp.weights.h5``,
    ``goodnet_clp.keras``, ``repair.json`` (``clp``: the channels pruned in each
    convolution layer and the UCLCs' mean, std and cutoff) and ``report.html``,
    swapped into ``out_dir`` whole as :func:`run_repair` does.
    """
    from repair.clp import clp_prune
    from repair.config import check_clp_u

    u = check_clp_u(u)
    check_repair_out_dir(out_dir)
    t0 = time.perf_counter()
    pruned, info = clp_prune(model, u=u)
    info["seconds"] = time.perf_counter() - t0
    report = _report_head(None, None, sources, strategy=["clp"])
    report.update(clp=info, validation=None)
    report["asr_note"] = ("CLP used no data; the test sets only evaluate" if bad_test is not None
                          else f"CLP used no data. {NO_ASR}")
    g = GoodNet.from_models(model, pruned)
    report["test"]["clp"] = evaluate_goodnet(g, *test, *(bad_test or (None, None)), batch_size=batch_size)
    return _write_outputs(out_dir, model, None, {"clp": pruned}, report)


REPORT_NAME = "repair.json"


def check_repair_out_dir(out_dir, what="--out-dir"):
    """Raise AegisError unless ``out_dir`` can take a repair's files.

    Repair replaces its folder whole (so no stale B' of an earlier run stays
    beside new ones), so besides being writable (:func:`~aegis_tf.core.utils.check_out_dir`)
    an existing folder must be empty or an earlier repair's (``repair.json``,
    no subfolder), and must not hold the current folder.
    """
    check_out_dir(out_dir, what)
    full = os.path.abspath(out_dir)
    if os.path.islink(full):
        raise AegisError(f"{what} {out_dir} is a symbolic link; repair replaces its {what} whole, so give the "
                         "folder it points to, or a new one")
    if not os.path.isdir(full):
        return
    if os.path.ismount(full) or os.stat(full).st_dev != os.stat(os.path.dirname(full)).st_dev:
        raise AegisError(f"{what} {out_dir} is a mount point, which repair cannot replace whole; give a folder "
                         "inside it")
    cwd = os.path.realpath(os.getcwd())
    real = os.path.realpath(full)
    if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
        raise AegisError(f"{what} {out_dir} is the current folder or holds it; repair replaces its {what} whole, "
                         "so give a folder of its own (e.g. out/repair)")
    names = os.listdir(full)
    if names and (REPORT_NAME not in names or any(os.path.isdir(os.path.join(full, n)) for n in names)):
        raise AegisError(f"{what} {out_dir} holds files that repair did not write (no {REPORT_NAME}, or a "
                         f"subfolder); repair replaces its {what} whole, so give a new or empty folder or an "
                         f"earlier repair's {what}")


def _check_strategies(strategies, *, trigger):
    strategies = [s.strip() for s in (strategies.split(",") if isinstance(strategies, str) else strategies)]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies:
        raise AegisError(f"--strategy must be a comma-separated list of {', '.join(STRATEGIES)}. Received: "
                         f"{','.join(strategies)}")
    if "clp" in strategies:
        if len(strategies) > 1:
            raise AegisError(f"--strategy clp runs alone (it uses no data; the others prune or fine-tune with data). "
                             f"Received: {','.join(strategies)}; run them as separate repairs")
        if trigger:
            raise AegisError("--strategy clp uses no recovered trigger (it needs no data at all); drop "
                             "--trigger-from/--trigger-file")
        return strategies
    if trigger and "lab" in strategies:
        raise AegisError("--strategy lab prunes with the attacker's --bad-valid set, not a recovered trigger; "
                         "use trigger-prune and/or unlearn with --trigger-from")
    if not trigger and set(strategies) != {"lab"}:
        raise AegisError(f"--strategy {','.join(strategies)} needs a recovered trigger: pass --trigger-from "
                         "DETECT_OUT_DIR or --trigger-file FILE")
    return strategies


def _check_epochs(epochs):
    if epochs < 0:
        raise AegisError(f"--finetune must be 0 or a positive number of epochs. Received: {epochs}")


def _check_reached(curve, threshold, why=""):
    if curve.saved[threshold] is None:
        raise AegisError(f"accuracy never dropped by {threshold}% while pruning {curve.layer} "
                         f"(at most {100 * (curve.clean_acc[0] - curve.clean_acc.min()):.2f} points){' ' + why if why else ''}; "
                         "no B' for it")


def _maybe(v):
    return None if v is None or np.isnan(v) else float(v)


def _report_head(curve, threshold, sources, *, strategy):
    head = {"sources": sources or {}, "strategy": strategy, "threshold": threshold, "pruned": {}, "test": {},
            "files": {}}
    if curve is not None:
        head.update(layer=curve.layer, conv=curve.conv, n_channels=curve.n_channels)
    return head


def _pruned_models(model, curve, report, xv, yv, test, bad_test, *, recovered=None, finetune_epochs, finetune_lr,
                   seed, quiet, batch_size):
    """B' at each threshold the curve reached (and fine-tuned, with ``finetune_epochs``), evaluated
    into ``report``. Returns ``{tag: model}``."""
    (xt, yt), bad = test, (bad_test or (None, None))
    models_out = {}
    for t in THRESHOLDS:
        k = curve.saved[t]
        if k is None:
            report["pruned"][str(t)] = None
            continue
        pruned = prune_model(model, curve, k, x_check=xv, y_check=yv, batch_size=batch_size)
        report["pruned"][str(t)] = {
            "channels_pruned": k,
            "fraction_pruned": k / curve.n_channels,
            "channels": curve.channels_at(k),
            "valid_clean_acc": float(curve.clean_acc[k]),
            "valid_asr": _maybe(curve.asr[k]),
        }
        models_out[str(t)] = pruned
        g = GoodNet.from_models(model, pruned)
        report["test"][str(t)] = evaluate_goodnet(g, xt, yt, *bad, recovered=recovered, batch_size=batch_size)
        if finetune_epochs:
            tuned = finetune_pruned(pruned, curve, k, xv, yv, epochs=finetune_epochs, learning_rate=finetune_lr,
                                    seed=seed, quiet=quiet)
            models_out[f"{t}_finetuned"] = tuned
            gft = GoodNet.from_models(model, tuned)
            report["test"][f"{t}_finetuned"] = evaluate_goodnet(gft, xt, yt, *bad, recovered=recovered,
                                                                batch_size=batch_size)
    return models_out


def _write_outputs(out_dir, model, curve, models_out, report):
    """Write the curve, every B' (full .keras and weights), its GoodNet, repair.json and report.html.

    The files go to a temporary folder beside ``out_dir``, which then replaces
    ``out_dir`` whole; a failure or Ctrl-C leaves ``out_dir`` as it was. The
    paths recorded in the report name ``out_dir``.
    """
    from aegis_tf.report.html import write_repair_html
    from aegis_tf.report.figures import plot_prune_curve

    files = report["files"]
    with replaced_dir(out_dir) as stage:
        def place(key, name):
            """Record ``out_dir/name`` under ``key``; return where to write it now."""
            files[key] = os.path.join(out_dir, name)
            return os.path.join(stage, name)

        staged_curve = None
        if curve is not None:
            write_json(place("curve_json", "prune_curve.json"), curve.to_dict())
            staged_curve = place("curve_plot", "prune_curve.png")
            plot_prune_curve(curve, staged_curve, title=f"pruning {curve.layer}: accuracy and ASR")
        for tag, m in models_out.items():
            with atomic_path(place(f"B_prime_{tag}_model", f"B_prime_{tag}.keras")) as tmp:
                m.save(tmp)
            with atomic_path(place(f"B_prime_{tag}", pruned_weights_name(tag))) as tmp:
                m.save_weights(tmp)
            GoodNet.from_models(model, m).save(place(f"goodnet_{tag}", f"goodnet_{tag}.keras"))
        json_path = place("report", REPORT_NAME)
        html_path = place("html", "report.html")
        write_json(json_path, report)
        page = report if staged_curve is None else {**report, "files": {**files, "curve_plot": staged_curve}}
        write_repair_html(page, html_path, title="aegis repair")
    return report


def _clean_budget(valid, n, path, seed):
    """A seeded random ``n`` of the clean validation images (all of them when ``n`` is None);
    a one-line error when the set holds fewer."""
    x, y = valid
    if n is None:
        return valid
    if n > len(x):
        raise AegisError(f"--clean-images {n}: --clean-valid {path} holds only {len(x)} images; give a larger "
                         "clean set or a smaller budget")
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    return x[keep], y[keep]


def _load_set(path, default_key, model, scale, flag):
    from aegis_tf.core.data import check_fits_model, load_h5
    from aegis_tf.core.embedded import PATHS

    path = path or PATHS[default_key]
    x, y = load_h5(path, scale=scale)
    return (check_fits_model(x, y, model, f"{flag} {path}"), y), path


def _model_paths(bad_model, bad_model_weights):
    """The embedded default B only when no model at all is named."""
    from aegis_tf.core.embedded import PATHS

    if bad_model is None and bad_model_weights is None:
        return PATHS["bd_net"], None
    return bad_model, bad_model_weights


def _is_embedded(model_path, weights):
    """Whether B is one of the embedded models, whose trigger the embedded bd_*.h5 sets carry."""
    from aegis_tf.core.embedded import PATHS

    same = lambda a, key: a is not None and os.path.abspath(a) == os.path.abspath(PATHS[key])  # noqa: E731
    return (any(same(model_path, k) for k in ("bd_net", "robust_bd_net", "robust_clean_net"))
            or (model_path is None and same(weights, "bd_weights")))


def _poisoned_set(path, default_key, clean, clean_path, *, model, model_path, embedded, scale, flag):
    """The attacker's poisoned set for evaluation: the file named by ``flag``; the embedded one
    for an embedded B; else ``clean`` with the trigger of B's ``MODEL.json``; else ``(None, None)``."""
    from aegis_tf.core.settings import pixel_max_of
    from aegis_tf.attack.evaluation import backdoor_sets
    from aegis_tf.attack.sidecar import read_trigger_config, read_trigger_configs, sidecar_path

    if path or embedded:
        return _load_set(path, default_key, model, scale, flag)
    config, poisoned = read_trigger_config(model_path)
    if config is None or not poisoned:
        return None, None
    x, y = clean
    # each backdoor as it was trained: its sources, its mapping
    sets = backdoor_sets(read_trigger_configs(model_path), x, y, pixel_max=pixel_max_of(scale),
                         n_classes=int(model.output_shape[-1]))
    xs, ys = [xb for _, xb, _ in sets], [yb for _, _, yb in sets]
    what = "the trigger" if len(xs) == 1 else f"each of the {len(xs)} triggers"
    return ((np.concatenate(xs), np.concatenate(ys)),
            f"{clean_path} with {what} of {sidecar_path(model_path)}")


def parse_trigger_classes(value):
    """``--trigger-classes``: ``None``, ``"7"``, ``"7,9"`` or a list of class indices -> sorted ints;
    a one-line error otherwise."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [value]
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    try:
        classes = sorted({int(str(c).strip()) for c in items})
    except ValueError:
        classes = []
    if not classes or min(classes) < 0:
        raise AegisError("--trigger-classes must be class indices, comma-separated (e.g. 7 or 7,9). "
                         f"Received: {value!r}")
    return classes


def _recovered_triggers(trigger_from, trigger_file, classes=None):
    """The recovered triggers named on the command line (with ``classes``, parsed by
    :func:`parse_trigger_classes`, only those whose target is one of them), and the detect report
    they came from."""
    from aegis_tf.detect.recovered import load_trigger, triggers_from_detect_dir

    if trigger_from and trigger_file:
        raise AegisError("give --trigger-from DETECT_OUT_DIR or --trigger-file FILE, not both")
    if trigger_from:
        triggers, scan = triggers_from_detect_dir(trigger_from)
    elif trigger_file:
        triggers, scan = [load_trigger(trigger_file)], None
    else:
        return [], None
    if classes is not None:
        have = sorted({int(t.target) for t in triggers})
        missing = [c for c in classes if c not in have]
        if missing:
            raise AegisError(f"--trigger-classes {','.join(map(str, classes))}: no recovered trigger for class "
                             f"{','.join(map(str, missing))} (the triggers given are for class "
                             f"{','.join(map(str, have)) or 'none'})")
        triggers = [t for t in triggers if int(t.target) in classes]
    return triggers, scan


def repair_job(*, config=None, bad_model=None, bad_model_weights=None, clean_valid=None, bad_valid=None,
               clean_test=None, bad_test=None, trigger_from=None, trigger_file=None, trigger_classes=None,
               out_dir=os.path.join("out", "repair"), scale="raw", batch_size=256, seed=0, quiet=True, **settings):
    """The repair on files, everything checked before any work.

    ``config`` is a :class:`~repair.config.RepairConfig` (default ``RepairConfig()``);
    ``settings`` (its field names: ``threshold``, ``strategy``, ...) override its fields.

    Without a trigger: the lab's :func:`run_repair` on B (the embedded default
    when none is named) and the CSAW sets (the embedded ones by default; the
    poisoned ones only for an embedded B, or built from B's ``MODEL.json``).
    With ``trigger_from`` (a ``detect --out-dir`` folder) or ``trigger_file``:
    :func:`run_trigger_repair` on clean data alone; B defaults to the model
    the scan examined; ``trigger_classes`` (``"7"``, ``"7,9"`` or a list) keeps only the
    triggers toward those classes (a class the reader judged a false alarm is left out).
    ``strategy`` is a comma-separated list (default
    ``lab``, or ``trigger-prune,unlearn`` with a trigger). ``strategy="clp"``
    (alone, no trigger, no validation set): :func:`run_clp_repair`, data-free.
    """
    from aegis_tf.core.models import load_model
    from aegis_tf.core.settings import pixel_max_of

    config = _repair_config(config, settings)
    check_repair_out_dir(out_dir)
    trigger_classes = parse_trigger_classes(trigger_classes)
    if trigger_classes is not None and not (trigger_from or trigger_file):
        raise AegisError("--trigger-classes picks among recovered triggers: give --trigger-from DETECT_OUT_DIR too")
    if config.strategy and "clp" in config.strategies(trigger=False):
        _check_strategies(config.strategy, trigger=bool(trigger_from or trigger_file))
        return _clp_job(config, bad_model=bad_model, bad_model_weights=bad_model_weights, clean_valid=clean_valid,
                        bad_valid=bad_valid, clean_test=clean_test, bad_test=bad_test, out_dir=out_dir, scale=scale,
                        batch_size=batch_size)
    threshold, layer, finetune, finetune_lr = config.threshold, config.layer, config.finetune, config.finetune_lr
    triggers, scan = _recovered_triggers(trigger_from, trigger_file, trigger_classes)
    strategies = _check_strategies(config.strategies(trigger=bool(triggers)), trigger=bool(triggers))
    if "unlearn" in strategies:
        from repair.trigger_repair import check_unlearn_settings

        check_unlearn_settings(epochs=config.unlearn_epochs, share=config.unlearn_share, rounds=config.unlearn_rounds)
    elif config.unlearn_reinvert:
        raise AegisError(f"--unlearn-reinvert re-inverts a trigger after unlearning, and the strategy here is "
                         f"{','.join(strategies)}: add unlearn (with --trigger-from) or drop it")
    if scan and scan.get("scale", scale) != scale:
        raise AegisError(f"--trigger-from {trigger_from}: the scan read its data with --scale {scan.get('scale')}; "
                         f"repair with the same --scale (received {scale})")
    if triggers and bad_valid:
        raise AegisError("--bad-valid is attacker data, which a repair from a recovered trigger does not use; "
                         "drop it (give --bad-test to measure the true ASR)")
    if scan and bad_model is None and bad_model_weights is None:  # the model the scan examined
        bad_model, bad_model_weights = scan.get("model_file", scan.get("model")), scan.get("weights_file")
    model_path, weights = _model_paths(bad_model, bad_model_weights)
    model = load_model(model_path, weights)
    n_classes = int(model.output_shape[-1])
    triggers = [t.rescaled(pixel_max_of(scale)).check_fits(model.input_shape, n_classes, t.path or "--trigger-file")
                for t in triggers]
    embedded = _is_embedded(model_path, weights)
    valid, pv = _load_set(clean_valid, "valid", model, scale, "--clean-valid")
    available = len(valid[0])
    valid = _clean_budget(valid, config.clean_images, pv, seed)
    test, pt = _load_set(clean_test, "test", model, scale, "--clean-test")
    common = dict(model=model, model_path=model_path or weights, embedded=embedded, scale=scale)
    btest, pbt = _poisoned_set(bad_test, "bd_test", test, pt, flag="--bad-test", **common)
    sources = {"bad_model": model_path, "bad_model_weights": weights, "clean_valid": pv, "clean_test": pt,
               "bad_test": pbt, "scale": scale, "clean_budget": config.clean_images, "clean_valid_size": available}
    if triggers:
        sources.update(trigger_from=trigger_from, trigger_file=trigger_file,
                       trigger_classes=trigger_classes)
        return run_trigger_repair(
            model, triggers, valid, test, btest, out_dir=out_dir, strategies=strategies, threshold=threshold,
            layer=layer, stop_asr=config.stop_asr, finetune_epochs=finetune, finetune_lr=finetune_lr,
            unlearn_epochs=config.unlearn_epochs, unlearn_lr=config.unlearn_lr, unlearn_share=config.unlearn_share,
            unlearn_rounds=config.unlearn_rounds, unlearn_reinvert=config.unlearn_reinvert, batch_size=batch_size,
            seed=seed, quiet=quiet, sources=sources)
    bvalid, pbv = _poisoned_set(bad_valid, "bd_valid", valid, pv, flag="--bad-valid", **common)
    sources["bad_valid"] = pbv
    return run_repair(
        model, valid, bvalid, test, btest, out_dir=out_dir, threshold=threshold, layer=layer, method=config.method,
        finetune_epochs=finetune, finetune_lr=finetune_lr, batch_size=batch_size, seed=seed, quiet=quiet,
        sources=sources)


def _clp_job(config, *, bad_model, bad_model_weights, clean_valid, bad_valid, clean_test, bad_test, out_dir, scale,
             batch_size):
    """``repair --strategy clp``: every check before any work, then :func:`run_clp_repair`."""
    from aegis_tf.core.models import load_model
    from repair.clp import conv_layers

    if config.clean_images is not None:
        raise AegisError("--strategy clp repairs without data, so --clean-images would not be used; drop it")
    for name, value in (("--clean-valid", clean_valid), ("--bad-valid", bad_valid)):
        if value:
            raise AegisError(f"--strategy clp repairs without data, so {name} would not be used; drop it "
                             "(--clean-test and --bad-test evaluate)")
    if config.finetune:
        raise AegisError("--finetune fine-tunes on clean data, which --strategy clp does not use; drop it")
    if config.unlearn_reinvert:
        raise AegisError("--unlearn-reinvert re-inverts a trigger after unlearning, which --strategy clp does not do; "
                         "drop it")
    if config.layer is not None:
        raise AegisError("--layer names the pooling layer the lab's pruning prunes; --strategy clp examines every "
                         "convolution layer; drop it")
    model_path, weights = _model_paths(bad_model, bad_model_weights)
    model = load_model(model_path, weights)
    conv_layers(model)  # a model without convolutions: one line, before any work
    test, pt = _load_set(clean_test, "test", model, scale, "--clean-test")
    btest, pbt = _poisoned_set(bad_test, "bd_test", test, pt, flag="--bad-test", model=model,
                               model_path=model_path or weights, embedded=_is_embedded(model_path, weights),
                               scale=scale)
    sources = {"bad_model": model_path, "bad_model_weights": weights, "clean_test": pt, "bad_test": pbt,
               "scale": scale}
    return run_clp_repair(model, test, btest, out_dir=out_dir, u=config.clp_u, batch_size=batch_size,
                          sources=sources)


def _repair_config(config, settings):
    """``config`` (default ``RepairConfig()``) with the fields named in ``settings`` replaced."""
    from repair.config import RepairConfig

    if config is not None and not isinstance(config, RepairConfig):
        raise AegisError(f"config must be a RepairConfig. Received: {type(config).__name__}")
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(RepairConfig)})
    if unknown:
        raise AegisError(f"unknown repair setting(s): {', '.join(unknown)}; expected the fields of RepairConfig")
    return (config or RepairConfig()).replace(**settings) if settings else (config or RepairConfig())


def evaluate_goodnet_job(*, goodnet=None, bad_model=None, bad_model_weights=None, pruned_bad_model_weights=None,
                         threshold=4, out_dir=os.path.join("out", "repair"), clean_test=None, bad_test=None,
                         scale="raw", batch_size=256):
    """The lab's evaluation (``eval.py``): clean accuracy and ASR of B, B' and GoodNet on the test sets.

    GoodNet comes from a ``goodnet_T.keras`` file, or from B and the weights
    of B' (by default those ``repair`` wrote for ``threshold`` in ``out_dir``).
    """
    from aegis_tf.core.models import load_model

    check_threshold(threshold)
    if goodnet:
        g = GoodNet.load(goodnet)
        sources = {"goodnet": goodnet}
    else:
        model_path, weights = _model_paths(bad_model, bad_model_weights)
        pruned = pruned_bad_model_weights or os.path.join(out_dir, pruned_weights_name(threshold))
        g = GoodNet(load_model(model_path, weights)).load_weights(None, pruned)
        sources = {"bad_model": model_path, "bad_model_weights": weights, "pruned_bad_model_weights": pruned}
    test, pt = _load_set(clean_test, "test", g.B, scale, "--clean-test")
    bad, pb = _load_set(bad_test, "bd_test", g.B, scale, "--bad-test")
    res = evaluate_goodnet(g, *test, *bad, batch_size=batch_size)
    sources.update(clean_test=pt, bad_test=pb, scale=scale)
    return {"sources": sources, "num_classes": g.num_classes, **res}


def format_goodnet_eval(res):
    """The printed lines of :func:`evaluate_goodnet_job`."""
    lines = []
    for name, label in (("B", "B (backdoored)"), ("B_prime", "B' (pruned)"), ("G", "GoodNet")):
        m = res[name]
        line = f"{label:<16} clean accuracy {100 * m['clean_acc']:6.2f}%   attack success rate {100 * m['asr']:6.2f}%"
        if name == "G":
            line += f"   poisoned sent to class N={res['num_classes']}: {100 * m['bad_rejected']:.2f}%"
        lines.append(line)
    return "\n".join(lines)


def _pct(v, width):
    return f"{'n/a':>{width}}" if v is None else f"{100 * v:>{width - 1}.2f}%"


def format_table(report):
    """The printed summary of a repair report: one row per model."""
    lines = []
    if "trigger" in report:
        lines.append(f"repair from the recovered trigger(s): {'; '.join(report['trigger']['found'])}; "
                     f"strategy {','.join(report['strategy'])}")
        if report.get("clean_images") is not None:
            src = report.get("sources") or {}
            budget = (f"a random {report['clean_images']} of {src['clean_valid_size']} (--clean-images)"
                      if src.get("clean_budget") is not None and src.get("clean_valid_size") else "--clean-valid")
            lines.append(f"clean data used: {report['clean_images']} images ({budget}), no poisoned data")
    val = report.get("validation") or {}
    clp = report.get("clp")
    if clp:
        per_layer = ", ".join(f"{r['layer']} {len(r['pruned'])}/{r['n_channels']}" for r in clp["layers"])
        lines.append(f"CLP (data-free, u={clp['u']:g}): pruned {clp['channels_pruned']} of {clp['n_channels']} "
                     f"convolution channels ({per_layer})"
                     + (f"; left as they are: {', '.join(clp['skipped'])}" if clp.get("skipped") else ""))
    if "layer" in report:
        watched = (f"ASR {_pct(val['asr'], 1).strip()}" if val.get("asr") is not None else
                   f"recovered-trigger ASR {_pct(val['recovered_asr'], 1).strip()}" if val.get("recovered_asr") is not None
                   else "ASR not measured")
        lines.append(f"pruned layer {report['layer']} (conv {report['conv']}, {report['n_channels']} channels); "
                     f"validation: clean {100 * val['clean_acc']:.2f}%, {watched}")
    recovered = any("recovered_asr" in r["B"] for r in report["test"].values())
    floor = any(r["B"].get("clean_to_target") is not None for r in report["test"].values())
    lines.append(f"{'model':<28}{'clean acc':>10}{'ASR':>9}{'to class N (clean/poisoned)':>30}"
                 + (f"{'recovered-trigger ASR':>23}" if recovered else "")
                 + (f"{'ASR without trigger':>21}" if floor else ""))
    first = True
    for tag, res in report["test"].items():
        if first:
            lines.append(_row("B (backdoored)", res["B"], recovered, floor))
            first = False
        if tag == "unlearned":
            lines.append(_row("B' unlearned", res["B_prime"], recovered, floor))
            lines.append(_row("GoodNet unlearned", res["G"], recovered, floor))
            continue
        if tag == "clp":
            lines.append(_row(f"B' CLP ({clp['channels_pruned']} ch)", res["B_prime"], recovered, floor))
            lines.append(_row("GoodNet CLP", res["G"], recovered, floor))
            continue
        t = tag.split("_")[0]
        p = report["pruned"].get(t)
        ft = " +ft" if "finetuned" in tag else ""
        mark = " *" if tag == str(report["threshold"]) else ""
        lines.append(_row(f"B' -{t}% ({p['channels_pruned']} ch){ft}", res["B_prime"], recovered, floor))
        lines.append(_row(f"GoodNet -{t}%{ft}{mark}", res["G"], recovered, floor))
    for t, p in report["pruned"].items():
        if p is None:
            lines.append(f"threshold {t}%: accuracy never dropped that far; no B' saved")
        elif p.get("stop_reason"):
            lines.append(f"threshold {t}%: {p['channels_pruned']} channels, chosen by {p['stop_reason']}")
    u = report.get("unlearned")
    if u:
        rounds = u.get("rounds", [u])
        lines.append(f"unlearning: {len(rounds)} round(s) on {u['n_train']} clean images ({u['n_holdout']} held out "
                     f"to check), kept per round: {', '.join(str(r['kept_epoch']) for r in rounds)}")
        for k, step in enumerate((u.get("reinvert") or {}).get("steps", []), 1):
            norms = ", ".join(f"{m['l1']:.1f} ({100 * m['share']:.0f}%"
                              + ("" if m["checked_on"] == "held-out" else " of the fit images") + ")"
                              for m in step["masks"])
            lines.append(f"re-inversion {k}: masks toward {sorted({m['target'] for m in step['masks']})}, L1 "
                         f"(held-out share): {norms or 'none'}; "
                         + (step["stopped"] if "stopped" in step else
                            f"unlearnt again with {step['n_triggers']} triggers, held-out clean "
                            f"{100 * step['holdout_clean_acc']:.2f}%"))
    lines += list(report.get("notes") or [])
    if report.get("asr_note"):
        lines.append(report["asr_note"])
    return "\n".join(lines)


def _row(label, m, recovered=False, floor=False):
    rej = ""
    if "bad_rejected" in m:
        rej = (f"{100 * m['clean_rejected']:.2f}% / "
               + ("n/a" if m["bad_rejected"] is None else f"{100 * m['bad_rejected']:.2f}%"))
    out = f"{label:<28}{100 * m['clean_acc']:>9.2f}%{_pct(m['asr'], 9)}{rej:>30}"
    if recovered:
        out += _pct(m.get("recovered_asr"), 23)
    if floor:  # the share of clean images of other classes sent to the target: the ASR with no trigger
        out += _pct(m.get("clean_to_target"), 21)
    return out
