import h5py
import numpy as np
import pytest

from aegis_tf.core import data
from aegis_tf.core.errors import AegisError
from conftest import tiny_cnn


def _write(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return str(path)


def test_h5_channels_first_is_transposed_to_nhwc(tmp_path, rng):
    x = rng.integers(0, 256, size=(5, 3, 55, 47)).astype("float64")
    y = np.arange(5.0)  # CSAW stores labels as floats
    p = _write(tmp_path / "cf.h5", data=x, label=y)
    xl, yl = data.load_h5(p)
    assert xl.shape == (5, 55, 47, 3) and xl.dtype == np.float32
    np.testing.assert_array_equal(xl, np.transpose(x, (0, 2, 3, 1)))
    assert yl.dtype == np.int64 and list(yl) == [0, 1, 2, 3, 4]


def test_h5_channels_last_and_grayscale_accepted(tmp_path, rng):
    x = rng.integers(0, 256, size=(4, 28, 28, 1))
    xl, _ = data.load_h5(_write(tmp_path / "cl.h5", data=x, label=np.zeros(4)))
    np.testing.assert_array_equal(xl, x)
    g = rng.integers(0, 256, size=(4, 28, 28))
    xg, _ = data.load_h5(_write(tmp_path / "g.h5", data=g, label=np.zeros(4)))
    assert xg.shape == (4, 28, 28, 1)


def test_scale_is_explicit(tmp_path):
    p = _write(tmp_path / "s.h5", data=np.full((2, 4, 4, 1), 255), label=np.zeros(2))
    assert data.load_h5(p, scale="raw")[0].max() == 255.0
    assert data.load_h5(p, scale="unit")[0].max() == pytest.approx(1.0)
    with pytest.raises(AegisError, match="scale must be one of raw, unit"):
        data.load_h5(p, scale="percent")


def test_save_h5_round_trip_is_csaw_format(tmp_path, rng):
    x = rng.integers(0, 256, size=(6, 10, 9, 3)).astype("float32")
    y = rng.integers(0, 5, size=6)
    p = tmp_path / "rt.h5"
    data.save_h5(p, x, y)
    with h5py.File(p) as f:
        assert f["data"].shape == (6, 3, 10, 9)  # channels-first on disk
    xl, yl = data.load_h5(p)
    np.testing.assert_array_equal(xl, x)
    np.testing.assert_array_equal(yl, y)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"data": np.zeros((2, 4, 4, 1))}, "Missing 'label'"),
        ({"label": np.zeros(2)}, "Missing 'data'"),
        ({"data": np.zeros((0, 4, 4, 1)), "label": np.zeros(0)}, "empty set"),
        ({"data": np.zeros((2, 4, 4, 1)), "label": np.array([0.5, 1.0])}, "whole numbers"),
        ({"data": np.zeros((2, 4, 4, 1)), "label": np.zeros(3)}, "one label per image"),
        ({"data": np.zeros((2, 4)), "label": np.zeros(2)}, "expected images of shape"),
    ],
)
def test_bad_h5_files_give_one_line_errors(tmp_path, arrays, message):
    p = _write(tmp_path / "bad.h5", **arrays)
    with pytest.raises(AegisError, match=message) as e:
        data.load_h5(p)
    assert "\n" not in str(e.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(AegisError, match="not found"):
        data.load_h5(tmp_path / "nope.h5")
    bad = tmp_path / "corrupt.h5"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(AegisError, match="cannot read .* as HDF5"):
        data.load_h5(bad)


def test_npz_and_named_sets_from_data_dir(tmp_path, rng, monkeypatch):
    arrays = {
        "x_train": rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, size=7),
        "x_test": rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, size=3),
    }
    np.savez(tmp_path / "mnist.npz", **arrays)
    (xt, yt), (xs, ys) = data.load_named("mnist", data_dir=str(tmp_path), scale="unit")
    assert xt.shape == (7, 28, 28, 1) and xs.shape == (3, 28, 28, 1) and xt.max() <= 1.0
    monkeypatch.setenv("AEGIS_DATA_DIR", str(tmp_path))
    x, y = data.load_split("mnist", split="train")
    np.testing.assert_array_equal(y, arrays["y_train"])


def test_offline_download_failure_names_the_folder_option(tmp_path, monkeypatch):
    def offline(name):
        raise OSError("no network")

    monkeypatch.setattr(data, "_keras_download", offline)
    monkeypatch.delenv("AEGIS_DATA_DIR", raising=False)
    with pytest.raises(AegisError, match="--data-dir DIR or set AEGIS_DATA_DIR"):
        data.load_named("cifar10", data_dir=str(tmp_path))


def test_digits_is_embedded_and_reproducible():
    a = data.digits_splits(seed=0)
    b = data.digits_splits(seed=0)
    for k in ("train", "valid", "test"):
        np.testing.assert_array_equal(a[k][0], b[k][0])
        assert a[k][0].shape[1:] == (28, 28, 1) and a[k][0].max() <= 255
    n = sum(len(a[k][1]) for k in a)
    assert n == 1797


def test_check_fits_model(rng):
    model = tiny_cnn(input_shape=(8, 8, 1), num_classes=3)
    x = rng.random((4, 8, 8, 1)).astype("float32")
    assert data.check_fits_model(x, np.array([0, 1, 2, 0]), model, "set").shape == (4, 8, 8, 1)
    with pytest.raises(AegisError, match=r"do not fit the model, which expects \(8, 8, 1\)"):
        data.check_fits_model(rng.random((4, 9, 8, 1)), None, model, "set")
    with pytest.raises(AegisError, match="labels must lie in 0..2 .* from 0 to 3"):
        data.check_fits_model(x, np.array([0, 1, 2, 3]), model, "set")


def _dense_model(input_shape, num_classes=10):
    import keras

    inp = keras.Input(input_shape)
    x = keras.layers.Flatten()(inp) if len(input_shape) > 1 else inp
    return keras.Model(inp, keras.layers.Dense(num_classes, activation="softmax")(x))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_nan_and_inf_pixels_in_h5_are_one_line_errors(tmp_path, rng, dtype):
    x = rng.integers(0, 256, size=(4, 3, 6, 6)).astype(dtype)  # channels-first, as CSAW stores it
    x[0, 0, 0, 0], x[1, 1, 2, 3], x[3, 0, 5, 5] = np.nan, np.inf, -np.inf
    p = tmp_path / "x.h5"
    data.save_h5(p, np.transpose(x, (0, 2, 3, 1)), np.zeros(4))
    for scale in ("raw", "unit"):
        with pytest.raises(AegisError) as e:
            data.load_h5(p, scale=scale)
        assert str(e.value) == f"{p}: image data must be finite. Received 3 NaN/inf values"
    with pytest.raises(AegisError, match="must be finite. Received 3 NaN/inf values"):
        data.load_split(str(p))


def test_nan_pixels_in_npz_are_one_line_errors(tmp_path, rng):
    arrays = {
        "x_train": rng.random((5, 8, 8)), "y_train": np.zeros(5),
        "x_test": rng.random((3, 8, 8)).astype("float32"), "y_test": np.zeros(3),
    }
    arrays["x_test"][1, 2, 2] = np.nan
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(AegisError) as e:
        data.load_npz(tmp_path / "d.npz")
    assert str(e.value) == f"{tmp_path / 'd.npz'}:test: image data must be finite. Received 1 NaN/inf values"
    arrays["x_test"][1, 2, 2] = 0.5
    arrays["x_train"][:, 0, 0] = np.inf
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(AegisError, match=r"mnist.npz:train: image data must be finite. Received 5 NaN/inf"):
        data.load_named("mnist", data_dir=str(tmp_path))


def test_finite_float_and_integer_data_pass_and_overflow_is_caught(tmp_path, rng):
    x = rng.random((3, 4, 4, 1)) * 255.0
    xl, _ = data.load_h5(_write(tmp_path / "ok.h5", data=x, label=np.zeros(3)))
    np.testing.assert_allclose(xl, x, rtol=1e-6)
    xi, _ = data.load_h5(_write(tmp_path / "int.h5", data=rng.integers(0, 256, (3, 4, 4, 1)), label=np.zeros(3)))
    assert np.all(np.isfinite(xi))
    big = np.zeros((3, 4, 4, 1))
    big[0, 0, 0, 0] = 1e300  # finite as float64, infinite as float32
    with pytest.raises(AegisError, match=r"image values must fit float32 .* Received 1 values up to 1e\+300"):
        data.load_h5(_write(tmp_path / "big.h5", data=big, label=np.zeros(3)))
    with pytest.raises(AegisError, match="expected real numeric image data"):
        data.load_h5(_write(tmp_path / "c.h5", data=np.zeros((3, 4, 4, 1), complex), label=np.zeros(3)))


@pytest.mark.parametrize("input_shape", [(784,), (10, 10), (4, 8, 8, 1)])
def test_check_fits_model_refuses_non_image_models(rng, input_shape):
    model = _dense_model(input_shape)
    x = rng.random((4, 28, 28, 1)).astype("float32")
    with pytest.raises(AegisError) as e:
        data.check_fits_model(x, np.zeros(4, "int64"), model, "--data x.h5")
    assert str(e.value) == f"model takes input of shape {(None,) + input_shape}; expected images (H, W, C)"


def test_check_fits_model_refuses_non_class_outputs(rng):
    import keras

    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Conv2D(3, 3, padding="same")(inp))  # (None, 8, 8, 3) per-pixel output
    with pytest.raises(AegisError, match=r"model gives output of shape \(None, 8, 8, 3\); expected class scores"):
        data.check_fits_model(rng.random((2, 8, 8, 1)), None, model, "set")


def test_check_fits_model_labels_beyond_the_outputs(tmp_path, rng):
    model = tiny_cnn(input_shape=(8, 8, 1), num_classes=10)
    x = rng.integers(0, 256, size=(5, 8, 8, 1)).astype("float32")
    p = tmp_path / "x.h5"
    data.save_h5(p, x, np.array([0, 3, 12, 9, 1]))
    xl, yl = data.load_h5(p)
    with pytest.raises(AegisError) as e:
        data.check_fits_model(xl, yl, model, f"--data {p}")
    assert str(e.value) == (f"--data {p}: labels must lie in 0..9 for a model with 10 classes. "
                            "Received labels from 0 to 12")
    with pytest.raises(AegisError, match="from -1 to 3"):
        data.check_fits_model(xl, np.array([0, -1, 2, 3, 1]), model, "set")
    # Fewer classes in the data than outputs is fine (a subset of the classes).
    assert data.check_fits_model(xl, np.array([0, 1, 1, 0, 1]), model, "set").shape == (5, 8, 8, 1)
