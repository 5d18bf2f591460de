"""The mask probe (aegis_tf.detect.mask_probe): Neural Cleanse's smallest trigger per class, tried
on fresh probes and read by the relative gap."""

import os

import numpy as np
import pytest
from conftest import constant_model, embedded_backdoor_twins

from aegis_tf.core.errors import AegisError
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.mask_probe import MaskProbeDetector, apply_mask, mask_probe_on
from aegis_tf.detect.staged import probe_budget
from aegis_tf.detect.recovered import load_trigger


def test_the_gap_flags_an_outlying_small_mask_and_a_bound_is_no_measurement():
    det = MaskProbeDetector()
    ceiling = 784.0
    clean = det.fit_norms({c: 60.0 + c for c in range(10)}, ceiling=ceiling)
    assert clean.suspect_classes_ == [] and clean.inconclusive_ is None
    planted = det.fit_norms({**{c: 60.0 + c for c in range(10)}, 7: 20.0}, ceiling=ceiling)
    assert planted.suspect_classes_ == [7] and planted.scores_[7] == pytest.approx(3.0)
    # every other class at the whole image and the top class only a third of it: the gap is set by the bound
    loose = det.fit_norms({**{c: ceiling for c in range(10)}, 7: 300.0}, ceiling=ceiling)
    assert loose.suspect_classes_ == [] and "saturated" in loose.inconclusive_


def test_two_small_masks_together_are_two_backdoors_and_one_natural_runner_up_is_not():
    det = MaskProbeDetector()
    rest = {c: 60.0 + c for c in range(10)}
    two = det.fit_norms({**rest, 2: 10.0, 7: 11.0}, ceiling=784.0)  # each the other's nearest rival
    assert two.suspect_classes_ == [2, 7] and two.pair_gap_ == pytest.approx(60.0 / 11.0)
    assert two.scores_[2] == pytest.approx(60.0 / 11.0)  # the pair gap beats its own gap (1.1)
    one = det.fit_norms({**rest, 7: 20.0, 8: 40.0}, ceiling=784.0)  # a backdoor and a natural runner-up
    assert one.suspect_classes_ == [7] and one.pair_gap_ == pytest.approx(60.0 / 40.0)
    natural = det.fit_norms({**rest, 8: 33.0}, ceiling=784.0)  # one class a little easier: under the gap
    assert natural.suspect_classes_ == [] and natural.report()["pair_gap"] == pytest.approx(61.0 / 60.0)
    few = det.fit_norms({0: 10.0, 1: 11.0, 2: 60.0, 3: 61.0}, ceiling=784.0)  # two of four: one hard pair instead
    assert few.suspect_classes_ == [] and few.pair_gap_ is None
    # the rest at the bound and the pair not well under it: the bound, not the pair, sets that gap
    bound = det.fit_norms({**{c: 784.0 for c in range(10)}, 2: 250.0, 7: 260.0}, ceiling=784.0)
    assert bound.pair_gap_ is None and bound.suspect_classes_ == []
    under = det.fit_norms({**{c: 784.0 for c in range(10)}, 2: 20.0, 7: 22.0}, ceiling=784.0)
    assert under.suspect_classes_ == [2, 7] and under.pair_gap_ == pytest.approx(784.0 / 22.0)


def test_the_probe_runs_where_asked_and_checks_its_settings():
    d = DetectConfig()
    assert d.mask_probe == "auto"
    assert mask_probe_on(d) and mask_probe_on(DetectConfig(mask_probe=True))
    # "auto" has a time budget in a staged scan only; asked for (True), none
    assert probe_budget(d, "mask_probe", "staged") == d.probe_budget == 300.0
    assert probe_budget(d, "mask_probe", "full") is None
    assert probe_budget(DetectConfig(mask_probe=True), "mask_probe", "staged") is None
    with pytest.raises(AegisError, match="probe_budget"):
        DetectConfig(probe_budget=0)
    assert not mask_probe_on(DetectConfig(mask_probe=False))
    assert not mask_probe_on(DetectConfig.from_preset("paper"))
    with pytest.raises(AegisError, match="mask_fit"):
        DetectConfig(mask_fit=0)
    with pytest.raises(AegisError, match="mask_probe"):
        DetectConfig(mask_probe="always")


def test_apply_mask_blends_pattern_where_the_mask_is_one(rng):
    x = rng.uniform(0, 255, (3, 6, 6, 2)).astype("float32")
    mask = np.zeros((6, 6), "float32")
    mask[:2, :2] = 1.0
    pattern = np.full((6, 6, 2), 200.0, "float32")
    out = apply_mask(x, mask, pattern)
    np.testing.assert_allclose(out[:, :2, :2], 200.0)
    np.testing.assert_allclose(out[:, 2:], x[:, 2:])


def test_a_model_that_gives_one_class_everything_is_inconclusive(rng):
    model = constant_model(1)
    x = rng.uniform(0, 255, (60, 8, 8, 1)).astype("float32")
    det = MaskProbeDetector(epochs=2, steps_per_epoch=3, n_fit=20, n_probes=20).fit(model, x, np.arange(60) % 3,
                                                                                   [0, 1, 2])
    assert det.plain_[1] == 1.0 and det.suspect_classes_ == [] and not det.is_backdoored_
    assert "class 1 takes 100% of other classes' probes with no trigger" in det.inconclusive_
    assert det.report()["verdict"] == "inconclusive"


def test_no_trigger_toward_any_class_is_the_clean_answer_not_a_saturation(rng):
    model = constant_model(3, num_classes=4)  # all to class 3 (not examined): no trigger moves anything
    x = rng.uniform(0, 255, (60, 8, 8, 1)).astype("float32")
    det = MaskProbeDetector(epochs=2, steps_per_epoch=3, n_fit=20, n_probes=20).fit(model, x, np.arange(60) % 3,
                                                                                   [0, 1, 2])
    assert all(det.fresh_[c] == 0.0 and det.norms_[c] == det.ceiling_ == 64.0 for c in range(3))
    assert det.suspect_classes_ == [] and det.inconclusive_ is None and det.report()["verdict"] == "clean"


@pytest.fixture(scope="module")
def patch_models():
    """A standard-trained compact CNN on the embedded digits with a 3x3 patch backdoor (all -> 7),
    and its clean twin."""
    from aegis_tf.attack.config import TriggerConfig

    x, y, out = embedded_backdoor_twins(TriggerConfig(trigger="localised", target_label=7, trigger_size=3), 0.1,
                                        epochs=15)
    return x, y, {"patch": out["bad"], "clean": out["clean"]}


def test_a_learned_patch_backdoor_is_found_and_its_clean_twin_passes(patch_models, tmp_path):
    from aegis_tf.detect.scan import aegis_evidence, run_aegis
    from aegis_tf.detect.verdict import combine
    from aegis_tf.report.html import write_detect_html

    x, y, models = patch_models
    (bad, acc, asr), (clean, clean_acc, leak) = models["patch"], models["clean"]
    assert acc > 0.9 and asr > 0.9 and clean_acc > 0.9 and leak < 0.1  # the fixture learned what it should
    cfg = DetectConfig(n_seeds=10, steps=10, whole_image=False, pairs=False, warp_probe=False, mask_fit=400,
                       mask_epochs=6, wi_probes=40)
    report = run_aegis(bad, x, y, classes=list(range(10)), config=cfg, pixel_max=255.0, out_dir=str(tmp_path))
    mp = report["mask_probe"]
    assert mp["suspect_classes"] == [7] and mp["evidence"]["flagged"] == [7]
    assert mp["classes"]["7"]["mask_gap"] >= 2 and mp["classes"]["7"]["share_at_norm"] >= 0.9
    verdict = combine(aegis_evidence(report))
    assert 7 in verdict["target_classes"] and "mask gap" in verdict["line"]
    assert os.path.getsize(report["files"]["suspect_mask"]["7"]) > 5_000
    saved = load_trigger(str(tmp_path / "trigger_7_mask_probe.json"))
    moved = np.mean(np.argmax(bad.predict(saved.apply(x[y != 7][:200]), verbose=0), axis=1) == 7)
    assert moved >= 0.8 and "reversed mask" in saved.describe()  # the recovered mask is a working trigger
    page = open(write_detect_html({"model": "m", "verdict": verdict, "aegis": report},
                                  str(tmp_path / "report.html"))).read()
    assert 'alt="class 7: recovered mask"' in page
    clean_report = run_aegis(clean, x, y, classes=list(range(10)), config=cfg, pixel_max=255.0)
    assert clean_report["mask_probe"]["suspect_classes"] == []
    assert not clean_report["mask_probe"].get("inconclusive")
    off = run_aegis(bad, x, y, classes=list(range(10)), config=cfg.replace(mask_probe=False), pixel_max=255.0)
    assert "mask_probe" not in off


def test_more_starts_keep_the_smallest_working_mask_and_start_0_is_the_single_start(patch_models):
    x, y, models = patch_models
    bad = models["patch"][0]
    assert DetectConfig().mask_restarts == 2
    assert MaskProbeDetector.from_config(DetectConfig(mask_restarts=3)).restarts == 3
    with pytest.raises(AegisError, match="mask_restarts"):
        DetectConfig(mask_restarts=0)
    kw = dict(n_fit=300, epochs=4, n_probes=40, random_state=5)
    one = MaskProbeDetector(restarts=1, **kw).fit(bad, x, y, list(range(10)))
    two = MaskProbeDetector(restarts=2, **kw).fit(bad, x, y, list(range(10)))
    assert all(len(one.start_l1_[c]) == 1 and len(two.start_l1_[c]) == 2 for c in range(10))
    # start 0 draws from the single start's stream: the one-start probe's fit, unchanged
    np.testing.assert_allclose([two.start_l1_[c][0] for c in range(10)], [one.l1_norms_[c] for c in range(10)],
                               rtol=1e-4)
    np.testing.assert_allclose([two.start_fresh_[c][0] for c in range(10)], [one.fresh_[c] for c in range(10)],
                               atol=1 / 40)  # one probe of 40 at most: the float order of a batched call
    assert len({two.start_l1_[c][1] for c in range(10)} - {two.start_l1_[c][0] for c in range(10)}) >= 9
    for c in range(10):
        working = [n for n, f in zip(two.start_l1_[c], two.start_fresh_[c]) if f >= two.flip_at]
        assert two.norms_[c] == (min(working) if working else two.ceiling_)
        if working:
            assert two.l1_norms_[c] == min(working)
    assert sum(two.norms_.values()) < sum(one.norms_.values())  # at least one class found a smaller mask
    entry = two.report()["classes"]["7"]
    assert entry["start_mask_l1"] == two.start_l1_[7] and entry["start_fresh"] == two.start_fresh_[7]
    assert "smallest working one of 2 starts" in two.describe()


def _blank_fits(x, targets):
    """What reverse_engineer_triggers returns, one empty mask per target (a stand-in that only records)."""
    return [{"mask": np.zeros(x.shape[1:3], "float32"), "pattern": np.zeros(x.shape[1:], "float32"),
             "l1": 1.0, "success": 1.0} for _ in targets]


def test_each_start_of_each_class_draws_its_own_stream_even_past_1000_classes(rng, monkeypatch):
    import aegis_tf.detect.mask_probe as mp

    seen = {}

    def fake(model, x, targets, *, seeds, **kw):
        seen["targets"], seen["seeds"] = list(targets), list(seeds)
        return _blank_fits(x, targets)

    monkeypatch.setattr(mp, "reverse_engineer_triggers", fake)
    x = rng.uniform(0, 255, (60, 8, 8, 1)).astype("float32")
    mp.MaskProbeDetector(restarts=2, n_fit=20, n_probes=10, random_state=5).fit(
        constant_model(0, num_classes=3), x, np.arange(60) % 3, [0, 1, 2])
    assert seen["targets"] == [0, 1, 2, 0, 1, 2] and seen["seeds"] == [5, 6, 7, 1005, 1006, 1007]
    classes = [0, 1, 1000, 1500]  # a model of over 1,000 classes (DeepID has 1,283): no two starts share a seed
    mp.MaskProbeDetector(restarts=3, n_fit=20, n_probes=10).fit(
        constant_model(0, num_classes=3), x, np.arange(60) % 3, classes)
    assert len(set(seen["seeds"])) == 12 and seen["seeds"][:4] == classes


def test_over_a_time_budget_the_first_start_alone_runs_before_nothing(rng, monkeypatch):
    import aegis_tf.detect.mask_probe as mp
    from aegis_tf.detect.neural_cleanse import OverBudget

    calls = []

    def fake(model, x, targets, *, seeds, budget_s=None, **kw):
        calls.append(len(targets))
        if len(targets) > limit[0]:
            raise OverBudget(999.0)
        return _blank_fits(x, targets)

    monkeypatch.setattr(mp, "reverse_engineer_triggers", fake)
    x = rng.uniform(0, 255, (60, 8, 8, 1)).astype("float32")
    args = (constant_model(0, num_classes=3), x, np.arange(60) % 3, [0, 1, 2])
    limit = [3]  # two starts of three classes go over, one fits
    det = mp.MaskProbeDetector(restarts=2, n_fit=20, n_probes=10, budget_s=1.0).fit(*args)
    assert calls == [6, 3] and det.starts_used_ == 1 and det.report()["starts_used"] == 1
    assert all(len(det.start_l1_[c]) == 1 for c in range(3)) and "of 1 starts" in det.describe()
    limit, calls[:] = [0], []  # not even one start fits: not run, said why
    det = mp.MaskProbeDetector(restarts=2, n_fit=20, n_probes=10, budget_s=1.0).fit(*args)
    assert calls == [6, 3] and det.report()["verdict"] == "not run" and "over the budget" in det.report()["skipped"]
