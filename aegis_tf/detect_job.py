"""The whole detection job behind ``cli.py detect``: translate, features, detect, report.

:func:`run_aegis` and :func:`run_neural_cleanse` return a JSON-ready report
and write the figures; the CLI only parses flags and prints.
"""

import os
import time

import numpy as np

from aegis_tf.detection import (PRESETS, AegisDetector, PatchTransferDetector, class_features, paste_patches,
                                patch_transfer_rates, probes_moved_histogram, translate_all)
from aegis_tf.neural_cleanse import NeuralCleanse
from aegis_tf.utils import atomic_path

__all__ = ["run_aegis", "run_neural_cleanse", "format_summary", "DEFAULTS", "detect_config"]

# The measured default (results/detect_table.md, results/detect_rules.md, results/detect_ablation.md); the paper's own is PRESETS["paper"].
DEFAULTS = {
    "n_seeds": 200, "steps": 75, "eps": 100.0, "step_size": 0.25, "layer": None, "start_noise": 0.1,
    "score": "transfer", "top_frac": 0.02, "n_probes": 20, "flip_at": 0.9,
    "reducer": "tsne", "clusterer": "meanshift", "bandwidth": "auto", "population": "translated",
    "criterion": "absolute", "runs": 1, "min_cluster_frac": 0.0,
}


def detect_config(preset="default"):
    """A fresh configuration: :data:`DEFAULTS`, or a preset of :data:`PRESETS` over it (so a
    preset that does not name a setting, such as the transfer score's, still has one)."""
    return dict(DEFAULTS) if preset == "default" else {**DEFAULTS, **PRESETS[preset]}


def _plot_embeddings(det, path, title, suspects, marked=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = det.classes_
    cols = min(5, len(classes))
    rows = int(np.ceil(len(classes) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for ax, c in zip(axes.ravel(), classes):
        emb, labels, trans = det.embeddings_[c], det.labels_[c], det.is_translated_[c]
        cmap = plt.get_cmap("tab10")
        colours = [cmap(int(l) % 10) if l >= 0 else (0.6, 0.6, 0.6, 1.0) for l in labels]
        ax.scatter(emb[~trans, 0], emb[~trans, 1], c=[colours[i] for i in np.nonzero(~trans)[0]], marker="o", s=6,
                   label="training")
        ax.scatter(emb[trans, 0], emb[trans, 1], c=[colours[i] for i in np.nonzero(trans)[0]], marker="x", s=8,
                   linewidths=0.6, label="translated")
        if marked is not None and marked[c].any():
            pts = emb[trans][marked[c]]
            ax.scatter(pts[:, 0], pts[:, 1], facecolors="none", edgecolors="red", s=40, linewidths=0.8,
                       label="patch transfers")
        flag = " SUSPECT" if c in suspects else ""
        ax.set_title(f"class {c}: {det.counts_[c][0]} cluster{'s' if det.counts_[c][0] != 1 else ''}{flag}", fontsize=9,
                     color="red" if flag else "black")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[len(classes):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _cluster_grids(det, translations, out_dir, pixel_max):
    """For each suspect class, a grid of translated images, one row per cluster (paper Fig. 8)."""
    from aegis_tf.report import save_image_grid

    files = {}
    for c in det.suspect_classes_:
        x_t = translations[c].images
        labels = det.labels_[c][det.is_translated_[c]]
        rows = []
        for lab in sorted(set(labels.tolist())):
            members = np.nonzero(labels == lab)[0]
            name = "noise" if lab < 0 else f"cluster {lab}"
            rows.append((f"{name} ({len(members)})", x_t[members[:10]]))
        path = os.path.join(out_dir, f"suspect_class_{c}_clusters.png")
        save_image_grid(rows, path, pixel_max=pixel_max, title=f"class {c}: translated images by cluster")
        files[str(c)] = path
    return files


def _transfer_grids(det, translations, rates, x, out_dir, pixel_max):
    """For each suspect class: its translations whose patch transfers, the patches, and a patched probe."""
    from aegis_tf.report import save_image_grid

    files = {}
    for c in det.suspect_classes_:
        x_t, r = translations[c].images, rates[c]
        order = np.argsort(-r[0])
        idx = order[r[0][order] >= det.flip_at][:10]
        pixels, probes = r[1][idx], x[r[2][:1]]
        alone = paste_patches(x_t[idx], pixels, np.zeros_like(probes))[:, 0]
        on_probe = paste_patches(x_t[idx], pixels, probes)[:, 0]
        rows = [(f"translated ({det.transferring_[c]} transfer)", x_t[idx]), ("patch alone", alone),
                ("patch on a clean image", on_probe)]
        path = os.path.join(out_dir, f"suspect_class_{c}_patches.png")
        save_image_grid(rows, path, pixel_max=pixel_max,
                        title=f"class {c}: translations whose changed pixels move other images to class {c}")
        files[str(c)] = path
    return files


def run_aegis(model, x, y, *, classes, config, pixel_max, out_dir, seed=0, batch_size=512, quiet=True, plots=True,
              n_jobs=1):
    """AEGIS on ``model`` with training images ``(x, y)``. Returns the report dict.

    ``config`` holds the keys of :data:`DEFAULTS`; ``eps``, ``step_size`` and
    ``start_noise`` are in units of [0, 1] and scaled by ``pixel_max``.
    ``n_jobs`` classes are reduced and clustered at once (threads; the report
    does not depend on it).
    """
    times = {}
    t = time.perf_counter()
    translations = translate_all(model, x, y, classes, n_seeds=config["n_seeds"], eps=config["eps"] * pixel_max,
                                 step_size=config["step_size"] * pixel_max, steps=config["steps"], clip_min=0.0,
                                 clip_max=pixel_max, seed=seed, batch_size=batch_size,
                                 start_noise=config.get("start_noise", 0.0) * pixel_max)
    times["translate"] = time.perf_counter() - t
    clusters = config["score"] == "clusters"
    if not clusters:
        t = time.perf_counter()
        rates = patch_transfer_rates(model, x, y, translations, top_frac=config["top_frac"],
                                     n_probes=config["n_probes"], seed=seed, batch_size=batch_size)
        transfer = PatchTransferDetector(flip_at=config["flip_at"]).fit({c: r[0] for c, r in rates.items()})
        times["patch_transfer"] = time.perf_counter() - t
    det = None
    if clusters or plots:  # the cluster analysis decides in the paper's method; it is the picture in ours
        t = time.perf_counter()
        feats = class_features(model, x, y, translations, n_seeds=config["n_seeds"], layer=config["layer"], seed=seed,
                               batch_size=batch_size)
        times["features"] = time.perf_counter() - t
        det = AegisDetector(reducer=config["reducer"], clusterer=config["clusterer"], bandwidth=config["bandwidth"],
                            population=config["population"], criterion=config["criterion"],
                            min_cluster_frac=config["min_cluster_frac"], runs=config["runs"] if clusters else 1,
                            random_state=seed, n_jobs=n_jobs)
        det.fit(feats)
        times.update(det.seconds_)
    if clusters:
        report = det.report()
    else:
        report = transfer.report()
        for c, entry in report["classes"].items():
            entry["probes_moved_histogram"] = probes_moved_histogram(rates[int(c)][0], len(rates[int(c)][2])).tolist()
        if det is not None:
            for c, entry in report["classes"].items():
                entry["clusters"] = det.counts_[int(c)]
    report["method"] = "aegis"
    report["score"] = config["score"]
    report["config"] = dict(config)
    report["translation_reached"] = {str(c): translations[c].reached for c in classes}
    report["files"] = {}
    if plots:
        t = time.perf_counter()
        os.makedirs(out_dir, exist_ok=True)
        report["files"]["embeddings"] = os.path.join(out_dir, "embeddings.png")
        suspects = report["suspect_classes"]
        marked = None if clusters else {c: rates[c][0] >= transfer.flip_at for c in classes}
        _plot_embeddings(det, report["files"]["embeddings"],
                         f"AEGIS: t-SNE of training (o) and translated (x) features; verdict {report['verdict']}",
                         suspects, marked)
        if clusters:
            report["files"]["suspect_clusters"] = _cluster_grids(det, translations, out_dir, pixel_max)
        else:
            report["files"]["suspect_patches"] = _transfer_grids(transfer, translations, rates, x, out_dir, pixel_max)
        times["report"] = time.perf_counter() - t
    report["seconds"] = times
    return report


def run_neural_cleanse(model, x, *, classes, pixel_max, out_dir, seed=0, quiet=True, plots=True, **nc_kwargs):
    """Neural Cleanse on ``model`` with clean images ``x``. Returns the report dict."""
    t = time.perf_counter()
    nc = NeuralCleanse(pixel_max=pixel_max, random_state=seed, **nc_kwargs).fit(model, x, classes, quiet=quiet)
    report = nc.report()
    report["method"] = "neural-cleanse"
    report["seconds"] = {"reverse_engineer": time.perf_counter() - t}
    report["files"] = {}
    if plots:
        from aegis_tf.report import save_image_grid

        os.makedirs(out_dir, exist_ok=True)
        masks = [(nc.masks_[c] * pixel_max)[..., None] for c in classes]
        triggers = [nc.masks_[c][..., None] * nc.patterns_[c] for c in classes]
        path = os.path.join(out_dir, "neural_cleanse_masks.png")
        save_image_grid([("mask", masks[:12]), ("mask x pattern", triggers[:12])], path, pixel_max=pixel_max,
                        title="Neural Cleanse: reverse-engineered triggers, classes " + ", ".join(map(str, classes[:12])))
        report["files"]["masks"] = path
    return report


def format_summary(report, name):
    lines = [f"{name}: {report['method']} verdict: {report['verdict'].upper()}"
             + (f", suspect class(es) {', '.join(map(str, report['suspect_classes']))}" if report["suspect_classes"] else "")]
    if report["method"] == "aegis":
        if report["score"] == "transfer":
            scores = ", ".join(f"{c}:{v['transfer_score']:.2f}" for c, v in report["classes"].items())
            lines.append(f"  share of translations whose patch transfers, per class: {scores}")
        else:
            counts = ", ".join(f"{c}:{'/'.join(map(str, v['clusters']))}" for c, v in report["classes"].items())
            lines.append(f"  clusters per class (per t-SNE run): {counts}")
        if not report["suspect_classes"]:
            lines.append("  caution: a clean verdict is not proof; AEGIS misses backdoors whose trigger its "
                         "translations do not draw (results/detect_table.md); confirm with --method both")
        low = [c for c, r in report["translation_reached"].items() if r < 0.9]
        if low:
            lines.append(f"  warning: translation reached fewer than 90% for class(es) {', '.join(low)}")
    else:
        idx = ", ".join(f"{c}:{v['anomaly_index']:.2f}" for c, v in report["classes"].items())
        lines.append(f"  anomaly index per class: {idx}")
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in report["seconds"].items())
    lines.append(f"  time: {secs}")
    return "\n".join(lines)
