import os

import keras
import numpy as np
import pytest

from aegis_tf.core.errors import AegisError
from repair.goodnet import GoodNet, goodnet_labels
from repair.pipeline import evaluate_goodnet, pruned_weights_name, run_repair


def _stubborn(seed=0):
    """conv -> pool -> dense whose zero kernel and large bias always answer class 1, pruned or not."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(3, activation="softmax", kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant([0.0, 5.0, 0.0]))(x)
    return keras.Model(inp, out)


def test_goodnet_labels_is_the_disagreement_rule():
    np.testing.assert_array_equal(goodnet_labels([0, 1, 2, 2], [0, 2, 2, 1], 3), [0, 3, 2, 3])


def test_unreachable_threshold_fails_before_any_file_is_written(tmp_path, rng):
    x = rng.random((12, 8, 8, 1)).astype("float32")
    ones = np.ones(12, dtype="int64")
    out = tmp_path / "r"
    with pytest.raises(AegisError, match="accuracy never dropped by 4%"):  # accuracy stays 100%: nothing to reach
        run_repair(_stubborn(), (x, ones), (x, ones), (x, ones), (x, ones), out_dir=str(out), threshold=4, quiet=True)
    assert not out.exists()
    with pytest.raises(AegisError, match="--threshold must be one of 2, 4, 10"):
        run_repair(_stubborn(), (x, ones), (x, ones), (x, ones), (x, ones), out_dir=str(out), threshold=7, quiet=True)
    assert not out.exists()


def test_run_repair_on_the_default_writes_models_report_and_html(default_model, default_valid, tmp_path):
    (xv, yv), (xb, yb) = default_valid
    report = run_repair(default_model, (xv, yv), (xb, yb), (xv, yv), (xb, yb), out_dir=str(tmp_path), threshold=2,
                        quiet=True)
    files = report["files"]
    assert os.path.basename(files["B_prime_2"]) == pruned_weights_name(2) and os.path.isfile(files["B_prime_2"])
    assert os.path.getsize(files["html"]) > 10_000 and "<table" in open(files["html"]).read()
    # GoodNet read back from its single .keras file gives the numbers of the report (validation = test here).
    g = GoodNet.load(files["goodnet_2"])
    again = evaluate_goodnet(g, xv, yv, xb, yb)
    assert again["G"] == pytest.approx(report["test"]["2"]["G"])
    assert report["validation"]["clean_acc"] == pytest.approx(report["test"]["2"]["B"]["clean_acc"])
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_the_asr_without_a_trigger_is_the_share_of_other_classes_clean_images_sent_to_the_target():
    from aegis_tf.core.metrics import summarize

    y_clean = np.array([0, 1, 1, 2, 2, 2])
    pred_clean = np.array([0, 2, 1, 2, 1, 2])  # of the three images not of class 2, one is sent there
    out = summarize(pred_clean, y_clean, np.array([2, 2, 0]), np.array([2, 2, 2]))
    assert out["asr"] == pytest.approx(2 / 3) and out["clean_to_target"] == pytest.approx(1 / 3)
    assert summarize(pred_clean, y_clean, np.array([1, 2]), np.array([1, 2]))["clean_to_target"] is None  # all-to-all
    assert summarize(pred_clean[3:], y_clean[3:], np.array([2]), np.array([2]))["clean_to_target"] is None
