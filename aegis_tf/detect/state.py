"""A scan's saved progress, for ``--resume``: one mechanism for full and staged scans.

Everything a scan saves while it runs goes into one folder, :data:`STATE_DIR`,
inside its report folder: a ``fingerprint`` (a hash of the model's weights, the
images, the classes, the settings, the seed and the batch size; see
:func:`fingerprint`) and named parts, each written atomically through
:func:`aegis_tf.core.utils.atomic_path`, each written once:

- a full scan: ``rows_<first row>.npz``, one per chunk of translations;
- a staged scan: ``stage1.json`` (stage 1's per-class results, rewritten after
  every chunk; small) and ``stage2_<class>.npz``, one per promoted class.

A resumed scan reads the parts back and gives the same numbers as an
uninterrupted one. A folder from another scan, or a damaged one, is a one-line
error. The folder is removed when the scan ends.
"""

import hashlib
import json
import os
import shutil
import zipfile

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import atomic_path, write_json

__all__ = ["STATE_DIR", "ScanState", "fingerprint"]

STATE_DIR = "scan_state"

# Settings that read the saved translations and change nothing they hold: a resumed scan may change them.
SCORING_ONLY = frozenset({"wi_blend", "pairs", "pair_probes", "pair_confirm_probes", "pair_min_score",
                          "pair_retest", "pair_retest_below",
                          "robustness_images", "wi_nonrobust_factor", "warp_probe", "warp_grid", "warp_max_shift",
                          "warp_steps", "warp_fit", "mask_probe", "mask_fit", "mask_epochs", "mask_restarts",
                          "pair_mask",
                          "pair_mask_epochs", "pair_mask_restarts", "pair_mask_budget",
                          "probe_budget"})

# What reading a damaged or foreign state part raises.
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


def fingerprint(model, x, y, classes, config, seed, *extra):
    """A short hash of everything that decides a scan's saved state: the model's weights,
    the images and labels, the classes, the settings, the seed and ``extra``
    (JSON-ready values such as the batch size). The settings of :data:`SCORING_ONLY`
    (the blend probe's switch, the pair view's) are left out: they read the saved
    translations and change nothing they hold."""
    h = hashlib.sha256()
    for a in [*(np.asarray(w) for w in model.get_weights()), np.asarray(x), np.asarray(y)]:
        h.update(str(a.shape).encode())
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))  # no copy of a contiguous array
    settings = {k: v for k, v in config.to_dict().items() if k not in SCORING_ONLY}
    h.update(json.dumps([list(map(int, classes)), settings, seed, *extra], sort_keys=True).encode())
    return h.hexdigest()[:16]


class ScanState:
    """The saved progress of one scan in ``folder``, with fingerprint ``key``.

    ``ScanState.open(out_dir, key, resume=...)`` makes it: with ``resume``, an
    existing folder must carry ``key`` (else a one-line error) and its parts are
    read back; with ``resume="auto"`` (a zoo's worker), an existing folder with
    ``key`` is read back and any other is cleared; without, any earlier folder is
    cleared. ``ScanState.off()`` saves
    nothing (a scan with no report folder).
    """

    def __init__(self, folder, key):
        self.folder, self.key = folder, key

    @classmethod
    def off(cls):
        return cls(None, None)

    @classmethod
    def open(cls, out_dir, key, *, resume):
        if out_dir is None:
            return cls.off()
        folder = os.path.join(out_dir, STATE_DIR)
        state = cls(folder, key)
        if resume and os.path.isdir(folder):
            try:
                with open(os.path.join(folder, "fingerprint")) as f:
                    saved = f.read().strip()
            except _READ_ERRORS:
                state._damaged()
            if saved != key and resume == "auto":
                return cls._fresh(folder, key)
            if saved != key:
                raise AegisError(f"--resume: {folder} belongs to another scan (other model, data, classes, seed, "
                                 "batch size or settings); delete it or use another --out-dir")
            return state
        return cls._fresh(folder, key)

    @classmethod
    def _fresh(cls, folder, key):
        """An empty state folder with ``key``, any earlier one cleared."""
        state = cls(folder, key)
        state.clear()
        os.makedirs(folder)
        with atomic_path(os.path.join(folder, "fingerprint")) as tmp:
            with open(tmp, "w") as f:
                f.write(key)
        return state

    @property
    def on(self):
        return self.folder is not None

    def _path(self, name):
        return os.path.join(self.folder, name)

    def _damaged(self):
        raise AegisError(f"--resume: {self.folder} is not a scan state folder; delete it to start afresh") from None

    def save_json(self, name, obj):
        if self.on:
            write_json(self._path(name + ".json"), obj)

    def load_json(self, name):
        """The part ``name`` saved by :meth:`save_json`, or ``None``."""
        if not self.on or not os.path.exists(self._path(name + ".json")):
            return None
        try:
            with open(self._path(name + ".json")) as f:
                return json.load(f)
        except _READ_ERRORS:
            self._damaged()

    def save_arrays(self, name, **arrays):
        if self.on:
            with atomic_path(self._path(name + ".npz")) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)

    def load_arrays(self, name):
        """``{key: array}`` of the part ``name`` saved by :meth:`save_arrays`, or ``None``."""
        if not self.on or not os.path.exists(self._path(name + ".npz")):
            return None
        try:
            with np.load(self._path(name + ".npz"), allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except _READ_ERRORS:
            self._damaged()

    def clear(self):
        """Remove the folder: the scan is done, or starts afresh."""
        if self.on and os.path.isdir(self.folder):
            shutil.rmtree(self.folder)
