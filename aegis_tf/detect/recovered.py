"""Triggers that detection recovered, saved so that repair can use them without attacker data.

Every detector's evidence for a flagged class becomes one
:class:`RecoveredTrigger`, a stack of ``variants`` applied by one formula::

    x' = clip((1 - mask) * x + mask * pattern + delta, 0, pixel_max)

* patch transfer: the patches (top pixels and their values) of the class's
  translations that moved the most probes; ``mask`` is 1 on the patch,
  ``delta`` is 0;
* the whole-image signal: the class's mean translation direction scaled to
  the norm that moved the probes; ``mask`` is 0, ``delta`` is that direction;
* the blend probe (full scans): the class's mean translated image as the
  ``pattern``, blended at the weight that moved the probes (``mask`` is that
  weight everywhere), ``delta`` is 0;
* Neural Cleanse, and the mask probe (its reverse engineering read by the gap): the
  reversed mask and pattern;
* the warp probe (full scans): the smooth field fitted toward the class, at the
  shift that moved the probes, as ``field`` (variants, H, W, 2: offsets in
  pixels, x then y); the image is warped by it first (bilinear, clamped to the
  image: :func:`aegis_tf.detect.warp_probe.warp_images`), ``mask`` and
  ``delta`` are 0.

On disk a trigger is ``trigger_<class>_<source>.json`` (how to apply it, its
target, the scan's pixel scale and the detector's evidence) beside
``..._mask.npy`` (variants, H, W, 1), ``..._pattern.npy`` and ``..._delta.npy``
(variants, H, W, C), in pixel units of ``pixel_max`` (and ``..._field.npy`` for a
warp). ``detect`` writes them
next to ``detect.json`` and lists them under ``"triggers"``.
"""

import dataclasses
import os

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import atomic_path, read_json, trigger_class, write_json

__all__ = ["RecoveredTrigger", "from_patch_transfer", "from_pair_transfer", "from_whole_image", "from_blend_probe",
           "from_neural_cleanse", "from_mask_probe", "from_pair_mask", "from_warp_probe", "save_triggers",
           "load_trigger", "triggers_from_detect_dir", "trigger_class", "FORMAT"]

FORMAT = "aegis-tf recovered trigger 1"
APPLY = "x' = clip((1 - mask) * x + mask * pattern + delta, 0, pixel_max), one variant per image, in turn"
APPLY_WARP = ("x' = clip((1 - mask) * w + mask * pattern + delta, 0, pixel_max) with w = x warped by field "
              "(offsets in pixels, x then y; bilinear, clamped to the image), one variant per image, in turn")


@dataclasses.dataclass
class RecoveredTrigger:
    """A trigger recovered for class ``target`` by the detector ``source``.

    ``mask`` has shape (variants, H, W, 1) in [0, 1]; ``pattern`` and
    ``delta`` have shape (variants, H, W, C) in pixel units of ``pixel_max``.
    ``evidence`` is what the detector measured (kept in the JSON). ``sources``: the
    classes whose images the trigger moves to ``target`` (a source-specific or all-to-all
    backdoor, found by the per-pair view); None means every other class. ``field``
    (variants, H, W, 2), offsets in pixels, or None: a warp applied before the rest.
    """

    target: int
    source: str
    mask: np.ndarray
    pattern: np.ndarray
    delta: np.ndarray
    pixel_max: float = 255.0
    evidence: dict = dataclasses.field(default_factory=dict)
    path: str = None
    sources: tuple = None
    field: np.ndarray = None

    def __post_init__(self):
        self.mask = np.asarray(self.mask, "float32")
        self.pattern = np.asarray(self.pattern, "float32")
        self.delta = np.asarray(self.delta, "float32")
        where = self.path or f"the {self.source} trigger"
        if not (np.isfinite(self.pixel_max) and self.pixel_max > 0):
            raise AegisError(f"{where}: pixel_max must be a positive number. Received: {self.pixel_max}")
        if self.mask.ndim != 4 or self.mask.shape[-1] != 1:
            raise AegisError(f"{where}: mask must have shape (variants, H, W, 1). Received: {self.mask.shape}")
        if self.pattern.shape != self.delta.shape or self.pattern.ndim != 4 or \
                self.pattern.shape[:3] != self.mask.shape[:3]:
            raise AegisError(f"{where}: pattern and delta must have shape (variants, H, W, C) matching the mask "
                             f"{self.mask.shape}. Received: {self.pattern.shape} and {self.delta.shape}")
        if self.field is not None:
            self.field = np.asarray(self.field, "float32")
            if self.field.shape != self.mask.shape[:3] + (2,):
                raise AegisError(f"{where}: field must have shape (variants, H, W, 2) matching the mask "
                                 f"{self.mask.shape}. Received: {self.field.shape}")
        arrays = (self.mask, self.pattern, self.delta) + (() if self.field is None else (self.field,))
        if not all(np.isfinite(a).all() for a in arrays):
            raise AegisError(f"{where}: mask, pattern, delta and field must be finite numbers (found NaN or inf)")
        if self.sources is not None:
            try:
                self.sources = tuple(sorted({int(s) for s in self.sources}))
            except (TypeError, ValueError):
                raise AegisError(f"{where}: sources must be a list of class numbers. Received: {self.sources!r}") \
                    from None
            if not self.sources or self.target in self.sources or min(self.sources) < 0:
                raise AegisError(f"{where}: sources must be non-negative classes other than the target "
                                 f"{self.target}. Received: {list(self.sources)}")

    @property
    def image_shape(self):
        return self.pattern.shape[1:]

    @property
    def n_variants(self):
        return len(self.mask)

    def rescaled(self, pixel_max):
        """The same trigger for data in [0, ``pixel_max``]."""
        f = np.float32(pixel_max / self.pixel_max)
        return dataclasses.replace(self, pattern=self.pattern * f, delta=self.delta * f, pixel_max=float(pixel_max))

    def check_fits(self, input_shape, num_classes, where):
        """Raise a one-line error unless the trigger fits a model's input shape and classes."""
        shape = tuple(int(s) for s in input_shape[1:])
        if tuple(self.image_shape) != shape:
            raise AegisError(f"{where}: the trigger is for {self._shape_text(self.image_shape)} images but the "
                             f"model takes {self._shape_text(shape)}")
        if not 0 <= self.target < num_classes:
            raise AegisError(f"{where}: the trigger's target class {self.target} is not one of the model's "
                             f"{num_classes} classes")
        if self.sources is not None and max(self.sources) >= num_classes:
            raise AegisError(f"{where}: the trigger's source class {max(self.sources)} is not one of the model's "
                             f"{num_classes} classes")
        return self

    @staticmethod
    def _shape_text(shape):
        return "x".join(str(s) for s in shape)

    def apply(self, x, *, offset=0):
        """``x`` with the trigger: image ``i`` gets variant ``(i + offset) % variants``."""
        x = np.asarray(x, "float32")
        v = (np.arange(len(x)) + offset) % self.n_variants
        if self.field is not None:
            from aegis_tf.detect.warp_probe import warp_images

            warped = np.empty_like(x)
            for k in np.unique(v):
                warped[v == k] = warp_images(x[v == k], self.field[k])
            x = warped
        m = self.mask[v]
        return np.clip((1.0 - m) * x + m * self.pattern[v] + self.delta[v], 0.0, self.pixel_max).astype("float32")

    def describe(self):
        what = {"patch_transfer": "patch", "whole_image": "whole-image direction", "blend_probe": "blend pattern",
                "neural_cleanse": "Neural Cleanse mask", "pair_transfer": "pair patch",
                "pair_breadth": "patch from many sources", "warp_probe": "warp field",
                "mask_probe": "reversed mask", "pair_mask": "reversed mask per source"}
        whose = f"{','.join(map(str, self.sources))} -> " if self.sources is not None else ""
        return f"{whose}class {self.target} {what.get(self.source, self.source)} ({self.n_variants} variant(s))"

    def save(self, folder):
        """Write the JSON and the three arrays into ``folder``; returns the JSON path."""
        stem = f"trigger_{self.target}_{self.source}"
        files = {}
        for name in ("mask", "pattern", "delta") + (() if self.field is None else ("field",)):
            files[name] = f"{stem}_{name}.npy"
            with atomic_path(os.path.join(folder, files[name])) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, getattr(self, name))
        path = os.path.join(folder, stem + ".json")
        write_json(path, {"format": FORMAT, "target": self.target, "source": self.source,
                          "sources": None if self.sources is None else list(self.sources),
                          "apply": APPLY if self.field is None else APPLY_WARP,
                          "pixel_max": self.pixel_max, "image_shape": list(self.image_shape),
                          "variants": self.n_variants, "files": files, "evidence": self.evidence})
        return path


def _load_array(folder, name, path):
    full = os.path.join(folder, name)
    try:
        return np.load(full, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise AegisError(f"{path}: cannot read {full} ({type(e).__name__}: {e})") from None


def load_trigger(path):
    """Read a trigger JSON written by :meth:`RecoveredTrigger.save` (arrays never unpickled)."""
    meta = read_json(path, "trigger file")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AegisError(f"{path} is not a trigger file written by aegis detect (expected format {FORMAT!r})")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        arrays = {k: _load_array(folder, meta["files"][k], path) for k in ("mask", "pattern", "delta")}
        if "field" in meta["files"]:
            arrays["field"] = _load_array(folder, meta["files"]["field"], path)
        return RecoveredTrigger(target=int(meta["target"]), source=str(meta["source"]),
                                pixel_max=float(meta["pixel_max"]), evidence=meta.get("evidence", {}), path=path,
                                sources=meta.get("sources"), **arrays)
    except (KeyError, TypeError, ValueError) as e:
        raise AegisError(f"{path}: missing or bad field in the trigger file ({e})") from None


def triggers_from_detect_dir(folder):
    """The triggers a ``detect --out-dir`` folder holds for its flagged classes.

    Raises a one-line error when the folder has no ``detect.json`` (naming the
    sub-folders of a scan of several models) or when the scan flagged nothing.
    """
    report_path = os.path.join(folder, "detect.json")
    if not os.path.isfile(report_path):
        subs = sorted(d for d in (os.listdir(folder) if os.path.isdir(folder) else [])
                      if os.path.isfile(os.path.join(folder, d, "detect.json")))
        hint = (f"; it holds scans of several models: use one of {', '.join(os.path.join(folder, d) for d in subs)}"
                if subs else "")
        raise AegisError(f"--trigger-from {folder}: no detect.json there (the folder `aegis detect --out-dir` "
                         f"writes){hint}")
    report = read_json(report_path, "the scan's report")
    verdict = report.get("verdict") if isinstance(report, dict) else None
    if not isinstance(verdict, dict):
        raise AegisError(f"{report_path} is not a report written by aegis detect (no verdict)")
    names = report.get("triggers") or []
    if not verdict.get("backdoored"):
        raise AegisError(f"--trigger-from {folder}: the scan flagged nothing ({verdict.get('line', 'no verdict')}), "
                         "so there is no recovered trigger to repair from")
    if not names:
        raise AegisError(f"--trigger-from {folder}: the scan flagged class(es) "
                         f"{', '.join(map(str, verdict.get('target_classes', [])))} but saved no trigger file: "
                         "a --score clusters scan recovers none, nor does a report from before trigger files")
    return [load_trigger(os.path.join(folder, n)) for n in names], report


def save_triggers(folder, triggers):
    """Save each trigger into ``folder``; returns their JSON file names (relative to ``folder``)."""
    return [os.path.basename(t.save(folder)) for t in triggers]


# -- from each detector ---------------------------------------------------------------------------------------------

def from_patch_transfer(transfer, translations, c, *, pixel_max, max_variants=8):
    """The patches of class ``c``'s translations that moved the most probes (those at or
    above the detector's ``flip_at``, best first, at most ``max_variants``)."""
    rates, pixels, _ = transfer.rates_[c]
    tr = translations[c]
    order = np.argsort(-np.asarray(rates), kind="stable")
    chosen = [i for i in order if rates[i] >= transfer.flip_at][:max_variants] or list(order[:1])
    n, (h, w, ch) = len(chosen), tr.images.shape[1:]
    mask = np.zeros((n, h * w, 1), "float32")
    pattern = np.zeros((n, h * w, ch), "float32")
    for j, i in enumerate(chosen):
        mask[j, pixels[i]] = 1.0
        pattern[j, pixels[i]] = np.asarray(tr.images[i], "float32").reshape(h * w, ch)[pixels[i]]
    return RecoveredTrigger(
        target=int(c), source="patch_transfer", mask=mask.reshape(n, h, w, 1), pattern=pattern.reshape(n, h, w, ch),
        delta=np.zeros((n, h, w, ch), "float32"), pixel_max=float(pixel_max),
        evidence={"transfer_score": float(transfer.scores_[c]), "probe_rates": [float(rates[i]) for i in chosen],
                  "pixels": [[int(p) for p in pixels[i]] for i in chosen]})


def from_pair_transfer(pairs, translations, y, target, *, pixel_max, max_variants=8, breadth=False):
    """The patches that moved the probes of each source class the per-pair view flagged for
    ``target`` (the translations from that source's seeds, best first, the sources in turn, at
    most ``max_variants``); the trigger applies to those ``sources`` only. With ``breadth``:
    the sources of the breadth rule (``pairs.broad_sources_``; saved as ``pair_breadth``)."""
    from aegis_tf.detect.patch_transfer import patch_pixels

    tr = translations[target]
    src = np.asarray(y)[tr.seeds]
    sources = (list(pairs.broad_sources_[target]) if breadth
               else sorted(s for s, t in pairs.flagged_pairs_ if t == target))
    queues = []
    for s in sources:
        rates = pairs.scan_rates((s, target))  # the second look's translations are not in ``translations``
        idx = np.nonzero(src == s)[0]
        order = np.argsort(-rates, kind="stable")
        queues.append([(int(idx[i]), float(rates[i]), s) for i in order if rates[i] >= pairs.flip_at])
    chosen = []
    while len(chosen) < max_variants and any(queues):  # the sources in turn
        for q in queues:
            if q and len(chosen) < max_variants:
                chosen.append(q.pop(0))
    if not chosen:
        raise AegisError(f"class {target}: the per-pair view flagged no pair toward it")
    n, (h, w, ch) = len(chosen), tr.images.shape[1:]
    mask = np.zeros((n, h * w, 1), "float32")
    pattern = np.zeros((n, h * w, ch), "float32")
    pixels = []
    for j, (i, _, _) in enumerate(chosen):
        px = patch_pixels(tr.images[i:i + 1], tr.starts[i:i + 1], pairs.top_frac)[0]
        mask[j, px] = 1.0
        pattern[j, px] = np.asarray(tr.images[i], "float32").reshape(h * w, ch)[px]
        pixels.append([int(p) for p in px])
    return RecoveredTrigger(
        target=int(target), source="pair_breadth" if breadth else "pair_transfer", mask=mask.reshape(n, h, w, 1),
        pattern=pattern.reshape(n, h, w, ch), delta=np.zeros((n, h, w, ch), "float32"), pixel_max=float(pixel_max),
        sources=sources,
        evidence={"pair_scores": {f"{s}->{target}": float(pairs.pairs_[(s, target)]) for s in sources},
                  "probe_rates": [r for _, r, _ in chosen], "variant_sources": [s for _, _, s in chosen],
                  "pixels": pixels})


def from_whole_image(whole, translations, c, *, pixel_max):
    """Class ``c``'s mean translation direction at the norm that moved the probes."""
    from aegis_tf.detect.whole_image import mean_direction

    delta, size = mean_direction(translations[c])
    unit = delta / size if size > 0 else delta
    d = (unit * np.float32(whole.norms_[c] * pixel_max))[None].astype("float32")
    return RecoveredTrigger(
        target=int(c), source="whole_image", mask=np.zeros(d.shape[:3] + (1,), "float32"),
        pattern=np.zeros_like(d), delta=d, pixel_max=float(pixel_max),
        evidence={"whole_image_gap": float(whole.scores_[c]), "flip_norm": float(whole.norms_[c])})


def from_blend_probe(blend, translations, c, *, pixel_max):
    """Class ``c``'s mean translated image, blended at the weight that moved the probes."""
    from aegis_tf.detect.whole_image import mean_translated

    pattern = mean_translated(translations[c])[None]
    return RecoveredTrigger(
        target=int(c), source="blend_probe", mask=np.full(pattern.shape[:3] + (1,), blend.norms_[c], "float32"),
        pattern=pattern, delta=np.zeros_like(pattern), pixel_max=float(pixel_max),
        evidence={"blend_gap": float(blend.scores_[c]), "blend_alpha": float(blend.norms_[c])})


def from_neural_cleanse(nc, c, *, pixel_max):
    """Neural Cleanse's reversed mask and pattern for class ``c``."""
    mask = np.asarray(nc.masks_[c], "float32")[None, ..., None]
    pattern = np.asarray(nc.patterns_[c], "float32")[None]
    return RecoveredTrigger(
        target=int(c), source="neural_cleanse", mask=mask, pattern=pattern, delta=np.zeros_like(pattern),
        pixel_max=float(pixel_max),
        evidence={"anomaly_index": float(nc.anomaly_index_[c]), "l1_norm": float(nc.l1_norms_[c])})


def from_mask_probe(det, c, *, pixel_max):
    """The mask probe's reversed mask and pattern for class ``c``."""
    return RecoveredTrigger(
        target=int(c), source="mask_probe", mask=np.asarray(det.masks_[c], "float32")[None, ..., None],
        pattern=np.asarray(det.patterns_[c], "float32")[None],
        delta=np.zeros((1, *np.shape(det.patterns_[c])), "float32"), pixel_max=float(pixel_max),
        evidence={"mask_gap": float(det.scores_[c]), "mask_l1": float(det.l1_norms_[c]),
                  "fresh_share": float(det.fresh_[c])})


def from_pair_mask(det, c, *, pixel_max):
    """The pair mask probe's reversed masks toward class ``c``: one variant per flagged source
    (its pair's mask and pattern), applying to those sources only."""
    sources = sorted(s for s, t in det.flagged_pairs_ if t == c)
    return RecoveredTrigger(
        target=int(c), source="pair_mask", sources=sources,
        mask=np.stack([np.asarray(det.masks_[(s, c)], "float32")[..., None] for s in sources]),
        pattern=np.stack([np.asarray(det.patterns_[(s, c)], "float32") for s in sources]),
        delta=np.zeros((len(sources), *np.shape(det.patterns_[(sources[0], c)])), "float32"),
        pixel_max=float(pixel_max),
        evidence={"pair_gaps": {f"{s}->{c}": float(det.pair_gaps_[(s, c)]) for s in sources},
                  "pair_norms": {f"{s}->{c}": float(det.pair_norms_[(s, c)]) for s in sources}})


def from_warp_probe(warp, c, *, pixel_max, image_shape):
    """Class ``c``'s fitted smooth field at the shift that moved the probes."""
    h, w, ch = image_shape
    field = warp.trigger_field(c)[None]
    zeros = np.zeros((1, h, w, ch), "float32")
    return RecoveredTrigger(
        target=int(c), source="warp_probe", mask=np.zeros((1, h, w, 1), "float32"), pattern=zeros, delta=zeros,
        pixel_max=float(pixel_max), field=field,
        evidence={"warp_gap": float(warp.scores_[c]), "warp_shift": float(warp.norms_[c]),
                  "max_shift_px": float(warp.max_shift_px_)})
