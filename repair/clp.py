"""Channel Lipschitzness-based Pruning (CLP): a repair that needs no data at all.

Zheng, Zhang, Wu and Chen, "Data-free Backdoor Removal based on Channel
Lipschitzness" (ECCV 2022). A backdoor makes a few channels react very
strongly to a small input pattern, which shows as a large Lipschitz constant
of those channels, readable from the weights alone. For each output channel
``k`` of a convolution the upper bound of its channel Lipschitz constant is

    UCLC_k = || W_k ||_2 * |gamma_k / sqrt(var_k + eps)|

the spectral norm (largest singular value) of the channel's kernel as a
``(kh * kw) x in_channels`` matrix, times the folded scale of the
BatchNormalization that directly follows the convolution (1 without one).
Within each layer, every channel with ``UCLC_k > mean + u * std`` of that
layer's UCLCs is pruned; ``u`` is the one hyperparameter (the paper's and
BackdoorBench's default is 3). ``std`` is the sample standard deviation
(``ddof=1``), as ``torch.std`` in the authors' code.

Pruning a channel zeroes its kernel and bias, and, with a BatchNormalization,
its ``gamma``, ``beta`` and moving mean, so the channel's output is exactly 0
(before the convolution's own activation; a zero-keeping activation such as
ReLU keeps it 0, any other makes it a constant that no longer depends on the
input). Conv1D/2D/3D layers are examined; depthwise, separable and
transposed convolutions and Dense layers are left as they are: CLP is
defined on convolution channels, and a Dense unit has no spatial kernel whose
Lipschitz constant would single out a trigger detector.

Nothing here changes the caller's model: :func:`clp_prune` returns a copy.
"""

import math

import keras
import numpy as np
from keras import layers

from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import copy_model
from repair.config import RepairConfig, check_clp_u

__all__ = ["DEFAULT_U", "channel_lipschitz", "conv_layers", "clp_prune"]

DEFAULT_U = RepairConfig.clp_u  # the paper's and BackdoorBench's 3

CONV_TYPES = (layers.Conv1D, layers.Conv2D, layers.Conv3D)


def channel_lipschitz(kernel, bn_scale=None):
    """The upper bound of each output channel's Lipschitz constant (UCLC).

    ``kernel``: a Keras convolution kernel, ``(*spatial, in_channels,
    out_channels)``. ``bn_scale``: the folded scale ``gamma / sqrt(var + eps)``
    of a following BatchNormalization, one per output channel, or None.
    Returns one float64 per output channel: the largest singular value of the
    channel's kernel as a ``prod(spatial) x in_channels`` matrix, times
    ``|bn_scale|``.
    """
    w = np.asarray(kernel, dtype="float64")
    if w.ndim < 3:
        raise AegisError(f"expected a convolution kernel (spatial dims, in_channels, out_channels). "
                         f"Received shape {w.shape}")
    n_out, n_in = w.shape[-1], w.shape[-2]
    mats = np.moveaxis(w, -1, 0).reshape(n_out, -1, n_in)
    uclc = np.linalg.svd(mats, compute_uv=False)[:, 0]
    if bn_scale is not None:
        uclc = uclc * np.abs(np.asarray(bn_scale, dtype="float64"))
    return uclc


def _walk(model):
    """Every layer of ``model``, nested models' layers included, in order."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk(layer)


def _following_batchnorm(conv):
    """The BatchNormalization fed by ``conv`` alone and read by nothing else, on the channel axis; or None."""
    if len(conv._inbound_nodes) != 1 or len(conv._outbound_nodes) != 1:
        return None
    bn = conv._outbound_nodes[0].operation
    if not isinstance(bn, layers.BatchNormalization) or len(bn._inbound_nodes) != 1:
        return None
    rank = len(conv.kernel.shape)  # the output's rank too: batch, the spatial dims, channels
    channel_axis = 1 if conv.data_format == "channels_first" else rank - 1
    return bn if bn.axis % rank == channel_axis else None


def _bn_scale(bn):
    """The BatchNormalization's folded scale ``gamma / sqrt(moving_variance + epsilon)``."""
    var = np.asarray(keras.ops.convert_to_numpy(bn.moving_variance), "float64")
    gamma = 1.0 if bn.gamma is None else np.asarray(keras.ops.convert_to_numpy(bn.gamma), "float64")
    return gamma / np.sqrt(var + bn.epsilon)


def conv_layers(model):
    """``[(conv, batchnorm or None)]``: the convolutions CLP examines, each with the
    BatchNormalization that directly follows it. A one-line AegisError if there are none."""
    found = [(l, _following_batchnorm(l)) for l in _walk(model) if isinstance(l, CONV_TYPES)]
    if not found:
        kinds = ", ".join(sorted({type(l).__name__ for l in _walk(model)}))
        raise AegisError(f"CLP prunes convolution channels; the model has none (expected Conv1D, Conv2D or Conv3D "
                         f"layers; found {kinds})")
    return found


def _cutoff(uclc, u):
    """``(mean, std, cutoff, pruned channels, largest z-score)`` of one layer's UCLCs."""
    mean = float(uclc.mean())
    std = float(uclc.std(ddof=1)) if len(uclc) > 1 else 0.0
    if not std > 1e-12 * max(abs(mean), 1e-30):  # all channels alike: none stands out
        return mean, std, math.inf, [], 0.0
    cutoff = mean + u * std
    return mean, std, cutoff, [int(k) for k in np.nonzero(uclc > cutoff)[0]], float((uclc.max() - mean) / std)


def _zero_channels(conv, bn, channels):
    """Zero ``channels`` of ``conv`` (kernel, bias) and of ``bn`` (gamma, beta, moving mean), in place."""
    kernel = np.array(keras.ops.convert_to_numpy(conv.kernel))
    kernel[..., channels] = 0.0
    conv.kernel.assign(kernel)
    variables = [conv.bias] + ([bn.gamma, bn.beta, bn.moving_mean] if bn is not None else [])
    for v in variables:
        if v is not None:
            value = np.array(keras.ops.convert_to_numpy(v))
            value[channels] = 0.0
            v.assign(value)


def clp_prune(model, u=DEFAULT_U):
    """Prune ``model``'s high-Lipschitz convolution channels, without data. Returns ``(pruned copy, info)``.

    Each convolution layer (with the BatchNormalization that directly follows
    it, folded in) is scored by :func:`channel_lipschitz`; the channels above
    ``mean + u * std`` of their layer are zeroed in a copy of ``model``.
    ``info`` (JSON-ready): ``u``, ``channels_pruned`` and ``n_channels`` over
    all layers, and per layer ``layer``, ``batchnorm``, ``n_channels``,
    ``uclc_mean``, ``uclc_std``, ``cutoff``, ``pruned`` (the channels),
    ``max_z`` (the largest ``(UCLC - mean) / std``: below it, ``u`` prunes in
    this layer) and ``uclc``; ``skipped``: the Dense and other layers left alone.
    """
    u = check_clp_u(u)
    found = conv_layers(model)
    pruned = copy_model(model)
    twins = dict(zip([id(l) for l in _walk(model)], _walk(pruned)))  # the copy has the same structure
    rows = []
    for conv, bn in found:
        uclc = channel_lipschitz(keras.ops.convert_to_numpy(conv.kernel), None if bn is None else _bn_scale(bn))
        mean, std, cutoff, channels, max_z = _cutoff(uclc, u)
        if channels:
            _zero_channels(twins[id(conv)], None if bn is None else twins[id(bn)], channels)
        rows.append({"layer": conv.name, "batchnorm": None if bn is None else bn.name, "n_channels": int(len(uclc)),
                     "uclc_mean": mean, "uclc_std": std, "cutoff": None if math.isinf(cutoff) else cutoff,
                     "pruned": channels, "max_z": max_z, "uclc": [float(v) for v in uclc]})
    skipped = [l.name for l in _walk(model) if l.weights and not hasattr(l, "layers")
               and not isinstance(l, CONV_TYPES) and not any(l is bn for _, bn in found)]
    info = {"u": u, "channels_pruned": sum(len(r["pruned"]) for r in rows),
            "n_channels": sum(r["n_channels"] for r in rows), "layers": rows, "skipped": skipped}
    return pruned, info
