import numpy as np
import pytest

from aegis_tf.detection import AegisDetector, class_features, extract_features, translate_all
from aegis_tf.errors import AegisError
from aegis_tf.neural_cleanse import NeuralCleanse, anomaly_index
from conftest import tiny_cnn


def synthetic_features(planted=2, n=60, dim=16, seed=0):
    """Per class: a training blob and a translated blob; class ``planted`` has a
    second, well separated mode among its translations (the trigger's)."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in range(5):
        centre = rng.normal(0, 1, dim) * 20
        train = centre + rng.normal(0, 1, (n, dim))
        trans = centre + 12 + rng.normal(0, 1, (n, dim))
        if c == planted:
            trans[: n // 3] = centre - 25 + rng.normal(0, 1, (n // 3, dim))
        out[c] = (train, trans)
    return out


@pytest.mark.parametrize("reducer", ["pca", "tsne"])
def test_planted_extra_mode_is_flagged_with_its_class(reducer):
    det = AegisDetector(reducer=reducer, clusterer="meanshift", bandwidth="auto", runs=1, random_state=0)
    det.fit(synthetic_features(planted=2))
    assert det.counts_[2][0] == 3
    assert all(det.counts_[c][0] == 2 for c in (0, 1, 3, 4))
    assert det.suspect_classes_ == [2] and det.is_backdoored_


def test_clean_features_are_not_flagged_and_translated_population_counts_one():
    det = AegisDetector(reducer="pca", population="translated", runs=1).fit(synthetic_features(planted=None))
    assert det.suspect_classes_ == [] and not det.is_backdoored_
    assert all(v[0] == 1 for v in det.counts_.values())


def test_relative_criterion_ignores_a_split_shared_by_every_class():
    feats = {c: f for c, f in synthetic_features(planted=None).items()}
    rng = np.random.default_rng(1)
    for c, (tr, ts) in feats.items():  # every class gets the same extra mode
        ts[:20] = ts[:20] - 40 + rng.normal(0, 1, ts[:20].shape)
    absolute = AegisDetector(reducer="pca", criterion="absolute").fit(feats)
    relative = AegisDetector(reducer="pca", criterion="relative").fit(feats)
    assert len(absolute.suspect_classes_) == 5
    assert relative.suspect_classes_ == []


def test_same_seed_same_report_and_voting():
    f = synthetic_features(planted=1)
    a = AegisDetector(runs=3, random_state=7).fit(f).report()
    b = AegisDetector(runs=3, random_state=7).fit(f).report()
    assert a == b
    assert a["suspect_classes"] == [1] and a["classes"]["1"]["vote"] == 1.0


def test_detector_rejects_bad_parameters():
    with pytest.raises(AegisError, match="reducer must be"):
        AegisDetector(reducer="umap").fit(synthetic_features())
    with pytest.raises(AegisError, match="clusterer must be"):
        AegisDetector(reducer="pca", clusterer="kmeans").fit(synthetic_features())


def test_translation_reaches_targets_and_features_have_shapes(rng):
    model = tiny_cnn(seed=0, num_classes=3)
    x = rng.random((60, 8, 8, 1)).astype("float32")
    y = np.arange(60) % 3
    tr = translate_all(model, x, y, [0, 2], n_seeds=10, eps=50.0, step_size=0.5, steps=30, clip_min=0, clip_max=1)
    assert set(tr) == {0, 2}
    for c, (xt, idx, reached) in tr.items():
        assert xt.shape == (10, 8, 8, 1) and np.all(y[idx] != c)
        assert xt.min() >= 0 and xt.max() <= 1
        assert reached >= 0.9
    feats = class_features(model, x, y, tr, n_seeds=10)
    assert feats[0][0].shape == (10, 64) and feats[0][1].shape == (10, 64)  # pool output flattened: 4*4*4
    with pytest.raises(AegisError, match="no layer named"):
        extract_features(model, x, layer="nope")


def test_anomaly_index_is_median_absolute_deviation():
    norms = [10, 11, 9, 10, 2]
    idx = anomaly_index(norms)
    mad = 1.4826 * np.median(np.abs(np.array(norms) - 10))
    np.testing.assert_allclose(idx, np.abs(np.array(norms) - 10) / mad)


def test_neural_cleanse_finds_the_default_badnet_target(default_model, default_valid):
    (x, _), _ = default_valid
    nc = NeuralCleanse(epochs=6, steps_per_epoch=10, random_state=0).fit(default_model, x[:200], list(range(10)))
    assert nc.suspect_classes_ == [7]
    assert nc.l1_norms_[7] == min(nc.l1_norms_.values())
