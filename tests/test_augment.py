import keras
import numpy as np
import pytest

from aegis_tf.core.augment import apply_crop_flip, crop_flip_params
from aegis_tf.core.models import build_compact_cnn
from aegis_tf.attack.training import train


def test_crop_flip_params_are_in_range_and_seeded():
    oy, ox, flip = crop_flip_params(1000, np.random.default_rng(1), pad=4)
    again = crop_flip_params(1000, np.random.default_rng(1), pad=4)
    for a, b in zip((oy, ox, flip), again):
        np.testing.assert_array_equal(a, b)
    assert set(np.unique(oy)) == set(range(9)) and set(np.unique(ox)) == set(range(9))
    assert set(np.unique(flip)) == {0, 1}


def test_apply_crop_flip_shifts_and_mirrors():
    x = np.arange(2 * 6 * 5 * 2, dtype="float32").reshape(2, 6, 5, 2) + 1
    same = apply_crop_flip(x, np.array([2, 2]), np.array([2, 2]), np.array([0, 0]), pad=2)
    np.testing.assert_array_equal(same, x)  # centre crop, no flip
    out = apply_crop_flip(x, np.array([0, 2]), np.array([1, 2]), np.array([0, 1]), pad=2)
    # Image 0 moved down by 2 and right by 1 with zeros coming in at the top and left.
    np.testing.assert_array_equal(out[0, 2:, 1:], x[0, :-2, :-1])
    assert np.all(out[0, :2] == 0) and np.all(out[0, :, :1] == 0)
    np.testing.assert_array_equal(out[1], x[1, :, ::-1])  # centre crop, mirrored


def test_device_crop_flip_matches_numpy():
    if keras.backend.backend() != "jax":
        pytest.skip("the on-device crop and flip is JAX's")
    from aegis_tf.core.backend._jax import _crop_flip

    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 3)).astype("float32")
    oy, ox, flip = crop_flip_params(16, rng, pad=4)
    np.testing.assert_array_equal(np.asarray(_crop_flip(x, oy, ox, flip, pad=4)), apply_crop_flip(x, oy, ox, flip))


def test_training_with_augment_is_seeded_and_changes_the_result():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=128)
    x = rng.random((128, 8, 8, 1)).astype("float32") * 0.5
    x[y == 1, :4] += 0.5

    def run(augment):
        keras.utils.set_random_seed(0)
        model = build_compact_cnn(input_shape=(8, 8, 1), num_classes=2, width=4, input_scale=1.0)
        train(model, x, y, config={"epochs": 1, "batch_size": 32, "robust": False, "augment": augment,
                                   "pixel_max": 1.0}, quiet=True)
        return np.concatenate([w.ravel() for w in model.get_weights()])

    a, b, plain = run(True), run(True), run(False)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.abs(a - plain).max() > 1e-3  # the crops and flips reached the training step
