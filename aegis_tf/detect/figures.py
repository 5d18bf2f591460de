"""The detection figures: the AEGIS embeddings, the suspect classes' patch, cluster,
whole-image and blend grids, and Neural Cleanse's masks (drawn with
:mod:`aegis_tf.report.figures`)."""

import os

import numpy as np

from aegis_tf.report.figures import pyplot, save_figure, save_image_grid

__all__ = ["plot_embeddings", "cluster_grids", "transfer_grids", "direction_grids", "blend_grids", "warp_grids", "mask_grids",
           "mask_grid"]


def plot_embeddings(det, path, suspects, *, marked=None, verdict=""):
    """Each class's 2-D embedding from a fitted :class:`~aegis_tf.detect.clustering.AegisDetector`:
    training images (o) when they were embedded, translations (x), and circles
    on the translations whose patch transfers (``marked``: class -> bool mask)."""
    plt = pyplot()
    classes = det.classes_
    cols = min(5, len(classes))
    rows = int(np.ceil(len(classes) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for ax, c in zip(axes.ravel(), classes):
        emb, labels, trans = det.embeddings_[c], det.labels_[c], det.is_translated_[c]
        cmap = plt.get_cmap("tab10")
        colours = [cmap(int(l) % 10) if l >= 0 else (0.6, 0.6, 0.6, 1.0) for l in labels]
        if (~trans).any():
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
    shown = "training (o) and translated (x)" if det.population == "both" else "translated (x)"
    fig.suptitle(f"AEGIS: t-SNE of {shown} features" + (f"; verdict {verdict}" if verdict else ""), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def cluster_grids(det, translations, out_dir, pixel_max):
    """For each suspect class, a grid of translated images, one row per cluster (paper Fig. 8)."""
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


def transfer_grids(det, translations, x, out_dir, pixel_max):
    """For each suspect class of a fitted :class:`~aegis_tf.detect.patch_transfer.PatchTransferDetector`:
    its translations whose patch transfers, the patches alone, and a patched probe."""
    from aegis_tf.detect.patch_transfer import paste_patches

    rates = det.rates_
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


def mask_grid(nc, path, *, pixel_max):
    """Neural Cleanse's reverse-engineered masks and triggers (the first 12 classes)."""
    classes = nc.classes_[:12]
    masks = [(nc.masks_[c] * pixel_max)[..., None] for c in classes]
    triggers = [nc.masks_[c][..., None] * nc.patterns_[c] for c in classes]
    return save_image_grid([("mask", masks), ("mask x pattern", triggers)], path, pixel_max=pixel_max,
                           title="Neural Cleanse: reverse-engineered triggers, classes " + ", ".join(map(str, classes)))


def direction_grids(det, translations, x, out_dir, pixel_max):
    """For each class the whole-image signal flags (a fitted
    :class:`~aegis_tf.detect.whole_image.WholeImageDetector`): its mean translation direction, the
    recovered whole-image trigger, and clean images with it added at the flip norm."""
    from aegis_tf.detect.whole_image import mean_direction

    files = {}
    rng = np.random.default_rng(0)
    for c in det.suspect_classes_:
        delta, size = mean_direction(translations[c])
        if size == 0:
            continue
        step = delta / size * det.norms_[c] * pixel_max
        probes = x[rng.choice(len(x), size=min(8, len(x)), replace=False)]
        moved = np.clip(probes + step, 0.0, pixel_max)
        span = float(np.abs(step).max()) or 1.0
        rows = [("direction (difference)", [0.5 * pixel_max * step / span]),
                ("clean", probes), (f"+ direction at norm {det.norms_[c]:.2f}", moved)]
        path = os.path.join(out_dir, f"suspect_class_{c}_whole_image.png")
        save_image_grid(rows, path, pixel_max=pixel_max,
                        title=f"class {c}: the mean translation direction, the recovered whole-image trigger")
        files[str(c)] = path
    return files


def blend_grids(det, translations, x, out_dir, pixel_max):
    """For each class the blend probe flags (a fitted
    :class:`~aegis_tf.detect.whole_image.BlendProbeDetector`): its mean translated image
    (the recovered blend pattern), and clean images blended with it at the weight
    that moved the probes."""
    from aegis_tf.detect.whole_image import mean_translated

    files = {}
    rng = np.random.default_rng(0)
    for c in det.suspect_classes_:
        pattern, a = mean_translated(translations[c]), det.norms_[c]
        probes = x[rng.choice(len(x), size=min(8, len(x)), replace=False)].astype("float32")
        rows = [("mean translated image", [pattern]), ("clean", probes),
                (f"blended at a = {a:.2f}", (1 - a) * probes + a * pattern)]
        path = os.path.join(out_dir, f"suspect_class_{c}_blend.png")
        save_image_grid(rows, path, pixel_max=pixel_max,
                        title=f"class {c}: the recovered blend pattern (mean translated image)")
        files[str(c)] = path
    return files


def _grid_lines(h, w, ch, pixel_max, every=4):
    """A white image with dark lines every ``every`` pixels: a warp bends them visibly."""
    img = np.full((h, w, ch), pixel_max, "float32")
    img[::every] = 0.0
    img[:, ::every] = 0.0
    return img


def _other_class_probes(x, y, c, rng, n=8):
    """``n`` images of ``x`` not labelled ``c`` (any images when ``y`` is None), float32."""
    pool = np.nonzero(np.asarray(y) != c)[0] if y is not None else np.arange(len(x))
    return x[rng.choice(pool, size=min(n, len(pool)), replace=False)].astype("float32")


def warp_grids(det, x, y, out_dir, pixel_max):
    """For each class the warp probe flags (a fitted
    :class:`~aegis_tf.detect.warp_probe.WarpProbeDetector`): the recovered field (its
    magnitude, and a grid of lines bent by it four times over), clean images of other
    classes, the same images warped at the shift that moved the probes, and the difference."""
    from aegis_tf.detect.warp_probe import warp_images

    files = {}
    rng = np.random.default_rng(0)
    x = np.asarray(x)
    h, w, ch = x.shape[1:]
    for c in det.suspect_classes_:
        field = det.trigger_field(c)
        size = np.sqrt(np.sum(field ** 2, axis=-1, keepdims=True))
        magnitude = np.repeat(pixel_max * size / max(float(size.max()), 1e-12), ch, axis=-1)
        lines = warp_images(_grid_lines(h, w, ch, pixel_max)[None], 4.0 * field)
        probes = _other_class_probes(x, y, c, rng)
        warped = warp_images(probes, field)
        diff = np.clip(0.5 * pixel_max + 2.0 * (warped - probes), 0.0, pixel_max)
        rows = [("field: |offset|, and grid lines bent 4x", [magnitude, lines[0]]), ("clean, other classes", probes),
                (f"warped, largest offset {det.norms_[c]:.2f} px", warped), ("difference x2", diff)]
        path = os.path.join(out_dir, f"suspect_class_{c}_warp.png")
        save_image_grid(rows, path, pixel_max=pixel_max,
                        title=f"class {c}: the recovered warp (a smooth field fitted toward the class)")
        files[str(c)] = path
    return files


def mask_grids(det, x, y, out_dir, pixel_max):
    """For each class the mask probe flags (a fitted
    :class:`~aegis_tf.detect.mask_probe.MaskProbeDetector`): the reversed mask and the
    trigger it carries (mask x pattern), clean images of other classes, and the same images
    with the trigger stamped on."""
    files = {}
    rng = np.random.default_rng(0)
    x = np.asarray(x)
    for c in det.suspect_classes_:
        mask, pattern = det.masks_[c], det.patterns_[c]
        probes = _other_class_probes(x, y, c, rng)
        rows = _mask_rows("mask, and mask x pattern", "clean, other classes", mask, pattern, probes,
                          f"mask L1 {det.l1_norms_[c]:.1f}, gap {det.scores_[c]:.2f}", pixel_max)
        path = os.path.join(out_dir, f"suspect_class_{c}_mask.png")
        save_image_grid(rows, path, pixel_max=pixel_max,
                        title=f"class {c}: the smallest trigger (Neural Cleanse's reverse engineering)")
        files[str(c)] = path
    return files


def _mask_rows(mask_label, clean_label, mask, pattern, probes, measured, pixel_max):
    """Three grid rows of a reversed mask: the mask and mask x pattern, the clean ``probes``, and the
    probes with the trigger stamped on (captioned with what was ``measured``)."""
    from aegis_tf.detect.mask_probe import apply_mask

    return [(mask_label, [np.repeat(pixel_max * mask[..., None], probes.shape[-1], axis=-1), mask[..., None] * pattern]),
            (clean_label, probes),
            (f"with the trigger ({measured})", apply_mask(probes, mask, pattern))]


def pair_mask_grids(det, x, y, out_dir, pixel_max):
    """For each class the pair mask probe flags (a fitted
    :class:`~aegis_tf.detect.pair_probe.PairMaskDetector`), one row group per flagged source:
    the reversed mask and the trigger it carries, clean images of the source, and the same
    images with the trigger stamped on."""
    files = {}
    rng = np.random.default_rng(0)
    x, y = np.asarray(x), np.asarray(y)
    for c in det.suspect_classes_:
        rows = []
        for s in sorted(s for s, t in det.flagged_pairs_ if t == c):
            mask, pattern = det.masks_[(s, c)], det.patterns_[(s, c)]
            idx = np.flatnonzero(y == s)
            probes = x[rng.choice(idx, size=min(8, len(idx)), replace=False)]
            rows += _mask_rows(f"{s} -> {c}: mask, and mask x pattern", f"clean, class {s}", mask, pattern, probes,
                               f"mask L1 {det.pair_norms_[(s, c)]:.1f}, gap {det.pair_gaps_[(s, c)]:.2f}", pixel_max)
        path = os.path.join(out_dir, f"suspect_class_{c}_pair_mask.png")
        save_image_grid(rows, path, pixel_max=pixel_max,
                        title=f"class {c}: the smallest trigger from each flagged source")
        files[str(c)] = path
    return files
