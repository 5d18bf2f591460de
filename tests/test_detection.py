import numpy as np
import pytest

from aegis_tf.detect.clustering import AegisDetector, class_features, extract_features, feature_layer
from aegis_tf.detect.config import PRESETS
from aegis_tf.detect.translation import translate_all
from aegis_tf.core.errors import AegisError
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
    det.fit_features(synthetic_features(planted=2))
    assert det.counts_[2][0] == 3
    assert all(det.counts_[c][0] == 2 for c in (0, 1, 3, 4))
    assert det.suspect_classes_ == [2] and det.is_backdoored_


def test_clean_features_are_not_flagged_and_translated_population_counts_one():
    det = AegisDetector(reducer="pca", population="translated", runs=1).fit_features(synthetic_features(planted=None))
    assert det.suspect_classes_ == [] and not det.is_backdoored_
    assert all(v[0] == 1 for v in det.counts_.values())


def test_relative_criterion_ignores_a_split_shared_by_every_class():
    feats = {c: f for c, f in synthetic_features(planted=None).items()}
    rng = np.random.default_rng(1)
    for c, (tr, ts) in feats.items():  # every class gets the same extra mode
        ts[:20] = ts[:20] - 40 + rng.normal(0, 1, ts[:20].shape)
    absolute = AegisDetector(reducer="pca", criterion="absolute").fit_features(feats)
    relative = AegisDetector(reducer="pca", criterion="relative").fit_features(feats)
    assert len(absolute.suspect_classes_) == 5
    assert relative.suspect_classes_ == []


def test_same_seed_same_report_and_voting():
    f = synthetic_features(planted=1)
    a = AegisDetector(runs=3, random_state=7).fit_features(f).report()
    b = AegisDetector(runs=3, random_state=7).fit_features(f).report()
    assert a == b
    assert a["suspect_classes"] == [1] and a["classes"]["1"]["vote"] == 1.0


def test_parallel_classes_give_the_same_counts_and_embeddings():
    f = synthetic_features(planted=3)
    one = AegisDetector(runs=2, random_state=3).fit_features(f)
    two = AegisDetector(runs=2, random_state=3, n_jobs=2).fit_features(f)
    assert one.counts_ == two.counts_ and one.suspect_classes_ == two.suspect_classes_ == [3]
    for c in f:
        np.testing.assert_array_equal(one.embeddings_[c], two.embeddings_[c])
        np.testing.assert_array_equal(one.labels_[c], two.labels_[c])
    assert set(two.seconds_) == {"reduce", "cluster"} and all(v >= 0 for v in two.seconds_.values())


def test_detector_rejects_bad_parameters():
    with pytest.raises(AegisError, match="reducer must be"):
        AegisDetector(reducer="umap").fit_features(synthetic_features())
    with pytest.raises(AegisError, match="clusterer must be"):
        AegisDetector(reducer="pca", clusterer="kmeans").fit_features(synthetic_features())
    with pytest.raises(AegisError, match="n_jobs must be an integer in \[1, inf\) or one of -1"):
        AegisDetector(reducer="pca", n_jobs=0).fit_features(synthetic_features())


def test_translation_reaches_targets_and_features_have_shapes(rng):
    model = tiny_cnn(seed=0, num_classes=3)
    x = rng.random((60, 8, 8, 1)).astype("float32")
    y = np.arange(60) % 3
    tr = translate_all(model, x, y, [0, 2], n_seeds=10, eps=50.0, step_size=0.5, steps=30, clip_min=0, clip_max=1)
    assert set(tr) == {0, 2}
    for c, (xt, idx, reached, starts) in tr.items():
        assert xt.shape == (10, 8, 8, 1) and np.all(y[idx] != c)
        assert xt.min() >= 0 and xt.max() <= 1
        assert reached >= 0.9
        np.testing.assert_array_equal(starts, x[idx])  # no start noise: PGD starts at the seeds
    noisy = translate_all(model, x, y, [0], n_seeds=10, eps=50.0, step_size=0.5, steps=3, clip_min=0, clip_max=1,
                          start_noise=0.1)
    again = translate_all(model, x, y, [0], n_seeds=10, eps=50.0, step_size=0.5, steps=3, clip_min=0, clip_max=1,
                          start_noise=0.1)
    starts, seeds = noisy[0].starts, x[noisy[0].seeds]
    assert starts.min() >= 0 and starts.max() <= 1
    assert 0.05 < np.std(starts - seeds) < 0.1  # Gaussian noise of std 0.1, clipped into [0, 1]
    np.testing.assert_array_equal(starts, again[0].starts)  # drawn from the seed
    with pytest.raises(AegisError, match="start_noise must be"):
        translate_all(model, x, y, [0], n_seeds=2, eps=1.0, step_size=0.5, steps=1, clip_min=0, clip_max=1,
                      start_noise=-1)
    feats = class_features(model, x, y, tr, n_seeds=10)
    assert feats[0][0].shape == (10, 64) and feats[0][1].shape == (10, 64)  # pool output flattened: 4*4*4
    with pytest.raises(AegisError, match="no layer named"):
        extract_features(model, x, layer="nope")


def test_patches_are_the_most_changed_pixels_and_paste_exactly():
    from aegis_tf.detect.patch_transfer import patch_pixels, paste_patches

    seed = np.zeros((2, 4, 4, 1), "float32")
    moved = seed.copy()
    moved[0, 3, 3] = 9.0  # image 0: one big change, one small
    moved[0, 0, 1] = 1.0
    moved[1, 1, 2] = 5.0
    pixels = patch_pixels(moved, seed, top_frac=1 / 16)
    assert pixels.tolist() == [[15], [6]]
    probes = np.full((3, 4, 4, 1), 2.0, "float32")
    pasted = paste_patches(moved, pixels, probes)
    assert pasted.shape == (2, 3, 4, 4, 1)
    assert np.all(pasted[0, :, 3, 3, 0] == 9.0) and np.all(pasted[1, :, 1, 2, 0] == 5.0)
    assert np.sum(pasted != 2.0) == 2 * 3  # nothing else changed


def test_transfer_detector_scores_and_criteria():
    from aegis_tf.detect.patch_transfer import PatchTransferDetector

    rng = np.random.default_rng(0)
    rates = {c: rng.uniform(0, 0.3, 100) for c in range(6)}
    rates[4][:12] = 1.0  # 12% of class 4's translations carry a patch that moves every probe
    det = PatchTransferDetector().fit_rates(rates)
    assert det.suspect_classes_ == [4] and det.is_backdoored_
    assert det.scores_[4] == pytest.approx(0.12) and det.scores_[0] == 0.0
    assert PatchTransferDetector().fit_rates({c: rng.uniform(0, 0.3, 100) for c in range(6)}).suspect_classes_ == []
    every = {c: np.r_[np.ones(12), np.zeros(88)] for c in range(6)}  # every class transfers: not one class's fault
    assert PatchTransferDetector().fit_rates(every).suspect_classes_ == []
    few = {**{c: np.zeros(20) for c in range(6)}, 2: np.r_[np.ones(2), np.zeros(18)]}  # 2 translations: below min_count
    assert PatchTransferDetector().fit_rates(few).suspect_classes_ == []
    with pytest.raises(AegisError, match=r"flip_at must be a number in \(0, 1\]"):
        PatchTransferDetector(flip_at=0).fit_rates(rates)


def test_transfer_detector_counts_only_near_universal_patches_by_default():
    from aegis_tf.detect.patch_transfer import PatchTransferDetector

    rng = np.random.default_rng(1)
    rates = {c: rng.uniform(0, 0.3, 100) for c in range(6)}
    rates[4][:12] = rng.choice([0.9, 0.95, 1.0], 12)  # a trigger: its patches move (nearly) every probe
    rates[1][:30] = rng.choice([0.5, 0.55, 0.6, 0.7], 30)  # a weak natural patch: about half the probes
    assert PatchTransferDetector().fit_rates(rates).suspect_classes_ == [4]
    assert PatchTransferDetector(flip_at=0.5).fit_rates(rates).suspect_classes_ == [1, 4]


def test_histograms_hold_all_the_verdict_needs():
    from aegis_tf.detect.patch_transfer import PatchTransferDetector, probes_moved_histogram, rates_from_histogram

    rng = np.random.default_rng(2)
    hists = {c: np.bincount(rng.integers(0, 8, 50), minlength=21) for c in range(4)}  # up to 7 of 20
    hists[3][20] += 6  # six translations whose patch moves all 20 probes
    hists[2][11] += 6  # six that move 11 of 20
    np.testing.assert_allclose(np.sort(rates_from_histogram([1, 0, 2])), [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(probes_moved_histogram(rates_from_histogram(hists[2]), 20), hists[2])
    for flip_at, suspects in ((0.9, [3]), (0.5, [2, 3])):
        fresh = PatchTransferDetector(flip_at=flip_at).fit_rates({c: rates_from_histogram(h) for c, h in hists.items()})
        assert fresh.suspect_classes_ == suspects


@pytest.fixture(scope="module")
def digits_train():
    from aegis_tf.core.data import load_h5
    from aegis_tf.core.embedded import PATHS

    return load_h5(PATHS["train"])


@pytest.mark.parametrize("name, suspects", [("robust_bd_net", [7]), ("robust_clean_net", [])])
def test_patch_transfer_finds_the_embedded_backdoor_and_spares_the_clean_model(digits_train, name, suspects):
    from aegis_tf.core.embedded import PATHS
    from aegis_tf.detect.patch_transfer import PatchTransferDetector, patch_transfer_rates
    from aegis_tf.core.models import load_model

    model = load_model(PATHS[name])
    x, y = digits_train

    def once():
        tr = translate_all(model, x, y, [3, 7], n_seeds=60, eps=100 * 255.0, step_size=0.25 * 255, steps=75,
                           clip_min=0, clip_max=255.0, seed=1)
        rates = patch_transfer_rates(model, x, y, tr, seed=1)
        return {c: r[0] for c, r in rates.items()}

    rates = once()
    assert PatchTransferDetector().fit_rates(rates).suspect_classes_ == suspects
    again = once()
    for c in rates:
        np.testing.assert_array_equal(rates[c], again[c])  # same seed, same result


def test_paper_preset_takes_resnet_layer4_and_falls_back_to_the_penultimate_layer():
    from aegis_tf.core.models import build_resnet

    resnet = build_resnet(18, input_shape=(16, 16, 3), num_classes=3, width=4)
    layer = PRESETS["paper"]["layer"]
    assert feature_layer(resnet, layer).name == "layer4"
    assert feature_layer(resnet, None).name == "penultimate"
    x = np.zeros((2, 16, 16, 3), "float32")
    assert extract_features(resnet, x, layer=layer).shape == (2, 2 * 2 * 32)  # layer4 flattened, not pooled
    cnn = tiny_cnn(seed=0, num_classes=3)
    assert feature_layer(cnn, layer) is feature_layer(cnn, None)  # no layer4: the penultimate layer
    with pytest.raises(AegisError, match="no layer named 'a' or 'b'"):
        feature_layer(cnn, "a,b")


def test_a_preset_keeps_the_settings_it_does_not_name():
    from aegis_tf.detect.config import DetectConfig

    paper = DetectConfig.from_preset("paper")
    assert {k: paper[k] for k in PRESETS["paper"]} == PRESETS["paper"]
    default = DetectConfig()
    assert paper.top_frac == default.top_frac and paper.flip_at == default.flip_at  # --score transfer works
    assert DetectConfig.from_preset("default") == default
    assert DetectConfig.from_preset("paper", n_seeds=7, layer=None).n_seeds == 7  # None: the preset's value
    assert DetectConfig.from_preset("paper", layer=None).layer == PRESETS["paper"]["layer"]
