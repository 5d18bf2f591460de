"""The pair mask probe (aegis_tf.detect.pair_probe): Neural Cleanse's smallest trigger per (source,
target) pair, read by the relative gap against its row and its column."""

import os

import numpy as np
import pytest
from conftest import constant_model, embedded_backdoor_twins

from aegis_tf.core.errors import AegisError
from aegis_tf.detect.config import DetectConfig
from aegis_tf.detect.pair_probe import (CANDIDATE_MAX, CANDIDATE_RESTARTS, PairMaskDetector, candidate_pairs,
                                        pair_mask_mode, pair_mask_on, reverse_engineer_pairs, row_and_column)
from aegis_tf.detect.patch_transfer import PairTransferDetector
from aegis_tf.detect.recovered import load_trigger
from aegis_tf.detect.verdict import combine

CEILING = 784.0


def natural(n=10):
    """Pair norms of a clean model: each source and target a little easier or harder than another."""
    return {(s, t): 40.0 + 2 * s + 3 * t for s in range(n) for t in range(n) if s != t}


def test_a_pair_small_against_its_row_and_column_is_flagged_with_its_source():
    det = PairMaskDetector().fit_norms({**natural(), (3, 7): 8.0}, ceiling=CEILING)
    assert det.flagged_pairs_ == [(3, 7)] and det.suspect_classes_ == [7]
    # its row's smallest other norm is 3 -> 0 (46), its column's 0 -> 7 (61): the row sets the gap
    assert det.pair_gaps_[(3, 7)] == pytest.approx(46.0 / 8.0) and det.scores_[7] == pytest.approx(46.0 / 8.0)
    assert det.mapping() == {"kind": "per-target", "backdoors": {7: [3]}}
    clean = PairMaskDetector().fit_norms(natural(), ceiling=CEILING)
    assert clean.flagged_pairs_ == [] and max(clean.pair_gaps_.values()) < 2 and clean.inconclusive_ is None


def test_a_small_column_is_an_all_to_one_backdoor_not_a_pair_and_a_small_row_a_fragile_source():
    every = {**natural(), **{(s, 7): 8.0 + s / 10 for s in range(10) if s != 7}}  # every source -> 7: small column
    assert PairMaskDetector().fit_norms(every, ceiling=CEILING).flagged_pairs_ == []
    fragile = {**natural(), **{(1, t): 9.0 + t / 10 for t in range(10) if t != 1}}  # any mask moves a thin 1
    assert PairMaskDetector().fit_norms(fragile, ceiling=CEILING).flagged_pairs_ == []


def test_two_sources_of_one_target_and_an_all_to_all_mapping():
    two = PairMaskDetector().fit_norms({**natural(), (3, 7): 8.0, (5, 7): 9.0}, ceiling=CEILING)
    assert two.flagged_pairs_ == [(3, 7), (5, 7)] and two.mapping()["backdoors"] == {7: [3, 5]}
    shifted = {**natural(), **{(s, (s + 1) % 10): 6.0 for s in range(10)}}
    a2a = PairMaskDetector().fit_norms(shifted, ceiling=CEILING)
    assert a2a.flagged_pairs_ == sorted((s, (s + 1) % 10) for s in range(10))
    assert a2a.mapping()["kind"] == "all-to-all"
    verdict = combine({"pair_mask": a2a.evidence("test")})
    assert verdict["backdoored"] and verdict["backdoors"][0]["kind"] == "all-to-all"
    assert "all-to-all 0->1, 1->2" in verdict["line"]


def test_examined_pairs_are_scored_against_their_whole_row_and_column_and_nothing_else():
    norms = {**natural(), (3, 7): 8.0, (1, 4): 30.0}
    fitted = {p: norms[p] for p in row_and_column([(3, 7)], range(10))}
    assert len(fitted) == 17 and all(s == 3 or t == 7 for s, t in fitted)  # 9 of the row, 9 of the column, once
    part = PairMaskDetector().fit_norms(fitted, ceiling=CEILING, examine=[(3, 7)])
    whole = PairMaskDetector().fit_norms(norms, ceiling=CEILING)
    assert part.pair_gaps_ == {(3, 7): whole.pair_gaps_[(3, 7)]} and part.flagged_pairs_ == [(3, 7)]
    assert part.scores_[7] == whole.scores_[7] and part.scores_[4] == 0.0  # 1 -> 4 was not examined
    report = part.report()
    assert report["examined_pairs"] == [[3, 7]] and "gap" not in report["pairs"]["3->0"]
    assert report["pairs"]["3->7"]["gap"] == pytest.approx(46.0 / 8.0)
    assert "examined_pairs" not in whole.report()
    with pytest.raises(AegisError, match="an examined pair needs its own norm: 1->4 not among"):
        PairMaskDetector().fit_norms(fitted, ceiling=CEILING, examine=[(1, 4)])


def _transfer(shares, n=20):
    """A fitted per-pair view whose pair (s, t) saw ``k`` of ``n`` translations transfer (``shares``:
    {(s, t): k}); every other pair none."""
    rates = {(s, t): np.zeros(n) for s in range(10) for t in range(10) if s != t}
    for p, k in shares.items():
        rates[p] = np.r_[np.ones(k), np.zeros(n - k)]
    return PairTransferDetector().fit_rates(rates, classes=list(range(10)))


def test_candidates_are_pairs_that_transferred_under_the_rule_not_flagged_nor_from_a_fragile_source():
    pairs = _transfer({(3, 7): 3, (2, 5): 9, (6, 0): 1, (8, 9): 2, (1, 2): 3, (1, 4): 3, (1, 6): 3})
    assert pairs.flagged_pairs_ == [(2, 5)] and pairs.fragile_sources_ == [1]
    # 3 -> 7 (3 of 20), 8 -> 9 (2 of 20) and 6 -> 0 (once) saw transfer under 0.25; 2 -> 5 is flagged
    # already; the thin 1 moves toward three targets; a pair that never transferred is no candidate
    assert candidate_pairs(pairs) == [(3, 7), (6, 0), (8, 9)]
    assert candidate_pairs(pairs, min_count=2) == [(3, 7), (8, 9)]  # the rule before 2026-12-05 (and 0.1)
    assert candidate_pairs(pairs, min_count=3) == [(3, 7)] and candidate_pairs(pairs, min_share=0.2) == []
    assert (4, 5) in pairs.pairs_ and (4, 5) not in candidate_pairs(pairs, max_pairs=90)
    # a scan of some classes: pairs of other classes are left out before the cut, not after it
    wide = _transfer({(0, 9): 4, (1, 9): 4, (2, 9): 4, (4, 8): 4, (5, 8): 4, (3, 7): 1})  # 0.2: none flagged
    assert (3, 7) not in candidate_pairs(wide) and candidate_pairs(wide, classes=[3, 6, 7]) == [(3, 7)]
    # at most CANDIDATE_MAX, the highest shares first
    many = _transfer({(s, (s + 3) % 10): 2 + s % 4 for s in range(2, 10)})  # shares 0.1-0.25, one target each
    top = candidate_pairs(many, max_pairs=3)
    assert len(candidate_pairs(many)) == CANDIDATE_MAX and len(top) == 3
    assert all(many.pairs_[p] >= max(many.pairs_[q] for q in candidate_pairs(many, max_pairs=8) if q not in top)
               for p in top)


def test_a_bound_sets_no_gap_and_a_collapsed_model_is_inconclusive(rng):
    loose = {**{p: CEILING for p in natural()}, (3, 7): 300.0}  # only the bound to compare with
    det = PairMaskDetector().fit_norms(loose, ceiling=CEILING)
    assert det.flagged_pairs_ == [] and "saturated" in det.inconclusive_
    assert combine({"pair_mask": det.evidence("test")})["line"] == "CLEAN (pair mask gap inconclusive (saturated))"
    nothing = PairMaskDetector().fit_norms({p: CEILING for p in natural()}, ceiling=CEILING)
    assert nothing.flagged_pairs_ == [] and nothing.inconclusive_ is None  # no trigger anywhere: clean
    model = constant_model(1)
    x = rng.uniform(0, 255, (60, 8, 8, 1)).astype("float32")
    det = PairMaskDetector(epochs=1, steps_per_epoch=2, n_fit=5, n_probes=10, restarts=1).fit(
        model, x, np.arange(60) % 3, [0, 1, 2])
    assert det.suspect_classes_ == [] and "class 1 takes 100%" in det.inconclusive_
    assert det.report()["verdict"] == "inconclusive"
    with pytest.raises(AegisError, match="at least 3 classes"):
        PairMaskDetector().fit_norms({(0, 1): 5.0, (1, 0): 9.0}, ceiling=CEILING)


def test_too_many_pairs_are_skipped_with_the_reason(rng):
    x = rng.uniform(0, 255, (60, 8, 8, 1)).astype("float32")
    det = PairMaskDetector(max_starts=10).fit(constant_model(0, num_classes=4), x, np.arange(60) % 4, range(4))
    assert "12 pairs x 3 starts, over the 10" in det.skipped_ and det.flagged_pairs_ == []
    assert det.report()["verdict"] == "not run"
    assert "pair mask gap not run" in combine({"pair_mask": det.evidence("test")})["line"]
    slow = PairMaskDetector(budget_s=1e-9, epochs=1, steps_per_epoch=5, n_fit=5, n_probes=5).fit(
        constant_model(0, num_classes=4), x, np.arange(60) % 4, range(4))
    assert "12 pairs x 3 starts would take about" in slow.skipped_ and "over the budget of 1e-09 s" in slow.skipped_
    # "auto" has a budget; asking for the probe (True) runs it whatever it costs
    assert PairMaskDetector.from_config(DetectConfig(pair_mask="auto")).budget_s == DetectConfig().pair_mask_budget
    assert PairMaskDetector.from_config(DetectConfig(pair_mask=True)).budget_s is None
    # a candidate outside the classes fitted (a scan of some classes: the per-pair view sees every source)
    with pytest.raises(AegisError, match=r"class\(es\) 0, not among the classes fitted \(1, 2, 3\)"):
        PairMaskDetector().fit(constant_model(0, num_classes=4), x, np.arange(60) % 4, [1, 2, 3], examine=[(0, 2)])


def test_the_probe_runs_where_asked_and_checks_its_settings():
    d = DetectConfig()
    # by default on the per-pair view's candidates only, never on every pair
    assert d.pair_mask == "candidates" and not pair_mask_on(d) and not pair_mask_on(d, "staged")
    assert PairMaskDetector.from_config(d).restarts == CANDIDATE_RESTARTS * d.pair_mask_restarts
    assert PairMaskDetector.from_config(d).budget_s == d.pair_mask_budget
    assert PairMaskDetector.from_config(d.replace(pair_mask=True)).restarts == d.pair_mask_restarts
    auto = DetectConfig(pair_mask="auto")
    assert pair_mask_on(auto) and not pair_mask_on(auto, "staged")
    assert pair_mask_on(DetectConfig(pair_mask=True), "staged")
    assert not pair_mask_on(DetectConfig.from_preset("paper"))
    assert [pair_mask_mode(c, m) for c in (d, auto, DetectConfig(pair_mask=False)) for m in ("full", "staged")] == [
        "candidates", "candidates", "all", None, None, None]
    with pytest.raises(AegisError, match="pair_mask_restarts"):
        DetectConfig(pair_mask_restarts=0)


def test_each_start_keeps_its_own_mask_and_reaches_a_trigger_where_one_exists(rng):
    """On a model that sends any image with a bright top-left pixel to class 2 and everything else
    to class 0, the 0 -> 2 pair finds a small mask; 0 -> 1 finds none."""
    import keras

    inp = keras.Input((8, 8, 1))
    corner = keras.layers.Lambda(lambda z: z[:, 0, 0, :] / 255.0)(inp)
    logits = keras.layers.Dense(3)(corner)
    model = keras.Model(inp, keras.layers.Activation("softmax")(logits))
    model.layers[-2].set_weights([np.array([[0.0, 0.0, 20.0]], "float32"), np.array([8.0, 0.0, 0.0], "float32")])
    pools = {0: rng.uniform(0, 50, (20, 8, 8, 1)).astype("float32")}
    out = reverse_engineer_pairs(model, pools, [(0, 2), (0, 1)], epochs=6, restarts=2, seed=0)
    assert len(out[(0, 2)]) == 2 and all(r["reached"] for r in out[(0, 2)])
    assert min(r["l1"] for r in out[(0, 2)]) < 8  # a few pixels, not the image (64)
    assert not any(r["reached"] for r in out[(0, 1)])


@pytest.fixture(scope="module")
def source_models():
    """A standard-trained compact CNN on the embedded digits with a source-specific backdoor (3 -> 7,
    the patch on other classes keeps their label), and its clean twin."""
    from aegis_tf.attack.config import TriggerConfig

    # 20% poisoning and 20 epochs: at 10% and 15 epochs this small net learns the backdoor to 96% on
    # the source and the reversed mask stays at natural norms (a miss docs/detection.md records)
    spec = TriggerConfig(trigger="localised", target_label=7, trigger_size=3, source_classes=(3,), cover_rate=0.05)
    return embedded_backdoor_twins(spec, 0.2, epochs=20)


def test_a_source_specific_backdoor_is_named_source_to_target_and_its_clean_twin_passes(source_models, tmp_path):
    from aegis_tf.detect.scan import aegis_evidence, run_aegis
    from aegis_tf.report.html import write_detect_html

    x, y, models = source_models
    (bad, acc, _), (clean, clean_acc, _) = models["bad"], models["clean"]
    assert acc > 0.9 and clean_acc > 0.9
    classes = [1, 3, 5, 7, 8]
    cfg = DetectConfig(n_seeds=6, steps=10, whole_image=False, pairs=False, warp_probe=False, mask_probe=False,
                       wi_blend=False, wi_probes=30, pair_mask=True)
    report = run_aegis(bad, x, y, classes=classes, config=cfg, pixel_max=255.0, out_dir=str(tmp_path))
    pm = report["pair_mask"]
    assert pm["flagged_pairs"] == [[3, 7]] and pm["evidence"]["flagged"] == [7]
    assert pm["pairs"]["3->7"]["gap"] >= 2
    verdict = combine(aegis_evidence(report))
    assert verdict["target_classes"] == [7] and verdict["backdoors"][0]["sources"] == [3]
    assert ": 3 -> 7" in verdict["line"] and "pair mask gap" in verdict["line"]
    assert os.path.getsize(report["files"]["suspect_pair_mask"]["7"]) > 5_000
    saved = load_trigger(str(tmp_path / "trigger_7_pair_mask.json"))
    assert saved.sources == (3,) and "3 -> class 7 reversed mask per source" in saved.describe()
    moved = np.mean(np.argmax(bad.predict(saved.apply(x[y == 3][:100]), verbose=0), axis=1) == 7)
    assert moved >= 0.8  # the recovered mask is a working trigger on the source
    page = open(write_detect_html({"model": "m", "verdict": verdict, "aegis": report},
                                  str(tmp_path / "report.html"))).read()
    assert 'alt="class 7: recovered mask per source"' in page and "class(es) 3 &rarr; class 7 (pair_mask)" in page
    # the default examines only the per-pair view's candidates, against their whole rows and columns
    import aegis_tf.detect.scan as scan_module

    cand = cfg.replace(pairs=True, pair_mask="candidates")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan_module, "candidate_pairs", lambda pairs, classes=None: [(3, 7)])
        picked = run_aegis(bad, x, y, classes=classes, config=cand, pixel_max=255.0)
        mp.setattr(scan_module, "candidate_pairs", lambda pairs, classes=None: [])
        none = run_aegis(bad, x, y, classes=classes, config=cand, pixel_max=255.0)
    assert picked["pair_mask"]["examined_pairs"] == [[3, 7]] and picked["pair_mask"]["flagged_pairs"] == [[3, 7]]
    assert set(picked["pair_mask"]["pairs"]) == {f"{s}->{t}" for s, t in row_and_column([(3, 7)], classes)}
    assert picked["pair_mask"]["evidence"]["description"].startswith("on the pairs the per-pair view saw transfer")
    assert "pair_mask" not in none  # no candidate: the probe does not run
    from aegis_tf.detect.scan import format_summary

    printed = format_summary(picked, "m")  # the rows and columns have no gap of their own: only 3->7 is listed
    assert "aegis pair mask: backdoored, pairs (source, target) 3->7" in printed
    assert "highest pair gaps (source->target: gap, norm): 3->7: " in printed and "3->1:" not in printed
    clean_report = run_aegis(clean, x, y, classes=classes, config=cfg, pixel_max=255.0)
    assert clean_report["pair_mask"]["flagged_pairs"] == [] and not clean_report["pair_mask"].get("inconclusive")
    off = run_aegis(bad, x, y, classes=classes, config=cfg.replace(pair_mask=False), pixel_max=255.0)
    assert "pair_mask" not in off
