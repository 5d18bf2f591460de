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


# One suspicion score per model: >= 1 exactly when the verdict is BACKDOORED.

def _pure_ratio(e, c):
    """A class's score over its threshold (the inverse for a "below" signal), the smaller of its two
    ratios with a second condition: the definition, for evidence whose flags follow the threshold."""
    s, t = e["scores"][c], e["threshold"]
    r = s / t if e["direction"] == "above" else t / max(s, 1e-12)
    if "also" in e:
        r = min(r, e["also"]["scores"][c] / e["also"]["threshold"])
    return r


def _random_evidence(rng, consistent):
    """Synthetic evidence of 1-4 signals: flags follow the threshold (and a staged "also"
    condition); unless ``consistent``, a random extra rule may also withhold a flag (patch
    transfer's relative rule, NC's below-the-median rule) or a flag may come from nowhere."""
    evidence = {}
    for i in range(rng.integers(1, 5)):
        direction = "above" if consistent or rng.random() < 0.7 else "below"
        t = float(rng.choice([0.02, 0.5, 2.0, 1.5]))
        classes = [str(c) for c in range(rng.integers(2, 8))]
        def draw():  # mostly under the threshold; at it, near it or above it now and then
            return float(rng.choice([0.0, t, t * rng.uniform(0, 1), t * rng.uniform(0.9, 1.1), t * rng.uniform(1, 3)],
                                    p=[0.1, 0.02, 0.8, 0.05, 0.03]))
        e = {"description": "d", "scores": {c: draw() for c in classes}, "threshold": t, "direction": direction}
        if rng.random() < 0.3:
            e["also"] = {"name": "stage 1", "scores": {c: draw() for c in classes}, "threshold": t}
        flagged = []
        for c in classes:
            s = e["scores"][c]
            ok = s >= t if direction == "above" else s <= t
            if "also" in e:
                ok = ok and e["also"]["scores"][c] >= t
            if not consistent:
                ok = (ok and rng.random() < 0.7) or rng.random() < 0.05
            if ok:
                flagged.append(int(c))
        e["flagged"] = flagged
        if not consistent and rng.random() < 0.3:
            e["decides"] = False
        evidence[f"signal{i}"] = e
    return evidence


def test_the_score_reaches_1_exactly_when_the_verdict_is_backdoored():
    import numpy as np

    rng = np.random.default_rng(0)
    seen = {True: 0, False: 0}
    for consistent in (True, False):
        for _ in range(2000):
            v = combine(_random_evidence(rng, consistent))
            assert (v["score"] >= 1) == v["backdoored"], v
            assert (v["probability"] >= 0.5) == v["backdoored"] and 0 <= v["probability"] < 1
            assert abs(v["probability"] - v["score"] / (1 + v["score"])) < 1e-12
            seen[v["backdoored"]] += 1
            if consistent:  # flags that follow the thresholds: the score is the plain largest ratio
                expected = max(_pure_ratio(e, c) for e in v["evidence"].values() for c in e["scores"])
                assert abs(v["score"] - expected) < 1e-9
    assert min(seen.values()) > 500  # both verdicts well represented


def test_the_score_of_a_staged_class_failing_its_second_condition_stays_under_1():
    also = {"name": "stage 1", "scores": {"3": 1.03, "8": 0.3}, "threshold": 1.5}
    v = combine({"whole_image": _ev({3: 4.1, 8: 0.3}, 2.0, [], also=also),
                 "patch_transfer": _ev({3: 0.0, 8: 0.01}, 0.02, [])})
    assert not v["backdoored"] and abs(v["score"] - 1.03 / 1.5) < 1e-12  # min(4.1 / 2, 1.03 / 1.5)
    assert v["line"] == "CLEAN (whole-image gap max 4.10 vs 2 (stage 1 1.03 vs 1.5); patch share max 0.01 vs 0.02)"


def test_the_score_counts_deciding_signals_only_and_caps_an_unflagged_class_under_1():
    from aegis_tf.detect.verdict import NOT_FLAGGED_MAX

    # Every class transfers (the relative rule flags none): at the threshold, yet clean.
    v = combine({"patch_transfer": _ev({0: 0.3, 1: 0.3, 2: 0.25}, 0.02, []),
                 "neural_cleanse": _ev({0: 9.0, 1: 0.1}, 2.0, [0], decides=False)})
    assert not v["backdoored"] and v["score"] == NOT_FLAGGED_MAX
    below = combine({"nc": _ev({0: 0.5, 1: 4.0}, 2.0, [0], direction="below")})
    assert below["backdoored"] and below["score"] == 4.0  # threshold / score
    zero = combine({"nc": _ev({0: 0.0, 1: 4.0}, 2.0, [0], direction="below")})
    assert zero["score"] > 1e5 and zero["score"] < float("inf")  # a zero score is guarded
    assert combine({})["score"] == 0.0 and combine({})["probability"] == 0.0


def test_scan_limits_name_each_reason_a_scan_cannot_be_read():
    from aegis_tf.detect.verdict import MIN_CLASS_IMAGES, scan_limits

    assert scan_limits(n_classes=10, class_counts={0: 500, 7: 10}, reached={"0": 0.9, "7": 0.2}) == []
    two = scan_limits(n_classes=2, class_counts={0: 500, 1: 500})
    assert two == ["the model has 2 classes; every signal compares a class with at least 2 others"]
    few = scan_limits(n_classes=10, class_counts={3: MIN_CLASS_IMAGES - 1, 4: 2, 5: 400})
    assert few == ["too few training images (class 3: 9, class 4: 2; at least 10 per examined class expected)"]
    stuck = scan_limits(n_classes=10, class_counts={0: 50, 1: 50}, reached={"0": 0.5, "1": 0.3})
    assert stuck == ["the translations did not converge (on average 40% reached their class, at least 50% "
                     "expected); raise --eps or --steps"]
    assert len(scan_limits(n_classes=1, class_counts={0: 3}, reached={"0": 0.0})) == 3


def test_a_verdict_with_limits_names_no_class_whatever_the_signals_flag():
    flagged = {"patch_transfer": _ev({0: 0.0, 5: 0.31}, 0.02, [5]), "whole_image": _ev({0: 0.1, 5: 9.0}, 2.0, [5])}
    v = combine(flagged, ["the model has 2 classes; every signal compares a class with at least 2 others"])
    assert not v["backdoored"] and v["target_classes"] == [] and v["backdoors"] == []
    assert v["line"] == ("INCONCLUSIVE: the model has 2 classes; every signal compares a class with at least 2 "
                         "others (patch share max 0.31 vs 0.02; whole-image gap max 9.00 vs 2)")
    assert v["score"] < 1 and v["probability"] < 0.5 and v["evidence"] == flagged  # the evidence stays
    plain = combine(flagged)
    assert plain["limits"] == [] and plain["target_classes"] == [5] and plain["score"] >= 1


def test_model_limits_count_each_examined_class_from_the_labels():
    import keras
    import numpy as np

    from aegis_tf.detect.scan import model_limits

    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])
    y = np.r_[np.zeros(40), np.full(3, 2), np.full(12, 4)].astype("int64")  # class 3 has none
    reasons = model_limits(model, y, [0, 2, 3, 4])
    assert reasons == ["too few training images (class 2: 3, class 3: 0; at least 10 per examined class expected)"]
    assert model_limits(model, y, [0, 4]) == [] and model_limits(model, None, [2]) == []
