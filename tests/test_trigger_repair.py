"""Repair from a recovered trigger: the trigger files, trigger-aware pruning, unlearning, and the command."""

import json
import os
import shutil

import keras
import numpy as np
import pytest

import cli
from aegis_tf.core.data import load_h5
from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import predict_labels
from aegis_tf.detect.recovered import RecoveredTrigger, load_trigger, triggers_from_detect_dir
from conftest import tiny_cnn
from repair.pipeline import run_trigger_repair
from repair.prune import prune_curve
from repair.trigger_repair import (check_reinvert_settings, reinverted_triggers, trigger_channel_gap,
                                   trigger_prune_curve, triggered_set, unlearn)


def _corner_trigger(shape=(8, 8, 1), size=3, value=1.0, margin=0, target=1, pixel_max=1.0):
    """The exact square trigger as a RecoveredTrigger: mask 1 on the square, pattern ``value``."""
    h, w, c = shape
    mask = np.zeros((1, h, w, 1), "float32")
    mask[0, h - margin - size:h - margin, w - margin - size:w - margin] = 1.0
    return RecoveredTrigger(target=target, source="patch_transfer", mask=mask,
                            pattern=np.full((1, h, w, c), value, "float32"),
                            delta=np.zeros((1, h, w, c), "float32"), pixel_max=pixel_max)


def _planted_model():
    """A tiny conv-pool-dense net with a hand-set backdoor in channel 2.

    Channel 0 is dead (always 0), channel 2 fires only where a 3x3 window sums
    above 6, which images in [0, 0.5] never reach and the corner trigger does;
    it drives class 1. Channels 1 and 3 copy the image; class 0 reads the left
    half of channel 1, class 2 the right half. The lab's order (lowest mean
    clean activation first) prunes the dead channel 0 first.
    """
    model = tiny_cnn(seed=0, input_shape=(8, 8, 1), num_classes=3)
    kernel = np.zeros((3, 3, 1, 4), "float32")
    bias = np.array([-1.0, 0.0, -6.0, 0.0], "float32")
    kernel[1, 1, 0, 1] = 1.0
    kernel[:, :, 0, 2] = 1.0
    kernel[1, 1, 0, 3] = 0.5
    model.get_layer("conv").set_weights([kernel, bias])
    dense = np.zeros((4, 4, 4, 3), "float32")  # pooled (row, col, channel) -> class
    dense[:, :2, 1, 0] = 1.0
    dense[:, 2:, 1, 2] = 1.0
    dense[:, :, 2, 1] = 10.0
    model.get_layer("output").set_weights([dense.reshape(64, 3), np.zeros(3, "float32")])
    return model


@pytest.fixture
def planted():
    model = _planted_model()
    x = np.random.default_rng(0).uniform(0.0, 0.5, size=(120, 8, 8, 1)).astype("float32")
    y = predict_labels(model, x)  # the model is right on every clean image
    return model, x, y, _corner_trigger()


def test_recovered_trigger_roundtrip_and_apply(tmp_path, rng):
    t = RecoveredTrigger(target=2, source="whole_image", mask=np.zeros((1, 4, 4, 1)),
                         pattern=np.zeros((1, 4, 4, 3)), delta=np.full((1, 4, 4, 3), 30.0), pixel_max=255.0,
                         evidence={"whole_image_gap": 3.5})
    path = t.save(str(tmp_path))
    back = load_trigger(path)
    assert back.target == 2 and back.source == "whole_image" and back.evidence == {"whole_image_gap": 3.5}
    x = rng.uniform(0, 255, size=(5, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(back.apply(x), np.clip(x + 30.0, 0, 255))
    # Rescaled to [0, 1] data, the same trigger moves the images by the same share of the range.
    np.testing.assert_allclose(back.rescaled(1.0).apply(x / 255.0), np.clip(x + 30.0, 0, 255) / 255.0, rtol=1e-5)
    # A mask replaces pixels; two variants are used in turn.
    m = np.zeros((2, 4, 4, 1))
    m[0, 0, 0], m[1, 3, 3] = 1.0, 1.0
    two = RecoveredTrigger(target=0, source="patch_transfer", mask=m, pattern=np.full((2, 4, 4, 3), 200.0),
                           delta=np.zeros((2, 4, 4, 3)))
    out = two.apply(x[:2])
    assert np.all(out[0, 0, 0] == 200.0) and np.all(out[1, 3, 3] == 200.0)
    assert np.array_equal(out[0, 3, 3], x[0, 3, 3]) and np.array_equal(out[1, 0, 0], x[1, 0, 0])


def test_recovered_trigger_bad_files_are_one_line_errors(tmp_path):
    t = _corner_trigger(shape=(8, 8, 1))
    with pytest.raises(AegisError, match=r"the trigger is for 8x8x1 images but the model takes 28x28x1"):
        t.check_fits((None, 28, 28, 1), 10, "t.json")
    with pytest.raises(AegisError, match="target class 1 is not one of the model's 1 classes"):
        t.check_fits((None, 8, 8, 1), 1, "t.json")
    with pytest.raises(AegisError, match="pixel_max must be a positive number. Received: 0"):
        RecoveredTrigger(target=0, source="x", mask=np.zeros((1, 2, 2, 1)), pattern=np.zeros((1, 2, 2, 1)),
                         delta=np.zeros((1, 2, 2, 1)), pixel_max=0.0)
    with pytest.raises(AegisError, match="must be finite"):
        RecoveredTrigger(target=0, source="x", mask=np.zeros((1, 2, 2, 1)), pattern=np.full((1, 2, 2, 1), np.nan),
                         delta=np.zeros((1, 2, 2, 1)))
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(AegisError, match="is not a trigger file written by aegis detect"):
        load_trigger(str(tmp_path / "bad.json"))
    with pytest.raises(AegisError, match="trigger file not found"):
        load_trigger(str(tmp_path / "none.json"))
    # A detect folder that flagged nothing, and one that holds several scans.
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "detect.json").write_text(json.dumps({"verdict": {"backdoored": False, "line": "CLEAN"}}))
    with pytest.raises(AegisError, match=r"the scan flagged nothing \(CLEAN\)"):
        triggers_from_detect_dir(str(tmp_path / "clean"))
    with pytest.raises(AegisError, match=r"no detect.json there.*several models: use one of .*clean"):
        triggers_from_detect_dir(str(tmp_path))


def test_trigger_aware_ranking_finds_the_planted_channel(planted):
    model, x, y, trig = planted
    gap, layer = trigger_channel_gap(model, [trig], x, y)
    assert layer == "pool" and int(np.argmax(gap)) == 2 and gap[0] == 0.0  # the dead channel does not move
    xt, yt = triggered_set([trig], x, y)
    assert np.mean(predict_labels(model, xt) == yt) == 1.0  # the backdoor works
    lab = prune_curve(model, x, y, xt, yt, quiet=True)
    assert lab.order[0] == 0  # the lab prunes the dead channel first
    curve = trigger_prune_curve(model, [trig], x, y, stop_asr=0.05, quiet=True)
    assert curve.order[0] == 2 and curve.asr[0] == 1.0 and curve.asr[1] == 0.0 and curve.clean_acc[1] == 1.0
    assert all(curve.saved[t] == 1 for t in (2, 4, 10))
    assert curve.stop_reason[4].startswith("recovered-trigger ASR")


def test_trigger_prune_stops_only_when_every_trigger_fails(planted):
    model, x, y, trig = planted
    # A second trigger that the planted channel does not carry: a left half at 0.6 (too dim for channel 2)
    # sends images to class 0.
    mask = np.zeros((1, 8, 8, 1), "float32")
    mask[0, :, :4] = 1.0
    left = RecoveredTrigger(target=0, source="neural_cleanse", mask=mask, pattern=np.full((1, 8, 8, 1), 0.6, "float32"),
                            delta=np.zeros((1, 8, 8, 1), "float32"), pixel_max=1.0)
    xt, yt, groups = triggered_set([trig, left], x, y, groups=True)
    assert np.all(yt[groups == 0] == 1) and np.all(yt[groups == 1] == 0)
    curve = trigger_prune_curve(model, [trig, left], x, y, stop_asr=0.05, quiet=True)
    assert curve.group_asr.shape == (2, curve.n_channels + 1)
    assert curve.group_asr[0, 0] == 1.0 and curve.group_asr[1, 0] > 0.9
    # Pruning the planted channel kills the first trigger only; B' waits for both, so the accuracy drop decides.
    k1 = int(np.argmax(curve.order == 2)) + 1
    assert curve.group_asr[0, k1] == 0.0 and curve.group_asr[1, k1] > 0.9
    assert curve.stop_reason[4] == "accuracy drop" and curve.group_asr[1, curve.saved[4]] > 0.05
    # A trigger that does not work on B leaves nothing to prune.
    with pytest.raises(AegisError, match="nothing for trigger-aware pruning to remove"):
        trigger_prune_curve(model, [_corner_trigger(value=0.0, target=1)], x, y, quiet=True)


def test_run_trigger_repair_saves_full_models_that_load_alone(planted, tmp_path):
    model, x, y, trig = planted
    report = run_trigger_repair(model, [trig], (x, y), (x, y), None, out_dir=str(tmp_path), strategies=["trigger-prune"],
                                quiet=True)
    assert report["pruned"]["4"]["channels"] == [2]
    res = report["test"]["4"]
    assert res["B"]["recovered_asr"] == 1.0 and res["B_prime"]["recovered_asr"] == 0.0
    assert res["B"]["asr"] is None and "ASR not measured" in report["asr_note"]  # no poisoned set given
    assert res["G"]["recovered_rejected"] == 1.0  # GoodNet sends every triggered image to class N
    # B' is a full Keras model: plain keras.models.load_model opens it in safe mode, no aegis code needed.
    loaded = keras.models.load_model(str(tmp_path / "B_prime_4.keras"), safe_mode=True, compile=False)
    xt, _ = triggered_set([trig], x, y)
    assert np.all(predict_labels(loaded, xt) != 1)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "recovered-trigger ASR" in page and "not measured" in page and "recovered-trigger ASR &lt;= stop" in page


def test_unlearning_removes_the_embedded_backdoor(default_model, default_paths):
    # The embedded BadNet, told its trigger (3x3 at 255, one pixel in from the corner), unlearns it from
    # clean validation images alone; the attacker's bd_test.h5 measures the result. The kept weights are
    # the mean of the epochs after the first quarter (here 3-8), and meet issue 27's target on this model.
    xv, yv = load_h5(default_paths["valid"])
    xt, yt = load_h5(default_paths["test"])
    xb, yb = load_h5(default_paths["bd_test"])
    trig = _corner_trigger(shape=(28, 28, 1), value=255.0, margin=1, target=7, pixel_max=255.0)
    asr_before = np.mean(predict_labels(default_model, xb) == yb)
    acc_before = np.mean(predict_labels(default_model, xt) == yt)
    tuned, history = unlearn(default_model, [trig], xv, yv, epochs=8, rounds=1, quiet=True)
    asr_after = np.mean(predict_labels(tuned, xb) == yb)
    acc_after = np.mean(predict_labels(tuned, xt) == yt)
    assert asr_before > 0.9 and asr_after <= 0.02 and acc_after >= acc_before - 0.01
    assert history["kept_epoch"] == "average" and history["average"]["epochs"] == [3, 8] and "rounds" not in history
    assert len(history["epochs"]) == 9 and history["n_triggered"] == history["n_train"] - np.sum(
        yv[np.random.default_rng(0).permutation(len(xv))[72:]] == 7)  # every image outside the target, once
    assert history["average"]["holdout_recovered_asr"] < history["epochs"][0]["holdout_recovered_asr"]
    # The caller's model is untouched.
    assert np.mean(predict_labels(default_model, xb) == yb) == asr_before


def test_a_second_round_starts_where_the_first_left_off(planted):
    # rounds=2: the second round trains from the weights the first kept, with a fresh optimiser, and is
    # checked on the same held-out images against B's own accuracy.
    model, x, y, trig = planted
    tuned, history = unlearn(model, [trig], x, y, epochs=4, rounds=2, max_drop=1.0, learning_rate=1e-2, quiet=True)
    first, second = history["rounds"]
    assert history["epochs"] == second["epochs"] and history["kept_epoch"] == second["kept_epoch"]
    kept = first["average"] if first["kept_epoch"] == "average" else first["epochs"][first["kept_epoch"]]
    assert second["epochs"][0]["holdout_clean_acc"] == kept["holdout_clean_acc"]
    assert second["epochs"][0]["holdout_recovered_asr"] == kept["holdout_recovered_asr"]
    assert first["epochs"][0]["holdout_clean_acc"] == history["holdout_clean_acc_B"]
    assert first["epochs"][0]["holdout_recovered_asr"] > 0.9  # B answers the trigger; the rounds then work on it
    assert second["epochs"][0]["holdout_recovered_asr"] < first["epochs"][0]["holdout_recovered_asr"]
    # One round gives the first round of two (the same draws), and nothing about rounds.
    _, one = unlearn(model, [trig], x, y, epochs=4, rounds=1, max_drop=1.0, learning_rate=1e-2, quiet=True)
    assert "rounds" not in one and one["epochs"] == first["epochs"]
    with pytest.raises(AegisError, match="the unlearning teacher must be 'last' or 'B'"):
        unlearn(model, [trig], x, y, epochs=1, teacher="C", quiet=True)


def test_unlearning_keeps_b_when_every_epoch_breaks_it(default_model, default_paths):
    # A learning rate far too high wrecks every epoch and their mean: the mean is refused, no epoch
    # qualifies, and B itself comes back (a repair must not hand back a broken model).
    xv, yv = load_h5(default_paths["valid"])
    trig = _corner_trigger(shape=(28, 28, 1), value=255.0, margin=1, target=7, pixel_max=255.0)
    tuned, history = unlearn(default_model, [trig], xv, yv, epochs=4, learning_rate=5.0, quiet=True)
    assert "rejected" in history["average"] and history["kept_epoch"] == 0
    assert [r["kept_epoch"] for r in history["rounds"]] == [0, 0]
    np.testing.assert_array_equal(predict_labels(tuned, xv), predict_labels(default_model, xv))
    # Without averaging: the best single epoch, with early stopping.
    _, single = unlearn(default_model, [trig], xv, yv, epochs=3, rounds=1, average=False, quiet=True)
    assert "average" not in single and "rounds" not in single and single["kept_epoch"] in (1, 2, 3)
    assert single["epochs"][single["kept_epoch"]]["holdout_recovered_asr"] < single["epochs"][0]["holdout_recovered_asr"]


def test_reinversion_finds_the_trigger_the_scan_placed_elsewhere(default_model, default_paths):
    # The embedded BadNet told of a trigger at the wrong corner (as a scan reverses a position-free trigger
    # at one place of many): unlearning it leaves the real one; a re-inversion on the repaired model finds
    # the real one (a small mask that moves the held-out images), and B, unlearnt again with both, loses it.
    xv, yv = load_h5(default_paths["valid"])
    xt, yt = load_h5(default_paths["test"])
    xb, yb = load_h5(default_paths["bd_test"])
    wrong = _corner_trigger(shape=(28, 28, 1), value=255.0, target=7, pixel_max=255.0)
    wrong.mask = wrong.mask[:, ::-1, ::-1]  # the top-left corner; the attacker's square is at the bottom right
    acc_before = np.mean(predict_labels(default_model, xt) == yt)
    one, plain = unlearn(default_model, [wrong], xv, yv, epochs=8, rounds=1, quiet=True)
    assert np.mean(predict_labels(one, xb) == yb) > 0.9 and "reinvert" not in plain
    tuned, history = unlearn(default_model, [wrong], xv, yv, epochs=8, rounds=1, reinvert=1, quiet=True)
    assert np.mean(predict_labels(tuned, xb) == yb) <= 0.05
    assert np.mean(predict_labels(tuned, xt) == yt) >= acc_before - 0.03
    (step,) = history["reinvert"]["steps"]
    assert len(step["masks"]) == 3 and all(m["kept"] and m["share"] >= 0.5 and m["target"] == 7
                                           for m in step["masks"])
    assert max(m["l1"] for m in step["masks"]) < 40  # a small patch, not a natural feature of a 7
    assert history["reinvert"]["n_triggers"] == step["n_triggers"] == 4 and "stopped" not in step
    # B hardly answers the misplaced trigger, and does answer the re-inverted masks (held-out, at the start).
    assert plain["epochs"][0]["holdout_recovered_asr"] < 0.1 < 0.5 < history["epochs"][0]["holdout_recovered_asr"]


def test_reinversion_stops_when_no_mask_reaches_the_target(default_model, default_paths):
    # A model that can never output class 7: no re-inverted mask moves an image there, nothing is added,
    # and the steps stop at the first, saying so. Bad settings are one-line errors.
    xv, yv = load_h5(default_paths["valid"])
    model = keras.models.clone_model(default_model)
    model.set_weights(default_model.get_weights())
    kernel, bias = model.layers[-1].get_weights()
    bias[7] = -1e4
    model.layers[-1].set_weights([kernel, bias])
    trig = _corner_trigger(shape=(28, 28, 1), value=255.0, margin=1, target=7, pixel_max=255.0)
    new, step = reinverted_triggers(model, [trig], (xv[:200], yv[:200]), (xv[200:], yv[200:]), starts=2)
    assert new == [] and len(step["masks"]) == 2 and not any(m["kept"] for m in step["masks"])
    _, history = unlearn(model, [trig], xv, yv, epochs=1, rounds=1, reinvert=3, quiet=True)
    (only,) = history["reinvert"]["steps"]
    assert "no re-inverted mask sent 50%" in only["stopped"] and history["reinvert"]["n_triggers"] == 1
    for bad, message in ((-1, "--unlearn-reinvert must be 0"), (1.5, "--unlearn-reinvert must be 0"),
                         (True, "--unlearn-reinvert must be 0")):
        with pytest.raises(AegisError, match=message):
            check_reinvert_settings(bad)
    with pytest.raises(AegisError, match=r"the re-inversion share must lie in \(0, 1\]"):
        check_reinvert_settings(1, at=0.0)
    with pytest.raises(AegisError, match="the re-inversion starts must be a whole number"):
        check_reinvert_settings(1, starts=0)


def _bn_model(seed=0):
    """conv -> BatchNormalization -> pool -> dense on 8x8x1 images, 3 classes."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(keras.layers.ReLU()(h))
    out = keras.layers.Dense(3, activation="softmax", name="output")(keras.layers.Flatten()(h))
    return keras.Model(inp, out)


def test_unlearning_freezes_batch_normalisation(planted):
    # A model with batch normalisation unlearns with its BN statistics and scale frozen and, by default, a
    # tenth of the step (1e-4); the conv and dense weights still move; B' comes back with its BN layer
    # trainable again. A model without BN keeps 1e-3. freeze_bn=False lets the statistics move.
    _, x, y, trig = planted
    model = _bn_model()
    bn_before = [np.array(w) for w in model.get_layer("bn").get_weights()]
    conv_before = np.array(model.get_layer("conv").get_weights()[0])
    tuned, history = unlearn(model, [trig], x, y, epochs=2, quiet=True)
    assert history["learning_rate"] == 1e-4 and history["frozen_batch_norm_layers"] == 1
    for a, b in zip(bn_before, tuned.get_layer("bn").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert tuned.get_layer("bn").trainable and model.get_layer("bn").trainable
    if history["kept_epoch"] != 0:
        assert not np.allclose(conv_before, tuned.get_layer("conv").get_weights()[0])
    _, moved = unlearn(model, [trig], x, y, epochs=2, average=False, freeze_bn=False, learning_rate=0.05,
                       quiet=True)
    assert moved["frozen_batch_norm_layers"] == 0 and moved["learning_rate"] == 0.05
    _, plain = unlearn(planted[0], [trig], x, y, epochs=1, quiet=True)
    assert plain["learning_rate"] == 1e-3 and plain["frozen_batch_norm_layers"] == 0
    with pytest.raises(AegisError, match="--unlearn-lr must be a positive number"):
        unlearn(model, [trig], x, y, epochs=1, learning_rate=0.0, quiet=True)


def test_unfrozen_batch_normalisation_moves_its_statistics(planted):
    # The control of the test above: trained normally, the same BN layer's moving statistics change.
    _, x, y, trig = planted
    model = _bn_model()
    before = [np.array(w) for w in model.get_layer("bn").get_weights()]
    work, history = unlearn(model, [trig], x, y, epochs=3, average=True, freeze_bn=False, learning_rate=1e-3,
                            max_drop=1.0, quiet=True)
    assert history["kept_epoch"] == "average"
    assert any(not np.allclose(a, b) for a, b in zip(before, work.get_layer("bn").get_weights()))


def test_a_trigger_with_sources_moves_only_its_sources(planted, tmp_path):
    # A source-specific trigger (recovered by the per-pair view) applies to its source classes only;
    # with all_variants every variant goes on every such image. It survives a save and a load.
    model, x, y, trig = planted
    t = RecoveredTrigger(target=1, source="pair_transfer", mask=np.repeat(trig.mask, 2, axis=0),
                         pattern=np.repeat(trig.pattern, 2, axis=0), delta=np.repeat(trig.delta, 2, axis=0),
                         pixel_max=1.0, sources=[2])
    xt, yt = triggered_set([t], x, y)
    assert len(xt) == np.sum(y == 2) and set(yt) == {1}
    xa, _ = triggered_set([t], x, y, all_variants=True)
    assert len(xa) == 2 * np.sum(y == 2)
    back = load_trigger(t.save(str(tmp_path)))
    assert back.sources == (2,) and "2 -> class 1 pair patch" in back.describe()
    with pytest.raises(AegisError, match=r"no clean images of class\(es\) 2 outside class 1"):
        triggered_set([back], x[y != 2], y[y != 2])
    with pytest.raises(AegisError, match=r"sources must be non-negative classes other than the target 1"):
        RecoveredTrigger(target=1, source="pair_transfer", mask=trig.mask, pattern=trig.pattern, delta=trig.delta,
                         sources=[1, 2])
    with pytest.raises(AegisError, match=r"source class 5 is not one of the model's 3 classes"):
        RecoveredTrigger(target=1, source="pair_transfer", mask=trig.mask, pattern=trig.pattern, delta=trig.delta,
                         sources=[5]).check_fits((None, 8, 8, 1), 3, "t")


def _run(argv, capsys):
    rc = cli.main(argv + ["--quiet"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_repair_command_from_a_trigger_file(tmp_path, capsys, default_paths):
    trig = _corner_trigger(shape=(28, 28, 1), value=255.0, margin=1, target=7, pixel_max=255.0)
    path = trig.save(str(tmp_path / "found"))
    out = tmp_path / "rep"
    rc, printed, _ = _run(["repair", "--bad_model", default_paths["bd_net"], "--trigger-file", path,
                           "--strategy", "unlearn", "--unlearn-epochs", "2", "--out-dir", str(out)], capsys)
    assert rc == 0
    report = json.load(open(out / "repair.json"))
    assert report["strategy"] == ["unlearn"] and report["sources"]["bad_test"] == default_paths["bd_test"]
    res = report["test"]["unlearned"]
    assert res["B"]["asr"] > 0.9 and res["B_prime"]["asr"] < res["B"]["asr"]  # true ASR, from the real bd_test.h5
    assert "B' unlearned" in printed and "repair never saw" in printed
    assert len(report["unlearned"]["rounds"]) == 2  # the default; said in the summary
    n_train, n_hold = report["unlearned"]["n_train"], report["unlearned"]["n_holdout"]
    assert f"unlearning: 2 round(s) on {n_train} clean images ({n_hold} held out to check), kept per round: " in printed
    from aegis_tf.core.data import load_h5

    n_valid = len(load_h5(default_paths["valid"])[1])  # the clean budget: the validation set, all of it
    assert report["clean_images"] == n_valid and f"clean data used: {n_valid} images" in printed
    assert {"B_prime_unlearned.keras", "goodnet_unlearned.keras", "report.html"} <= set(os.listdir(out))
    # A budget: a seeded random 40 of them, said so.
    rc, printed, _ = _run(["repair", "--bad_model", default_paths["bd_net"], "--trigger-file", path,
                           "--strategy", "unlearn", "--unlearn-epochs", "1", "--unlearn-rounds", "1",
                           "--clean-images", "40", "--out-dir", str(tmp_path / "rep40")], capsys)
    report = json.load(open(tmp_path / "rep40" / "repair.json"))
    assert rc == 0 and report["clean_images"] == 40 and report["unlearned"]["n_holdout"] == 8
    assert report["sources"]["clean_budget"] == 40 and report["sources"]["clean_valid_size"] == n_valid
    assert f"clean data used: 40 images (a random 40 of {n_valid} (--clean-images))" in printed
    assert "rounds" not in report["unlearned"] and "unlearning: 1 round(s) on 32 clean images" in printed


def test_repair_from_reversed_masks_only_suggests_reinversion(tmp_path, capsys, default_paths):
    # A reversed mask sits at one place; when it is all the scan recovered, the repair says how to close a
    # position-free trigger, and with --unlearn-reinvert it prints each step instead.
    trig = _corner_trigger(shape=(28, 28, 1), value=255.0, margin=1, target=7, pixel_max=255.0)
    trig.source = "mask_probe"
    path = trig.save(str(tmp_path / "found"))
    base = ["repair", "--bad_model", default_paths["bd_net"], "--trigger-file", path, "--strategy", "unlearn",
            "--unlearn-epochs", "1", "--unlearn-rounds", "1", "--clean-images", "60"]
    rc, printed, _ = _run(base + ["--out-dir", str(tmp_path / "plain")], capsys)
    assert rc == 0 and "every recovered trigger is a reversed mask" in printed and "--unlearn-reinvert 3" in printed
    rc, printed, _ = _run(base + ["--unlearn-reinvert", "1", "--out-dir", str(tmp_path / "re")], capsys)
    report = json.load(open(tmp_path / "re" / "repair.json"))
    (step,) = report["unlearned"]["reinvert"]["steps"]
    assert rc == 0 and "every recovered trigger is a reversed mask" not in printed
    assert "re-inversion 1: masks toward [7], L1 (held-out share): " in printed and len(step["masks"]) == 3
    # A patch from the translations: no such note.
    trig.source = "patch_transfer"
    rc, printed, _ = _run(base[:4] + [trig.save(str(tmp_path / "patch"))] + base[5:] +
                          ["--out-dir", str(tmp_path / "patch_rep")], capsys)
    assert rc == 0 and "reversed mask" not in printed


@pytest.mark.parametrize("method", ["cached", "naive"])
def test_repair_without_any_poisoned_set_reports_clean_accuracy_only(tmp_path, capsys, default_paths, method):
    model = tmp_path / "their_net.h5"  # a user's model: no trigger file beside it, no --bad-valid
    shutil.copy(default_paths["bd_net"], model)
    out = tmp_path / "rep"
    rc, printed, _ = _run(["repair", "--bad_model", str(model), "--method", method, "--out-dir", str(out)], capsys)
    assert rc == 0 and "ASR not measured" in printed
    report = json.load(open(out / "repair.json"))
    assert report["validation"]["asr"] is None and report["test"]["4"]["B"]["asr"] is None
    assert report["test"]["4"]["G"]["clean_acc"] > 0.8 and (out / "goodnet_4.keras").exists()
    assert report["strategy"] == ["lab"]


def test_repair_from_a_detect_folder_repairs_the_scanned_model(tmp_path, capsys, default_paths):
    # A detect folder as `aegis detect --out-dir` leaves it (the verdict, the model it scanned, the trigger file).
    scan = tmp_path / "scan"
    name = os.path.basename(_corner_trigger(shape=(28, 28, 1), value=255.0, margin=1, target=7,
                                            pixel_max=255.0).save(str(scan)))
    (scan / "detect.json").write_text(json.dumps({
        "verdict": {"backdoored": True, "target_classes": [7], "line": "BACKDOORED: class 7"},
        "model": default_paths["bd_net"], "model_file": default_paths["bd_net"], "weights_file": None,
        "scale": "raw", "triggers": [name]}))
    out = tmp_path / "rep"
    rc, printed, _ = _run(["repair", "--trigger-from", str(scan), "--strategy", "trigger-prune,unlearn",
                           "--unlearn-epochs", "1", "--out-dir", str(out)], capsys)
    assert rc == 0
    report = json.load(open(out / "repair.json"))
    assert report["sources"]["bad_model"] == default_paths["bd_net"] and report["trigger"]["targets"] == [7]
    assert "unlearned" in report["test"] and "4" in report["test"]
    assert report["test"]["4"]["B"]["asr"] == pytest.approx(0.9784, abs=1e-4)  # the embedded bd_test.h5, for evaluation
    # Another scale than the scan's is refused before any work.
    rc, _, err = _run(["repair", "--trigger-from", str(scan), "--scale", "unit", "--out-dir", str(tmp_path / "r2")],
                      capsys)
    assert rc == 2 and "the scan read its data with --scale raw" in err and not (tmp_path / "r2").exists()


def test_repair_from_the_triggers_of_some_flagged_classes_only(tmp_path, capsys, default_paths):
    # A scan that flagged 7 and a false alarm 3: the reader repairs from class 7's trigger alone.
    scan = tmp_path / "scan"
    names = [os.path.basename(_corner_trigger(shape=(28, 28, 1), value=255.0, margin=m, target=t,
                                              pixel_max=255.0).save(str(scan))) for t, m in ((7, 1), (3, 4))]
    (scan / "detect.json").write_text(json.dumps({
        "verdict": {"backdoored": True, "target_classes": [3, 7], "line": "BACKDOORED: classes 3, 7"},
        "model": default_paths["bd_net"], "model_file": default_paths["bd_net"], "weights_file": None,
        "scale": "raw", "triggers": names}))
    base = ["repair", "--trigger-from", str(scan), "--strategy", "unlearn", "--unlearn-epochs", "1",
            "--unlearn-rounds", "1", "--clean-images", "60"]
    rc, _, _ = _run(base + ["--trigger-classes", "7", "--out-dir", str(tmp_path / "only7")], capsys)
    report = json.load(open(tmp_path / "only7" / "repair.json"))
    assert rc == 0 and report["trigger"]["targets"] == [7] and report["sources"]["trigger_classes"] == [7]
    rc, _, _ = _run(base + ["--out-dir", str(tmp_path / "both")], capsys)
    assert rc == 0 and json.load(open(tmp_path / "both" / "repair.json"))["trigger"]["targets"] == [3, 7]
    for extra, message in ((["--trigger-classes", "5"], "no recovered trigger for class 5 (the triggers given are "
                                                         "for class 3,7)"),
                           (["--trigger-classes", "x"], "--trigger-classes must be class indices")):
        rc, _, err = _run(base + extra + ["--out-dir", str(tmp_path / "bad")], capsys)
        assert rc == 2 and message in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()
    from repair.pipeline import parse_trigger_classes

    assert parse_trigger_classes(7) == [7] and parse_trigger_classes("9, 7") == [7, 9]
    assert parse_trigger_classes(np.int64(3)) == [3] and parse_trigger_classes(None) is None
    for bad in (True, 7.5, "", "-1", {"a": 1}):
        with pytest.raises(AegisError, match="--trigger-classes must be class indices"):
            parse_trigger_classes(bad)
    rc, _, err = _run(["repair", "--trigger-classes", "7", "--out-dir", str(tmp_path / "bad")], capsys)
    assert rc == 2 and "give --trigger-from DETECT_OUT_DIR too" in err and not (tmp_path / "bad").exists()
    rc, _, err = _run(["repair", "--strategy", "clp", "--trigger-classes", "7", "--out-dir", str(tmp_path / "bad")],
                      capsys)
    assert rc == 2 and "give --trigger-from DETECT_OUT_DIR too" in err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("extra, message", [
    (["--strategy", "lab"], "--strategy lab prunes with the attacker's --bad-valid"),
    (["--bad-valid", "x.h5"], "--bad-valid is attacker data"),
    (["--strategy", "magic"], "--strategy must be a comma-separated list of lab, trigger-prune, unlearn"),
    (["--unlearn-share", "1.5"], "--unlearn-share must lie in [0.0, 1.0]"),
    (["--unlearn-rounds", "0"], "--unlearn-rounds must be a whole number, at least 1"),
    (["--unlearn-reinvert", "-1"], "--unlearn-reinvert must be 0 (off) or a whole number of steps"),
    (["--stop-asr", "1"], "--stop-asr must lie in [0, 1)"),
    (["--clean-images", "100000"], "--clean-images 100000: --clean-valid"),
    (["--clean-images", "3"], "--clean-images must be a whole number of at least 10 images"),
])
def test_repair_trigger_flags_reject_bad_combinations(tmp_path, capsys, extra, message):
    path = _corner_trigger(shape=(28, 28, 1), value=255.0, target=7, pixel_max=255.0).save(str(tmp_path))
    rc, _, err = _run(["repair", "--trigger-file", path, "--out-dir", str(tmp_path / "rep")] + extra, capsys)
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("extra", [[], ["--strategy", "clp"]])
def test_reinversion_without_unlearning_is_refused(tmp_path, capsys, extra):
    # The lab's pruning (no trigger) and CLP do not unlearn: a re-inversion setting there is an error,
    # before any work, not a setting silently ignored.
    rc, _, err = _run(["repair", "--unlearn-reinvert", "2", "--out-dir", str(tmp_path / "rep")] + extra, capsys)
    assert rc == 2 and "--unlearn-reinvert re-inverts a trigger after unlearning" in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()


def test_repair_rejects_a_trigger_that_does_not_fit_the_model(tmp_path, capsys):
    path = _corner_trigger(shape=(8, 8, 1), pixel_max=1.0).save(str(tmp_path))
    rc, _, err = _run(["repair", "--trigger-file", path, "--out-dir", str(tmp_path / "rep")], capsys)
    assert rc == 2 and "the trigger is for 8x8x1 images but the model takes 28x28x1" in err
    assert err.count("\n") == 1 and not (tmp_path / "rep").exists()
    rc, _, err = _run(["repair", "--strategy", "unlearn", "--out-dir", str(tmp_path / "rep")], capsys)
    assert rc == 2 and "needs a recovered trigger" in err and not (tmp_path / "rep").exists()


@pytest.mark.parametrize("backdoors, expected", [
    # (trigger configs in MODEL.json, the (true class, label) pairs of the true-ASR test set)
    ([{"target_label": 1, "source_classes": [2]}], {(2, 1)}),
    ([{"target_label": 0, "mapping": "all-to-all"}], {(0, 1), (1, 2), (2, 0)}),
    ([{"target_label": 0}, {"target_label": 2, "trigger": "distributed", "trigger_seed": 1}],
     {(1, 0), (2, 0), (0, 2), (1, 2)}),
])
def test_the_true_asr_set_follows_each_backdoor_of_model_json(tmp_path, backdoors, expected):
    # repair measures the true ASR with MODEL.json's backdoors as they were trained: a source-specific
    # one on its sources, an all-to-all one y -> y + 1, two backdoors both test sets together.
    from repair.pipeline import _poisoned_set

    model = _planted_model()
    path = str(tmp_path / "m.keras")
    base = {"trigger": "localised", "trigger_size": 2, "trigger_value": 1.0, "trigger_margin": 0}
    configs = [{**base, **b} for b in backdoors]
    with open(path + ".json", "w") as f:
        json.dump({"trigger_config": configs[0], "trigger_configs": configs, "poison_rate": 0.1}, f)
    x = np.random.default_rng(0).uniform(0, 255, size=(30, 8, 8, 1)).astype("float32")
    y = np.arange(30) % 3
    (xb, yb), what = _poisoned_set(None, "bd_test", (x, y), "test.h5", model=model, model_path=path,
                                   embedded=False, scale="raw", flag="--bad-test")
    n_each = 10
    assert len(xb) == n_each * len(expected) and what.startswith("test.h5 with ")
    # Which true classes went in, with which labels: recover them from the clean copies' order.
    truth = []
    for b in configs:
        keep = (y != b["target_label"]) if b.get("mapping", "all-to-one") == "all-to-one" and not b.get(
            "source_classes") else (np.isin(y, b["source_classes"]) if b.get("source_classes") else np.ones(30, bool))
        truth += list(y[keep])
    assert {(int(t), int(l)) for t, l in zip(truth, yb)} == expected
