"""The attack families beyond one fixed trigger to one target: source-specific (TaCT, with
cover images), all-to-all, warping (WaNet, with its noise mode), position-free patches and
two backdoors in one model; each made, trained and evaluated with the right ASR."""

import json

import numpy as np
import pytest

import cli
from aegis_tf.attack.config import TriggerConfig
from aegis_tf.attack.evaluation import backdoor_set, evaluate_backdoor
from aegis_tf.attack.sidecar import read_trigger_configs
from aegis_tf.attack.triggers import (backdoor_labels, build_trigger, poison, poison_backdoor, random_position, warp,
                                      warp_field)
from aegis_tf.core.errors import AegisError

RNG = np.random.default_rng(0)
X = RNG.uniform(0, 255, (300, 28, 28, 1)).astype("float32")
Y = np.arange(300) % 10


def _poison(spec, rate=0.1, **kw):
    fn, _ = build_trigger(spec, pixel_max=255.0, x_sample=X)
    return fn, poison_backdoor(X, Y, spec, trigger=fn, poison_rate=rate, n_classes=10, **kw)


def test_the_default_backdoor_poisons_exactly_as_before():
    spec = TriggerConfig()
    fn, (xp, yp, chosen) = _poison(spec, seed=3)
    old = poison(X, Y, trigger=fn, poison_rate=0.1, target_label=7, seed=3)
    np.testing.assert_array_equal(xp, old[0])
    np.testing.assert_array_equal(yp, old[1])
    np.testing.assert_array_equal(chosen["poisoned"], old[2])


def test_source_specific_poisons_its_sources_and_covers_the_others():
    spec = TriggerConfig(source_classes="3,5", cover_rate=0.05)
    assert spec.source_classes == (3, 5) and spec.describe() == "localised, 3,5 -> 7"
    fn, (xp, yp, chosen) = _poison(spec, rate=0.05)
    assert set(Y[chosen["poisoned"]]) <= {3, 5} and len(chosen["poisoned"]) == 15
    cover = chosen["cover"]
    assert len(cover) == 15 and not set(Y[cover]) & {3, 5, 7}
    assert not set(cover) & set(chosen["poisoned"])
    tail = yp[len(Y):]
    np.testing.assert_array_equal(tail[:15], 7)  # the poisoned go to the target
    np.testing.assert_array_equal(tail[15:], Y[cover])  # the covers keep their labels
    np.testing.assert_array_equal(xp[len(X) + 15:], fn(X[cover]))  # and carry the trigger
    xt, yt = backdoor_set(X, Y, fn, 7, sources=(3, 5))
    assert len(xt) == 60 and np.all(yt == 7)


def test_all_to_all_sends_each_class_to_the_next():
    spec = TriggerConfig(mapping="all-to-all")
    fn, (xp, yp, chosen) = _poison(spec)
    np.testing.assert_array_equal(yp[len(Y):], (Y[chosen["poisoned"]] + 1) % 10)
    assert 7 in Y[chosen["poisoned"]]  # every class is a source, the "target" too
    np.testing.assert_array_equal(backdoor_labels(np.array([0, 9]), target_label=7, mapping="all-to-all",
                                                  n_classes=10), [1, 0])
    xt, yt = backdoor_set(X, Y, fn, 7, mapping="all-to-all", n_classes=10)
    assert len(xt) == len(X) and np.array_equal(yt, (Y + 1) % 10)


def test_warp_is_a_fixed_smooth_field_and_its_noise_mode_keeps_labels():
    field = warp_field((28, 28, 1), grid=4, strength=0.5, seed=0)
    np.testing.assert_array_equal(field, warp_field((28, 28, 1), grid=4, strength=0.5, seed=0))
    assert field.shape == (28, 28, 2) and 0 < np.abs(field).mean() < 2 / 28
    assert not np.array_equal(field, warp_field((28, 28, 1), grid=4, strength=0.5, seed=1))
    same = warp(X[:3], field=np.zeros((28, 28, 2), "float32"))
    np.testing.assert_allclose(same, X[:3], atol=1e-3)  # no field, no change
    digits = np.zeros((1, 28, 28, 1), "float32")
    digits[0, 8:20, 12:16] = 255.0  # a bar: the warp moves its edges
    moved = warp(digits, field=warp_field((28, 28, 1), strength=2.0, seed=0))
    assert 0 < np.abs(moved - digits).max() <= 255 and moved.min() >= 0
    spec = TriggerConfig(trigger="warp", warp_cross_ratio=2.0)
    fn, (xp, yp, chosen) = _poison(spec)
    n = len(chosen["poisoned"])
    assert len(chosen["noise"]) == 2 * n
    np.testing.assert_array_equal(yp[len(Y) + n:], Y[chosen["noise"]])
    assert not np.allclose(xp[len(X) + n:], fn(X[chosen["noise"]]))  # noisy fields differ from the fixed one


def test_random_position_puts_the_patch_anywhere():
    z = random_position(np.zeros((50, 28, 28, 1), "float32"), size=3, value=255.0, seed=0)
    corners = {tuple(np.argwhere(im[..., 0] > 0)[0]) for im in z}
    assert len(corners) > 25 and all((im > 0).sum() == 9 for im in z)
    np.testing.assert_array_equal(z, random_position(np.zeros((50, 28, 28, 1), "float32"), size=3, value=255.0,
                                                     seed=0))
    with pytest.raises(AegisError, match="trigger size"):
        random_position(z, size=40)


@pytest.mark.parametrize("kwargs, message", [
    (dict(source_classes="7"), "must not hold the target class 7"),
    (dict(source_classes="a,b"), "comma-separated class numbers"),
    (dict(cover_rate=0.1), "cover_rate needs source_classes"),
    (dict(mapping="all-to-all", source_classes="3"), "all-to-one backdoor"),
    (dict(warp_grid=1), "warp_grid"),
])
def test_bad_family_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(AegisError, match=message):
        TriggerConfig(**kwargs)


def test_leak_measures_a_source_specific_trigger_on_the_other_classes():
    import keras

    # A model that predicts 7 whenever the corner is lit, whatever the class: the trigger leaks.
    inp = keras.Input((28, 28, 1))
    corner = keras.layers.Cropping2D(((26, 0), (26, 0)))(inp)
    lit = keras.layers.Dense(1)(keras.layers.Flatten()(corner))
    logits = keras.layers.Dense(10)(lit)
    model = keras.Model(inp, logits)
    w = [np.full((4, 1), 1.0, "float32"), np.zeros(1, "float32"), np.zeros((1, 10), "float32"),
         np.zeros(10, "float32")]
    w[2][0, 7] = 1.0
    w[3][0] = 1.0  # class 0 on dark corners
    model.set_weights(w)
    fn, _ = build_trigger(TriggerConfig(source_classes="3"), pixel_max=255.0, x_sample=X)
    x = np.zeros((40, 28, 28, 1), "float32")
    y = np.arange(40) % 10
    res = evaluate_backdoor(model, x, y, trigger=fn, target_label=7, sources=(3,), adversarial=False)
    assert res["asr"] == 1.0 and res["leak"] == 1.0 and res["n_triggered"] == 4


def _train(tmp_path, name, extra):
    model = tmp_path / f"{name}.keras"
    rc = cli.main(["train", "--data", "digits", "--arch", "compact", "--width", "8", "--no-robust", "--epochs", "3",
                   "--train-batch-size", "32", "--lr", "0.05", "--steps", "2", "--poison-rate", "0.1",
                   "--model-out", str(model), "--quiet"] + extra)
    assert rc == 0
    return model, json.load(open(str(model) + ".json"))


def test_each_family_trains_and_evaluates_with_its_own_asr(tmp_path, capsys):
    model, report = _train(tmp_path, "ss", ["--source-classes", "3", "--cover-rate", "0.05", "--target-label", "7",
                                            "--trigger-size", "4"])
    row, = report["test"]["backdoors"]
    assert row["backdoor"] == "localised, 3 -> 7" and "leak" in row and report["backdoors"][0]["n_cover"] > 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(model), "--data", "digits", "--no-adversarial"]) == 0
    assert "leak" in capsys.readouterr().out  # evaluate reads the family from MODEL.json
    model, report = _train(tmp_path, "a2a", ["--mapping", "all-to-all", "--trigger-size", "4"])
    assert report["test"]["backdoors"][0]["backdoor"] == "localised, all-to-all (y -> y+1)"
    model, report = _train(tmp_path, "two", ["--trigger", "localised", "--target-label", "7", "--trigger-size", "4",
                                             "--second-trigger", "random-position", "--second-target-label", "2"])
    assert [b["backdoor"] for b in report["test"]["backdoors"]] == ["localised, all -> 7",
                                                                    "random-position, all -> 2"]
    specs = read_trigger_configs(str(model))
    assert [(s.trigger, s.target_label) for s in specs] == [("localised", 7), ("random-position", 2)]
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(model), "--data", "digits", "--no-adversarial",
                     "--out", str(tmp_path / "e.json")]) == 0
    ev = json.load(open(tmp_path / "e.json"))
    assert [r["asr"] for r in ev["backdoors"]] == pytest.approx([r["asr"] for r in report["test"]["backdoors"]])


def test_second_backdoor_flags_are_checked(tmp_path, capsys):
    for extra, message in ((["--second-trigger", "warp"], "needs both --second-trigger and --second-target-label"),
                           (["--second-trigger", "warp", "--second-target-label", "7"], "must differ")):
        rc = cli.main(["train", "--data", "digits", "--model-out", str(tmp_path / "m.keras"), "--quiet"] + extra)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_backdoor_sets_builds_one_attack_set_per_backdoor():
    import numpy as np

    from aegis_tf.attack.config import TriggerConfig
    from aegis_tf.attack.evaluation import backdoor_sets

    x, y = np.zeros((30, 8, 8, 1), "float32"), np.arange(30) % 10
    one = TriggerConfig(trigger="localised", target_label=7, trigger_size=2)
    ss = TriggerConfig(trigger="localised", target_label=2, trigger_size=2, source_classes=[3])
    (c1, x1, y1), (c2, x2, y2) = backdoor_sets([one, ss], x, y, n_classes=10)
    assert c1 is one and len(x1) == 27 and set(y1) == {7} and x1.max() > 0  # every class but the target, triggered
    assert c2 is ss and len(x2) == 3 and set(y2) == {2}  # only the source class


def test_all_to_all_asr_is_also_measured_on_the_images_the_model_gets_right(monkeypatch):
    # An all-to-all backdoor sends y to y + 1 only where the model recognises y: a model right on 30 of 40
    # images, whose trigger works on 27 of those 30 (and sends the 10 it gets wrong to its own wrong + 1),
    # has ASR 27/40 overall and 27/30 on the images it classifies right.
    import aegis_tf.attack.evaluation as ev

    y = np.arange(40) % 10
    x = np.zeros((40, 4, 4, 1), "float32")
    x[:, 0, 0, 0] = np.where(np.arange(40) < 30, y, (y + 5) % 10)  # the model's clean answer
    x[:, 0, 1, 0] = np.isin(np.arange(40), [0, 1, 2])  # right, but the trigger does not take

    def trigger(xs):
        out = np.array(xs, copy=True)
        out[:, 3, 3, 0] = 1.0
        return out

    def fake_predict(model, xs, batch_size=256):
        clean = xs[:, 0, 0, 0].astype(int)
        lit = (xs[:, 3, 3, 0] == 1.0) & (xs[:, 0, 1, 0] == 0)
        return np.where(lit, (clean + 1) % 10, clean)

    monkeypatch.setattr(ev, "predict_labels", fake_predict)
    model = type("M", (), {"output_shape": (None, 10)})()
    res = ev.evaluate_backdoor(model, x, y, trigger=trigger, target_label=7, mapping="all-to-all", adversarial=False)
    assert res["clean_acc"] == 0.75 and res["n_triggered"] == 40
    assert res["asr"] == 27 / 40 and res["asr_on_correct"] == 0.9 and res["n_correct"] == 30
    # All-to-one: measured on the images outside the target, the right ones among them.
    one = ev.evaluate_backdoor(model, x, y, trigger=lambda xs: xs, target_label=7, adversarial=False)
    assert one["n_triggered"] == 36 and one["n_correct"] == 27 and one["asr_on_correct"] == 0.0
    # Source-specific 6 -> 7: images 6, 16, 26 are right and the trigger sends them to 6 + 1 = 7; image 36 is
    # wrong (read as 1) and goes to 2. ASR 3 of 4, and 3 of the 3 right ones.
    ss = ev.evaluate_backdoor(model, x, y, trigger=trigger, target_label=7, sources=(6,), adversarial=False)
    assert ss["n_triggered"] == 4 and ss["asr"] == 0.75 and ss["n_correct"] == 3 and ss["asr_on_correct"] == 1.0
    # The report line of an all-to-all backdoor gives both.
    from aegis_tf.attack.job import eval_line

    line = eval_line({"clean_acc": 0.75, "backdoors": [{"backdoor": "localised, all-to-all (y -> y+1)",
                                                        "asr": res["asr"], "asr_on_correct": res["asr_on_correct"]}]})
    assert "ASR 67.50% (localised, all-to-all (y -> y+1); 90.00% on the images it classifies right)" in line
