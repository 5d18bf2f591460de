"""Backdoor triggers and data poisoning.

A trigger is a function of an NHWC image batch that returns a new, triggered
batch; the input is never changed. Pixel values are in the units of the data
(``value=250`` for raw 0-255 pixels; pass ``value=250/255`` for unit-scaled).
"""

import numpy as np

from aegis_tf.errors import AegisError

__all__ = ["localised", "distributed", "TRIGGERS", "get_trigger", "poison"]


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


TRIGGERS = {"localised": localised, "distributed": distributed}


def get_trigger(name):
    try:
        return TRIGGERS[name]
    except KeyError:
        raise AegisError(f"trigger must be one of {', '.join(TRIGGERS)}. Received: {name!r}") from None


def poison(x, y, *, trigger, poison_rate, target_label, mode="append", seed=0, **trigger_kwargs):
    """Poison a training set.

    ``poison_rate`` of the images whose label is not ``target_label`` get the
    trigger and the target label. ``mode="append"`` adds them to the set;
    ``mode="replace"`` puts them in place of their clean originals. Returns
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
