"""Loading and saving image classification data.

Three sources, one result: ``(x, y)`` with ``x`` a float32 array in NHWC layout
and ``y`` an int64 label vector.

* CSAW-HackML ``.h5`` files with datasets ``data`` (images) and ``label``.
  The challenge stores images channels-first, ``(N, 3, 55, 47)``; they are
  transposed to ``(N, 55, 47, 3)``. Channels-last files are accepted as they are.
* ``.npz`` files with ``x_train, y_train, x_test, y_test`` (the format of
  ``keras.datasets`` and of ``shared/datasets/prepare.py``).
* Named sets ``mnist``, ``fashion_mnist``, ``cifar10`` (read from a local
  folder, ``data_dir`` or ``$AEGIS_DATA_DIR``; ``keras.datasets`` is tried only
  when the folder lacks them) and ``digits`` (scikit-learn's 8x8 digits,
  upscaled; it ships with the package, so it always works offline).

Pixel scaling is explicit. Files hold raw pixel values 0-255. ``scale="raw"``
returns them unchanged (as the CSAW lab3 ``eval.py`` feeds ``bd_net.h5``);
``scale="unit"`` divides by 255 (as the 2020 challenge's ``eval.py`` did).
"""

import os

import h5py
import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import atomic_path

__all__ = [
    "SCALES",
    "NAMED_SETS",
    "load_h5",
    "save_h5",
    "load_npz",
    "load_named",
    "load_split",
    "digits_splits",
    "apply_scale",
    "check_fits_model",
]

SCALES = ("raw", "unit")
NAMED_SETS = ("mnist", "fashion_mnist", "cifar10", "digits")
DATA_DIR_ENV = "AEGIS_DATA_DIR"


def apply_scale(x, scale):
    """Cast raw 0-255 pixels to float32 and scale them as ``scale`` says."""
    if scale not in SCALES:
        raise AegisError(f"scale must be one of {', '.join(SCALES)}. Received: {scale!r}")
    x = np.asarray(x, dtype="float32")
    return x / 255.0 if scale == "unit" else x


def _to_nhwc(x, layout, source):
    """Return ``x`` as (N, H, W, C); ``layout`` is auto, channels_first or channels_last."""
    if x.ndim == 3:  # (N, H, W) grayscale
        return x[..., None]
    if x.ndim != 4:
        raise AegisError(
            f"{source}: expected images of shape (N, H, W), (N, C, H, W) or (N, H, W, C). "
            f"Received shape {x.shape}"
        )
    if layout == "auto":
        first = x.shape[1] in (1, 3) and x.shape[3] not in (1, 3)
        layout = "channels_first" if first else "channels_last"
    if layout == "channels_first":
        return np.transpose(x, (0, 2, 3, 1))
    if layout == "channels_last":
        return x
    raise AegisError(
        f"layout must be auto, channels_first or channels_last. Received: {layout!r}"
    )


def _labels(y, n, source):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise AegisError(
            f"{source}: expected one label per image ({n}). Received labels of shape {y.shape}"
        )
    if y.size and not np.all(np.isfinite(y.astype("float64"))):
        raise AegisError(f"{source}: labels must be whole numbers. Received NaN or infinity")
    yi = y.astype("int64")
    if not np.array_equal(yi, y):
        raise AegisError(f"{source}: labels must be whole numbers. Received e.g. {y[yi != y][0]!r}")
    return yi


def _check_nonempty(x, source):
    if x.shape[0] == 0:
        raise AegisError(f"{source}: expected at least one image. Received an empty set")


def load_h5(path, *, scale="raw", layout="auto"):
    """Load a CSAW-format ``.h5`` file. Returns ``(x, y)``: float32 NHWC and int64."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise AegisError(f"data file not found: {source} (expected an .h5 file with 'data' and 'label')")
    try:
        with h5py.File(source, "r") as f:
            missing = [k for k in ("data", "label") if k not in f]
            if missing:
                raise AegisError(
                    f"{source}: expected datasets 'data' and 'label'. "
                    f"Missing {', '.join(repr(m) for m in missing)}; found {sorted(f.keys())}"
                )
            x = np.asarray(f["data"])
            y = np.asarray(f["label"])
    except AegisError:
        raise
    except (OSError, ValueError) as e:
        raise AegisError(
            f"cannot read {source} as HDF5 (expected an .h5 file with 'data' and 'label'): {e}"
        ) from None
    return _finish(x, y, scale=scale, layout=layout, source=source)


def _check_finite(raw, x, source):
    """Raise unless the float32 images ``x`` (read as ``raw``) hold no NaN or infinity.

    Integer pixels cannot be NaN and always fit float32, so only float data is
    checked: one summing pass, and a count only when that finds something.
    """
    if not np.issubdtype(raw.dtype, np.floating) or np.isfinite(np.sum(x, dtype="float64")):
        return
    bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
    if bad:
        raise AegisError(f"{source}: image data must be finite. Received {bad} NaN/inf values")
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise AegisError(f"{source}: image values must fit float32 (magnitude below 3.4e38). "
                         f"Received {bad} values up to {np.abs(raw).max():g}")


def _finish(x, y, *, scale, layout, source):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise AegisError(f"{source}: expected real numeric image data. Received dtype {x.dtype}")
    x = _to_nhwc(x, layout, source)
    _check_nonempty(x, source)
    y = _labels(y, x.shape[0], source)
    with np.errstate(over="ignore", invalid="ignore"):  # reported by _check_finite instead
        out = apply_scale(x, scale)
        _check_finite(x, out, source)
    return out, y


def save_h5(path, x, y, *, layout="channels_first"):
    """Write ``(x, y)`` in CSAW format (``data`` and ``label``), atomically.

    ``x`` is NHWC; by default it is stored channels-first as the CSAW files are.
    Integer-valued pixels are stored as uint8 to keep files small.
    """
    x = np.asarray(x)
    if layout == "channels_first":
        x = np.transpose(x, (0, 3, 1, 2))
    elif layout != "channels_last":
        raise AegisError(f"layout must be channels_first or channels_last. Received: {layout!r}")
    if np.issubdtype(x.dtype, np.floating) and np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 255:
        x = x.astype("uint8")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("data", data=x, compression="gzip")
            f.create_dataset("label", data=np.asarray(y, dtype="int64"))


def load_npz(path, *, scale="raw"):
    """Load ``x_train, y_train, x_test, y_test`` from an ``.npz`` file.

    Returns ``((x_train, y_train), (x_test, y_test))``. Never unpickles.
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise AegisError(f"data file not found: {source} (expected an .npz with x_train, y_train, x_test, y_test)")
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(source, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise AegisError(
                    f"{source}: expected arrays {', '.join(keys)}. Missing {', '.join(missing)}"
                )
            arrays = {k: np.asarray(f[k]) for k in keys}
    except AegisError:
        raise
    except (OSError, ValueError) as e:
        raise AegisError(f"cannot read {source} as .npz: {e}") from None
    train = _finish(arrays["x_train"], arrays["y_train"], scale=scale, layout="auto", source=source + ":train")
    test = _finish(arrays["x_test"], arrays["y_test"], scale=scale, layout="auto", source=source + ":test")
    return train, test


def digits_splits(*, size=28, seed=0, fractions=(0.6, 0.2, 0.2)):
    """scikit-learn's digits, upscaled to ``size`` x ``size``, raw 0-255, 1 channel.

    Returns ``{"train": (x, y), "valid": (x, y), "test": (x, y)}``, split
    stratified and reproducibly by ``seed``.
    """
    import cv2
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    small = (d.images / 16.0 * 255.0).astype("float32")
    big = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in small])
    x = np.clip(np.round(big), 0, 255).astype("uint8")[..., None]
    y = d.target.astype("int64")
    f_train, f_valid, f_test = fractions
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, train_size=f_train, stratify=y, random_state=seed
    )
    x_valid, x_test, y_valid, y_test = train_test_split(
        x_rest, y_rest, train_size=f_valid / (f_valid + f_test), stratify=y_rest, random_state=seed
    )
    return {"train": (x_train, y_train), "valid": (x_valid, y_valid), "test": (x_test, y_test)}


def _keras_download(name):
    import keras

    loader = {
        "mnist": keras.datasets.mnist,
        "fashion_mnist": keras.datasets.fashion_mnist,
        "cifar10": keras.datasets.cifar10,
    }[name]
    return loader.load_data()


def load_named(name, *, data_dir=None, scale="raw"):
    """Load a named set. Returns ``((x_train, y_train), (x_test, y_test))``.

    ``data_dir`` (else ``$AEGIS_DATA_DIR``) is searched for ``NAME.npz`` first.
    ``keras.datasets`` is the fallback; if that cannot download, the error names
    the folder option.
    """
    if name not in NAMED_SETS:
        raise AegisError(f"unknown data set {name!r}; expected a file path or one of {', '.join(NAMED_SETS)}")
    if name == "digits":
        s = digits_splits()
        (xt, yt), (xv, yv), (xs, ys) = s["train"], s["valid"], s["test"]
        return (apply_scale(np.concatenate([xt, xv]), scale), np.concatenate([yt, yv])), (apply_scale(xs, scale), ys)
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        path = os.path.join(data_dir, f"{name}.npz")
        if os.path.isfile(path):
            return load_npz(path, scale=scale)
    try:
        (xt, yt), (xs, ys) = _keras_download(name)
    except Exception as e:  # no network: urllib, OSError, ... all look alike here
        where = f"{data_dir!r} has no {name}.npz" if data_dir else f"no --data-dir or ${DATA_DIR_ENV} was given"
        raise AegisError(
            f"cannot load {name}: {where}, and keras.datasets could not download it "
            f"({type(e).__name__}). Put {name}.npz (x_train, y_train, x_test, y_test) in a folder "
            f"and pass --data-dir DIR or set {DATA_DIR_ENV}"
        ) from None
    train = _finish(xt, yt, scale=scale, layout="channels_last", source=name + ":train")
    test = _finish(xs, ys, scale=scale, layout="channels_last", source=name + ":test")
    return train, test


def load_split(spec, *, split="test", data_dir=None, scale="raw", layout="auto"):
    """Load one set of images from a path or a name.

    ``.h5`` files hold one set and ``split`` is ignored. For ``.npz`` files and
    named sets, ``split`` is ``train`` or ``test``.
    """
    spec = os.fspath(spec)
    if spec.endswith(".h5") or spec.endswith(".hdf5"):
        return load_h5(spec, scale=scale, layout=layout)
    if split not in ("train", "test"):
        raise AegisError(f"split must be train or test. Received: {split!r}")
    if spec.endswith(".npz"):
        train, test = load_npz(spec, scale=scale)
    elif spec in NAMED_SETS:
        train, test = load_named(spec, data_dir=data_dir, scale=scale)
    else:
        raise AegisError(
            f"cannot load {spec!r}: expected an .h5 or .npz file or one of {', '.join(NAMED_SETS)}"
        )
    return train if split == "train" else test


def check_fits_model(x, y, model, source):
    """Raise AegisError unless images fit ``model``'s input and labels its classes.

    The model must take images (N, H, W, C) and give class scores (N, K).
    Returns ``x``, transposed if it was read with the wrong channel order.
    """
    from aegis_tf.core.models import check_image_classifier

    check_image_classifier(model)
    expected = tuple(model.input_shape[1:])
    got = tuple(x.shape[1:])
    if not _shape_matches(got, expected):
        swapped = (got[1], got[2], got[0]) if len(got) == 3 else None
        if swapped is not None and _shape_matches(swapped, expected):
            x = np.transpose(x, (0, 2, 3, 1))
        else:
            raise AegisError(
                f"{source}: images of shape {got} do not fit the model, which expects "
                f"{tuple(d if d is not None else 'any' for d in expected)}"
            )
    n_classes = int(model.output_shape[-1])
    if y is not None and y.size:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            raise AegisError(
                f"{source}: labels must lie in 0..{n_classes - 1} for a model with {n_classes} "
                f"classes. Received labels from {lo} to {hi}"
            )
    return x


def _shape_matches(got, expected):
    return len(got) == len(expected) and all(e is None or g == e for g, e in zip(got, expected))
