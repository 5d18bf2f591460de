"""Figures (image grids of clean and triggered samples) and the detectors' common JSON report."""

import numpy as np

from aegis_tf.utils import atomic_path

__all__ = ["save_image_grid", "verdict_report"]


def save_image_grid(rows, path, *, pixel_max=255.0, title=None):
    """Save ``rows`` (a list of ``(label, images)``; images NHWC) as one PNG grid.

    Rows whose label ends with "(difference)" are shown centred on grey.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def verdict_report(detector, per_class, params=()):
    """The JSON-ready report of a fitted detector: verdict, suspects, ``per_class(c)`` for each class, params."""
    out = {
        "verdict": "backdoored" if detector.is_backdoored_ else "clean",
        "suspect_classes": detector.suspect_classes_,
        "classes": {str(c): per_class(c) for c in detector.classes_},
    }
    if params:
        out["params"] = {k: getattr(detector, k) for k in params}
    return out
