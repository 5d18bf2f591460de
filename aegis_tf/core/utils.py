"""Small helpers shared by the library: atomic writes, JSON, progress bars."""

import contextlib
import json
import os
import sys
import tempfile

import numpy as np

__all__ = ["atomic_path", "write_json", "read_json", "progress", "to_jsonable", "no_partial_report", "trigger_class"]


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    If the body raises, the temporary file is removed, so no half-written file
    is ever left at ``path``. The temporary name keeps the final suffix (Keras
    and matplotlib choose the format by suffix).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    # Keep compound suffixes such as ".weights.h5" intact.
    suffix = base[base.index("."):] if "." in base else ""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    os.remove(tmp)  # writers such as h5py and Keras want to create the file.
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def to_jsonable(obj):
    """Convert NumPy scalars and arrays (nested in dicts and lists) to JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "to_dict"):  # settings (aegis_tf.core.settings)
        return to_jsonable(obj.to_dict())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(to_jsonable(obj), f, indent=2)
            f.write("\n")


def read_json(path, what):
    """The JSON at ``path``; a missing or unreadable file is a one-line error naming ``what`` it is."""
    from aegis_tf.core.errors import AegisError

    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise AegisError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as e:
        raise AegisError(f"cannot read {what} {path}: {e}") from None


def progress(iterable=None, *, quiet=False, **kwargs):
    """A tqdm bar on a terminal; silent with ``quiet`` or when stderr is no TTY."""
    from tqdm.auto import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(iterable, disable=disable, leave=False, **kwargs)


def _files_under(folder):
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with contextlib.suppress(OSError):
                out[p] = os.stat(p).st_mtime_ns
    return out


@contextlib.contextmanager
def no_partial_report(folder, *, keep=(), reports=("detect.json", "report.html")):
    """Undo a report that an interrupted or failed run left half-made in ``folder``.

    Each file is written atomically, but a report is several files. If the body
    raises (Ctrl-C included), every file it created or changed under ``folder``
    is removed, except those named in ``keep`` or inside a folder named in it (a
    scan's resume state); if any
    was, the ``reports`` that describe the folder's figures are removed too.
    """
    before = _files_under(folder)
    keep_set = set(keep)
    try:
        yield
    except BaseException:
        touched = [p for p, t in _files_under(folder).items()
                   if before.get(p) != t and not keep_set & set(os.path.relpath(p, folder).split(os.sep))]
        if touched:
            touched += [p for p in before if os.path.basename(p) in reports]
        for p in set(touched):
            with contextlib.suppress(OSError):
                os.remove(p)
        raise


def trigger_class(name):
    """The class a trigger file (``trigger_<class>_<source>.json``) was recovered for (the naming
    rule of :mod:`aegis_tf.detect.recovered`, read by the HTML report too)."""
    return int(os.path.basename(str(name)).split("_")[1])
