"""The warp probe (aegis_tf.detect.warp_probe): a smooth field fitted toward each class, and the
smallest shift of it that moves other classes' images there."""

import json
import os

import numpy as np
import pytest

from conftest import constant_model, embedded_backdoor_twins

from aegis_tf.attack.triggers import warp, warp_field
from aegis_tf.core.errors import AegisError
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.recovered import RecoveredTrigger, load_trigger
from aegis_tf.detect.warp_probe import WarpProbeDetector, upsampler, warp_images, warp_probe_on


def test_the_sampler_matches_the_attacks_warp():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 28, 28, 1)).astype("float32")
    field = warp_field((28, 28, 1), grid=4, strength=1.0, seed=3)  # normalised [-1, 1] coordinates
    ours = warp_images(x, field * 27 / 2)  # the same field in pixels
    np.testing.assert_allclose(ours, warp(x, field=field), atol=0.01)
    np.testing.assert_allclose(warp_images(x, np.zeros((28, 28, 2), "float32")), x, atol=1e-3)
    shifted = warp_images(x, np.full((28, 28, 2), [1.0, 0.0], "float32"))  # sample one pixel to the right
    np.testing.assert_allclose(shifted[:, :, :-1], x[:, :, 1:], atol=1e-4)


def test_the_gradient_through_the_sampler_matches_finite_differences():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (2, 10, 12, 3)).astype("float64")
    field = rng.uniform(-0.8, 0.8, (10, 12, 2))
    _, dx, dy = warp_images(x, field.astype("float32"), with_grad=True)
    h = 1e-3
    for k, d in ((0, dx), (1, dy)):
        bump = np.zeros_like(field)
        bump[..., k] = h
        numeric = (warp_images(x, (field + bump).astype("float32"))
                   - warp_images(x, (field - bump).astype("float32"))) / (2 * h)
        inside = np.abs(np.round(field[..., k]) - field[..., k]) > 0.05  # away from the pixel grid's kinks
        np.testing.assert_allclose(d[:, inside], numeric[:, inside], atol=2e-2)


def test_the_upsampler_interpolates_between_control_points():
    m = upsampler(28, 4)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    assert m[0, 0] == 1.0 and m[-1, -1] == 1.0 and np.all(m >= 0)
    np.testing.assert_allclose(m @ np.array([0.0, 1.0, 2.0, 3.0]), np.linspace(0, 3, 28), atol=1e-6)


def test_scoring_a_class_no_warp_moves_is_a_measurement_not_a_saturation():
    det = WarpProbeDetector()
    bound = 5.6
    clean = det.fit_norms({c: bound for c in range(10)}, ceiling=bound)
    assert clean.suspect_classes_ == [] and clean.inconclusive_ is None
    assert max(clean.scores_.values()) == pytest.approx(1.0)
    planted = det.fit_norms({**{c: bound for c in range(10)}, 7: 1.4}, ceiling=bound)
    assert planted.suspect_classes_ == [7] and planted.scores_[7] == pytest.approx(4.0)
    weak = det.fit_norms({**{c: bound for c in range(10)}, 7: 3.0}, ceiling=bound)
    assert weak.suspect_classes_ == []  # under half the bound is needed
    tied = det.fit_norms({**{c: 2.8 for c in range(6)}, 6: 1.0, 7: bound, 8: bound, 9: bound}, ceiling=bound)
    assert tied.suspect_classes_ == [] and "tie" in tied.inconclusive_


def test_the_probe_is_auto_and_checks_its_settings(tiny_model, rng):
    assert warp_probe_on(DetectConfig()) and warp_probe_on(DetectConfig(warp_probe=True))
    assert not warp_probe_on(DetectConfig(warp_probe=False))
    assert not warp_probe_on(DetectConfig.from_preset("paper"))
    with pytest.raises(AegisError, match="warp_max_shift"):
        DetectConfig(warp_max_shift=1.5)
    x = rng.random((30, 8, 8, 1)).astype("float32")
    with pytest.raises(AegisError, match="grid"):
        WarpProbeDetector(grid=9).fit(tiny_model, x, np.arange(30) % 3, [0, 1, 2])


def test_a_model_that_gives_one_class_everything_is_inconclusive(rng):
    model = constant_model(1)
    x = rng.uniform(0, 255, (60, 8, 8, 1)).astype("float32")
    det = WarpProbeDetector(steps=3, n_fit=8, n_probes=20).fit(model, x, np.arange(60) % 3, [0, 1, 2])
    assert det.unwarped_[1] == 1.0 and det.suspect_classes_ == [] and not det.is_backdoored_
    assert "class 1 takes 100% of other classes' probes with no warp" in det.inconclusive_
    assert det.report()["verdict"] == "inconclusive"


def test_a_warp_trigger_saves_loads_and_applies(tmp_path, rng):
    x = rng.uniform(0, 255, (5, 12, 12, 3)).astype("float32")
    field = rng.uniform(-1, 1, (1, 12, 12, 2)).astype("float32")
    zeros = np.zeros((1, 12, 12, 3), "float32")
    t = RecoveredTrigger(target=2, source="warp_probe", mask=np.zeros((1, 12, 12, 1), "float32"), pattern=zeros,
                         delta=zeros, field=field)
    np.testing.assert_allclose(t.apply(x), warp_images(x, field[0]), atol=1e-4)
    path = t.save(str(tmp_path))
    meta = json.load(open(path))
    assert "warped by field" in meta["apply"] and meta["files"]["field"].endswith("_field.npy")
    back = load_trigger(path)
    np.testing.assert_array_equal(back.field, field)
    np.testing.assert_allclose(back.apply(x), t.apply(x))
    assert "warp field" in back.describe()
    with pytest.raises(AegisError, match="field must have shape"):
        RecoveredTrigger(target=2, source="warp_probe", mask=np.zeros((1, 12, 12, 1), "float32"), pattern=zeros,
                         delta=zeros, field=field[..., :1])


@pytest.fixture(scope="module")
def warp_models():
    """A compact CNN trained on the embedded digits with a warp backdoor (all -> 7; a strong warp, no
    noise mode, so that 1,078 images teach it in seconds), and its clean twin."""
    from aegis_tf.attack.config import TriggerConfig

    x, y, out = embedded_backdoor_twins(TriggerConfig(trigger="warp", target_label=7, warp_strength=1.5), 0.3,
                                        epochs=20)
    return x, y, {"warp": out["bad"], "clean": out["clean"]}


def test_a_learned_warp_backdoor_is_found_and_its_clean_twin_passes(warp_models, tmp_path):
    from aegis_tf.detect.scan import aegis_evidence, run_aegis
    from aegis_tf.detect.verdict import combine
    from aegis_tf.report.html import write_detect_html

    x, y, models = warp_models
    (bad, acc, asr), (clean, clean_acc, leak) = models["warp"], models["clean"]
    assert acc > 0.9 and asr > 0.9 and clean_acc > 0.9 and leak < 0.1  # the fixture learned what it should
    cfg = DetectConfig(n_seeds=10, steps=10, whole_image=False, pairs=False, warp_steps=40, warp_fit=24,
                       wi_probes=40, mask_probe=False, pair_mask=False)  # the warp probe alone
    report = run_aegis(bad, x, y, classes=list(range(10)), config=cfg, pixel_max=255.0, out_dir=str(tmp_path))
    wp = report["warp_probe"]
    assert wp["suspect_classes"] == [7] and wp["max_shift_px"] == pytest.approx(5.6)
    assert wp["classes"]["7"]["warp_shift"] < 2.8 and wp["evidence"]["flagged"] == [7]
    verdict = combine(aegis_evidence(report))
    assert verdict["target_classes"] == [7] and "warp gap" in verdict["line"]
    assert os.path.getsize(report["files"]["suspect_warp"]["7"]) > 5_000
    saved = load_trigger(str(tmp_path / "trigger_7_warp_probe.json"))
    moved = np.mean(np.argmax(bad.predict(saved.apply(x[y != 7][:200]), verbose=0), axis=1) == 7)
    assert moved >= 0.8  # the recovered field is a working trigger
    page = open(write_detect_html({"model": "m", "verdict": verdict, "aegis": report},
                                  str(tmp_path / "report.html"))).read()
    assert 'alt="class 7: recovered warp"' in page
    clean_report = run_aegis(clean, x, y, classes=list(range(10)), config=cfg, pixel_max=255.0)
    assert clean_report["warp_probe"]["suspect_classes"] == []
    assert not clean_report["warp_probe"].get("inconclusive")
    off = run_aegis(bad, x, y, classes=list(range(10)), config=cfg.replace(warp_probe=False), pixel_max=255.0)
    assert "warp_probe" not in off
