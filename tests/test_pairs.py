"""Backdoors named as source -> target: the per-pair patch-transfer view, the all-to-all
reading, and signals that saturate and say so instead of naming a class."""

import numpy as np
import pytest

from aegis_tf.core.models import predict_labels
from aegis_tf.detect.patch_transfer import PairTransferDetector, pair_transfer_rates
from aegis_tf.detect.translation import Translation
from aegis_tf.detect.verdict import combine
from aegis_tf.detect.whole_image import BlendProbeDetector, WholeImageDetector, saturation


def _rates(hot, n=20, classes=range(10), value=1.0):
    """``{(s, t): rates}``: ``n`` translations per pair, those of the ``hot`` pairs transferring."""
    return {(s, t): np.full(n, value if (s, t) in hot else 0.0) for t in classes for s in classes if s != t}


def test_a_source_specific_pair_is_flagged_with_its_source():
    det = PairTransferDetector().fit_rates(_rates({(3, 7)}), classes=list(range(10)))
    assert det.flagged_pairs_ == [(3, 7)] and det.suspect_classes_ == [7]
    assert det.scores_[7] == 1.0 and det.scores_[3] == 0.0
    assert det.mapping() == {"kind": "per-target", "backdoors": {7: [3]}}
    ev = det.evidence("x")
    assert ev["pairs"] == [[3, 7]] and ev["flagged"] == [7]
    assert det.report()["classes"]["7"]["sources"]["3"] == 1.0


def test_an_all_to_all_mapping_is_read_as_such():
    hot = {(c, (c + 1) % 10) for c in range(10)}
    det = PairTransferDetector().fit_rates(_rates(hot), classes=list(range(10)))
    assert det.mapping() == {"kind": "all-to-all", "pairs": [[c, (c + 1) % 10] for c in range(10)]}
    half = {(c, (c + 1) % 10) for c in range(0, 10, 2)}  # half the pairs found: still a mapping
    assert PairTransferDetector().fit_rates(_rates(half), classes=list(range(10))).mapping()["kind"] == "all-to-all"
    many_to_one = {(s, 7) for s in range(10) if s != 7}
    det = PairTransferDetector().fit_rates(_rates(many_to_one), classes=list(range(10)))
    assert det.mapping() == {"kind": "per-target", "backdoors": {7: [0, 1, 2, 3, 4, 5, 6, 8, 9]}}


def test_pairs_need_count_share_and_an_outlying_share():
    assert PairTransferDetector().fit_rates(_rates({(3, 7)}, n=2), classes=list(range(10))).flagged_pairs_ == []
    # Every pair transfers a little: nothing stands out.
    rates = {p: np.r_[np.ones(6), np.zeros(14)] for p in _rates(set())}
    assert PairTransferDetector().fit_rates(rates, classes=list(range(10))).flagged_pairs_ == []


def test_a_fragile_source_names_no_target_but_two_backdoors_on_one_source_still_do():
    # The warp model's thin 1: its patches carry it toward 4, 5 and 7 (shares 0.41, 0.32, 0.23 measured).
    rates = _rates({(3, 8)})
    for t, k in ((4, 9), (5, 7), (7, 5), (6, 1)):
        rates[(1, t)] = np.r_[np.ones(k), np.zeros(20 - k)]
    det = PairTransferDetector().fit_rates(rates, classes=list(range(10)))
    assert det.fragile_sources_ == [1] and det.flagged_pairs_ == [(3, 8)] and det.suspect_classes_ == [8]
    assert det.pairs_[(1, 4)] == 0.45 and det.scores_[4] == 0.0  # kept as a pair, but neither flags nor ranks
    assert det.report()["classes"]["4"]["sources"]["1"] == 0.45
    assert 1 not in det.broad_sources_[4] and det.evidence("x")["fragile_sources"] == [1]
    # The same source with two targets (two backdoors in one model) is not fragile.
    two = PairTransferDetector().fit_rates(_rates({(1, 2), (1, 7)}), classes=list(range(10)))
    assert two.fragile_sources_ == [] and two.flagged_pairs_ == [(1, 2), (1, 7)]
    assert PairTransferDetector(max_targets=4).fit_rates(rates, classes=list(range(10))).fragile_sources_ == []


def test_pair_rates_paste_each_patch_on_its_own_source_class():
    import keras

    # A model that says 7 only for class-3 images (bright top-left) that carry a lit corner.
    x = np.zeros((40, 8, 8, 1), "float32")
    y = np.arange(40) % 4
    x[y == 3, 0, 0, 0] = 255.0
    inp = keras.Input((8, 8, 1))
    flat = keras.layers.Flatten()(inp)
    out = keras.layers.Dense(8)(flat)
    model = keras.Model(inp, out)
    w = np.zeros((64, 8), "float32")
    b = np.zeros(8, "float32")
    w[0, 7], w[63, 7], b[7], b[0] = 1.0, 1.0, -300.0, 0.0  # class 7 needs both pixels lit
    model.set_weights([w, b])
    seeds = np.nonzero(y != 7)[0][:12]
    images = x[seeds].copy()
    images[:, 7, 7, 0] = 255.0  # every translation lit the corner
    tr = {7: Translation(images, seeds, 1.0, x[seeds])}
    rates = pair_transfer_rates(model, x, y, tr, top_frac=1 / 64, n_probes=5)
    assert set(rates) == {(s, 7) for s in np.unique(y[seeds])}
    assert rates[(3, 7)].min() == 1.0 and all(rates[(s, 7)].max() == 0.0 for s in (0, 1, 2))
    # The flagged pair's trigger: the lit corner, for source 3 only (the translations from its seeds).
    from aegis_tf.detect.recovered import from_pair_transfer

    det = PairTransferDetector(top_frac=1 / 64).fit_rates(rates, classes=[0, 1, 2, 3, 7])
    assert det.flagged_pairs_ == [(3, 7)]
    trig = from_pair_transfer(det, tr, y, 7, pixel_max=255.0)
    assert trig.sources == (3,) and trig.source == "pair_transfer" and trig.n_variants == 3  # class 3's 3 seeds
    assert trig.mask[:, 7, 7, 0].tolist() == [1.0] * 3 and trig.mask.sum() == 3 and trig.pattern[0, 7, 7, 0] == 255.0
    assert trig.evidence["pair_scores"] == {"3->7": 1.0} and trig.evidence["variant_sources"] == [3, 3, 3]
    assert np.all(predict_labels(model, trig.apply(x[y == 3])) == 7)
    # After a second look the pair holds more rates than the scan's translations: the trigger is
    # still read from the scan's own ones (a scan of held-out robust models crashed here).
    det.pool_rates({(3, 7): np.r_[np.ones(4), np.zeros(5)]})
    assert len(det.pair_rates_[(3, 7)]) == 12 and np.array_equal(det.scan_rates((3, 7)), rates[(3, 7)])
    again = from_pair_transfer(det, tr, y, 7, pixel_max=255.0)
    assert again.n_variants == 3 and np.array_equal(again.mask, trig.mask)


def test_confirmation_drops_a_patch_that_moved_its_first_probes_by_chance():
    import keras

    # Class 7 needs the corner (7, 7) lit and one of two features: every class-2 image has
    # feature (0, 2); three in four class-3 images have feature (0, 1). The corner is a
    # trigger for source 2 and a partial confusion for source 3.
    x = np.zeros((400, 8, 8, 1), "float32")
    y = np.arange(400) % 4
    x[y == 2, 0, 2, 0] = 255.0
    threes = np.nonzero(y == 3)[0]
    x[threes[:75], 0, 1, 0] = 255.0
    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Dense(8)(keras.layers.Flatten()(inp)))
    w, b = np.zeros((64, 8), "float32"), np.zeros(8, "float32")
    w[63, 7] = w[1, 7] = w[2, 7] = 1.0
    b[7] = -1.5 * 255.0
    model.set_weights([w, b])
    seeds = np.concatenate([np.nonzero(y == 2)[0][:6], threes[:6]])
    images = x[seeds].copy()
    images[:, 7, 7, 0] = 255.0
    tr = {7: Translation(images, seeds, 1.0, x[seeds])}
    for seed in range(50):  # a draw whose first 10 class-3 probes nearly all carry the feature
        first = pair_transfer_rates(model, x, y, tr, top_frac=1 / 64, n_probes=10, seed=seed)
        if first[(3, 7)].min() >= 0.9:
            break
    assert first[(3, 7)].min() >= 0.9 and first[(2, 7)].min() == 1.0
    confirmed = pair_transfer_rates(model, x, y, tr, top_frac=1 / 64, n_probes=10, seed=seed, confirm_probes=60)
    assert np.array_equal(confirmed[(2, 7)], np.ones(6))  # the trigger moves the fresh probes too
    assert confirmed[(3, 7)].max() < 0.9 and confirmed[(3, 7)].min() > 0.6  # pooled over 70 probes
    # Translations under flip_at are not re-tested, and no confirmation means the first rates.
    assert np.array_equal(pair_transfer_rates(model, x, y, tr, top_frac=1 / 64, n_probes=10, seed=seed,
                                              confirm_probes=0)[(3, 7)], first[(3, 7)])


def test_the_verdict_names_source_and_target():
    ev = {"patch_transfer": {"scores": {str(c): 0.0 for c in range(10)}, "threshold": 0.02, "direction": "above",
                             "flagged": []},
          "pair_transfer": PairTransferDetector().fit_rates(_rates({(3, 7)}), classes=list(range(10))).evidence("x")}
    v = combine(ev)
    assert v["target_classes"] == [7] and v["line"].endswith(": 3 -> 7")
    assert v["backdoors"] == [{"target": 7, "sources": [3], "signals": ["pair_transfer"], "score": 4.0}]
    ev["patch_transfer"]["flagged"], ev["patch_transfer"]["scores"]["7"] = [7], 0.3  # a class-level signal too
    assert combine(ev)["backdoors"][0]["sources"] == "all" and "->" not in combine(ev)["line"]
    hot = {(c, (c + 1) % 10) for c in range(10)}
    ev = {"pair_transfer": PairTransferDetector().fit_rates(_rates(hot), classes=list(range(10))).evidence("x")}
    b, = combine(ev)["backdoors"]
    assert b["kind"] == "all-to-all" and b["mapping"][0] == [0, 1] and "all-to-all 0->1" in combine(ev)["line"]
    # a second per-pair signal's pairs of the same permutation join the mapping, not separate backdoors
    half = {(c, c + 1) for c in range(0, 8, 2)}  # 0->1, 2->3, 4->5, 6->7: all-to-all on its own
    ev = {"pair_transfer": PairTransferDetector().fit_rates(_rates(half), classes=list(range(10))).evidence("x"),
          "pair_mask": PairTransferDetector().fit_rates(_rates({(3, 4), (5, 6)}), classes=list(range(10)))
          .evidence("y")}
    v = combine(ev)
    b, = v["backdoors"]
    assert b["kind"] == "all-to-all" and b["signals"] == ["pair_mask", "pair_transfer"]
    assert b["mapping"] == [[0, 1], [2, 3], [3, 4], [4, 5], [5, 6], [6, 7]] and v["target_classes"] == [1, 3, 4, 5, 6, 7]
    # pairs that would give one target three sources do not join: the union would be no mapping
    ev["pair_mask"] = PairTransferDetector().fit_rates(_rates({(8, 1), (9, 1)}), classes=list(range(10))).evidence("y")
    v = combine(ev)
    assert v["backdoors"][0]["signals"] == ["pair_transfer"] and v["backdoors"][0]["mapping"] == sorted(map(list, half))
    assert v["backdoors"][1] == {"target": 1, "sources": [8, 9], "signals": ["pair_transfer", "pair_mask"],
                                 "score": v["backdoors"][1]["score"]}
    # many sources of one target are a backdoor of their own, beside the mapping
    ev["pair_mask"] = PairTransferDetector().fit_rates(_rates({(s, 9) for s in (0, 2, 4)}),
                                                         classes=list(range(10))).evidence("y")
    v = combine(ev)
    assert [b.get("kind", b.get("target")) for b in v["backdoors"]] == ["all-to-all", 9]
    assert v["backdoors"][0]["signals"] == ["pair_transfer"] and v["backdoors"][1]["sources"] == [0, 2, 4]


@pytest.mark.parametrize("norms, saturated", [
    ({0: 14.0, **{c: 28.0 for c in range(1, 10)}}, True),  # one class at the first halving: the 2.00 / 0.50 pattern
    ({0: 8.0, **{c: 28.0 for c in range(1, 10)}}, True),  # within the first two halvings, every rival at the bound
    ({0: 3.5, **{c: 28.0 for c in range(1, 10)}}, False),  # far below the bound: the bound only understates the gap
    ({0: 3.53, 1: 11.5, **{c: 28.0 for c in range(2, 10)}}, False),  # a standard model's trigger: rival measured
    ({0: 1.0, 1: 3.0, 2: 3.0, 3: 3.0, 4: 3.0, 5: 3.0, 6: 5.0}, True),  # the rival ties with half the classes
    ({0: 1.0, 1: 2.33, 2: 28.0}, False),  # one class at the bound, the rival measured
    ({0: 2.5, 1: 6.0, 2: 5.5, 3: 6.3}, False),
    ({0: 7.0, **{c: 28.0 for c in range(1, 10)}}, True),  # exactly at the second halving: set by the bisection
])
def test_saturation_is_read_from_the_bounds_and_ties(norms, saturated):
    assert bool(saturation(norms, 28.0)) is saturated


@pytest.mark.parametrize("alpha, saturated", [
    (0.5, True),  # moved at the first halving only: the 2.00 / 0.50 pattern
    (0.69, True),  # the pattern outweighs the probe (a thin 1 on the random-position model)
    (0.36, False),  # the warp models' targets: the probe is the larger part, no other class moved at a = 1
])
def test_a_blend_reads_its_bound_up_to_half_the_pattern(alpha, saturated):
    norms = {0: alpha, **{c: 1.0 for c in range(1, 10)}}
    assert bool(saturation(norms, 1.0, resolved_below=0.5)) is saturated
    assert saturation(norms, 1.0) is not None  # the additive rule's quarter would not read any of them
    blend = BlendProbeDetector().fit_norms(norms, ceiling=1.0)
    assert blend.suspect_classes_ == ([] if saturated else [0]) and bool(blend.inconclusive_) is saturated


def test_a_saturated_signal_names_no_class_and_the_verdict_says_so():
    det = WholeImageDetector().fit_norms({0: 14.0, **{c: 28.0 for c in range(1, 10)}}, ceiling=28.0)
    assert det.scores_[0] == 2.0 and det.suspect_classes_ == [] and det.inconclusive_
    assert det.report()["verdict"] == "inconclusive"
    blend = BlendProbeDetector().fit_norms({0: 0.5, **{c: 1.0 for c in range(1, 10)}}, ceiling=1.0)
    assert blend.suspect_classes_ == [] and blend.inconclusive_
    v = combine({"whole_image": det.evidence("x"), "blend_probe": blend.evidence("y")})
    assert not v["backdoored"] and set(v["inconclusive"]) == {"whole_image", "blend_probe"}
    assert "whole-image gap inconclusive (saturated)" in v["line"] and v["score"] == 0.0
    assert WholeImageDetector().fit_norms({0: 14.0, **{c: 28.0 for c in range(1, 10)}}).suspect_classes_ == [0]


def test_the_resume_fingerprint_ignores_the_scoring_only_settings():
    import keras

    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.state import fingerprint

    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    x, y = np.zeros((6, 4, 4, 1), "float32"), np.arange(6) % 3
    key = fingerprint(model, x, y, range(3), DetectConfig(), 0)
    assert key == fingerprint(model, x, y, range(3), DetectConfig(pairs=False, pair_probes=5, pair_min_score=0.5), 0)
    assert key != fingerprint(model, x, y, range(3), DetectConfig(n_seeds=5), 0)


def test_the_report_page_names_the_backdoors_and_the_inconclusive_signals(tmp_path):
    from aegis_tf.report.html import write_detect_html

    ev = {"pair_transfer": PairTransferDetector().fit_rates(_rates({(3, 7)}), classes=list(range(10))).evidence("x"),
          "whole_image": WholeImageDetector().fit_norms({0: 14.0, **{c: 28.0 for c in range(1, 10)}},
                                                        ceiling=28.0).evidence("y")}
    page = open(write_detect_html({"model": "m.keras", "verdict": combine(ev)}, str(tmp_path / "r.html"))).read()
    assert "class(es) 3 &rarr; class 7 (pair_transfer)" in page and 'id="inconclusive-whole_image"' in page


def test_one_source_among_few_examined_classes_is_still_named():
    # A scan of classes 3 and 7 only: the pair view saw sources from all 10 classes.
    det = PairTransferDetector().fit_rates({**{(s, 7): np.zeros(20) for s in range(10) if s != 7},
                                            (3, 7): np.ones(20), **{(s, 3): np.zeros(20) for s in range(10) if s != 3}},
                                           classes=[3, 7])
    ev = {"pair_transfer": det.evidence("x")}
    assert combine(ev)["backdoors"][0]["sources"] == [3]


def _counts(transferring, n=20, classes=range(10)):
    """``{(s, t): rates}`` with ``transferring[(s, t)]`` of the ``n`` translations transferring."""
    return {(s, t): np.r_[np.ones(transferring.get((s, t), 0)), np.zeros(n - transferring.get((s, t), 0))]
            for t in classes for s in classes if s != t}


def test_a_target_that_many_sources_reach_a_little_is_broad_and_one_confusion_is_not():
    # A standard model's all-to-one patch: 1 of 20 translations from each of 4 sources (no pair reaches 0.25);
    # beside it a natural confusion, 4 of 20 from one source.
    counts = {(0, 7): 1, (2, 7): 1, (3, 7): 1, (4, 7): 1, (1, 4): 4}
    det = PairTransferDetector().fit_rates(_counts(counts), classes=list(range(10)))
    assert det.flagged_pairs_ == [] and det.broad_targets_ == [7]
    assert det.breadth_[7] == 4 and det.breadth_[4] == 1 and det.broad_sources_[7] == [0, 2, 3, 4]
    assert det.breadth_scores_[7] == pytest.approx(4 / 9)
    ev = det.breadth_evidence("x")
    assert ev["flagged"] == [7] and ev["threshold"] == pytest.approx(1 / 3) and ev["sources"] == {"7": [0, 2, 3, 4]}
    assert det.breadth_report()["classes"]["4"] == {"breadth": 1, "breadth_score": 1 / 9, "sources": [1]}
    two = PairTransferDetector().fit_rates(_counts({(0, 7): 1, (2, 7): 1}), classes=list(range(10)))
    assert two.broad_targets_ == []  # 2 sources: under min_sources
    wide = _counts({(s, 7): 1 for s in (0, 2, 3, 4)}, classes=range(20))
    assert PairTransferDetector().fit_rates(wide, classes=list(range(20))).broad_targets_ == []  # 4 of 19 sources
    everywhere = _counts({(s, t): 1 for t in range(10) for s in range(10) if s != t})
    assert PairTransferDetector().fit_rates(everywhere, classes=list(range(10))).broad_targets_ == []


def test_the_verdict_names_a_broad_target_with_its_sources_or_as_all_to_one():
    from aegis_tf.detect.verdict import backdoors

    four = PairTransferDetector().fit_rates(_counts({(s, 7): 1 for s in (0, 2, 3, 4)}), classes=list(range(10)))
    ev = {"pair_transfer": four.evidence("x"), "pair_breadth": four.breadth_evidence("y")}
    v = combine(ev)
    assert v["target_classes"] == [7] and "source breadth 0.44 vs 0.333" in v["line"]
    assert v["backdoors"] == [{"target": 7, "sources": [0, 2, 3, 4], "signals": ["pair_breadth"],
                               "score": pytest.approx((4 / 9) * 3)}]
    seven = PairTransferDetector().fit_rates(_counts({(s, 7): 1 for s in range(7)}), classes=list(range(10)))
    ev = {"pair_transfer": seven.evidence("x"), "pair_breadth": seven.breadth_evidence("y")}
    assert backdoors(ev)[0]["sources"] == "all"  # 7 of 9 sources: an all-to-one backdoor


def test_a_broad_target_saves_a_trigger_from_each_of_its_sources(rng):
    from aegis_tf.detect.recovered import from_pair_transfer

    y = np.repeat(np.arange(10), 4)
    x = rng.uniform(0, 255, (40, 6, 6, 1)).astype("float32")
    seeds = np.concatenate([np.nonzero(y == s)[0][:2] for s in (0, 1, 2, 3, 4, 5)])  # 2 per source, in order
    images = x[seeds].copy()
    images[:, 5, 5, 0] = 255.0 - x[seeds, 5, 5, 0]  # each translation changed one corner pixel most
    tr = {7: Translation(images, seeds, 1.0, x[seeds])}
    rates = {(s, 7): np.array([1.0 if s in (0, 2, 3, 4) else 0.0, 0.0]) for s in (0, 1, 2, 3, 4, 5)}
    det = PairTransferDetector(top_frac=1 / 36).fit_rates(rates, classes=list(range(10)))
    assert det.flagged_pairs_ == [] and det.broad_targets_ == [7] and det.broad_sources_[7] == [0, 2, 3, 4]
    trig = from_pair_transfer(det, tr, y, 7, pixel_max=255.0, breadth=True)
    assert trig.source == "pair_breadth" and trig.sources == (0, 2, 3, 4) and trig.n_variants == 4
    assert trig.evidence["variant_sources"] == [0, 2, 3, 4] and trig.mask[:, 5, 5, 0].tolist() == [1.0] * 4
    assert "0,2,3,4 -> class 7 patch from many sources" in trig.describe()
    with pytest.raises(Exception, match="flagged no pair toward it"):
        from_pair_transfer(det, tr, y, 7, pixel_max=255.0)  # the per-pair rule flagged none


def test_a_weak_flag_is_scored_again_on_its_pooled_translations():
    # (3, 7) crossed the share by chance (6 of 20); (5, 2) is a trigger (20 of 20).
    rates = _rates({(5, 2)})
    rates[(3, 7)] = np.r_[np.ones(6), np.zeros(14)]
    det = PairTransferDetector().fit_rates(rates, classes=list(range(10)))
    assert det.flagged_pairs_ == [(3, 7), (5, 2)] and det.weak_pairs() == [(3, 7)]
    assert PairTransferDetector(retest_below=0.3).fit_rates(rates, classes=list(range(10))).weak_pairs() == []
    det.pool_rates({(3, 7): np.r_[np.ones(6), np.zeros(54)]})  # the second look: 6 of 60 more
    assert det.flagged_pairs_ == [(5, 2)] and det.suspect_classes_ == [2] and det.pairs_[(3, 7)] == 0.15
    assert det.retested_ == {(3, 7): {"share_before": 0.3, "translations_before": 20, "share": 0.15,
                                      "translations": 80, "flagged": False}}
    assert det.evidence("x")["retested"] == [{"pair": [3, 7], "share_before": 0.3, "translations_before": 20,
                                              "share": 0.15, "translations": 80, "flagged": False}]
    assert det.breadth_[7] == 1  # the pair still counts as a source that transferred
    kept = PairTransferDetector().fit_rates(rates, classes=list(range(10)))
    kept.pool_rates({(3, 7): np.r_[np.ones(30), np.zeros(30)]})  # a real trigger keeps its share
    assert kept.flagged_pairs_ == [(3, 7), (5, 2)] and kept.retested_[(3, 7)]["share"] == 0.45
    assert PairTransferDetector().fit_rates(rates, classes=list(range(10))).retested_ == {}


def _corner_model():
    """Class 7 for class-3 images (pixel (0, 0) lit) whose corner (7, 7) is lit too; 100 images per class 0-3."""
    import keras

    x = np.zeros((400, 8, 8, 1), "float32")
    y = np.arange(400) % 4
    x[y == 3, 0, 0, 0] = 255.0
    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Dense(8)(keras.layers.Flatten()(inp)))
    w, b = np.zeros((64, 8), "float32"), np.zeros(8, "float32")
    w[0, 7], w[63, 7], b[7] = 1.0, 1.0, -300.0
    model.set_weights([w, b])
    return model, x, y


def test_translate_pairs_draws_fresh_images_of_each_source():
    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.translation import translate_pairs

    model, x, y = _corner_model()
    used = {7: np.nonzero(y == 3)[0][:90]}
    config = DetectConfig(steps=5)
    out = translate_pairs(model, x, y, {(3, 7): 30, (1, 7): 4}, used, config, pixel_max=255.0, seed=3)
    tr = out[7]
    assert sorted(y[tr.seeds].tolist()) == [1] * 4 + [3] * 10  # only 10 class-3 images were left
    assert not set(tr.seeds.tolist()) & set(used[7].tolist())
    assert tr.images.shape == (14, 8, 8, 1) and tr.starts.shape == (14, 8, 8, 1)
    again = translate_pairs(model, x, y, {(3, 7): 30, (1, 7): 4}, used, config, pixel_max=255.0, seed=3)[7]
    assert np.array_equal(again.seeds, tr.seeds) and np.array_equal(again.images, tr.images)
    other = translate_pairs(model, x, y, {(1, 7): 4}, used, config, pixel_max=255.0, seed=4)[7]
    assert not np.array_equal(np.sort(other.seeds), np.sort(tr.seeds[y[tr.seeds] == 1]))
    assert translate_pairs(model, x, y, {(3, 7): 5}, {7: np.nonzero(y == 3)[0]}, config, pixel_max=255.0) == {}


def test_the_second_look_keeps_a_trigger_that_transfers_on_fresh_images():
    from aegis_tf.detect.config import DetectConfig

    model, x, y = _corner_model()
    classes = [0, 1, 2, 3, 7]
    rates = {(s, t): np.zeros(8) for t in classes for s in range(4) if s != t}
    rates[(3, 7)] = np.r_[np.ones(3), np.zeros(5)]  # a weak first count: 3 of 8
    det = PairTransferDetector(top_frac=1 / 64, n_probes=5, confirm_probes=5, translation=DetectConfig(steps=20),
                               random_state=1).fit_rates(rates, classes=classes)
    assert det.weak_pairs() == [(3, 7)]
    det.second_look(model, x, y, {7: np.nonzero(y == 3)[0][:8]})
    r = det.retested_[(3, 7)]
    assert r["translations"] == 32 and r["flagged"] and r["share"] == (3 + 24) / 32  # every fresh patch moved its probes
    assert det.flagged_pairs_ == [(3, 7)]
    off = PairTransferDetector(retest=0, top_frac=1 / 64).fit_rates(rates, classes=classes)
    assert off.second_look(model, x, y, {}).retested_ == {}
