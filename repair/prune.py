"""Pruning repair (NYU ML-for-Security BadNet lab), made fast.

Channels of the last pooling layer are pruned one at a time, lowest mean clean
activation first, by zeroing the kernel and bias of the convolution that feeds
that layer (or, for a global pooling layer behind an addition, as in a ResNet,
the channel's input row of the one Dense layer that reads it:
:func:`aegis_tf.core.models.find_prune_site`). After each pruned channel the clean validation accuracy and the
attack success rate (ASR) on the poisoned validation set are recorded.

The channel order is fixed by the clean activations before pruning starts, so
every step of the curve is known in advance. :func:`prune_curve` therefore
computes the pooling layer's activations once and evaluates only the part of
the model after that layer, with the pruned channels masked to zero, for many
steps in one batched call. Zeroing a channel's kernel and bias makes that
channel exactly zero after a ReLU-like activation and pooling, so the masked
tail gives the same predictions as the pruned full model;
:func:`prune_model` checks this on the materialised model.

Nothing here changes the caller's model: :func:`prune_model` returns a copy.
"""

import dataclasses

import keras
import numpy as np

from repair.thresholds import THRESHOLDS, check_threshold
from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import copy_model, find_last_pooling_layer, find_prune_site, predict_labels
from aegis_tf.core.utils import progress

__all__ = ["THRESHOLDS", "check_threshold", "PruneCurve", "prune_curve", "prune_curve_naive", "prune_model", "finetune_pruned"]



@dataclasses.dataclass
class PruneCurve:
    """The result of a pruning run.

    ``order`` lists channels in pruning order. ``clean_acc[k]`` and ``asr[k]``
    are the validation metrics with the first ``k`` channels of ``order``
    pruned (``k = 0`` is the unpruned model). ``saved[t]`` is the smallest
    ``k`` whose accuracy drop reaches ``t`` percentage points, or None.
    ``conv`` names the layer whose weights are zeroed: the Conv2D feeding
    ``layer``, or the Dense layer reading it (:func:`aegis_tf.core.models.find_prune_site`).
    """

    layer: str
    conv: str
    n_channels: int
    mean_activation: np.ndarray
    order: np.ndarray
    clean_acc: np.ndarray
    asr: np.ndarray
    saved: dict

    def channels_at(self, k):
        return [int(c) for c in self.order[:k]]

    def to_dict(self):
        return {
            "layer": self.layer,
            "conv": self.conv,
            "n_channels": self.n_channels,
            "order": self.order,
            "mean_activation": self.mean_activation,
            "curve": [
                {
                    "pruned": k,
                    "fraction": k / self.n_channels,
                    "clean_acc": float(self.clean_acc[k]),
                    "asr": None if np.isnan(self.asr[k]) else float(self.asr[k]),
                }
                for k in range(self.n_channels + 1)
            ],
            "saved": {str(t): k for t, k in self.saved.items()},
        }


def _check_thresholds(thresholds):
    for t in thresholds:
        check_threshold(t)


def _first_reaching(clean_acc, thresholds):
    base = clean_acc[0]
    saved = {}
    for t in thresholds:
        hits = np.nonzero((base - clean_acc) * 100.0 >= t - 1e-9)[0]
        saved[t] = int(hits[0]) if hits.size else None
    return saved


def _activations(model, layer, x, batch_size):
    probe = keras.Model(model.inputs, layer.output)
    return probe.predict(x, batch_size=batch_size, verbose=0)


def _tail_model(model, layer):
    """The part of ``model`` after ``layer``, taking ``layer``'s output as input."""
    try:
        return keras.Model(layer.output, model.outputs[0])
    except Exception as e:
        raise AegisError(
            f"cannot split the model after {layer.name}: later layers also read earlier outputs "
            f"({type(e).__name__}); use --method naive"
        ) from None


def _channel_means(acts):
    return acts.reshape(-1, acts.shape[-1]).mean(axis=0)


def prune_curve(
    model,
    x_clean,
    y_clean,
    x_bad,
    y_bad,
    *,
    layer=None,
    thresholds=THRESHOLDS,
    batch_size=256,
    rows_per_call=65536,
    quiet=False,
    order=None,
    groups=None,
):
    """Prune channel by channel with cached activations. Returns a :class:`PruneCurve`.

    ``layer`` names the pooling layer (default: the last one). ``y_bad`` holds
    the attacker's target for each poisoned image, as the CSAW ``bd_*.h5`` files
    do; with no poisoned images (``x_bad`` empty) the curve's ASR is NaN.
    ``rows_per_call`` bounds how many (step, image) rows go through the
    model tail at once, which bounds memory. ``order`` (all channels, first
    pruned first) replaces the lab's order, lowest mean clean activation first.
    ``groups`` (one id per poisoned image) adds ``curve.group_asr``, the ASR of
    each group (rows, in sorted id order) after every pruned channel.
    """
    _check_thresholds(thresholds)
    pool = find_last_pooling_layer(model, layer)
    conv = find_prune_site(model, pool)
    tail = _tail_model(model, pool)
    # One pass for both sets: Keras call overhead, not arithmetic, dominates small sets.
    n_clean = len(x_clean)
    acts = _activations(model, pool, np.concatenate([x_clean, x_bad]), batch_size)
    labels = np.concatenate([y_clean, y_bad])
    means = _channel_means(acts[:n_clean])
    n = means.shape[0]
    order = np.argsort(means, kind="stable") if order is None else _check_order(order, n)

    # mask k zeroes channels order[:k]; k = 0..n.
    masks = np.ones((n + 1, n), dtype=acts.dtype)
    for k in range(1, n + 1):
        masks[k:, order[k - 1]] = 0.0

    hits = np.zeros((n + 1, len(labels)), dtype=bool)
    per_call = max(1, rows_per_call // max(1, len(labels)))
    with progress(total=n + 1, quiet=quiet, desc=f"pruning {pool.name}") as bar:
        for start in range(0, n + 1, per_call):
            ks = range(start, min(n + 1, start + per_call))
            batch = np.concatenate([acts * masks[k] for k in ks])
            pred = predict_labels(tail, batch, batch_size=4096).reshape(len(ks), len(labels))
            hits[start:start + len(ks)] = pred == labels[None]
            bar.update(len(ks))
    clean_acc = hits[:, :n_clean].mean(axis=1)
    asr = hits[:, n_clean:].mean(axis=1) if len(labels) > n_clean else np.full(n + 1, np.nan)
    curve = PruneCurve(
        layer=pool.name,
        conv=conv.name,
        n_channels=n,
        mean_activation=means,
        order=order,
        clean_acc=clean_acc,
        asr=asr,
        saved=_first_reaching(clean_acc, thresholds),
    )
    if groups is not None:
        groups = np.asarray(groups)
        curve.group_asr = np.stack([hits[:, n_clean:][:, groups == g].mean(axis=1) for g in np.unique(groups)])
    return curve


def _check_order(order, n):
    order = np.asarray(order, dtype="int64")
    if sorted(order.tolist()) != list(range(n)):
        raise AegisError(f"a pruning order must list each of the {n} channels once")
    return order


def _zero_channels(model, site_name, channels):
    """Zero ``channels`` at the prune site: a Conv2D's output channels (kernel and
    bias), or a Dense reader's input rows."""
    site = model.get_layer(site_name)
    weights = [w.copy() for w in site.get_weights()]
    channels = np.asarray(channels, dtype="int64")
    if isinstance(site, keras.layers.Dense):
        weights[0][channels, :] = 0.0
    else:
        weights[0][..., channels] = 0.0
        if site.use_bias:
            weights[1][channels] = 0.0
    site.set_weights(weights)


def prune_curve_naive(model, x_clean, y_clean, x_bad, y_bad, *, layer=None, thresholds=THRESHOLDS, batch_size=256, quiet=False):
    """The lab's loop: zero one more channel, run the whole model on both sets.

    Kept as the reference for tests and the benchmark; :func:`prune_curve`
    gives the same curve much faster.
    """
    _check_thresholds(thresholds)
    pool = find_last_pooling_layer(model, layer)
    conv = find_prune_site(model, pool)
    means = _channel_means(_activations(model, pool, x_clean, batch_size))
    order = np.argsort(means, kind="stable")
    n = means.shape[0]
    work = copy_model(model)
    clean_acc, asr = np.zeros(n + 1), np.zeros(n + 1)
    for k in progress(range(n + 1), quiet=quiet, desc="naive pruning"):
        if k:
            _zero_channels(work, conv.name, [order[k - 1]])
        clean_acc[k] = np.mean(predict_labels(work, x_clean, batch_size=batch_size) == y_clean)
        asr[k] = np.mean(predict_labels(work, x_bad, batch_size=batch_size) == y_bad) if len(x_bad) else np.nan
    return PruneCurve(pool.name, conv.name, n, means, order, clean_acc, asr, _first_reaching(clean_acc, thresholds))


def prune_model(model, curve, k, *, x_check=None, y_check=None, batch_size=256):
    """A copy of ``model`` with the first ``k`` channels of ``curve`` pruned.

    With ``x_check``/``y_check`` (the clean validation set the curve came
    from), the copy's accuracy is checked against the curve, which catches any
    layer between the convolution and the pooling layer that the masked tail
    did not model faithfully.
    """
    pruned = copy_model(model)
    _zero_channels(pruned, curve.conv, curve.channels_at(k))
    if x_check is not None:
        acc = float(np.mean(predict_labels(pruned, x_check, batch_size=batch_size) == y_check))
        if abs(acc - curve.clean_acc[k]) > 1.0 / max(1, len(y_check)) + 1e-9:
            raise AegisError(
                f"pruned model disagrees with the pruning curve at {k} channels "
                f"(accuracy {acc:.4f} vs {curve.clean_acc[k]:.4f}); the layers between "
                f"{curve.conv} and {curve.layer} do not keep pruned channels at zero"
            )
    return pruned


class _KeepPruned(keras.callbacks.Callback):
    """Re-zero the pruned channels after every training batch."""

    def __init__(self, conv_name, channels):
        super().__init__()
        self.conv_name = conv_name
        self.channels = channels

    def on_train_batch_end(self, batch, logs=None):
        _zero_channels(self.model, self.conv_name, self.channels)


def finetune_pruned(pruned, curve, k, x, y, *, epochs, learning_rate=1e-4, batch_size=32, seed=0, quiet=False):
    """Fine-pruning (Liu et al. 2018): train a pruned model on clean data.

    Returns a new model; the pruned channels stay zero throughout. ``seed``
    fixes the shuffling order.
    """
    model = copy_model(pruned)
    channels = curve.channels_at(k)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    for _ in progress(range(epochs), quiet=quiet, desc="fine-tuning"):
        idx = rng.permutation(len(x))
        model.fit(x[idx], y[idx], batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
                  callbacks=[_KeepPruned(curve.conv, channels)])
    _zero_channels(model, curve.conv, channels)
    return model
