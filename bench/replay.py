"""Replay one signal of a finished zoo scan: the shared loop of the replay benches.

A scan's signals draw their own random numbers in a fixed order, so a signal fitted again
as the scan fitted it (same images, settings and random state) gives back what the scan
stored, and one fitted with a changed setting gives what the scan would have given with
it. :func:`replay_scan` copies a ``scan-zoo`` folder (``summary.json``, each model's
``result.json`` and ``detect.json``) to a new folder, lets a callback replace one signal of
each model's ``detect.json``, and writes the callback's log beside them; ``zoo_runs.py
--recombine`` then reads the copy as a scan. Used by ``mask_restarts.py`` (the mask probe
at more starts) and ``pair_candidates.py`` (the pair mask probe on the per-pair view's
candidates under the current rule).
"""

import functools
import json
import os
import shutil
import sys

from aegis_tf.core.data import load_split
from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import load_model
from aegis_tf.core.utils import write_json
from zoo_runs import read_runs


@functools.lru_cache(maxsize=1)
def _train_split(data, scale):
    """One data set's training split, read once for the models of a zoo that share it."""
    return load_split(data, split="train", scale=scale)


def scan_inputs(detect):
    """The model and training split a scan's ``detect.json`` was made from: ``(model, x, y)``."""
    model = load_model(detect["model_file"], detect.get("weights_file"))
    x, y = _train_split(detect["data"], detect.get("scale", "raw"))
    return model, x, y


def replay_scan(scan, out, refit, log):
    """Copy the scan folder ``scan`` to ``out`` (which must not exist) with each finished model's
    ``detect.json`` passed through ``refit(name, detect)``, which returns the new ``detect`` (or
    None to keep the stored one) and a log entry; the entries go to ``log["models"]``, and
    ``log`` to ``out/<log["file"]>``. Raises :class:`AegisError` (with the model's name) and
    leaves nothing behind on any error: the copy is made in ``out.partial`` and renamed at the end."""
    summary = read_runs([scan])[0]  # zoo_runs reads scan folders the same way
    if os.path.exists(out):
        raise AegisError(f"{out} exists: give a new folder")
    work = os.path.normpath(out) + ".partial"
    shutil.rmtree(work, ignore_errors=True)
    try:
        os.makedirs(work)
        shutil.copy(os.path.join(scan, "summary.json"), os.path.join(work, "summary.json"))
        log["models"] = {}
        for row in summary["rows"]:
            name = row["name"]
            os.makedirs(os.path.join(work, name))
            shutil.copy(os.path.join(scan, name, "result.json"), os.path.join(work, name, "result.json"))
            if row["status"] != "done":
                continue
            with open(os.path.join(scan, name, "detect.json")) as f:
                detect = json.load(f)
            try:
                again, entry = refit(name, detect)
            except AegisError as e:
                raise AegisError(f"{name}: {e}") from None
            write_json(os.path.join(work, name, "detect.json"), detect if again is None else again)
            log["models"][name] = entry
        write_json(os.path.join(work, log["file"]), log)
        os.replace(work, os.path.normpath(out))
    finally:
        if os.path.isdir(work):
            shutil.rmtree(work, ignore_errors=True)  # nothing half-written is left behind


def run_replay(script, argv, scan, out, refit, log, check=None):
    """A replay bench's ``main``: ``check()`` (a bad setting raises), then :func:`replay_scan` with
    ``log`` plus the bench's own command line (``script`` and ``argv``, or ``sys.argv``). Returns 0,
    or 2 with one line on stderr (no traceback) on a bad input or a damaged scan folder."""
    try:
        if check is not None:
            check()
        command = f"python bench/{script} " + " ".join(sys.argv[1:] if argv is None else argv)
        replay_scan(scan, out, refit, {**log, "command": command})
    except (AegisError, OSError, KeyError, TypeError, ValueError) as e:
        why = str(e) if isinstance(e, AegisError) else f"{type(e).__name__}: {e} (a scan folder of scan-zoo expected)"
        print(f"error: {why}", file=sys.stderr)
        return 2
    return 0
