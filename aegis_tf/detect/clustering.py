"""The paper's AEGIS score: t-SNE (or PCA) and clustering of translated features.

:func:`class_features` takes a layer's features (default: the penultimate
layer) of each class's training images and translations;
:class:`AegisDetector` reduces them to 2-D per class, clusters them and
counts the clusters; a class with more clusters than a clean class shows is
suspect. The published configuration is ``PRESETS["paper"]``
(:mod:`aegis_tf.detect.config`); other options are measured in
``results/detect/detect_ablation.md``.
"""

import time

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import penultimate_layer
from aegis_tf.core.params import Detector, Interval, Options
from aegis_tf.core.threads import limit_threads

__all__ = ["feature_layer", "extract_features", "class_features", "AegisDetector"]


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


class AegisDetector(Detector):
    """Cluster-count backdoor detector (the paper's score), scikit-learn style.

    Parameters (stored as given; checked at the start of ``fit``):

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
    * ``layer``, ``n_seeds``: the feature layer (:func:`feature_layer`) and how
      many training images of each class are embedded beside its translations.
    * ``translation``: the :class:`~aegis_tf.detect.config.DetectConfig` whose
      translation settings ``fit`` uses when it is given no translations
      (default: the defaults); ``pixel_max`` scales them.
    * ``random_state``: seed of the translation, PCA, t-SNE and the clusterers;
      run ``r`` uses ``random_state + r``.
    * ``n_jobs``: classes (and runs) reduced and clustered at once, in threads
      (1: one after the other; -1: one per CPU core). The result does not
      depend on it. Each job's native thread pools are capped at one thread.

    Attributes after ``fit``: ``classes_``, ``counts_`` (class -> list of counts,
    one per run), ``votes_`` (class -> share of runs flagging it), ``scores_``
    (the votes), ``suspect_classes_``, ``is_backdoored_``, ``embeddings_`` and
    ``labels_`` (class -> 2-D points and cluster labels of the first run),
    ``bandwidths_``, ``seconds_`` (wall time spent reducing and clustering;
    with ``n_jobs`` > 1 the wall time of the parallel section, split between
    the two in proportion to their summed per-job times).
    """

    _parameter_constraints = {
        "reducer": [Options("tsne", "pca")],
        "clusterer": [Options("meanshift", "hdbscan", "affinity")],
        "bandwidth": [Options("auto"), Interval(float, 0, None, closed="neither")],
        "population": [Options("both", "translated")],
        "criterion": [Options("absolute", "relative")],
        "min_cluster_frac": [Interval(float, 0, 1)],
        "runs": [Interval(int, 1, None)],
        "perplexity": [Interval(float, 0, None, closed="neither")],
        "pca_components": [Interval(int, 2, None)],
        "layer": [None, str],
        "n_seeds": [Interval(int, 1, None)],
        "pixel_max": [Interval(float, 0, None, closed="neither")],
        "random_state": [Interval(int, 0, None)],
        "batch_size": [Interval(int, 1, None)],
        "n_jobs": [Interval(int, 1, None), Options(-1)],
    }
    score_name = "vote"
    threshold_ = 0.5

    def __init__(self, *, reducer="tsne", clusterer="meanshift", bandwidth="auto", population="both",
                 criterion="absolute", min_cluster_frac=0.0, runs=1, perplexity=30.0, pca_components=150,
                 layer=None, n_seeds=200, translation=None, pixel_max=255.0, random_state=0, batch_size=512,
                 n_jobs=1):
        self.reducer = reducer
        self.clusterer = clusterer
        self.bandwidth = bandwidth
        self.population = population
        self.criterion = criterion
        self.min_cluster_frac = min_cluster_frac
        self.runs = runs
        self.perplexity = perplexity
        self.pca_components = pca_components
        self.layer = layer
        self.n_seeds = n_seeds
        self.translation = translation
        self.pixel_max = pixel_max
        self.random_state = random_state
        self.batch_size = batch_size
        self.n_jobs = n_jobs

    @classmethod
    def from_config(cls, config, **kwargs):
        """A detector with the cluster settings of a :class:`~aegis_tf.detect.config.DetectConfig`."""
        keys = ("reducer", "clusterer", "bandwidth", "population", "criterion", "min_cluster_frac", "runs", "layer",
                "n_seeds")
        return cls(**{k: config[k] for k in keys}, translation=config, **kwargs)

    def fit(self, model, x, y, classes, *, translations=None):
        """Translate toward ``classes`` (or take ``translations`` from
        :func:`~aegis_tf.detect.translation.translate_all`), embed, cluster. Returns ``self``."""
        from aegis_tf.detect.translation import translations_for

        self._validate_params()
        translations = translations_for(self, model, x, y, classes, translations)
        features = class_features(model, x, y, translations, n_seeds=self.n_seeds,
                                  layer=self.layer, seed=self.random_state, batch_size=self.batch_size)
        return self.fit_features(features)

    def _points(self, f_train, f_trans):
        if self.population == "translated":
            return f_trans, np.ones(len(f_trans), dtype=bool)
        return np.concatenate([f_train, f_trans]), np.r_[np.zeros(len(f_train), bool), np.ones(len(f_trans), bool)]

    def fit_features(self, features):
        """Embed and cluster ``features`` (``{class: (F_train, F_translated)}``, from
        :func:`class_features`). Returns ``self``."""
        self._validate_params()
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
            with limit_threads(1):
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
        self.scores_ = self.votes_
        self.suspect_classes_ = [c for c in self.classes_ if self.votes_[c] > 0.5]
        self.is_backdoored_ = bool(self.suspect_classes_)
        return self

    def _class_entry(self, c):
        return {"clusters": self.counts_[c], "vote": self.votes_[c], "bandwidth": self.bandwidths_[c]}
