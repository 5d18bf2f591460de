"""Which feature layer? AEGIS cluster counts per layer on the embedded robust models.

    python bench/detect_layers.py

Translates once per model (200 seeds per class, the paper's 75 steps of 0.25,
eps 100), then fits the detector (1 t-SNE run) on features from conv_3,
pool_3 and the penultimate layer, clustering translated images alone or
together with training images, and with HDBSCAN. Writes
results/detect_layers.md.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from aegis_tf.core.data import load_h5
from aegis_tf.core.embedded import PATHS
from aegis_tf.detect.clustering import AegisDetector, class_features
from aegis_tf.detect.translation import translate_all
from aegis_tf.core.models import load_model
from aegis_tf.core.utils import atomic_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # results/ lives here

VARIANTS = {
    "translated only, mean shift auto, >1": dict(population="translated"),
    "train+translated, mean shift auto, >2": dict(population="both"),
    "translated only, HDBSCAN, >1": dict(population="translated", clusterer="hdbscan"),
}


def main():
    x, y = load_h5(PATHS["train"])
    lines = ["# AEGIS by feature layer (embedded robust digits models, target 7)", "",
             "`python bench/detect_layers.py`: 200 seeds per class, 75 L2 PGD steps of 0.25, eps 100; 1 t-SNE run. "
             "Cells: suspect classes, then cluster counts for classes 0-9.", "",
             "| model | layer | " + " | ".join(VARIANTS) + " |", "|---|---|" + "---|" * len(VARIANTS)]
    for name in ("robust_bd_net", "robust_clean_net"):
        model = load_model(PATHS[name])
        tr = translate_all(model, x, y, list(range(10)), n_seeds=200, eps=100 * 255.0, step_size=0.25 * 255.0,
                           steps=75, clip_min=0.0, clip_max=255.0)
        for layer in ("conv_3", "pool_3", "penultimate"):
            feats = class_features(model, x, y, tr, n_seeds=200, layer=layer)
            cells = []
            for kw in VARIANTS.values():
                d = AegisDetector(runs=1, **kw).fit_features(feats)
                cells.append(f"{d.suspect_classes_ or 'none'}; {''.join(str(d.counts_[c][0]) for c in range(10))}")
            lines.append(f"| {name} | {layer} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    with atomic_path(os.path.join(ROOT, "results", "detect_layers.md")) as tmp:
        open(tmp, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
