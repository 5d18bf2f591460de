"""The two-stage scan: screen every class cheaply, then run the full detector on the few that look suspicious.

A full AEGIS scan costs classes x seeds x steps forward+backward passes, so a
1,283-class face model takes hours on a CPU. The staged scan keeps the cost of
the full detector fixed:

- **Stage 1** (:func:`screen`) translates ``stage1_seeds`` images toward every
  class with ``stage1_steps`` PGD steps, in chunks of classes, and measures
  two signals of the default verdict on those short translations (the blend
  probe does not run in a staged scan): the patch
  share (:mod:`aegis_tf.detect.patch_transfer`, :data:`SCREEN_PROBES` probes) and the
  whole-image gap (:mod:`aegis_tf.detect.whole_image`, :data:`SCREEN_WI_PROBES`
  probes).
- **Promotion** (:func:`promote`, a pure function): the ``top_k`` classes of
  each signal (a patch share of 0 fills no place), plus every class at or above
  that signal's alarm level.
- **Stage 2** runs the full detector (:func:`aegis_tf.detect.scan.run_aegis`
  with ``scan="full"``) on the promoted classes only; its verdict is the
  scan's. Its whole-image gaps compare the promoted classes only, so a class is
  flagged by that signal only if its stage-1 gap (against every class) also
  reaches ``alarm_gap``.

Each chunk's per-class results go to :data:`STATE_FILE` in the report folder as
soon as the chunk is done, and stage 2's translations to :data:`STAGE2_FILE`
after every class, so ``--resume`` continues an interrupted scan where it
stopped. Chunks are fixed by the class list and the batch size (both in the
fingerprint) and each has its own random seed, so a resumed scan gives the same
numbers as an uninterrupted one. A full scan saves its translations in
:data:`ROWS_FILE` (see :func:`save_rows`). Stage 2's and the full scan's state
are removed when the scan ends; ``scan_state.json`` stays (it is small).
"""

import hashlib
import json
import os
import shutil
import zipfile

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.detect.patch_transfer import (PatchTransferDetector, patch_transfer_rates, probes_moved_histogram,
                                     rates_from_histogram)
from aegis_tf.detect.translation import translate, translation_attack
from aegis_tf.core.utils import progress, write_json
from aegis_tf.detect.whole_image import WholeImageDetector, flip_norms

__all__ = ["STAGED_ABOVE", "STATE_FILE", "ROWS_FILE", "STAGE2_FILE", "SCREEN_PROBES", "SCREEN_WI_PROBES", "scan_mode", "promote",
           "promote_all", "screen", "score_screen", "load_state"]

# "auto" runs the staged scan when more classes than this are examined. With the
# defaults, stage 2 alone runs the full detector on up to 2 x top_k = 10 classes,
# the cost of a full 10-class scan, so a staged scan of 20 classes or fewer saves
# at most half and risks a miss for it; MNIST-size models keep the full scan.
STAGED_ABOVE = 20
STATE_FILE = "scan_state.json"
# A full scan's translations done so far, one .npy per chunk (for --resume); removed when the scan ends.
ROWS_FILE = "scan_translations"
# A staged scan's stage-2 translations, one class at a time (for --resume); removed when the scan ends.
STAGE2_FILE = "scan_stage2.npz"
SCREEN_PROBES = 10  # clean probes per stage-1 patch (the full scan: n_probes, 20)
SCREEN_WI_PROBES = 10  # clean probes per class for the stage-1 whole-image norm (full: wi_probes, 50)


# What reading a damaged or foreign state file raises.
_STATE_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def scan_mode(config, n_classes):
    """``"full"`` or ``"staged"``: the config's ``scan``, with ``"auto"`` resolved by the class count."""
    if config.scan != "auto":
        return config.scan
    return "staged" if n_classes > STAGED_ABOVE else "full"


def promote(scores, *, top_k, alarm):
    """The classes one stage-1 signal promotes: its ``top_k`` highest ``scores``
    (``{class: score}``; ties go to the lower class) plus every class whose score
    reaches ``alarm``. A score of 0 is no evidence (no translation's patch
    transferred), so such a class fills no top-k place. Returns a sorted list."""
    if top_k < 0:
        raise AegisError(f"top_k must be >= 0. Received: {top_k}")
    ranked = sorted((c for c in scores if scores[c] > 0), key=lambda c: (-scores[c], c))
    return sorted(set(ranked[:top_k]) | {c for c, s in scores.items() if s >= alarm})


def promote_all(stage1, config):
    """The union of :func:`promote` over the stage-1 signals of :func:`score_screen`."""
    alarms = {"patch_transfer": config.alarm_transfer, "whole_image": config.alarm_gap}
    found = set()
    for signal, alarm in alarms.items():
        if signal in stage1:
            found.update(promote(stage1[signal], top_k=config.top_k, alarm=alarm))
    return sorted(found)


def screen_config(config):
    """The translation and probe settings of stage 1."""
    return config.replace(n_seeds=config.stage1_seeds, steps=config.stage1_steps,
                          n_probes=min(config.n_probes, SCREEN_PROBES), wi_probes=min(config.wi_probes, SCREEN_WI_PROBES))


def _chunks(classes, size):
    return [classes[i:i + size] for i in range(0, len(classes), size)]


def chunk_seed(seed, first_class):
    # One seed per chunk, fixed by the scan's seed and the chunk's first class (below 2**31).
    return (seed * 1_000_003 + first_class) % (2**31 - 1)


def screen(model, x, y, classes, config, *, pixel_max, seed=0, batch_size=512, done=None, save=None, quiet=True):
    """Stage 1: short translations toward every class of ``classes``, scored per class.

    Returns ``{class: result}`` (JSON-ready: ``reached``, ``probes_moved_histogram``,
    ``flip_norm``, ``share_at_norm``). Classes go in chunks of about
    ``batch_size`` translations; ``done`` holds results already measured (a
    resumed scan), whose chunks are skipped; ``save(results)`` is called after
    every chunk.
    """
    cfg = screen_config(config)
    results = {int(c): r for c, r in (done or {}).items()}
    size = max(3, batch_size // cfg.n_seeds)  # the whole-image bisection compares within a chunk: no 1-class chunks
    attack = translation_attack(model, cfg, pixel_max=pixel_max)
    chunks = _chunks(list(classes), size)
    if len(chunks) > 1 and len(chunks[-1]) < 3:  # fold a short tail into the chunk before it
        chunks[-2:] = [chunks[-2] + chunks[-1]]
    with progress(total=len(classes), quiet=quiet, desc="stage 1: screen", unit="class") as bar:
        for part in chunks:
            if all(c in results for c in part):
                bar.update(len(part))
                continue
            s = chunk_seed(seed, part[0])
            tr = translate(model, x, y, part, cfg, pixel_max=pixel_max, seed=s, batch_size=batch_size, attack_fn=attack)
            rates = patch_transfer_rates(model, x, y, tr, top_frac=cfg.top_frac, n_probes=cfg.n_probes, seed=s,
                                         batch_size=batch_size)
            norms = flip_norms(model, x, y, tr, n_probes=cfg.wi_probes, pixel_max=pixel_max, seed=s,
                               batch_size=batch_size)
            for c in part:
                results[c] = {"reached": tr[c].reached,
                              "probes_moved_histogram": probes_moved_histogram(rates[c][0], len(rates[c][2])).tolist(),
                              "flip_norm": norms[c][0], "share_at_norm": norms[c][1]}
            if save is not None:
                save(results)
            bar.update(len(part))
    return {c: results[c] for c in classes}


def score_screen(results, config):
    """Each stage-1 signal's per-class score from :func:`screen`'s results:
    ``{"patch_transfer": {class: share}, "whole_image": {class: gap}}`` (the
    whole-image gap needs 3 classes or more)."""
    transfer = PatchTransferDetector(flip_at=config.flip_at).fit_rates(
        {c: rates_from_histogram(r["probes_moved_histogram"]) for c, r in results.items()})
    scores = {"patch_transfer": transfer.scores_}
    if len(results) >= 3:
        whole = WholeImageDetector(threshold=config.wi_threshold).fit_norms(
            {c: r["flip_norm"] for c, r in results.items()})
        scores["whole_image"] = whole.scores_
    return scores


def fingerprint(model, x, y, classes, config, seed, *extra):
    """A short hash of everything that decides a scan's saved state: the model's weights,
    the images and labels, the classes, the settings, the seed and ``extra``
    (JSON-ready values such as the batch size). The blend probe's switch is left out:
    it reads the saved translations and changes nothing they hold."""
    h = hashlib.sha256()
    for a in [*(np.asarray(w) for w in model.get_weights()), np.asarray(x), np.asarray(y)]:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    settings = {k: v for k, v in config.to_dict().items() if k != "wi_blend"}
    h.update(json.dumps([list(map(int, classes)), settings, seed, *extra], sort_keys=True).encode())
    return h.hexdigest()[:16]


def load_state(path, key):
    """The per-class stage-1 results saved at ``path`` by a scan with fingerprint ``key``
    (``{}`` when there is no file); a file from another scan is a one-line error."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            state = json.load(f)
        saved, results = state["fingerprint"], state["classes"]
    except (*_STATE_ERRORS, TypeError):
        raise AegisError(f"--resume: {path} is not a scan state file; delete it to start afresh") from None
    _refuse(path, saved, key)
    return {int(c): r for c, r in results.items()}


def save_state(path, key, results):
    """Write stage 1's per-class results (atomically)."""
    write_json(path, {"fingerprint": key, "stage": 1, "classes": {str(c): r for c, r in sorted(results.items())}})


def _refuse(path, saved, key):
    if saved != key:
        raise AegisError(f"--resume: {path} belongs to another scan (other model, data, classes, seed, batch size "
                         "or settings); delete it or use another --out-dir")


def _load_npz_state(path, key, read):
    """``read(npz)`` of the state file at ``path`` written by the scan with fingerprint
    ``key`` (``None`` when there is no file); another scan's file is a one-line error."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            saved, value = str(f["fingerprint"]), read(f)
    except _STATE_ERRORS:
        raise AegisError(f"--resume: {path} is not a scan state file; delete it to start afresh") from None
    _refuse(path, saved, key)
    return value


def _save_npz_state(path, key, arrays):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, fingerprint=np.array(key), **arrays)
    os.replace(tmp, path)


def load_rows(folder, key):
    """The translations an interrupted full scan with fingerprint ``key`` saved in
    ``folder`` (one ``rows_<first row>.npy`` per chunk), joined; ``None`` when there
    are none. Another scan's folder is a one-line error."""
    if not os.path.isdir(folder):
        return None
    try:
        with open(os.path.join(folder, "fingerprint")) as f:
            saved = f.read().strip()
        _refuse(folder, saved, key)
        parts, n = [], 0
        while os.path.exists(os.path.join(folder, f"rows_{n:09d}.npy")):  # contiguous chunks from row 0
            parts.append(np.load(os.path.join(folder, f"rows_{n:09d}.npy"), allow_pickle=False))
            n += len(parts[-1])
    except _STATE_ERRORS:
        raise AegisError(f"--resume: {folder} is not a scan state folder; delete it to start afresh") from None
    return np.concatenate(parts) if parts else None


def save_rows(folder, key, start, rows):
    """Save one chunk of a full scan's translations (``rows``, from row ``start``),
    atomically; the first chunk clears the folder of any earlier scan. Each chunk
    is written once, so the cost stays linear in the scan's size."""
    if start == 0 and os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)
    if start == 0:
        with open(os.path.join(folder, "fingerprint"), "w") as f:
            f.write(key)
    path = os.path.join(folder, f"rows_{start:09d}.npy")
    with open(path + ".tmp", "wb") as f:
        np.save(f, rows, allow_pickle=False)
    os.replace(path + ".tmp", path)


def load_stage2(path, key):
    """``{class: Translation}`` saved at ``path`` by an interrupted stage 2 with
    fingerprint ``key`` (``{}`` when there is none)."""
    from aegis_tf.detect.translation import Translation

    def read(f):
        return {int(c): Translation(f[f"images_{c}"], f[f"seeds_{c}"], float(f[f"reached_{c}"]), f[f"starts_{c}"])
                for c in f["classes"]}

    return _load_npz_state(path, key, read) or {}


def save_stage2(path, key, translations):
    """Write stage 2's translations so far (``{class: Translation}``, atomically)."""
    arrays = {"classes": np.array(sorted(translations), dtype="int64")}
    for c, t in translations.items():
        arrays.update({f"images_{c}": t.images, f"seeds_{c}": t.seeds, f"reached_{c}": np.array(t.reached),
                       f"starts_{c}": t.starts})
    _save_npz_state(path, key, arrays)


def stage1_table(results, scores, promoted):
    """The report's ``stages.stage1``: per-class scores of both signals, and what was promoted."""
    return {str(c): {"transfer_score": scores["patch_transfer"][c],
                     **({"whole_image_gap": scores["whole_image"][c]} if "whole_image" in scores else {}),
                     "reached": results[c]["reached"], "flip_norm": results[c]["flip_norm"],
                     "promoted": c in promoted}
            for c in sorted(results)}


def top_line(scores, n=5):
    """``7:0.30, 2:0.10`` for the ``n`` highest scores."""
    best = sorted(scores, key=lambda c: (-scores[c], c))[:n]
    return ", ".join(f"{c}:{scores[c]:.2f}" for c in best)
