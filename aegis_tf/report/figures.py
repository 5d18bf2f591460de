"""The generic figures: image grids and the pruning curve, saved atomically by
:func:`save_figure` and drawn only when a job asks for one. The detection figures,
which read the detectors, are in :mod:`aegis_tf.detect.figures`."""

import os

import numpy as np

from aegis_tf.core.utils import atomic_path

__all__ = ["pyplot", "save_figure", "save_image_grid", "plot_prune_curve", "plot_roc"]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, *, dpi=100):
    """Write a matplotlib figure to ``path`` atomically and close it."""
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return path


def save_image_grid(rows, path, *, pixel_max=255.0, title=None):
    """Save ``rows`` (a list of ``(label, images)``; images NHWC) as one PNG grid.

    Rows whose label ends with "(difference)" are shown centred on grey.
    """
    plt = pyplot()
    n_cols = max(len(imgs) for _, imgs in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.3 * n_cols + 1.6, 1.3 * len(rows) + 0.4), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        diff = label.endswith("(difference)")
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(imgs):
                ax.axis("off")
                continue
            img = np.asarray(imgs[c], dtype="float32") / pixel_max
            img = np.clip(0.5 + img if diff else img, 0.0, 1.0)
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_prune_curve(curve, path, *, title=""):
    """Accuracy and ASR against the fraction of channels pruned, with the thresholds marked."""
    plt = pyplot()
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
    ax.set_xlabel(f"fraction of {curve.layer} channels pruned (zeroed in {curve.conv})")
    ax.set_ylabel("percent")
    ax.set_ylim(0, 102)
    ax.set_title(title or "pruning curve")
    ax.legend(loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def plot_roc(fpr, tpr, path, *, auc=None, title="Suspicion score against the truth"):
    """The ROC curve of a set of models' scores (``fpr``/``tpr`` from
    :func:`aegis_tf.detect.ranking.roc_points`), with the chance diagonal."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="#bbb", linestyle="--", linewidth=1, label="chance")
    ax.step(fpr, tpr, where="post", color="#c0392b", linewidth=2,
            label="score" + ("" if auc is None else f" (ROC-AUC {auc:.3f})"))
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false-positive rate (clean models flagged)")
    ax.set_ylabel("true-positive rate (backdoored models flagged)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
