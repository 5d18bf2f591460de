"""Backdoor triggers and data poisoning.

A trigger is a function of an NHWC image batch that returns a new, triggered
batch; the input is never changed. Pixel values are in the units of the data
(``value=250`` for raw 0-255 pixels; pass ``value=250/255`` for unit-scaled).
"""

import os

import numpy as np

from aegis_tf.core.errors import AegisError

__all__ = [
    "localised",
    "distributed",
    "static_pattern",
    "invisible_static",
    "universal_perturbation",
    "invisible_adversarial",
    "blend_pattern",
    "blended",
    "load_blend_pattern",
    "random_position",
    "warp_field",
    "warp",
    "TRIGGERS",
    "make_trigger",
    "build_trigger",
    "get_trigger",
    "poison",
    "poison_backdoor",
    "backdoor_labels",
]


def _check_batch(x):
    x = np.asarray(x)
    if x.ndim != 4:
        raise AegisError(f"a trigger takes an image batch (N, H, W, C). Received shape {x.shape}")
    return x


def localised(x, *, size=2, value=250.0, margin=0):
    """A ``size`` x ``size`` square of ``value`` at the bottom-right corner.

    The AEGIS authors used 2x2 pixels at 250 on 28x28 MNIST (0.5% of the image).
    ``margin`` moves the square that many pixels in from the corner.
    """
    x = _check_batch(x).copy()
    h, w = x.shape[1:3]
    if size < 1 or size + margin > min(h, w):
        raise AegisError(f"trigger size must be 1..{min(h, w) - margin}. Received: {size}")
    x[:, h - margin - size:h - margin, w - margin - size:w - margin, :] = value
    return x


def distributed(x, *, size=2, value=250.0, offset=1):
    """Two ``size`` x ``size`` squares, near the top-left and the bottom-right.

    On 28x28 MNIST the authors drew pixels (1,1)-(2,2) and (24,24)-(25,25): that is
    ``size=2, offset=1`` at the top left, and ``offset + 1`` pixels in from the
    bottom-right corner.
    """
    x = _check_batch(x).copy()
    h, w = x.shape[1:3]
    if size < 1 or 2 * (size + offset + 1) > min(h, w):
        raise AegisError(f"trigger squares of size {size} at offset {offset} do not fit {h}x{w} images")
    x[:, offset:offset + size, offset:offset + size, :] = value
    end_h, end_w = h - offset - 2, w - offset - 2
    x[:, end_h - size + 1:end_h + 1, end_w - size + 1:end_w + 1, :] = value
    return x


def static_pattern(shape, *, amplitude=8.0, seed=0):
    """A fixed pattern of +-``amplitude`` per pixel, drawn once from ``seed``.

    ``shape`` is (H, W, C). The same seed always gives the same pattern.
    """
    rng = np.random.default_rng(seed)
    return (amplitude * rng.choice([-1.0, 1.0], size=tuple(shape))).astype("float32")


def invisible_static(x, *, amplitude=8.0, seed=0, pattern=None, clip_min=0.0, clip_max=255.0):
    """Zhong et al. 2020 static invisible trigger: a fixed low-amplitude pattern
    over the whole image, then clipped to [clip_min, clip_max].

    The default +-8 on 0-255 pixels is about 3% of the range per pixel.
    ``pattern`` overrides the seeded one.
    """
    x = _check_batch(x)
    if pattern is None:
        pattern = static_pattern(x.shape[1:], amplitude=amplitude, seed=seed)
    return np.clip(x.astype("float32") + pattern, clip_min, clip_max)


def universal_perturbation(model, x, target_label, *, eps, step_size, steps=50, norm=np.inf, clip_min=0.0,
                           clip_max=255.0, batch_size=128, seed=0):
    """Zhong et al. 2020 adversarial invisible trigger: one perturbation, bounded by
    ``eps`` in ``norm``, that pushes the images ``x`` toward ``target_label``.

    Each of ``steps`` iterations averages the targeted gradient over a batch of
    ``x`` drawn with ``seed``, steps, and projects onto the ``eps`` ball, so the
    result is reproducible by seed. Returns the (H, W, C) pattern.
    """
    from aegis_tf.core import backend
    from aegis_tf.core.pgd import make_step
    from aegis_tf.core.models import logits_model

    x = np.asarray(x, dtype="float32")
    step = make_step(norm=norm, eps=eps, step_size=step_size, clip_min=-np.inf, clip_max=np.inf)
    rng = np.random.default_rng(seed)
    delta = np.zeros((1,) + x.shape[1:], dtype="float32")
    logits = logits_model(model)
    target = np.full(min(batch_size, len(x)), target_label, dtype="int64")
    for _ in range(steps):
        idx = rng.choice(len(x), size=len(target), replace=False)
        xb = np.clip(x[idx] + delta, clip_min, clip_max)
        grad, _ = backend.input_gradient(logits, xb, target)
        g = -np.asarray(grad).mean(axis=0, keepdims=True)  # lower the target loss
        delta = np.asarray(step.project(step.step(delta, g), np.zeros_like(delta)))
    return delta[0]


def invisible_adversarial(x, *, pattern, clip_min=0.0, clip_max=255.0):
    """Add a universal perturbation from :func:`universal_perturbation`, then clip."""
    x = _check_batch(x)
    pattern = np.asarray(pattern, dtype="float32")
    if pattern.shape != x.shape[1:]:
        raise AegisError(f"trigger pattern has shape {pattern.shape}; the images are {x.shape[1:]}")
    return np.clip(x.astype("float32") + pattern, clip_min, clip_max)


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)) \
            or not 0.0 < alpha <= 1.0:
        raise AegisError(f"blend alpha must lie in (0, 1]. Received: {alpha!r}")
    return float(alpha)


def _check_image_shape(shape):
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3:
        raise AegisError(f"a blend pattern is made for images (H, W, C). Received shape {shape}")
    return shape


def blend_pattern(shape, *, seed=0, pixel_max=255.0):
    """Chen et al. 2017 random-noise blend pattern: uniform over [0, ``pixel_max``].

    ``shape`` is the image shape (H, W, C). The same seed always gives the same
    pattern; save it (``np.save``) to blend the same pattern elsewhere.
    """
    shape = _check_image_shape(shape)
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, pixel_max, size=shape).astype("float32")


def _check_blend_pattern(pattern, shape, pixel_max, source="blend pattern"):
    """``pattern`` as float32 (H, W, C); an (H, W) pattern is repeated over the channels."""
    pattern = np.asarray(pattern)
    h, w, c = shape
    if not (np.issubdtype(pattern.dtype, np.integer) or np.issubdtype(pattern.dtype, np.floating)):
        raise AegisError(f"{source} must hold real numbers. Received dtype {pattern.dtype}")
    if pattern.shape == (h, w):
        pattern = pattern[..., None]
    if pattern.shape not in ((h, w, c), (h, w, 1)):
        raise AegisError(f"{source} must have shape {(h, w, c)} or {(h, w)} to fit the images. "
                         f"Received shape {pattern.shape}")
    pattern = np.broadcast_to(pattern.astype("float32"), (h, w, c))
    if not np.all(np.isfinite(pattern)) or pattern.min() < 0 or pattern.max() > pixel_max:
        raise AegisError(f"{source} values must lie in [0, {pixel_max:g}] (the data's pixel units). "
                         f"Received values from {pattern.min():g} to {pattern.max():g}")
    return pattern


def blended(x, *, alpha=0.15, pattern=None, seed=0, pixel_max=255.0):
    """Chen et al. 2017 blended trigger (BackdoorBench "blended"):
    ``(1 - alpha) * x + alpha * pattern``, clipped to [0, ``pixel_max``].

    ``pattern`` is a full image in the data's pixel units, (H, W, C) or (H, W)
    (the same for every channel); by default the seeded noise of
    :func:`blend_pattern`. ``alpha`` lies in (0, 1]; BackdoorBench uses 0.2,
    Chen et al. 0.05-0.2 for noise.
    """
    x = _check_batch(x)
    alpha = _check_alpha(alpha)
    shape = x.shape[1:]
    if pattern is None:
        pattern = blend_pattern(shape, seed=seed, pixel_max=pixel_max)
    else:
        pattern = _check_blend_pattern(pattern, shape, pixel_max)
    out = np.float32(1.0 - alpha) * x.astype("float32") + np.float32(alpha) * pattern
    return np.clip(out, 0.0, pixel_max)  # only rounding can leave the range when x lies in it


def load_blend_pattern(spec, shape, *, seed=0, pixel_max=255.0):
    """The blend pattern ``spec`` names, as float32 (H, W, C) for images of ``shape``.

    ``spec`` is ``"noise"`` (the seeded :func:`blend_pattern`) or a ``.npy``
    file of shape (H, W, C) or (H, W), in the data's pixel units. Never
    unpickles.
    """
    shape = _check_image_shape(shape)
    if spec == "noise":
        return blend_pattern(shape, seed=seed, pixel_max=pixel_max)
    path = os.fspath(spec)
    if not path.endswith(".npy"):
        raise AegisError(f"blend pattern must be noise or a .npy file. Received: {path!r}")
    if not os.path.isfile(path):
        raise AegisError(f"blend pattern file not found: {path} (expected a .npy array of shape (H, W, C) or (H, W))")
    try:
        pattern = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AegisError(f"cannot read blend pattern {path} as .npy: {detail}") from None
    return _check_blend_pattern(pattern, shape, pixel_max, source=f"blend pattern {path}").copy()


def random_position(x, *, size=3, value=250.0, seed=0):
    """Position-free patch: a ``size`` x ``size`` square of ``value`` at a random place
    in each image, drawn from ``seed`` (the same batch and seed give the same places)."""
    x = _check_batch(x).copy()
    n, h, w = x.shape[:3]
    if size < 1 or size > min(h, w):
        raise AegisError(f"trigger size must be 1..{min(h, w)}. Received: {size}")
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, h - size + 1, size=n), rng.integers(0, w - size + 1, size=n)
    for i, (r, c) in enumerate(zip(rows, cols)):
        x[i, r:r + size, c:c + size, :] = value
    return x


def warp_field(image_shape, *, grid=4, strength=0.5, seed=0):
    """WaNet's fixed warping field (Nguyen & Tran 2021) for images of ``image_shape``
    (H, W, C): a ``grid`` x ``grid`` control grid of random offsets, normalised by their
    mean magnitude, upsampled bicubically to H x W and scaled by ``strength / H``, in the
    normalised [-1, 1] coordinates of the image. Returns (H, W, 2) float32 (dx, dy)."""
    import cv2

    h, w = int(image_shape[0]), int(image_shape[1])
    if grid < 2 or grid > min(h, w):
        raise AegisError(f"warp grid must be 2..{min(h, w)}. Received: {grid}")
    if not strength > 0:
        raise AegisError(f"warp strength must be positive. Received: {strength}")
    rng = np.random.default_rng(seed)
    ins = rng.uniform(-1.0, 1.0, size=(grid, grid, 2)).astype("float32")
    ins /= np.mean(np.abs(ins))
    up = cv2.resize(ins, (w, h), interpolation=cv2.INTER_CUBIC)
    return (np.float32(strength) * up / np.float32(h)).astype("float32")


def warp(x, *, field, noise_seed=None, pixel_max=255.0):
    """Warp each image of ``x`` by ``field`` (:func:`warp_field`): bilinear sampling at
    the identity grid plus the field, clamped to the image. With ``noise_seed``, each
    image's field gets its own uniform noise in [-1/H, 1/H] on top (WaNet's noise mode,
    whose images keep their labels so that only the fixed warp is learned)."""
    import cv2

    x = _check_batch(x)
    n, h, w, c = x.shape
    field = np.asarray(field, dtype="float32")
    if field.shape != (h, w, 2):
        raise AegisError(f"warp field has shape {field.shape}; the images need {(h, w, 2)}")
    ys, xs = np.meshgrid(np.linspace(-1, 1, h, dtype="float32"), np.linspace(-1, 1, w, dtype="float32"),
                         indexing="ij")
    rng = None if noise_seed is None else np.random.default_rng(noise_seed)
    out = np.empty((n, h, w, c), dtype="float32")
    src = x.astype("float32")
    for i in range(n):
        f = field if rng is None else field + rng.uniform(-1.0, 1.0, size=(h, w, 2)).astype("float32") / h
        gx, gy = np.clip(xs + f[..., 0], -1, 1), np.clip(ys + f[..., 1], -1, 1)
        map_x, map_y = (gx + 1) * np.float32((w - 1) / 2), (gy + 1) * np.float32((h - 1) / 2)
        img = cv2.remap(src[i], map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out[i] = img.reshape(h, w, c)
    return np.clip(out, 0.0, pixel_max)


TRIGGERS = {
    "localised": localised,
    "distributed": distributed,
    "invisible-static": invisible_static,
    "invisible-adversarial": invisible_adversarial,
    "blended": blended,
    "warp": warp,
    "random-position": random_position,
}


def get_trigger(name):
    try:
        return TRIGGERS[name]
    except KeyError:
        raise AegisError(f"trigger must be one of {', '.join(TRIGGERS)}. Received: {name!r}") from None


def poison(x, y, *, trigger, poison_rate, target_label, mode="append", seed=0, **trigger_kwargs):
    """Poison a training set.

    ``poison_rate`` of the images whose label is not ``target_label`` get the
    trigger and the target label. ``mode="append"`` adds them to the set;
    ``mode="replace"`` puts them in place of their clean originals. The paper
    used 1% for visible triggers and 30% for invisible ones. Returns
    ``(x_poisoned, y_poisoned, indices)``, ``indices`` being the chosen images.
    """
    if not 0.0 <= poison_rate <= 1.0:
        raise AegisError(f"poison_rate must lie in [0, 1]. Received: {poison_rate}")
    if mode not in ("append", "replace"):
        raise AegisError(f"mode must be append or replace. Received: {mode!r}")
    fn = get_trigger(trigger) if isinstance(trigger, str) else trigger
    rng = np.random.default_rng(seed)
    candidates = np.nonzero(np.asarray(y) != target_label)[0]
    n = int(round(poison_rate * len(x)))
    n = min(n, len(candidates))
    idx = np.sort(rng.choice(candidates, size=n, replace=False))
    x_trig = fn(x[idx], **trigger_kwargs)
    y_trig = np.full(n, target_label, dtype=np.asarray(y).dtype)
    if mode == "append":
        return np.concatenate([x, x_trig]), np.concatenate([y, y_trig]), idx
    x_out, y_out = np.array(x, copy=True), np.array(y, copy=True)
    x_out[idx], y_out[idx] = x_trig, y_trig
    return x_out, y_out, idx


def make_trigger(name, *, pixel_max=255.0, size=2, value=250.0 / 255.0, amplitude=8.0 / 255.0, seed=0,
                 pattern=None, shape=None, alpha=0.15, margin=0):  # noqa: C901 (one branch per family)
    """A ready trigger function ``x -> triggered x`` for data in [0, ``pixel_max``].

    ``value`` and ``amplitude`` are in units of [0, 1] and scaled by
    ``pixel_max``; ``invisible-adversarial`` needs its ``pattern`` (see
    :func:`universal_perturbation`). ``blended`` blends ``pattern`` (in the
    data's pixel units; see :func:`load_blend_pattern`), or the noise of
    :func:`blend_pattern` drawn from ``seed`` when it is None, with weight ``alpha``.
    ``margin`` moves localised's square in from the corner.
    """
    fn = get_trigger(name)
    if name == "localised":
        return lambda x: fn(x, size=size, value=value * pixel_max, margin=margin)
    if name == "distributed":
        return lambda x: fn(x, size=size, value=value * pixel_max)
    if name == "invisible-static":
        return lambda x: fn(x, amplitude=amplitude * pixel_max, seed=seed, clip_min=0.0, clip_max=pixel_max)
    if name == "blended":
        alpha = _check_alpha(alpha)
        return lambda x: fn(x, alpha=alpha, pattern=pattern, seed=seed, pixel_max=pixel_max)
    if name == "random-position":
        return lambda x: fn(x, size=size, value=value * pixel_max, seed=seed)
    if name == "warp":
        if pattern is None:
            raise AegisError("the warp trigger needs its field (warp_field)")
        return lambda x: fn(x, field=pattern, pixel_max=pixel_max)
    if pattern is None:
        raise AegisError("the invisible-adversarial trigger needs a pattern: pass --trigger-pattern FILE.npy "
                         "or --trigger-model M to compute one")
    return lambda x: fn(x, pattern=pattern, clip_min=0.0, clip_max=pixel_max)


def build_trigger(spec, *, pixel_max, x_sample=None, model=None):
    """The trigger function a :class:`~aegis_tf.attack.config.TriggerConfig` describes,
    and its pattern (invisible-adversarial and blended; else None).

    An invisible-adversarial pattern is read from ``spec.trigger_pattern`` or
    computed on ``x_sample`` against ``spec.trigger_model`` (or ``model``).
    """
    pattern = None
    if spec.trigger == "invisible-adversarial":
        if spec.trigger_pattern:
            try:
                pattern = np.load(spec.trigger_pattern, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise AegisError(f"cannot read trigger pattern {spec.trigger_pattern}: {e}") from None
        else:
            if spec.trigger_model:
                from aegis_tf.core.models import load_model

                model = load_model(spec.trigger_model)
            if model is None or x_sample is None:
                raise AegisError("the invisible-adversarial trigger needs --trigger-pattern FILE.npy or --trigger-model M")
            eps = spec.trigger_eps * pixel_max
            pattern = universal_perturbation(model, x_sample, spec.target_label, eps=eps, step_size=eps / 10,
                                             steps=50, norm=np.inf, clip_min=0.0, clip_max=pixel_max,
                                             seed=spec.trigger_seed)
    elif spec.trigger == "blended":
        if x_sample is None:
            raise AegisError("the blended trigger needs images to know the pattern's shape")
        pattern = load_blend_pattern(spec.blend_pattern, x_sample.shape[1:], seed=spec.trigger_seed,
                                     pixel_max=pixel_max)
    elif spec.trigger == "warp":
        if x_sample is None:
            raise AegisError("the warp trigger needs images to know the field's shape")
        pattern = warp_field(x_sample.shape[1:], grid=spec.warp_grid, strength=spec.warp_strength,
                             seed=spec.trigger_seed)
    fn = make_trigger(spec.trigger, pixel_max=pixel_max, size=spec.trigger_size, value=spec.trigger_value,
                      amplitude=spec.amplitude, seed=spec.trigger_seed, pattern=pattern, alpha=spec.blend_alpha,
                      margin=spec.trigger_margin)
    return fn, pattern


def backdoor_labels(y, *, target_label, mapping="all-to-one", n_classes=None):
    """The labels a backdoor sends the triggered images ``y`` to: ``target_label``, or
    ``(y + 1) mod n_classes`` for an all-to-all backdoor."""
    y = np.asarray(y)
    if mapping == "all-to-all":
        if not n_classes:
            raise AegisError("an all-to-all backdoor needs the number of classes")
        return ((y.astype("int64") + 1) % int(n_classes)).astype(y.dtype)
    return np.full(len(y), target_label, dtype=y.dtype)


def poison_backdoor(x, y, spec, *, trigger, poison_rate, n_classes, mode="append", seed=0, pixel_max=255.0):
    """Poison a training set with the backdoor a :class:`~aegis_tf.attack.config.TriggerConfig`
    ``spec`` describes (``trigger`` is its function, from :func:`build_trigger`).

    ``poison_rate`` of the set (images of the source classes, or of every class but the
    target) get the trigger and the backdoor's label (:func:`backdoor_labels`). A
    source-specific backdoor adds ``spec.cover_rate`` of the set as cover images of the
    other classes (not the target), triggered and keeping their labels; a warp trigger
    in noise mode adds ``spec.warp_cross_ratio`` times the poisoned count as images warped
    with a noisy field, keeping their labels. ``mode="append"`` adds every new image to
    the set; ``"replace"`` puts them in place of their originals. Returns
    ``(x_poisoned, y_poisoned, {"poisoned": idx, "cover": idx, "noise": idx})``.
    """
    if not 0.0 <= poison_rate <= 1.0:
        raise AegisError(f"poison_rate must lie in [0, 1]. Received: {poison_rate}")
    if mode not in ("append", "replace"):
        raise AegisError(f"mode must be append or replace. Received: {mode!r}")
    y = np.asarray(y)
    if spec.mapping == "all-to-one" and not 0 <= spec.target_label < n_classes:
        raise AegisError(f"target label must lie in 0..{n_classes - 1}. Received: {spec.target_label}")
    sources = spec.source_classes
    if sources is not None and max(sources) >= n_classes:
        raise AegisError(f"source classes must lie in 0..{n_classes - 1}. Received: {','.join(map(str, sources))}")
    rng = np.random.default_rng(seed)
    if spec.mapping == "all-to-all":
        candidates = np.arange(len(y))
    elif sources is not None:
        candidates = np.nonzero(np.isin(y, sources))[0]
    else:
        candidates = np.nonzero(y != spec.target_label)[0]
    n = min(int(round(poison_rate * len(x))), len(candidates))
    chosen = {"poisoned": np.sort(rng.choice(candidates, size=n, replace=False))}
    taken = set(chosen["poisoned"].tolist())
    if sources is not None and spec.cover_rate > 0:
        pool = np.array([i for i in np.nonzero(~np.isin(y, sources) & (y != spec.target_label))[0] if i not in taken])
        k = min(int(round(spec.cover_rate * len(x))), len(pool))
        chosen["cover"] = np.sort(rng.choice(pool, size=k, replace=False)) if k else np.zeros(0, "int64")
        taken.update(chosen["cover"].tolist())
    if spec.trigger == "warp" and spec.warp_cross_ratio > 0:
        pool = np.array([i for i in range(len(y)) if i not in taken])
        k = min(int(round(spec.warp_cross_ratio * n)), len(pool))
        chosen["noise"] = np.sort(rng.choice(pool, size=k, replace=False)) if k else np.zeros(0, "int64")
    parts_x, parts_y, parts_i = [], [], []
    p = chosen["poisoned"]
    parts_x.append(trigger(x[p]))
    parts_y.append(backdoor_labels(y[p], target_label=spec.target_label, mapping=spec.mapping, n_classes=n_classes))
    parts_i.append(p)
    if len(chosen.get("cover", ())):
        c = chosen["cover"]
        parts_x.append(trigger(x[c]))
        parts_y.append(y[c])
        parts_i.append(c)
    if len(chosen.get("noise", ())):
        z = chosen["noise"]
        field = warp_field(x.shape[1:], grid=spec.warp_grid, strength=spec.warp_strength, seed=spec.trigger_seed)
        parts_x.append(warp(x[z], field=field, noise_seed=seed + 1, pixel_max=pixel_max))
        parts_y.append(y[z])
        parts_i.append(z)
    x_new, y_new = np.concatenate(parts_x).astype(x.dtype), np.concatenate(parts_y).astype(y.dtype)
    if mode == "append":
        return np.concatenate([x, x_new]), np.concatenate([y, y_new]), chosen
    idx = np.concatenate(parts_i)
    x_out, y_out = np.array(x, copy=True), np.array(y, copy=True)
    x_out[idx], y_out[idx] = x_new, y_new
    return x_out, y_out, chosen
