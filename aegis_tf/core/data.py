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
Float images whose values all lie in [0, 1] (not constant) contradict both:
they were scaled already, so they are refused with a one-line error.

Before reading, the declared size of a set is checked against a memory budget
(:func:`memory_budget`: ``$AEGIS_MEMORY_BUDGET``, else half the available
memory), so a file that declares more images than fit is refused at once.
Images are converted to float32 block by block, so a loader never holds two
full copies of an ``.h5`` set.
"""

import math
import os
import re
import zipfile

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
    "from_arrays",
    "check_fits_model",
    "parse_bytes",
    "memory_budget",
    "check_memory",
]

SCALES = ("raw", "unit")
NAMED_SETS = ("mnist", "fashion_mnist", "cifar10", "digits")
DATA_DIR_ENV = "AEGIS_DATA_DIR"
BUDGET_ENV = "AEGIS_MEMORY_BUDGET"
BUDGET_SHARE = 0.5  # of the available memory, when $AEGIS_MEMORY_BUDGET is not set
BLOCK_BYTES = 64 * 2**20  # images are read and converted this much at a time
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


def parse_bytes(text):
    """A number of bytes from ``"8G"``, ``"512MiB"``, ``"1.5T"``, ``"1e9"`` or ``"123456"``.

    K, M, G, T and P are powers of 1024. Returns an int, or None when ``text`` is not such a size.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGTPkmgtp]?)(?:i?[Bb])?\s*", str(text))
    if not m:
        return None
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    return int(value) if math.isfinite(value) and value >= 1 else None


def _available_memory():
    """Bytes of memory available now: ``MemAvailable`` of /proc/meminfo (capped by a cgroup v2 limit),
    else the free physical pages; None when neither can be read."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    try:  # a container's own limit
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit.isdigit():
            avail = min(avail, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return avail


def memory_budget():
    """``(bytes, how)``: how much memory one loaded data set may take, and where that number came from.

    ``$AEGIS_MEMORY_BUDGET`` (bytes, or with a unit: ``8G``) when set, else half
    the available memory. ``(None, ...)`` when the available memory cannot be read.
    """
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        budget = parse_bytes(text)
        if budget is None:
            raise AegisError(f"${BUDGET_ENV} must be a number of bytes, optionally with a unit (e.g. 8G or 500M). "
                             f"Received: {text!r}")
        return budget, f"${BUDGET_ENV}"
    avail = _available_memory()
    if avail is None:
        return None, "unknown"
    return int(avail * BUDGET_SHARE), f"{BUDGET_SHARE:.0%} of the {_human(avail)} available"


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def check_memory(need, source, what):
    """Raise AegisError unless ``need`` bytes fit the :func:`memory_budget`.

    ``what`` says what needs them (``"1,000,000,000 images of shape (28, 28, 1), uint8"``).
    """
    budget, how = memory_budget()
    if budget is not None and need > budget:
        raise AegisError(
            f"{source}: {what} need {_human(need)} of memory to load as float32, over the memory budget of "
            f"{_human(budget)} ({how}); use a set with fewer images, or set {BUDGET_ENV} (bytes, e.g. "
            f"{BUDGET_ENV}=64G) if the machine has that much memory")


def _images_what(n, image_shape, dtype):
    """``"1,000 images of shape (28, 28, 1), uint8"``."""
    return f"{n:,} images of shape {tuple(int(d) for d in image_shape)}, {np.dtype(dtype).name}"


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


def _check_nonempty(n, source):
    if n == 0:
        raise AegisError(f"{source}: expected at least one image. Received an empty set")


def load_h5(path, *, scale="raw", layout="auto"):
    """Load a CSAW-format ``.h5`` file. Returns ``(x, y)``: float32 NHWC and int64.

    The declared size is checked against :func:`memory_budget` before anything
    is read; the images are then read and converted block by block.
    """
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
            ds, ls = f["data"], f["label"]
            for key, d in (("data", ds), ("label", ls)):
                if not isinstance(d, h5py.Dataset):
                    raise AegisError(f"{source}: {key!r} must be a dataset. Received a group")
            _check_dtype(ds.dtype, source)
            image_shape = _nhwc_shape(ds.shape, ds.dtype, layout, source)
            n = int(ds.shape[0])
            need = _float_bytes(ds.shape) + int(ls.size) * (ls.dtype.itemsize + 16)
            check_memory(need, source, f"{_images_what(n, image_shape, ds.dtype)},")
            y = np.asarray(ls)
            x, y, stats = _finish(ds, y, scale=scale, layout=layout, source=source)
    except AegisError:
        raise
    except (OSError, ValueError) as e:
        raise AegisError(
            f"cannot read {source} as HDF5 (expected an .h5 file with 'data' and 'label'): {e}"
        ) from None
    _check_scale(stats, scale, source)
    return x, y


def from_arrays(x, y, *, scale="raw", source="arrays"):
    """Images and labels already in memory, checked and scaled as a file's are (finite
    values, raw 0-255 pixels, labels one per image). Returns ``(x, y)``: float32 NHWC, int64."""
    x, y, stats = _finish(x, y, scale=scale, layout="channels_last", source=source)
    _check_scale(stats, scale, source)
    return x, y


def _check_dtype(dtype, source):
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise AegisError(f"{source}: expected real numeric image data. Received dtype {dtype}")


def _nhwc_shape(shape, dtype, layout, source):
    """The (H, W, C) shape images of ``shape`` get, found on an empty array (reads nothing)."""
    return _to_nhwc(np.empty((0,) + tuple(shape[1:]), dtype), layout, source).shape[1:]


def _float_bytes(shape):
    return 4 * math.prod(int(d) for d in shape)


def _finish(x, y, *, scale, layout, source, own=False):
    """Images ``x`` (an array or an h5py dataset) as float32 NHWC scaled by ``scale``, labels as int64.

    ``x`` is converted block by block into one new array; with ``own`` a
    float32 array that is already NHWC is used as it is. Returns ``(x, y, stats)``;
    ``stats`` feeds :func:`_check_scale`.
    """
    if scale not in SCALES:
        raise AegisError(f"scale must be one of {', '.join(SCALES)}. Received: {scale!r}")
    if isinstance(x, (list, tuple)) or not hasattr(x, "dtype"):
        x = np.asarray(x)
    _check_dtype(x.dtype, source)
    image_shape = _nhwc_shape(x.shape, x.dtype, layout, source)
    n = int(x.shape[0])
    _check_nonempty(n, source)
    y = _labels(y, n, source)
    floating = np.issubdtype(x.dtype, np.floating)
    out = None
    if own and isinstance(x, np.ndarray) and x.dtype == np.float32:
        view = _to_nhwc(x, layout, source)
        if view.flags.c_contiguous:
            out = view
    reuse = out is not None
    if out is None:
        out = np.empty((n,) + tuple(image_shape), dtype="float32")
    step = max(1, BLOCK_BYTES // max(1, math.prod(image_shape) * max(x.dtype.itemsize, 4)))
    stats = {"float": floating, "lo": math.inf, "hi": -math.inf, "bad": 0, "overflow": 0, "absmax": 0.0}
    for i in range(0, n, step):
        raw = np.asarray(x[i:i + step])
        block = out[i:i + step]
        if not reuse:
            with np.errstate(over="ignore", invalid="ignore"):  # reported below instead
                block[...] = _to_nhwc(raw, layout, source)
        if floating:
            _block_stats(raw, block, stats)
    if stats["bad"]:
        raise AegisError(f"{source}: image data must be finite. Received {stats['bad']} NaN/inf values")
    if stats["overflow"]:
        raise AegisError(f"{source}: image values must fit float32 (magnitude below 3.4e38). "
                         f"Received {stats['overflow']} values up to {stats['absmax']:g}")
    if scale == "unit":
        for i in range(0, n, step):
            out[i:i + step] /= 255.0
    return out, y, stats


def _block_stats(raw, block, stats):
    """Add one block's NaN/inf and float32-overflow counts and value range to ``stats``."""
    if not raw.size:
        return
    lo, hi = raw.min(), raw.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        stats["bad"] += int(raw.size - np.count_nonzero(np.isfinite(raw)))
        return
    stats["lo"], stats["hi"] = min(stats["lo"], float(lo)), max(stats["hi"], float(hi))
    stats["absmax"] = max(stats["absmax"], float(abs(lo)), float(abs(hi)))
    if max(abs(float(lo)), abs(float(hi))) > float(np.finfo("float32").max):
        stats["overflow"] += int(block.size - np.count_nonzero(np.isfinite(block)))


def _check_scale(stats, scale, source):
    """Refuse float images that were scaled to [0, 1] already: both scales would feed them wrongly.

    Integer images are raw pixels by type; constant sets (all zeros, say) tell nothing.
    """
    lo, hi = stats["lo"], stats["hi"]
    if not stats["float"] or not hi > lo or hi > 1.0:
        return
    seen = f"the images are floats in [{lo:g}, {hi:g}], already scaled to [0, 1]"
    if scale == "raw":
        raise AegisError(f"{source}: {seen}, but --scale raw (the default) feeds them unchanged to a model that "
                         "expects raw 0-255 pixels; store the images as 0-255 (multiply by 255) and pass "
                         "--scale unit if the model takes [0, 1] images")
    raise AegisError(f"{source}: {seen}, and --scale unit would divide them by 255 again; store the images as "
                     "0-255 (multiply by 255): files hold raw pixels and --scale unit scales them")


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


def _npz_headers(source):
    """``{key: (shape, fortran_order, dtype)}`` from the ``.npy`` header of each member of
    the zip archive ``source``; reads no array data."""
    from numpy.lib import format as npy_format

    out = {}
    with zipfile.ZipFile(source) as zf:
        for name in zf.namelist():
            if not name.endswith(".npy"):
                continue
            with zf.open(name) as fp:
                version = npy_format.read_magic(fp)
                read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
                out[name[:-4]] = read(fp)
    return out


def load_npz(path, *, scale="raw"):
    """Load ``x_train, y_train, x_test, y_test`` from an ``.npz`` file.

    Returns ``((x_train, y_train), (x_test, y_test))``. Never unpickles. The
    arrays' declared sizes are read from their headers and checked against
    :func:`memory_budget` before any array is read.
    """
    source = os.fspath(path)
    expected = f"expected a NumPy .npz with {', '.join(NPZ_KEYS)}"
    if not os.path.isfile(source):
        raise AegisError(f"data file not found: {source} ({expected})")
    if not zipfile.is_zipfile(source):
        raise AegisError(f"{source} is not an .npz archive ({expected})")
    try:
        headers = _npz_headers(source)
        missing = [k for k in NPZ_KEYS if k not in headers]
        if missing:
            raise AegisError(f"{source}: expected arrays {', '.join(NPZ_KEYS)}. Missing {', '.join(missing)}")
        for k in ("x_train", "x_test"):
            _check_dtype(headers[k][2], f"{source}:{k[2:]}")
        xs = [headers["x_train"], headers["x_test"]]
        need = (sum(_float_bytes(shape) for shape, _, _ in xs)
                + max(math.prod(shape) * dtype.itemsize for shape, _, dtype in xs)  # one read at a time
                + sum(math.prod(headers[k][0]) * (headers[k][2].itemsize + 16) for k in ("y_train", "y_test")))
        n = sum(int(shape[0]) if shape else 0 for shape, _, _ in xs)
        check_memory(need, source, f"x_train and x_test ({_images_what(n, xs[0][0][1:], xs[0][2])})")
        splits = []
        with np.load(source, allow_pickle=False) as f:
            for split in ("train", "test"):
                x = np.asarray(f["x_" + split])
                y = np.asarray(f["y_" + split])
                splits.append(_finish(x, y, scale=scale, layout="auto", source=f"{source}:{split}", own=True))
                del x
    except AegisError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise AegisError(f"cannot read {source} as .npz: {e}") from None
    for (_, _, stats), split in zip(splits, ("train", "test")):
        _check_scale(stats, scale, f"{source}:{split}")
    return tuple((x, y) for x, y, _ in splits)


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
    for (_, _, stats), split in ((train, "train"), (test, "test")):
        _check_scale(stats, scale, f"{name}:{split}")
    return train[:2], test[:2]


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
