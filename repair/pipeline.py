"""The whole repair job: curve, B' at each threshold, GoodNet, evaluation, files.

``cli.py repair`` and ``cli.py eval`` are thin wrappers around
:func:`run_repair` and :func:`evaluate_goodnet`.
"""

import os

import numpy as np

from aegis_tf.metrics import summarize
from aegis_tf.models import predict_labels
from aegis_tf.utils import atomic_path, write_json
from repair.goodnet import GoodNet
from repair.prune import THRESHOLDS, finetune_pruned, prune_curve, prune_curve_naive, prune_model

__all__ = ["evaluate_goodnet", "plot_curve", "run_repair", "format_table"]


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
    # G from the two predictions already made (same rule as GoodNet.predict).
    (bc, bb), (qc, qb) = preds["B"], preds["B_prime"]
    gc, gb = np.where(bc == qc, bc, n), np.where(bb == qb, bb, n)
    out["G"] = summarize(gc, y_clean, gb, y_bad, reject_class=n)
    return out


def plot_curve(curve, path, *, title=""):
    """Accuracy and ASR against the fraction of channels pruned, with the thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frac = np.arange(curve.n_channels + 1) / curve.n_channels
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(frac, 100 * curve.clean_acc, label="clean validation accuracy", color="tab:blue")
    ax.plot(frac, 100 * curve.asr, label="attack success rate", color="tab:red")
    at = {}
    for t, k in curve.saved.items():
        if k is not None:
            at.setdefault(k, []).append(f"-{t}%")
    for k, labels in at.items():
        ax.axvline(k / curve.n_channels, color="grey", linestyle=":", linewidth=1)
        ax.annotate(" " + ", ".join(labels), (k / curve.n_channels, 3), rotation=90, fontsize=8, color="grey")
    ax.set_xlabel(f"fraction of {curve.layer} channels pruned (conv {curve.conv})")
    ax.set_ylabel("percent")
    ax.set_ylim(0, 102)
    ax.set_title(title or "pruning curve")
    ax.legend(loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


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
    used to evaluate. Files written (each atomically): ``prune_curve.json``,
    ``prune_curve.png``, ``B_prime_{t}.weights.h5`` and ``goodnet_{t}.keras``
    for each threshold reached, and ``repair.json``.
    """
    (xv, yv), (xbv, ybv), (xt, yt), (xbt, ybt) = valid, bad_valid, test, bad_test
    curve_fn = prune_curve if method == "cached" else prune_curve_naive
    curve = curve_fn(model, xv, yv, xbv, ybv, layer=layer, thresholds=THRESHOLDS, batch_size=batch_size, quiet=quiet)

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
    plot_curve(curve, files["curve_plot"], title=f"pruning {curve.layer}: accuracy and ASR")
    for key, m in models_out.items():
        tag = f"{key[0]}_finetuned" if isinstance(key, tuple) else str(key)
        w = os.path.join(out_dir, f"B_prime_{tag}.weights.h5")
        with atomic_path(w) as tmp:
            m.save_weights(tmp)
        gpath = os.path.join(out_dir, f"goodnet_{tag}.keras")
        GoodNet.from_models(model, m).save(gpath)
        files[f"B_prime_{tag}"] = w
        files[f"goodnet_{tag}"] = gpath
    files["report"] = os.path.join(out_dir, "repair.json")
    write_json(files["report"], report)
    return report


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
