"""AEGIS backdoor detection (Soremekun et al.), with the knobs needed to make it reliable.

The pipeline:

1. :func:`translate_all`: for every class ``c``, translate ``n_seeds`` random
   training images of other classes toward ``c`` with targeted L2 PGD (all
   classes in one batched attack).
2. :func:`extract_features`: flattened features of a layer (default: the
   penultimate layer) for the translated images and for ``n_seeds`` training
   images of ``c``.
3. :class:`AegisDetector` (scikit-learn style): per class, PCA, then t-SNE
   (or PCA alone) to 2-D, then clustering (mean shift, HDBSCAN or affinity
   propagation); count the clusters; flag classes with more clusters than a
   clean class shows.

:class:`PatchTransferDetector` scores the same translations another way
(our addition, the measured default of ``cli.py detect``): a translation
toward a backdoor's target often draws the trigger, and the few pixels it
changed most then act as a universal patch. :func:`patch_transfer_rates`
pastes them onto clean images of other classes and counts how many take the
class; a class is suspect when enough of its translations carry such a patch.

The published configuration is :data:`PRESETS` ``["paper"]``: training and
translated images together, t-SNE, mean shift with a fixed bandwidth, a
class is suspect with more than 2 clusters. Other options are measured in
``results/detect_ablation.md``.
"""

import time
from typing import NamedTuple

import numpy as np

from aegis_tf.attacks import projected_gradient_descent
from aegis_tf.errors import AegisError
from aegis_tf.models import penultimate_layer, predict_labels
from aegis_tf.report import verdict_report

__all__ = ["PRESETS", "Translation", "translate_all", "feature_layer", "extract_features", "AegisDetector", "class_features", "paste_patches",
           "patch_transfer_rates", "probes_moved_histogram", "rates_from_histogram", "PatchTransferDetector"]

PRESETS = {
    # The authors' notebooks (MNIST values; the CLI scales eps by the pixel range). They
    # flattened the output of ResNet layer4; models without one give their penultimate layer.
    "paper": {
        "n_seeds": 500, "steps": 75, "eps": 100.0, "step_size": 0.25, "layer": "layer4,penultimate",
        "reducer": "tsne", "clusterer": "meanshift", "bandwidth": 35.0, "population": "both",
        "criterion": "absolute", "runs": 1, "min_cluster_frac": 0.0, "score": "clusters", "start_noise": 0.0,
    },
}


class Translation(NamedTuple):
    """Translations toward one class: the images, the indices of their seeds in
    the training set, the share the model classifies as the class, and the
    images PGD started from (the seeds, plus noise with ``start_noise``)."""

    images: np.ndarray
    seeds: np.ndarray
    reached: float
    starts: np.ndarray


def translate_all(model, x, y, classes, *, n_seeds, eps, step_size, steps, clip_min, clip_max, seed=0,
                  batch_size=512, start_noise=0.0):
    """Translate ``n_seeds`` training images of other classes toward each class in ``classes``.

    Returns ``{c: Translation}``. All classes go through one batched targeted
    L2 PGD call (``eps``/``step_size`` in the model's input units). The paper
    starts PGD from the seed images themselves (``start_noise=0``).
    ``start_noise`` > 0 adds Gaussian noise of that standard deviation (input
    units) to each seed first, drawn from ``seed``: a ReLU network often has
    zero gradient on a black corner, so PGD from a clean seed can never light
    a corner trigger there; from a noisy start it can
    (``results/trigger_lit.md``).
    """
    if start_noise < 0:
        raise AegisError(f"start_noise must be >= 0. Received: {start_noise}")
    rng = np.random.default_rng(seed)
    rows, targets, seeds = [], [], {}
    for c in classes:
        pool = np.nonzero(y != c)[0]
        if len(pool) == 0:
            raise AegisError(f"no training images outside class {c} to translate from")
        idx = rng.choice(pool, size=min(n_seeds, len(pool)), replace=False)
        seeds[c] = idx
        rows.append(idx)
        targets.append(np.full(len(idx), c))
    all_idx, all_t = np.concatenate(rows), np.concatenate(targets)
    starts = np.asarray(x[all_idx], dtype="float32")
    if start_noise > 0:
        noise = rng.standard_normal(starts.shape).astype("float32") * np.float32(start_noise)
        starts = np.clip(starts + noise, clip_min, clip_max)
    adv = projected_gradient_descent(model, starts, eps=eps, step_size=step_size, steps=steps, norm=2, y=all_t,
                                     targeted=True, random_start=False, clip_min=clip_min, clip_max=clip_max,
                                     batch_size=batch_size)
    pred = predict_labels(model, adv, batch_size=batch_size)
    out, start = {}, 0
    for c in classes:
        n = len(seeds[c])
        sl = slice(start, start + n)
        out[c] = Translation(adv[sl], seeds[c], float(np.mean(pred[sl] == c)), starts[sl])
        start += n
    return out


def feature_layer(model, layer=None):
    """The layer ``layer`` names: ``None`` or ``"penultimate"`` is the layer
    feeding the classifier; ``"a,b"`` is the first of ``a``, ``b`` that the
    model has (the paper preset asks for ``layer4,penultimate``: the last
    residual stage of a ResNet, else the penultimate layer)."""
    if layer is None:
        return penultimate_layer(model)
    names = [n.strip() for n in str(layer).split(",") if n.strip()]
    for name in names:
        try:
            return model.get_layer(name)
        except ValueError:
            if name == "penultimate":
                return penultimate_layer(model)
    raise AegisError(f"model has no layer named {' or '.join(map(repr, names)) or repr(layer)}")


def extract_features(model, x, *, layer=None, batch_size=512):
    """Flattened output of ``layer`` (see :func:`feature_layer`) for ``x``."""
    import keras

    target = feature_layer(model, layer)
    probe = keras.Model(model.inputs, target.output)
    f = probe.predict(x, batch_size=batch_size, verbose=0)
    return f.reshape(len(x), -1)


def class_features(model, x, y, translations, *, n_seeds, layer=None, seed=0, batch_size=512):
    """Per class ``c``: features of ``n_seeds`` training images of ``c`` and of its translations.

    Returns ``{c: (F_train, F_translated)}``.
    """
    rng = np.random.default_rng(seed + 1)
    out = {}
    for c, tr in translations.items():
        xt = tr.images
        own = np.nonzero(y == c)[0]
        if len(own) == 0:
            raise AegisError(f"class {c} has no training images")
        idx = rng.choice(own, size=min(n_seeds, len(own)), replace=False)
        out[c] = (extract_features(model, x[idx], layer=layer, batch_size=batch_size),
                  extract_features(model, xt, layer=layer, batch_size=batch_size))
    return out


def _reduce(f, reducer, random_state, perplexity, pca_components):
    from sklearn.decomposition import PCA

    f = np.asarray(f, dtype="float64")
    k = int(min(pca_components, f.shape[0] - 1, f.shape[1]))
    if k >= 2 and f.shape[1] > 2:
        f = PCA(n_components=k, random_state=random_state).fit_transform(f)
    if reducer == "pca":
        return f[:, :2] if f.shape[1] >= 2 else np.pad(f, ((0, 0), (0, 2 - f.shape[1])))
    from sklearn.manifold import TSNE

    perp = min(perplexity, max(2.0, (len(f) - 1) / 3.0))
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=random_state).fit_transform(f)


def _cluster(emb, clusterer, bandwidth, random_state, quantile=0.3):
    if clusterer == "meanshift":
        from sklearn.cluster import MeanShift, estimate_bandwidth

        bw = estimate_bandwidth(emb, quantile=quantile, random_state=random_state) if bandwidth == "auto" else float(bandwidth)
        return MeanShift(bandwidth=max(bw, 1e-6), bin_seeding=True).fit_predict(emb), bw
    if clusterer == "hdbscan":
        from sklearn.cluster import HDBSCAN

        return HDBSCAN(min_cluster_size=max(5, len(emb) // 20), copy=True).fit_predict(emb), None
    if clusterer == "affinity":
        from sklearn.cluster import AffinityPropagation

        return AffinityPropagation(random_state=random_state).fit_predict(emb), None
    raise AegisError(f"clusterer must be meanshift, hdbscan or affinity. Received: {clusterer!r}")


def _count(labels, min_frac):
    labels = labels[labels >= 0]  # HDBSCAN noise is not a cluster
    if len(labels) == 0:
        return 0
    sizes = np.bincount(labels)
    return int(np.sum(sizes >= max(1, min_frac * len(labels))))


class AegisDetector:
    """Cluster-count backdoor detector over per-class features, scikit-learn style.

    Parameters (stored as given; see ``fit``):

    * ``reducer``: ``"tsne"`` (PCA to ``pca_components``, then 2-D t-SNE) or ``"pca"``.
    * ``clusterer``: ``"meanshift"`` (``bandwidth`` a number or ``"auto"``,
      scikit-learn's ``estimate_bandwidth`` at quantile 0.3, or 0.6 for the
      translated population), ``"hdbscan"`` or ``"affinity"``.
    * ``population``: ``"both"`` clusters training and translated images
      together (the paper; a clean class shows 2 clusters) or ``"translated"``
      clusters the translated images alone (a clean class shows 1).
    * ``criterion``: ``"absolute"`` flags a class with more clusters than a clean
      class shows; ``"relative"`` flags a class with more clusters than the
      median over all classes (so a model whose every class splits is not flagged).
    * ``min_cluster_frac``: clusters smaller than this share of the points are not
      counted (0 counts every cluster, as the paper did).
    * ``runs``: t-SNE seeds to vote over; a class is suspect if flagged in more
      than half of the runs.
    * ``random_state``: seed of PCA, t-SNE and the clusterers; run ``r`` uses
      ``random_state + r``.
    * ``n_jobs``: classes (and runs) reduced and clustered at once, in threads
      (1: one after the other; -1: one per CPU core). The result does not
      depend on it.

    Attributes after ``fit``: ``classes_``, ``counts_`` (class -> list of counts,
    one per run), ``votes_`` (class -> share of runs flagging it),
    ``suspect_classes_``, ``is_backdoored_``, ``embeddings_`` and ``labels_``
    (class -> 2-D points and cluster labels of the first run), ``bandwidths_``,
    ``seconds_`` (wall time spent reducing and clustering; with ``n_jobs`` > 1
    the wall time of the parallel section, split between the two in
    proportion to their summed per-job times).
    """

    def __init__(self, *, reducer="tsne", clusterer="meanshift", bandwidth="auto", population="both",
                 criterion="absolute", min_cluster_frac=0.0, runs=1, perplexity=30.0, pca_components=150,
                 random_state=0, n_jobs=1):
        self.reducer = reducer
        self.clusterer = clusterer
        self.bandwidth = bandwidth
        self.population = population
        self.criterion = criterion
        self.min_cluster_frac = min_cluster_frac
        self.runs = runs
        self.perplexity = perplexity
        self.pca_components = pca_components
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _check(self):
        if self.reducer not in ("tsne", "pca"):
            raise AegisError(f"reducer must be tsne or pca. Received: {self.reducer!r}")
        if self.population not in ("both", "translated"):
            raise AegisError(f"population must be both or translated. Received: {self.population!r}")
        if self.criterion not in ("absolute", "relative"):
            raise AegisError(f"criterion must be absolute or relative. Received: {self.criterion!r}")
        if int(self.runs) < 1:
            raise AegisError(f"runs must be at least 1. Received: {self.runs}")
        if not isinstance(self.n_jobs, (int, np.integer)) or self.n_jobs == 0 or self.n_jobs < -1:
            raise AegisError(f"n_jobs must be a positive integer or -1. Received: {self.n_jobs!r}")

    def _points(self, f_train, f_trans):
        if self.population == "translated":
            return f_trans, np.ones(len(f_trans), dtype=bool)
        return np.concatenate([f_train, f_trans]), np.r_[np.zeros(len(f_train), bool), np.ones(len(f_trans), bool)]

    def fit(self, features):
        """``features``: ``{class: (F_train, F_translated)}``. Returns ``self``."""
        self._check()
        if not features:
            raise AegisError("no classes to examine")
        self.classes_ = sorted(features)
        self.counts_ = {c: [] for c in self.classes_}
        self.embeddings_, self.labels_, self.is_translated_, self.bandwidths_ = {}, {}, {}, {}
        # estimate_bandwidth's quantile is a share of the points; 0.3 suits the two
        # equal modes of a clean class (training + translated). With translated
        # images alone a clean class has one mode, so the same scale needs 0.6.
        quantile = 0.3 if self.population == "both" else 0.6

        def job(r, c):
            rs = int(self.random_state) + r
            pts, is_trans = self._points(*features[c])
            t = time.perf_counter()
            emb = _reduce(pts, self.reducer, rs, self.perplexity, self.pca_components)
            t2 = time.perf_counter()
            labels, bw = _cluster(emb, self.clusterer, self.bandwidth, rs, quantile=quantile)
            return emb, labels, is_trans, bw, t2 - t, time.perf_counter() - t2

        tasks = [(r, c) for r in range(int(self.runs)) for c in self.classes_]
        t = time.perf_counter()
        if self.n_jobs == 1:
            results = [job(r, c) for r, c in tasks]
        else:  # threads: t-SNE and mean shift spend their time in compiled code; nothing is pickled
            from sklearn.utils.parallel import Parallel, delayed

            results = Parallel(n_jobs=self.n_jobs, backend="threading")(delayed(job)(r, c) for r, c in tasks)
        wall = time.perf_counter() - t
        work = {"reduce": sum(x[4] for x in results), "cluster": sum(x[5] for x in results)}
        total = sum(work.values()) or 1.0
        self.seconds_ = {k: v if self.n_jobs == 1 else wall * v / total for k, v in work.items()}
        for (r, c), (emb, labels, is_trans, bw, _, _) in zip(tasks, results):
            self.counts_[c].append(_count(labels, self.min_cluster_frac))
            if r == 0:
                self.embeddings_[c], self.labels_[c], self.is_translated_[c] = emb, labels, is_trans
                self.bandwidths_[c] = bw
        expected = 2 if self.population == "both" else 1
        flags = {c: [] for c in self.classes_}
        for r in range(int(self.runs)):
            run_counts = np.array([self.counts_[c][r] for c in self.classes_])
            base = max(expected, float(np.median(run_counts))) if self.criterion == "relative" else expected
            for c, n in zip(self.classes_, run_counts):
                flags[c].append(n > base)
        self.votes_ = {c: float(np.mean(flags[c])) for c in self.classes_}
        self.suspect_classes_ = [c for c in self.classes_ if self.votes_[c] > 0.5]
        self.is_backdoored_ = bool(self.suspect_classes_)
        return self

    def report(self):
        """A JSON-ready summary of a fitted detector."""
        return verdict_report(
            self, lambda c: {"clusters": self.counts_[c], "vote": self.votes_[c], "bandwidth": self.bandwidths_[c]},
            ("reducer", "clusterer", "bandwidth", "population", "criterion", "min_cluster_frac", "runs", "perplexity",
             "pca_components", "random_state", "n_jobs"))


def _patch_pixels(x_translated, x_seed, top_frac):
    """Flat pixel indices (n, k) of the ``top_frac`` most-changed pixels of each translation."""
    d = np.abs(np.asarray(x_translated, "float32") - np.asarray(x_seed, "float32")).sum(-1)
    d = d.reshape(len(d), -1)
    k = int(min(d.shape[1], max(1, round(top_frac * d.shape[1]))))
    return np.argpartition(-d, k - 1, axis=1)[:, :k]


def paste_patches(x_translated, pixels, probes):
    """Every translation's patch (its values at ``pixels``) pasted onto every probe.

    Returns an array of shape ``(len(x_translated), len(probes)) + image shape``.
    """
    n, (h, w, c) = len(x_translated), probes.shape[1:]
    out = np.repeat(np.asarray(probes, "float32")[None], n, axis=0).reshape(n, len(probes), h * w, c)
    values = np.asarray(x_translated, "float32").reshape(n, h * w, c)[np.arange(n)[:, None], pixels]  # (n, k, c)
    out[np.arange(n)[:, None], :, pixels] = values[:, :, None, :]
    return out.reshape((n, len(probes), h, w, c))


def patch_transfer_rates(model, x, y, translations, *, top_frac=0.02, n_probes=20, seed=0, batch_size=512):
    """How far each translation's most-changed pixels carry the class on their own.

    For class ``c`` and each of its translations: take the ``top_frac`` share of
    pixels that the translation changed most (the patch), paste them onto
    ``n_probes`` training images of other classes, and record the share of
    those that the model then classifies as ``c``. Returns ``{c: (rates,
    pixels, probe_indices)}``, ``rates`` one value per translation.
    """
    rng = np.random.default_rng(seed + 2)
    out = {}
    for c, tr in translations.items():
        xt = tr.images
        pool = np.nonzero(y != c)[0]
        probe_idx = rng.choice(pool, size=min(n_probes, len(pool)), replace=False)
        pixels = _patch_pixels(xt, tr.starts, top_frac)
        pasted = paste_patches(xt, pixels, x[probe_idx])
        pred = predict_labels(model, pasted.reshape((-1,) + pasted.shape[2:]), batch_size=batch_size)
        out[c] = ((pred.reshape(len(xt), len(probe_idx)) == c).mean(axis=1), pixels, probe_idx)
    return out


def probes_moved_histogram(rates, n_probes):
    """How many translations moved 0, 1, ..., ``n_probes`` probes, from their ``rates``
    (:func:`patch_transfer_rates`). It holds all that :class:`PatchTransferDetector` needs."""
    moved = np.rint(np.asarray(rates, dtype="float64") * n_probes).astype(int)
    return np.bincount(moved, minlength=n_probes + 1)


def rates_from_histogram(hist):
    """The inverse of :func:`probes_moved_histogram`: one rate per translation, in increasing order."""
    hist = np.asarray(hist, dtype=int)
    n = len(hist) - 1
    return np.repeat(np.arange(n + 1) / n, hist)


class PatchTransferDetector:
    """Flags classes whose translations carry a universal patch, scikit-learn style.

    ``fit({class: rates})`` with ``rates`` from :func:`patch_transfer_rates`. A
    translation *transfers* when its patch moves at least ``flip_at`` of the
    probes to its class. A backdoor trigger is a near-universal patch, so the
    default 0.9 asks for nearly all of them: on badly trained models, patches
    toward ordinary classes move half the probes or so, and 0.5 flagged those
    (``results/detect_rules.md``). A class's score is the share of its translations that
    transfer. It is suspect when that share is at least ``min_score`` (and at
    least ``min_count`` translations), and more than ``relative`` times the
    median score of the other examined classes (so a model whose every class
    transfers is not blamed on one class).

    Attributes after ``fit``: ``classes_``, ``scores_``, ``transferring_``
    (class -> count), ``mean_rates_``, ``suspect_classes_``, ``is_backdoored_``.
    """

    def __init__(self, *, flip_at=0.9, min_score=0.02, min_count=3, relative=3.0):
        self.flip_at = flip_at
        self.min_score = min_score
        self.min_count = min_count
        self.relative = relative

    def fit(self, rates):
        if not rates:
            raise AegisError("no classes to examine")
        if not 0.0 < float(self.flip_at) <= 1.0:
            raise AegisError(f"flip_at must lie in (0, 1]. Received: {self.flip_at}")
        self.classes_ = sorted(rates)
        self.transferring_ = {c: int(np.sum(np.asarray(rates[c]) >= self.flip_at)) for c in self.classes_}
        self.scores_ = {c: self.transferring_[c] / max(1, len(rates[c])) for c in self.classes_}
        self.mean_rates_ = {c: float(np.mean(rates[c])) for c in self.classes_}

        def others(c):  # median score of the other classes (0 when there are none)
            rest = [self.scores_[k] for k in self.classes_ if k != c]
            return float(np.median(rest)) if rest else 0.0

        self.suspect_classes_ = [c for c in self.classes_
                                 if self.scores_[c] >= self.min_score and self.transferring_[c] >= self.min_count
                                 and self.scores_[c] > self.relative * others(c)]
        self.is_backdoored_ = bool(self.suspect_classes_)
        return self

    def report(self):
        return verdict_report(
            self, lambda c: {"transfer_score": self.scores_[c], "transferring": self.transferring_[c],
                             "mean_probe_rate": self.mean_rates_[c]},
            ("flip_at", "min_score", "min_count", "relative"))
