"""The warp probe: how small a smooth warp sends other classes' images to a class?

A warping trigger (WaNet, Nguyen & Tran 2021) adds no pixels: it moves them, by a
smooth field that is the same for every image. Patch transfer finds no patch in
it, and the additive and blended probes average translations whose common part
is not a warp. The warp probe asks the question of the whole-image signal
directly in the space of warps. For each class ``c`` it fits one smooth field
(a ``grid`` x ``grid`` control grid of offsets, upsampled bilinearly; the
attacker's own parameterisation) that sends ``n_fit`` clean images of other
classes to ``c``, its largest offset bounded by ``max_shift`` of the image side
(a fifth: 5.6 pixels on 28 x 28, 6.4 on 32 x 32). Then, on
``n_probes`` *fresh* images of other classes, it finds by bisection the
smallest scale of that field, in pixels of largest offset, that moves
``flip_at`` of them to ``c``. A backdoor's target is reached by a small warp;
an ordinary class needs a large one or none: a single field must carry images
of every class, which a per-image (adversarial) warp does not. The same
relative gap and threshold as the whole-image signal decide. A class that no
warp within the bound moves is a measurement here, not a saturation: on a
clean model every class stays at the bound and no class is named; a backdoor's
gap is then the bound over its own shift (at least 2 when it needs at most
half the bound). Classes tied below the bound are inconclusive
(:func:`aegis_tf.detect.whole_image.saturation`), and so is a model that gives
one class ``flip_at`` of the other classes' probes with no warp at all (a
collapsed model: no shift can be read).

The probe needs no translations, so it costs the same on any scan; it fits one
field per class, so a staged scan (hundreds of classes) runs it on every class only
when that fits its time budget (:func:`aegis_tf.detect.staged.probe_budget`), and
otherwise says "not run".

The gradient with respect to the field is taken through the bilinear sampling
in NumPy from the model's input gradient (:func:`aegis_tf.core.backend.input_gradient`),
so the probe needs nothing backend-specific.
"""

import time

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import logits_model, predict_labels
from aegis_tf.core.params import Interval
from aegis_tf.detect.neural_cleanse import OverBudget
from aegis_tf.detect.whole_image import WholeImageDetector, _smallest_moving

__all__ = ["upsampler", "warp_images", "fit_warp", "warp_shifts", "warp_probe_on", "WarpProbeDetector"]


def warp_probe_on(config):
    """Whether a scan runs the warp probe: ``warp_probe`` ``True`` or ``"auto"`` (a staged scan runs
    an ``"auto"`` probe on every class within ``probe_budget`` seconds:
    :func:`aegis_tf.detect.staged.probe_budget`)."""
    return config.warp_probe in (True, "auto")


def upsampler(n, grid):
    """The (n, grid) matrix of bilinear interpolation (corners aligned) from ``grid`` control points to ``n``."""
    pos = np.linspace(0.0, grid - 1.0, n)
    lo = np.minimum(np.floor(pos).astype(int), grid - 2)
    w = pos - lo
    m = np.zeros((n, grid), dtype="float32")
    m[np.arange(n), lo] = 1.0 - w
    m[np.arange(n), lo + 1] = w
    return m


def _field(control, uy, ux):
    """(H, W, 2) field in pixels from the (grid, grid, 2) control offsets."""
    return np.stack([uy @ control[..., k] @ ux.T for k in range(2)], axis=-1).astype("float32")


def warp_images(x, field, *, with_grad=False):
    """Bilinear sampling of each image of ``x`` (N, H, W, C) at the identity grid plus
    ``field`` ((H, W, 2) offsets in pixels, x then y), clamped to the image. With
    ``with_grad``, also the derivatives of the output with respect to the x and y offsets
    (each (N, H, W, C); zero where the sample is clamped)."""
    x = np.asarray(x, dtype="float32")
    n, h, w, _ = x.shape
    ys, xs = np.meshgrid(np.arange(h, dtype="float32"), np.arange(w, dtype="float32"), indexing="ij")
    px_raw, py_raw = xs + field[..., 0], ys + field[..., 1]
    px, py = np.clip(px_raw, 0, w - 1), np.clip(py_raw, 0, h - 1)
    x0 = np.minimum(np.floor(px).astype(int), w - 2)
    y0 = np.minimum(np.floor(py).astype(int), h - 2)
    wx, wy = (px - x0)[None, ..., None], (py - y0)[None, ..., None]
    a, b = x[:, y0, x0], x[:, y0, x0 + 1]
    c, d = x[:, y0 + 1, x0], x[:, y0 + 1, x0 + 1]
    top, bottom = a + wx * (b - a), c + wx * (d - c)
    out = top + wy * (bottom - top)
    if not with_grad:
        return out
    inside_x = ((px_raw >= 0) & (px_raw <= w - 1))[None, ..., None]
    inside_y = ((py_raw >= 0) & (py_raw <= h - 1))[None, ..., None]
    dx = ((1 - wy) * (b - a) + wy * (d - c)) * inside_x
    dy = (bottom - top) * inside_y
    return out, dx, dy


def fit_warp(model, images, target, *, grid=4, max_shift=3.0, steps=60, lr=None, confident=0.9, shrink=0.01,
             batch_size=512):
    """A small smooth field (``grid`` x ``grid`` control offsets, largest ``max_shift``
    pixels) that sends ``images`` to ``target``, by projected Adam from no warp on the
    cross-entropy of the images not yet given ``confident`` probability of the target
    (those already there push no further), each step shrinking the offsets by
    ``shrink``: the field stops growing once it works. Returns the (H, W, 2) field in pixels."""
    from aegis_tf.core import backend

    logits = logits_model(model)
    n, h, w, _ = np.shape(images)
    uy, ux = upsampler(h, grid), upsampler(w, grid)
    control = np.zeros((grid, grid, 2), dtype="float32")
    m, v = np.zeros_like(control), np.zeros_like(control)
    lr = max_shift / 20.0 if lr is None else lr
    done_below = -np.log(confident)
    target = np.full(n, target, dtype="int64")
    for t in range(1, steps + 1):
        field = _field(control, uy, ux)
        out, dx, dy = warp_images(images, field, with_grad=True)
        grads = []
        for s in range(0, n, batch_size):
            g, loss = backend.input_gradient(logits, out[s:s + batch_size], target[s:s + batch_size])
            keep = (np.asarray(loss) > done_below).astype("float32")
            grads.append(np.asarray(g) * keep[:, None, None, None])
        g = np.concatenate(grads)
        gfield = np.stack([np.sum(g * dx, axis=(0, 3)), np.sum(g * dy, axis=(0, 3))], axis=-1) / n
        gcontrol = np.stack([uy.T @ gfield[..., k] @ ux for k in range(2)], axis=-1)
        m = 0.9 * m + 0.1 * gcontrol
        v = 0.999 * v + 0.001 * gcontrol ** 2
        step = lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        control = np.clip((control - step) * (1.0 - shrink), -max_shift, max_shift).astype("float32")
    return _field(control, uy, ux)


def _other_images(x, y, c, n, rng):
    pool = np.nonzero(y != c)[0]
    return np.asarray(x[rng.choice(pool, size=min(n, len(pool)), replace=False)], "float32")


def warp_shifts(model, x, y, classes, *, grid=4, max_shift=3.0, n_fit=32, n_probes=50, flip_at=0.9, steps=60,
                seed=0, batch_size=512, iters=12, budget_s=None):
    """Per class, the smallest largest-offset (pixels) of its fitted field (:func:`fit_warp`,
    on ``n_fit`` images of other classes) that moves ``flip_at`` of ``n_probes`` fresh
    images of other classes to it. Returns ``({c: (shift, share)}, {c: field}, {c: unwarped})``; a
    class the full field does not move gets ``max_shift``; ``unwarped`` is the share of its probes
    the model gives it with no warp at all. With ``budget_s``, the second class's fit (the first
    compiles) projects the fits of every class, and :class:`~aegis_tf.detect.neural_cleanse.OverBudget`
    is raised there when they would take longer."""
    rng = np.random.default_rng(seed + 11)
    fields, units, peaks = {}, [], []
    took = []
    for i, c in enumerate(classes):
        started = time.perf_counter()
        f = fit_warp(model, _other_images(x, y, c, n_fit, rng), c, grid=grid, max_shift=max_shift, steps=steps,
                     batch_size=batch_size)
        fields[c] = f
        peak = float(np.max(np.abs(f)))
        peaks.append(peak)
        units.append(f / peak if peak > 0 else f)
        took.append(time.perf_counter() - started)
        if budget_s is not None and i == 1 and took[0] + took[1] * (len(classes) - 1) > budget_s:
            raise OverBudget(took[0] + took[1] * (len(classes) - 1))
    probes = [_other_images(x, y, c, n_probes, rng) for c in classes]
    plain = predict_labels(model, np.concatenate(probes), batch_size=batch_size)
    starts = np.cumsum([0] + [len(p) for p in probes])
    unwarped = {c: float(np.mean(plain[starts[i]:starts[i + 1]] == c)) for i, c in enumerate(classes)}
    # beyond its own size a field is not scaled up: it is the fitted field, which must move the probes itself
    hi, best = _smallest_moving(model, classes, probes, lambda i, p, r: warp_images(p, min(r, peaks[i]) * units[i]),
                                max_shift,
                                flip_at=flip_at, batch_size=batch_size, iters=iters)
    return {c: (float(hi[i]), float(best[i])) for i, c in enumerate(classes)}, fields, unwarped


class WarpProbeDetector(WholeImageDetector):
    """The whole-image signal in the space of smooth warps (see the module docstring):
    ``norms_`` holds each class's smallest moving shift (pixels), ``scores_`` its gap
    (the smallest other shift over its own), flagged at ``threshold``; ``fields_`` the
    fitted fields ((H, W, 2) offsets in pixels), ``max_shift_px_`` the bound in pixels
    (``max_shift`` times the smaller image side)."""

    _parameter_constraints = {
        **WholeImageDetector._parameter_constraints,
        "grid": [Interval(int, 2, None)],
        "max_shift": [Interval(float, 0, 1, closed="right")],
        "n_fit": [Interval(int, 1, None)],
        "steps": [Interval(int, 1, None)],
        "budget_s": [None, Interval(float, 0, None, closed="neither")],
    }
    score_name = "warp_gap"
    _measure_name = "warp_shift"
    # Every class at the bound is the clean answer, not a saturation (module docstring): only ties
    # below the bound make the probe inconclusive.
    _resolved_below = float("inf")

    def __init__(self, *, n_probes=50, flip_at=0.9, threshold=2.0, grid=4, max_shift=0.2, n_fit=32, steps=60,
                 budget_s=None, translation=None, pixel_max=255.0, random_state=0, batch_size=512):
        super().__init__(n_probes=n_probes, flip_at=flip_at, threshold=threshold, translation=translation,
                         pixel_max=pixel_max, random_state=random_state, batch_size=batch_size)
        self.grid = grid
        self.max_shift = max_shift
        self.n_fit = n_fit
        self.steps = steps
        self.budget_s = budget_s

    @classmethod
    def from_config(cls, config, **kwargs):
        """The probe as a scan runs it with a :class:`~aegis_tf.detect.config.DetectConfig`."""
        return cls(n_probes=config.wi_probes, flip_at=config.flip_at, threshold=config.wi_threshold,
                   grid=config.warp_grid, max_shift=config.warp_max_shift, n_fit=config.warp_fit,
                   steps=config.warp_steps, **kwargs)

    def _ceiling(self, x):
        return float(self.max_shift) * float(min(np.shape(x)[1:3]))

    def fit(self, model, x, y, classes, *, translations=None, screen_gaps=None, screen_threshold=None):
        """Fit a field per class of ``classes`` and score them (``translations`` are not needed)."""
        self._validate_params()
        h, w = np.shape(x)[1:3]
        if self.grid > min(h, w):
            raise AegisError(f"the warp probe's grid ({self.grid}) must not exceed the image side ({min(h, w)})")
        self.max_shift_px_ = self._ceiling(x)
        try:
            measured, self.fields_, self.unwarped_ = warp_shifts(
                model, x, y, list(classes), grid=self.grid, max_shift=self.max_shift_px_, n_fit=self.n_fit,
                n_probes=self.n_probes, flip_at=self.flip_at, steps=self.steps, seed=self.random_state,
                batch_size=self.batch_size, budget_s=self.budget_s)
        except OverBudget as e:
            self.fields_, self.unwarped_ = {}, {}
            return self._over_budget(classes, e.projected_s)
        self.shares_ = {c: s for c, (_, s) in measured.items()}
        self.fit_norms({c: n for c, (n, _) in measured.items()}, screen_gaps=screen_gaps,
                       screen_threshold=screen_threshold, ceiling=self.max_shift_px_)
        given = {c: s for c, s in self.unwarped_.items() if s >= self.flip_at}
        if given:  # a class the model gives other classes' images without any warp: nothing to measure
            c, share = max(given.items(), key=lambda kv: kv[1])
            self.inconclusive_ = (f"class {c} takes {100 * share:.0f}% of other classes' probes with no warp at all: "
                                  "the model gives it nearly every image, so no shift can be read")
            self.suspect_classes_, self.is_backdoored_ = [], False
        return self

    def trigger_field(self, c):
        """Class ``c``'s fitted field scaled to the shift that moved the probes ((H, W, 2), pixels)."""
        f = self.fields_[c]
        peak = float(np.max(np.abs(f)))
        return (f * (min(self.norms_[c], peak) / peak if peak > 0 else 0.0)).astype("float32")
