"""Small helpers shared by the library: atomic writes, JSON, progress bars."""

import contextlib
import json
import os
import shutil
import sys
import tempfile

import numpy as np

__all__ = ["atomic_path", "write_json", "read_json", "progress", "to_jsonable", "no_partial_report", "trigger_class",
           "check_out_dir", "check_out_file", "replaced_dir"]


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


def _missing_parts(full):
    """``(missing, base)``: the folders of the absolute path ``full`` that do not exist yet, outermost
    first, and the deepest one that exists (which may be a file)."""
    missing = []
    while not os.path.lexists(full):
        parent = os.path.dirname(full)
        missing.append(full)
        if parent == full:
            break
        full = parent
    return missing[::-1], full


def _dir_problem(full):
    """Why files cannot be written in the folder ``full`` (absolute), or None when they can.

    A folder that does not exist yet is created to find out, and removed again with every
    parent that had to be created for it, so the check leaves nothing behind.
    """
    missing, base = _missing_parts(full)
    if not missing and not os.path.isdir(full):
        return f"{full} is a file, not a folder"
    if missing and not os.path.isdir(base):
        return f"{base} is a file, not a folder"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"permission denied in {base}"
    created = []
    try:
        for d in missing:
            os.mkdir(d)
            created.append(d)
        fd, probe = tempfile.mkstemp(prefix=".aegis-write-test-", dir=full)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        return f"{e.strerror or e} ({getattr(e, 'filename', None) or full})"
    finally:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(d)
    return None


def check_out_dir(path, what="--out-dir"):
    """Raise AegisError (one line) unless the output folder ``path`` can be created or written.

    Refuses an existing file, a path below a file, and a folder that cannot be written.
    Leaves nothing behind: a folder created to test it is removed again.
    """
    from aegis_tf.core.errors import AegisError

    path = os.fspath(path)
    full = os.path.abspath(path)
    if os.path.lexists(full) and not os.path.isdir(full):
        raise AegisError(f"{what} {path} is a file, not a folder; give a folder path")
    problem = _dir_problem(full)
    if problem:
        raise AegisError(f"{what} {path} cannot be written: {problem}")


def check_out_file(path, what="--out"):
    """Raise AegisError (one line) unless a single output file can be written at ``path``.

    ``path`` must not be a folder, and its folder must be creatable or writable
    (see :func:`check_out_dir`). ``None`` (no such output) passes.
    """
    from aegis_tf.core.errors import AegisError

    if path is None:
        return
    path = os.fspath(path)
    full = os.path.abspath(path)
    if os.path.isdir(full) or path.endswith(("/", os.sep)):
        raise AegisError(f"{what} {path} is a folder; expected a file path")
    problem = _dir_problem(os.path.dirname(full))
    if problem:
        raise AegisError(f"{what} {path} cannot be written: {problem}")


def _swap_in(new, final):
    """Move the folder ``new`` to ``final``; an existing ``final`` is replaced whole (moved aside,
    then deleted), and put back if the move fails."""
    if not os.path.lexists(final):
        os.rename(new, final)
        return
    if not os.path.isdir(final) or os.path.islink(final):
        raise NotADirectoryError(f"{final} exists and is not a folder")
    old = tempfile.mkdtemp(prefix=f".old-{os.path.basename(final)}-", dir=os.path.dirname(final))
    try:
        os.rename(final, old)  # onto the empty folder just made: atomic
    except BaseException:
        os.rmdir(old)
        raise
    try:
        os.rename(new, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def replaced_dir(path):
    """Yield a new temporary folder beside the folder ``path``; on success it becomes ``path``.

    An existing ``path`` (an earlier run's output) is replaced whole, so stale
    files never mix with new ones. If the body raises (Ctrl-C included), the
    temporary folder and any parent folder made for it are removed and
    ``path`` is left as it was. Files written in the temporary folder should
    name ``path`` in what they record, not the temporary folder.
    """
    full = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(full)
    missing, _ = _missing_parts(parent)
    created, tmp = [], None
    try:
        for d in missing:
            os.mkdir(d)
            created.append(d)
        tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(full)}-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the folder it becomes should not be
        yield tmp
        _swap_in(tmp, full)
        tmp = None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise
