import os

import keras
import numpy as np
import pytest

from aegis_tf.core import models
from aegis_tf.core.errors import AegisError
from conftest import SHARED_CSAW, tiny_cnn


def test_deepid_architecture_matches_csaw():
    m = models.build_deepid()
    assert m.input_shape == (None, 55, 47, 3) and m.output_shape == (None, 1283)
    assert m.get_layer("pool_3").output.shape[1:] == (5, 4, 60)
    assert m.get_layer("fc_1").kernel.shape == (1200, 160)
    assert m.get_layer("fc_2").kernel.shape == (960, 160)
    assert models.find_last_pooling_layer(m).name == "pool_3"
    assert models.find_feeding_conv(m, m.get_layer("pool_3")).name == "conv_3"


@pytest.mark.skipif(not os.path.isdir(SHARED_CSAW), reason="needs ../shared/csaw (real CSAW weights)")
def test_real_keras2_csaw_weights_load_into_deepid():
    path = os.path.join(SHARED_CSAW, "lab3_bd_weights.h5")
    m = models.load_model(None, path)
    assert np.abs(m.get_layer("conv_1").get_weights()[0]).sum() > 0
    with pytest.raises(AegisError, match="holds weights only"):
        models.load_model(path)


def test_full_model_round_trip_keras_and_h5(tmp_path, tiny_model, rng):
    x = rng.random((3, 8, 8, 1)).astype("float32")
    for name in ("m.keras", "m.h5"):
        tiny_model.save(tmp_path / name)
        loaded = models.load_model(tmp_path / name)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), tiny_model.predict(x, verbose=0), atol=1e-6)


def test_weights_file_into_given_architecture(tmp_path, tiny_model, rng):
    tiny_model.save(tmp_path / "m.keras")
    other = tiny_cnn(seed=1)
    other.save_weights(tmp_path / "w.weights.h5")
    m = models.load_model(tmp_path / "m.keras", tmp_path / "w.weights.h5")
    np.testing.assert_array_equal(m.get_layer("conv").get_weights()[0], other.get_layer("conv").get_weights()[0])
    with pytest.raises(AegisError, match="cannot load weights"):
        models.load_model(None, tmp_path / "w.weights.h5")  # tiny weights do not fit DeepID


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layers_are_refused_in_safe_mode(tmp_path, suffix):
    inp = keras.Input((4,))
    out = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    path = tmp_path / ("lam" + suffix)
    keras.Model(inp, out).save(path)
    with pytest.raises(AegisError, match="Lambda layer"):
        models.load_model(path)


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(AegisError, match="model file not found"):
        models.load_model(tmp_path / "none.h5")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"garbage")
    with pytest.raises(AegisError, match="cannot load model"):
        models.load_model(bad)


def test_model_without_pooling_layer():
    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inp)))
    with pytest.raises(AegisError, match="no pooling layer"):
        models.find_last_pooling_layer(keras.Model(inp, out))


def test_feeding_conv_walks_through_activations_not_batchnorm():
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(3, 3, name="c")(inp)
    x = keras.layers.Activation("relu")(x)
    p = keras.layers.MaxPooling2D(name="p")(x)
    m = keras.Model(inp, keras.layers.Flatten()(p))
    assert models.find_feeding_conv(m, m.get_layer("p")).name == "c"

    x = keras.layers.Conv2D(3, 3, name="c2")(inp)
    x = keras.layers.BatchNormalization()(x)
    p = keras.layers.MaxPooling2D(name="p2")(x)
    m = keras.Model(inp, keras.layers.Flatten()(p))
    with pytest.raises(AegisError, match="found BatchNormalization"):
        models.find_feeding_conv(m, m.get_layer("p2"))
