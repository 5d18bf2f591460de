"""Training-time augmentation: random crop after zero padding, and horizontal flip.

The standard CIFAR recipe (pad 4, crop back to the input size, flip half the
images). Parameters are drawn on the host from the epoch's NumPy generator, so
a resumed run draws the same ones; the backends apply them (NumPy here for
TensorFlow, on the device for JAX).
"""

import numpy as np

__all__ = ["crop_flip_params", "apply_crop_flip"]


def crop_flip_params(n, rng, pad=4):
    """Per-example crop offsets in [0, 2*pad] and flip flags, as int32 arrays of length n."""
    offsets = rng.integers(0, 2 * pad + 1, size=(2, n)).astype("int32")
    flips = rng.integers(0, 2, size=n).astype("int32")
    return offsets[0], offsets[1], flips


def apply_crop_flip(x, oy, ox, flip, pad=4):
    """Crop each image of the NHWC batch ``x`` at (oy, ox) of its zero-padded copy; flip where ``flip``."""
    x = np.asarray(x)
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = oy[:, None] + np.arange(h)[None, :]
    cols = ox[:, None] + np.arange(w)[None, :]
    cols = np.where(flip[:, None].astype(bool), cols[:, ::-1], cols)
    return padded[np.arange(len(x))[:, None, None], rows[:, :, None], cols[:, None, :]]
