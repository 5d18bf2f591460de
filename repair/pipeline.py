"""The whole repair job: curve, B' at each threshold, GoodNet, evaluation, files.

``aegis repair`` and ``aegis evaluate-goodnet`` (the lab's ``eval``) call
:func:`repair_job` and :func:`evaluate_goodnet_job`; :func:`run_repair` and
:func:`evaluate_goodnet` work on models and arrays already in memory.
"""

import os


from aegis_tf.errors import AegisError
from aegis_tf.metrics import summarize
from aegis_tf.models import predict_labels
from aegis_tf.utils import atomic_path, write_json
from repair.goodnet import GoodNet, goodnet_labels
from repair.prune import THRESHOLDS, check_threshold, finetune_pruned, prune_curve, prune_curve_naive, prune_model

__all__ = ["evaluate_goodnet", "run_repair", "repair_job", "evaluate_goodnet_job", "format_table",
           "format_goodnet_eval", "pruned_weights_name"]


def pruned_weights_name(tag):
    """The file name of B' at a threshold (``4``, or ``"4_finetuned"``)."""
    return f"B_prime_{tag}.weights.h5"


def evaluate_goodnet(goodnet, x_clean, y_clean, x_bad, y_bad, *, batch_size=256):
    """Clean accuracy and ASR of B, B' and G; for G also the share sent to class N."""
    n = goodnet.num_classes
    out = {}
    preds = {}
    for name, model in (("B", goodnet.B), ("B_prime", goodnet.B_prime)):
        pc = predict_labels(model, x_clean, batch_size=batch_size)
        pb = predict_labels(model, x_bad, batch_size=batch_size)
        preds[name] = (pc, pb)
        out[name] = summarize(pc, y_clean, pb, y_bad)
    # G from the two predictions already made.
    (bc, bb), (qc, qb) = preds["B"], preds["B_prime"]
    gc, gb = goodnet_labels(bc, qc, n), goodnet_labels(bb, qb, n)
    out["G"] = summarize(gc, y_clean, gb, y_bad, reject_class=n)
    return out


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
    """Run the repair job and write its files to ``out_dir``. Returns the report dict.

    ``valid``/``bad_valid`` drive the pruning; ``test``/``bad_test`` are only
    used to evaluate. B' is kept at every threshold (2, 4 and 10);
    ``threshold`` is the one GoodNet headlines, and it must be reached, or
    nothing is written. Files written (each atomically): ``prune_curve.json``,
    ``prune_curve.png``, ``B_prime_{t}.weights.h5`` and ``goodnet_{t}.keras``
    for each threshold reached, ``repair.json`` and ``report.html``.
    """
    from aegis_tf.html_report import write_repair_html
    from aegis_tf.report import plot_prune_curve

    check_threshold(threshold)
    if method not in ("cached", "naive"):
        raise AegisError(f"--method must be cached or naive. Received: {method!r}")
    if finetune_epochs < 0:
        raise AegisError(f"--finetune must be 0 or a positive number of epochs. Received: {finetune_epochs}")
    (xv, yv), (xbv, ybv), (xt, yt), (xbt, ybt) = valid, bad_valid, test, bad_test
    curve_fn = prune_curve if method == "cached" else prune_curve_naive
    curve = curve_fn(model, xv, yv, xbv, ybv, layer=layer, thresholds=THRESHOLDS, batch_size=batch_size, quiet=quiet)
    if curve.saved[threshold] is None:
        raise AegisError(f"accuracy never dropped by {threshold}% while pruning {curve.layer} "
                         f"(at most {100 * (curve.clean_acc[0] - curve.clean_acc.min()):.2f} points); no B' for it")

    report = {
        "sources": sources or {},
        "layer": curve.layer,
        "conv": curve.conv,
        "n_channels": curve.n_channels,
        "threshold": threshold,
        "validation": {"clean_acc": float(curve.clean_acc[0]), "asr": float(curve.asr[0])},
        "pruned": {},
        "test": {},
        "files": {},
    }
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
            "valid_asr": float(curve.asr[k]),
        }
        models_out[t] = pruned
        g = GoodNet.from_models(model, pruned)
        report["test"][str(t)] = evaluate_goodnet(g, xt, yt, xbt, ybt, batch_size=batch_size)
        if finetune_epochs:
            tuned = finetune_pruned(pruned, curve, k, xv, yv, epochs=finetune_epochs, learning_rate=finetune_lr,
                                    seed=seed, quiet=quiet)
            models_out[(t, "ft")] = tuned
            gft = GoodNet.from_models(model, tuned)
            report["test"][f"{t}_finetuned"] = evaluate_goodnet(gft, xt, yt, xbt, ybt, batch_size=batch_size)

    os.makedirs(out_dir, exist_ok=True)
    files = report["files"]
    files["curve_json"] = os.path.join(out_dir, "prune_curve.json")
    write_json(files["curve_json"], curve.to_dict())
    files["curve_plot"] = os.path.join(out_dir, "prune_curve.png")
    plot_prune_curve(curve, files["curve_plot"], title=f"pruning {curve.layer}: accuracy and ASR")
    for key, m in models_out.items():
        tag = f"{key[0]}_finetuned" if isinstance(key, tuple) else str(key)
        w = os.path.join(out_dir, pruned_weights_name(tag))
        with atomic_path(w) as tmp:
            m.save_weights(tmp)
        gpath = os.path.join(out_dir, f"goodnet_{tag}.keras")
        GoodNet.from_models(model, m).save(gpath)
        files[f"B_prime_{tag}"] = w
        files[f"goodnet_{tag}"] = gpath
    files["report"] = os.path.join(out_dir, "repair.json")
    files["html"] = os.path.join(out_dir, "report.html")
    write_json(files["report"], report)
    write_repair_html(report, files["html"], title="aegis repair")
    return report


def _load_set(path, default_key, model, scale, flag):
    from aegis_tf.data import check_fits_model, load_h5
    from aegis_tf.defaults import PATHS

    path = path or PATHS[default_key]
    x, y = load_h5(path, scale=scale)
    return (check_fits_model(x, y, model, f"{flag} {path}"), y), path


def _model_paths(bad_model, bad_model_weights):
    """The embedded default B only when no model at all is named."""
    from aegis_tf.defaults import PATHS

    if bad_model is None and bad_model_weights is None:
        return PATHS["bd_net"], None
    return bad_model, bad_model_weights


def repair_job(*, bad_model=None, bad_model_weights=None, clean_valid=None, bad_valid=None, clean_test=None,
               bad_test=None, threshold=4, layer=None, method="cached", finetune=0, finetune_lr=1e-4,
               out_dir=os.path.join("out", "repair"), scale="raw", batch_size=256, seed=0, quiet=True):
    """:func:`run_repair` on files: B (the embedded default when none is named) and the
    four CSAW sets (the embedded ones by default), all checked before any work."""
    from aegis_tf.models import load_model

    check_threshold(threshold)
    model_path, weights = _model_paths(bad_model, bad_model_weights)
    model = load_model(model_path, weights)
    valid, pv = _load_set(clean_valid, "valid", model, scale, "--clean-valid")
    bvalid, pbv = _load_set(bad_valid, "bd_valid", model, scale, "--bad-valid")
    test, pt = _load_set(clean_test, "test", model, scale, "--clean-test")
    btest, pbt = _load_set(bad_test, "bd_test", model, scale, "--bad-test")
    return run_repair(
        model, valid, bvalid, test, btest, out_dir=out_dir, threshold=threshold, layer=layer, method=method,
        finetune_epochs=finetune, finetune_lr=finetune_lr, batch_size=batch_size, seed=seed, quiet=quiet,
        sources={"bad_model": model_path, "bad_model_weights": weights, "clean_valid": pv, "bad_valid": pbv,
                 "clean_test": pt, "bad_test": pbt, "scale": scale})


def evaluate_goodnet_job(*, goodnet=None, bad_model=None, bad_model_weights=None, pruned_bad_model_weights=None,
                         threshold=4, out_dir=os.path.join("out", "repair"), clean_test=None, bad_test=None,
                         scale="raw", batch_size=256):
    """The lab's evaluation (``eval.py``): clean accuracy and ASR of B, B' and GoodNet on the test sets.

    GoodNet comes from a ``goodnet_T.keras`` file, or from B and the weights
    of B' (by default those ``repair`` wrote for ``threshold`` in ``out_dir``).
    """
    from aegis_tf.models import load_model

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


def format_table(report):
    """The printed summary of a repair report: one row per model."""
    lines = [
        f"pruned layer {report['layer']} (conv {report['conv']}, {report['n_channels']} channels); "
        f"validation: clean {100 * report['validation']['clean_acc']:.2f}%, ASR {100 * report['validation']['asr']:.2f}%",
        f"{'model':<28}{'clean acc':>10}{'ASR':>9}{'to class N (clean/poisoned)':>30}",
    ]
    first = True
    for tag, res in report["test"].items():
        if first:
            lines.append(_row("B (backdoored)", res["B"]))
            first = False
        p = report["pruned"].get(tag.split("_")[0])
        label = f"B' -{tag.split('_')[0]}% ({p['channels_pruned']} ch)" + (" +ft" if "finetuned" in tag else "")
        mark = " *" if tag == str(report["threshold"]) else ""
        lines.append(_row(label, res["B_prime"]))
        lines.append(_row(f"GoodNet -{tag.split('_')[0]}%" + (" +ft" if "finetuned" in tag else "") + mark, res["G"]))
    for t, p in report["pruned"].items():
        if p is None:
            lines.append(f"threshold {t}%: accuracy never dropped that far; no B' saved")
    return "\n".join(lines)


def _row(label, m):
    rej = ""
    if "bad_rejected" in m:
        rej = f"{100 * m['clean_rejected']:.2f}% / {100 * m['bad_rejected']:.2f}%"
    return f"{label:<28}{100 * m['clean_acc']:>9.2f}%{100 * m['asr']:>8.2f}%{rej:>30}"
