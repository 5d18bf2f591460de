from aegis_tf.detect.verdict import combine


def _ev(scores, threshold, flagged, direction="above", **kw):
    return {"description": "d", "scores": {str(c): v for c, v in scores.items()}, "threshold": threshold,
            "direction": direction, "flagged": flagged, **kw}


def test_one_signal_flags_a_class():
    v = combine({"patch_transfer": _ev({0: 0.0, 5: 0.31, 7: 0.0}, 0.02, [5])})
    assert v["backdoored"] and v["target_classes"] == [5]
    assert v["line"] == "BACKDOORED: class 5 (patch share 0.31 vs 0.02)"


def test_no_signal_flags_anything_gives_clean_with_the_strongest_score():
    v = combine({"patch_transfer": _ev({0: 0.0, 1: 0.01}, 0.02, []),
                 "neural_cleanse": _ev({0: 1.2, 1: 0.4}, 2.0, [])})
    assert not v["backdoored"] and v["target_classes"] == []
    assert v["line"] == "CLEAN (patch share max 0.01 vs 0.02; NC index max 1.20 vs 2)"


def test_signals_are_combined_and_a_non_deciding_signal_does_not_vote():
    v = combine({"patch_transfer": _ev({3: 0.0, 8: 0.0}, 0.02, []),
                 "whole_image": _ev({3: 7.3, 8: 0.1}, 4.0, [3]),
                 "clusters": _ev({3: 1.0, 8: 1.0}, 0.5, [3, 8], decides=False)})
    assert v["target_classes"] == [3]
    assert v["line"] == "BACKDOORED: class 3 (patch share 0.00 vs 0.02; whole-image gap 7.30 vs 4)"
    both = combine({"a": _ev({1: 1.0, 2: 0.0}, 0.5, [1]), "b": _ev({1: 0.0, 2: 1.0}, 0.5, [2])})
    assert both["target_classes"] == [1, 2] and both["line"].startswith("BACKDOORED: classes 1, 2")


def test_a_second_condition_is_shown_beside_its_signal():
    also = {"name": "stage 1", "scores": {"3": 1.03, "8": 2.6}, "threshold": 1.5}
    clean = combine({"whole_image": _ev({3: 3.69, 8: 0.3}, 2.0, [], also=also)})
    assert clean["line"] == "CLEAN (whole-image gap max 3.69 vs 2 (stage 1 1.03 vs 1.5))"
    bad = combine({"whole_image": _ev({3: 0.2, 8: 4.1}, 2.0, [8], also=also)})
    assert bad["line"] == "BACKDOORED: class 8 (whole-image gap 4.10 vs 2 (stage 1 2.60 vs 1.5))"
