import keras
import numpy as np
import pytest

from aegis_tf.detect.config import DetectConfig
from aegis_tf.core.errors import AegisError
from aegis_tf.detect.whole_image import WholeImageDetector


def test_norm_scoring_is_relative_to_the_other_classes():
    base = {0: 4.0, 1: 4.4, 2: 3.7, 3: 4.1, 4: 3.9, 5: 9.0}
    det = WholeImageDetector().fit_norms(base)
    assert det.suspect_classes_ == [] and det.scores_[2] == pytest.approx(3.9 / 3.7)
    assert max(det.scores_.values()) == det.scores_[2] and all(v < 1 for c, v in det.scores_.items() if c != 2)
    det = WholeImageDetector().fit_norms({**base, 3: 0.4})  # a tenth of every other class's norm
    assert det.suspect_classes_ == [3] and det.scores_[3] == pytest.approx(3.7 / 0.4)
    scaled = WholeImageDetector().fit_norms({c: 255 * v for c, v in {**base, 3: 0.4}.items()})
    assert scaled.suspect_classes_ == [3]  # no absolute scale is assumed
    assert WholeImageDetector().fit_norms({**base, 3: 2.0}).suspect_classes_ == []  # 1.85x less: not enough
    assert WholeImageDetector().fit_norms({**base, 3: 1.85}).suspect_classes_ == [3]  # exactly half of 3.7
    assert WholeImageDetector(threshold=4).fit_norms({**base, 3: 1.0}).suspect_classes_ == []
    with pytest.raises(AegisError, match="at least 3 classes"):
        WholeImageDetector().fit_norms({0: 1.0, 1: 2.0})
    with pytest.raises(AegisError, match=r"threshold must be a number in \[1, inf\)"):
        WholeImageDetector(threshold=0.5).fit_norms(base)


def _linear(planted=None, seed=0):
    """Softmax over 6 classes of a linear map of 8x8 images whose class directions are orthogonal,
    zero-mean and of equal norm (no class is easier to reach than another); ``planted`` gets a
    strong extra weight along one more such direction (a whole-image trigger)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(64, 7))
    a -= a.mean(axis=0)
    q, _ = np.linalg.qr(a)
    w = (2.0 * q[:, :6]).astype("float32")
    if planted is not None:
        w[:, planted] += 20 * q[:, 6].astype("float32")
    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(6, activation="softmax")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    model.layers[-1].set_weights([w, np.zeros(6, "float32")])
    return model


@pytest.mark.parametrize("planted", [2, None])
def test_a_planted_whole_image_direction_is_found_and_a_clean_model_passes(planted, rng):
    x = rng.random((300, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 6, 300)
    det = WholeImageDetector(n_probes=40, pixel_max=1.0, translation=DetectConfig(n_seeds=20, steps=10))
    det.fit(_linear(planted), x, y, list(range(6)))
    assert det.suspect_classes_ == ([] if planted is None else [planted])
    if planted is not None:
        assert det.norms_[planted] < 0.5 * np.median([v for c, v in det.norms_.items() if c != planted])
        assert det.shares_[planted] >= 0.9
    ev = det.evidence("wi")
    assert ev["flagged"] == det.suspect_classes_ and ev["threshold"] == 2.0


def test_the_scan_reports_the_whole_image_signal_and_draws_its_trigger(tmp_path, rng):
    import os

    from aegis_tf.detect.scan import run_aegis

    x = rng.random((300, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 6, 300)
    config = DetectConfig(n_seeds=20, steps=10, wi_probes=40, warp_probe=False, mask_probe=False, pair_mask=False)
    report = run_aegis(_linear(2), x, y, classes=list(range(6)), config=config, pixel_max=1.0, out_dir=str(tmp_path))
    assert report["whole_image"]["suspect_classes"] == [2]
    assert report["whole_image"]["evidence"]["flagged"] == [2]
    assert os.path.getsize(report["files"]["suspect_whole_image"]["2"]) > 5_000
    from aegis_tf.report.html import write_detect_html
    from aegis_tf.detect.verdict import combine

    page = write_detect_html({"model": "m", "verdict": combine({"whole_image": report["whole_image"]["evidence"]}),
                              "aegis": report}, str(tmp_path / "report.html"))
    assert 'alt="class 2: recovered whole-image trigger"' in open(page).read()
    off = run_aegis(_linear(2), x, y, classes=list(range(6)), config=config.replace(whole_image=False),
                    pixel_max=1.0, out_dir=None)
    assert "whole_image" not in off


def _blend_case(planted, rng):
    """The linear model of :func:`_linear`, clean probes, and given translations: each class's
    translated images carry a little of its own direction; with ``planted``, that class's carry
    60% of a blend pattern along the planted trigger direction instead (what translating toward
    a blended backdoor's target gives)."""
    from aegis_tf.detect.translation import Translation

    model = _linear(planted)
    w = model.layers[-1].get_weights()[0]
    x = rng.random((300, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 6, 300)
    translations = {}
    for c in range(6):
        d = w[:, c] / np.abs(w[:, c]).max()
        share = 0.6 if c == planted else 0.1
        images = (1 - share) * rng.random((20, 64)) + share * (0.5 + 0.5 * d)
        translations[c] = Translation(images.reshape(20, 8, 8, 1).astype("float32"), np.arange(20), 1.0,
                                      rng.random((20, 8, 8, 1)).astype("float32"))
    return model, x, y, translations


@pytest.mark.parametrize("planted", [2, None])
def test_the_blend_probe_flags_a_class_whose_mean_translation_carries_a_trigger(planted, rng):
    from aegis_tf.detect.whole_image import BlendProbeDetector

    model, x, y, translations = _blend_case(planted, rng)
    det = BlendProbeDetector(n_probes=40).fit(model, x, y, list(range(6)), translations=translations)
    assert det.suspect_classes_ == ([] if planted is None else [planted])
    assert all(0 < a <= 1 for a in det.norms_.values())  # blend weights
    if planted is not None:
        assert det.norms_[planted] < 0.5 * min(v for c, v in det.norms_.items() if c != planted)
        assert det.shares_[planted] >= 0.9
    else:
        assert max(det.scores_.values()) < 1.5
    assert set(det.report()["classes"]["2"]) == {"blend_gap", "blend_alpha", "share_at_norm"}


def test_the_scan_runs_the_blend_probe_by_default_in_a_full_scan_and_in_both_stages_of_a_staged_one(rng):
    from aegis_tf.detect.scan import aegis_evidence, blend_probe_on, format_summary, run_aegis
    from aegis_tf.detect.verdict import combine

    x = rng.random((300, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 6, 300)
    # the probes without translations at their smallest (their own tests measure them)
    config = DetectConfig(n_seeds=20, steps=10, wi_probes=40, mask_epochs=1, mask_restarts=1, warp_steps=3)
    assert config.wi_blend == "auto" and blend_probe_on(config)
    assert not blend_probe_on(config.replace(whole_image=False))  # "auto" follows the whole-image signal
    assert not blend_probe_on(DetectConfig.from_preset("paper"))  # the paper preset stays as it was
    assert blend_probe_on(config.replace(wi_blend=True, whole_image=False))  # asked for by name: runs
    assert not blend_probe_on(config.replace(wi_blend=False))
    report = run_aegis(_linear(2), x, y, classes=list(range(6)), config=config, pixel_max=1.0, out_dir=None)
    evidence = aegis_evidence(report)
    assert list(evidence) == ["patch_transfer", "pair_transfer", "pair_breadth", "whole_image", "blend_probe",
                              "warp_probe", "mask_probe"]
    assert evidence["blend_probe"]["threshold"] == 2.0 and len(evidence["blend_probe"]["scores"]) == 6
    assert "blend gap" in combine(evidence)["line"]
    summary = format_summary(report, "m")
    assert "  aegis blend probe: " in summary and "nearest other class's blend weight / own" in summary
    assert "blend_probe" not in run_aegis(_linear(2), x, y, classes=list(range(6)), pixel_max=1.0, out_dir=None,
                                          config=config.replace(wi_blend=False))
    staged = run_aegis(_linear(2), x, y, classes=list(range(6)), pixel_max=1.0, out_dir=None,
                       config=config.replace(scan="staged", top_k=2))
    assert staged["stages"]["blend_probe"] == "on"
    # the probes without translations run on every class of a staged scan too, within their budget
    for probe in ("warp_probe", "mask_probe"):
        assert staged["stages"][probe] == "every class, within 300 s" and len(staged[probe]["classes"]) == 6
    stage1 = staged["stages"]["stage1"]
    assert sorted(stage1) == [str(c) for c in range(6)] and all("blend_gap" in v for v in stage1.values())
    promoted = staged["stages"]["promoted"]
    assert sorted(staged["blend_probe"]["classes"]) == [str(c) for c in promoted]
    # stage 2's blend gaps compare the promoted classes; each carries its stage-1 gap, which must reach the alarm too
    for c, entry in staged["blend_probe"]["classes"].items():
        assert entry["stage1_gap"] == stage1[c]["blend_gap"]
    evidence = aegis_evidence(staged)
    assert list(evidence)[-3:] == ["blend_probe", "warp_probe", "mask_probe"]
    assert evidence["blend_probe"]["also"]["threshold"] == config.alarm_gap
    assert "stage 1 highest blend gap: " in format_summary(staged, "m")
    from aegis_tf.detect.state import fingerprint

    key = fingerprint(_linear(2), x, y, range(6), config, 0)  # saved scan state does not depend on the probe
    assert key == fingerprint(_linear(2), x, y, range(6), config.replace(wi_blend=False), 0)
    assert key != fingerprint(_linear(2), x, y, range(6), config.replace(n_seeds=21), 0)
    off = run_aegis(_linear(2), x, y, classes=list(range(6)), pixel_max=1.0, out_dir=None,
                    config=config.replace(scan="staged", top_k=2, wi_blend=False))
    assert off["stages"]["blend_probe"] == "off" and "blend" not in format_summary(off, "m")
    assert "blend_probe" not in off and all("blend_gap" not in v for v in off["stages"]["stage1"].values())


def test_a_blend_flag_draws_its_pattern_and_saves_a_trigger_that_repair_can_load(tmp_path, rng):
    import os

    from aegis_tf.report.html import write_detect_html
    from aegis_tf.detect.scan import aegis_evidence, run_aegis
    from aegis_tf.detect.recovered import load_trigger
    from aegis_tf.detect.verdict import combine

    model, x, y, translations = _blend_case(2, rng)
    config = DetectConfig(n_seeds=20, wi_probes=40, wi_blend=True, whole_image=False)
    report = run_aegis(model, x, y, classes=list(range(6)), config=config, pixel_max=1.0, out_dir=str(tmp_path),
                       translations=translations)
    assert report["blend_probe"]["suspect_classes"] == [2]
    assert os.path.getsize(report["files"]["suspect_blend"]["2"]) > 5_000
    assert "trigger_2_blend_probe.json" in report["files"]["triggers"]
    trigger = load_trigger(str(tmp_path / "trigger_2_blend_probe.json"))
    a = report["blend_probe"]["classes"]["2"]["blend_alpha"]
    m = np.mean(translations[2].images, axis=0)
    np.testing.assert_allclose(trigger.apply(x[:3]), (1 - a) * x[:3] + a * m, atol=1e-5)
    page = write_detect_html({"model": "m", "verdict": combine(aegis_evidence(report)), "aegis": report},
                             str(tmp_path / "report.html"))
    assert 'alt="class 2: recovered blend pattern"' in open(page).read()


def test_on_a_model_measured_not_robust_the_whole_image_signal_needs_a_larger_gap(rng):
    """robust=False multiplies the whole-image threshold by wi_nonrobust_factor (the blend probe keeps its own):
    a planted direction whose gap sits between the two thresholds is flagged on a robust model only."""
    from aegis_tf.detect.scan import aegis_evidence, score_translations, whole_image_threshold
    from aegis_tf.detect.translation import translate

    x = rng.random((300, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 6, 300)
    model = _linear(2)
    config = DetectConfig(n_seeds=20, steps=10, wi_probes=40, warp_probe=False, mask_probe=False, pair_mask=False)
    translations = translate(model, x, y, list(range(6)), config, pixel_max=1.0)

    def scored(robust, factor):
        report, _ = score_translations(model, x, y, classes=list(range(6)), translations=translations, pixel_max=1.0,
                                       config=config.replace(wi_nonrobust_factor=factor), robust=robust)
        return report, aegis_evidence(report)

    report, evidence = scored(None, 2.0)
    gap = evidence["whole_image"]["scores"]["2"]
    assert evidence["whole_image"]["flagged"] == [2] and evidence["whole_image"]["threshold"] == 2.0
    assert "threshold_note" not in report["whole_image"]
    factor = 1.01 * gap / 2.0  # the raised threshold lands just above the planted class's gap
    for robust in (None, True):  # not measured, or robust: the threshold stays
        assert scored(robust, factor)[1]["whole_image"]["flagged"] == [2]
    report, evidence = scored(False, factor)
    assert evidence["whole_image"]["flagged"] == [] and evidence["whole_image"]["threshold"] == pytest.approx(1.01 * gap)
    assert evidence["whole_image"]["scores"]["2"] == pytest.approx(gap)  # the measurement itself is unchanged
    assert "not robust" in report["whole_image"]["threshold_note"]
    assert evidence["blend_probe"]["threshold"] == 2.0
    assert scored(False, 1.0)[1]["whole_image"]["flagged"] == [2]  # factor 1: the same threshold
    assert whole_image_threshold(DetectConfig(), False) == 4.0 and whole_image_threshold(DetectConfig(), True) == 2.0
    with pytest.raises(AegisError, match="wi_nonrobust_factor"):
        DetectConfig(wi_nonrobust_factor=0.5).replace()
