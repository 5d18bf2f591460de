import keras
import numpy as np
import pytest

from repair.goodnet import GoodNet
from conftest import tiny_cnn


def _fixed(bias):
    """A model that ignores its input and always prefers arg-max(bias)."""
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inp)
    out = keras.layers.Dense(3, activation="softmax", kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant(bias))(x)
    return keras.Model(inp, out)


def test_disagreement_goes_to_class_n(rng):
    x = rng.random((5, 8, 8, 1)).astype("float32")
    agree = GoodNet.from_models(_fixed([0, 5, 0]), _fixed([0, 3, 0]))
    assert list(agree.predict(x)) == [1] * 5
    differ = GoodNet.from_models(_fixed([0, 5, 0]), _fixed([4, 0, 0]))
    assert differ.num_classes == 3
    assert list(differ.predict(x)) == [3] * 5
    scores = differ.to_keras().predict(x, verbose=0)
    assert scores.shape == (5, 4)
    np.testing.assert_array_equal(np.argmax(scores, axis=1), differ.predict(x))


def _disagreeing_copy(b, x):
    """B' = B with one class's output bias raised by the median logit gap, so B and
    B' disagree on about half of ``x`` whatever the backend's random init."""
    from aegis_tf.core.models import logits_model

    logits = np.asarray(logits_model(b)(x))
    c = int(np.argmin(np.bincount(logits.argmax(1), minlength=3)))
    gap = np.median(logits.max(1) - logits[:, c])
    bp = keras.models.clone_model(b)
    bp.set_weights(b.get_weights())
    kernel, bias = bp.get_layer("output").get_weights()
    bias[c] += gap
    bp.get_layer("output").set_weights([kernel, bias])
    return bp


def test_keras_model_agrees_with_predict_on_mixed_inputs(rng):
    x = rng.random((64, 8, 8, 1)).astype("float32")
    b = tiny_cnn(seed=0)
    g = GoodNet.from_models(b, _disagreeing_copy(b, x))
    labels = g.predict(x)
    assert set(labels) - {0, 1, 2, 3} == set()
    assert 0.2 < np.mean(labels == 3) < 0.8  # both cases occur
    np.testing.assert_array_equal(np.argmax(g.to_keras().predict(x, verbose=0), axis=1), labels)


def test_seed_api_and_single_file_round_trip(tmp_path, rng):
    b, bp = tiny_cnn(seed=0), tiny_cnn(seed=1)
    b.save(tmp_path / "bd_net.h5")
    b.save_weights(tmp_path / "b.weights.h5")
    bp.save_weights(tmp_path / "bp.weights.h5")
    x = rng.random((32, 8, 8, 1)).astype("float32")
    G = GoodNet(str(tmp_path / "bd_net.h5"))
    G.load_weights(tmp_path / "b.weights.h5", tmp_path / "bp.weights.h5")
    expected = GoodNet.from_models(b, bp).predict(x)
    np.testing.assert_array_equal(G.predict(x), expected)
    G.save(tmp_path / "g.keras")
    np.testing.assert_array_equal(GoodNet.load(tmp_path / "g.keras").predict(x), expected)
    with pytest.raises(Exception, match="is saved as a .keras file"):
        G.save(tmp_path / "g.h5")
    assert not (tmp_path / "g.h5").exists()
