"""Neural Cleanse (Wang et al., S&P 2019), the baseline AEGIS is compared with.

For each class, reverse-engineer the smallest trigger (a mask and a pattern)
that sends clean images to that class: minimise
``CE(model((1 - m) x + m p), c) + cost * |m|_1`` with Adam, over ``tanh``
parametrised ``m`` in [0, 1] (one value per pixel) and ``p`` in the pixel
range. ``cost`` follows the reference schedule: it is 0 until the attack
succeeds, then set to ``init_cost`` and raised (x1.5) or lowered (/1.5^1.5)
after ``patience`` epochs above or below the success threshold. The mask
with the smallest L1 norm that reached the threshold is kept.

The L1 norms of all classes give an anomaly index by median absolute
deviation (consistency constant 1.4826); a class whose norm lies below the
median with index > 2 is flagged.

The gradients with respect to mask and pattern come from the input gradient
(chain rule), so no backend-specific code is needed here.
"""

import numpy as np

from aegis_tf.core import backend
from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import logits_model
from aegis_tf.core.params import Detector, Interval
from aegis_tf.core.utils import progress

__all__ = ["reverse_engineer_trigger", "anomaly_index", "NeuralCleanse"]

_EPS = 1e-7


def _adam(state, grad, lr, b1=0.5, b2=0.9):
    m, v, t = state
    t += 1
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad**2
    step = lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-8)
    return step, (m, v, t)


def reverse_engineer_trigger(model, x, target, *, pixel_max=255.0, epochs=10, steps_per_epoch=20, batch_size=32,
                             learning_rate=0.1, init_cost=1e-3, patience=5, attack_threshold=0.99, seed=0):
    """Smallest mask and pattern sending ``x`` to ``target``. Returns a dict with
    ``mask`` (H, W), ``pattern`` (H, W, C), ``l1`` and ``success`` (attack rate)."""
    x = np.asarray(x, dtype="float32")
    rng = np.random.default_rng(seed)
    h, w, ch = x.shape[1:]
    logits = logits_model(model)
    mask_t = np.arctanh((rng.random((h, w, 1)) - 0.5) * (2 - _EPS)).astype("float32")
    pat_t = np.arctanh((rng.random((h, w, ch)) - 0.5) * (2 - _EPS)).astype("float32")
    adam_m = (np.zeros_like(mask_t), np.zeros_like(mask_t), 0)
    adam_p = (np.zeros_like(pat_t), np.zeros_like(pat_t), 0)
    cost, cost_set, up, down = 0.0, False, 0, 0
    best = None
    for _ in range(epochs):
        hits = []
        for _ in range(steps_per_epoch):
            xb = x[rng.choice(len(x), size=min(batch_size, len(x)), replace=False)]
            mask = np.tanh(mask_t) / (2 - _EPS) + 0.5
            pattern = (np.tanh(pat_t) / (2 - _EPS) + 0.5) * pixel_max
            x_adv = (1 - mask) * xb + mask * pattern
            yb = np.full(len(xb), target)
            grad, loss = backend.input_gradient(logits, x_adv, yb)
            grad = np.asarray(grad) / len(xb)  # gradient of the mean loss
            g_mask = np.sum(grad * (pattern - xb), axis=(0, 3))[..., None] + cost  # d|m|_1/dm = 1 (m >= 0)
            g_pat = np.sum(grad * mask, axis=0)
            g_mask_t = g_mask * (1 - np.tanh(mask_t) ** 2) / (2 - _EPS)
            g_pat_t = g_pat * (1 - np.tanh(pat_t) ** 2) / (2 - _EPS) * pixel_max
            step, adam_m = _adam(adam_m, g_mask_t, learning_rate)
            mask_t = mask_t - step
            step, adam_p = _adam(adam_p, g_pat_t, learning_rate)
            pat_t = pat_t - step
            # predict_on_batch: the compiled forward pass (an eager call costs several times more on a ResNet)
            hits.append(np.mean(np.argmax(np.asarray(logits.predict_on_batch(x_adv)), axis=-1) == target))
        mask = np.tanh(mask_t) / (2 - _EPS) + 0.5
        pattern = (np.tanh(pat_t) / (2 - _EPS) + 0.5) * pixel_max
        success = float(np.mean(hits))
        l1 = float(mask.sum())
        if success >= attack_threshold and (best is None or l1 < best["l1"]):
            best = {"mask": mask[..., 0], "pattern": pattern, "l1": l1, "success": success}
        # The reference cost schedule.
        if not cost_set:
            if success >= attack_threshold:
                cost, cost_set = init_cost, True
            continue
        up, down = (up + 1, 0) if success >= attack_threshold else (0, down + 1)
        if up >= patience:
            cost, up = cost * 1.5, 0
        elif down >= patience:
            cost, down = cost / 1.5**1.5, 0
    if best is None:  # never reached the threshold: report the last mask
        best = {"mask": mask[..., 0], "pattern": pattern, "l1": float(mask.sum()), "success": success}
    return best


def anomaly_index(norms):
    """MAD anomaly index of each L1 norm (1.4826 * median absolute deviation)."""
    norms = np.asarray(norms, dtype="float64")
    med = np.median(norms)
    mad = 1.4826 * np.median(np.abs(norms - med))
    return np.abs(norms - med) / max(mad, 1e-12)


class NeuralCleanse(Detector):
    """Neural Cleanse detector, scikit-learn style.

    ``fit(model, x, y, classes)`` reverse-engineers a trigger for each class
    from the clean images ``x`` (``y`` is not needed and may be None) and sets
    ``l1_norms_``, ``anomaly_index_`` (also ``scores_``), ``suspect_classes_``
    (norm below the median and index > ``threshold``), ``is_backdoored_``,
    ``masks_``, ``patterns_`` and ``success_``.
    """

    _parameter_constraints = {
        "pixel_max": [Interval(float, 0, None, closed="neither")],
        "epochs": [Interval(int, 1, None)],
        "steps_per_epoch": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 1, None)],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "init_cost": [Interval(float, 0, None)],
        "threshold": [Interval(float, 0, None)],
        "random_state": [Interval(int, 0, None)],
    }
    score_name = "anomaly_index"

    def __init__(self, *, pixel_max=255.0, epochs=10, steps_per_epoch=20, batch_size=32, learning_rate=0.1,
                 init_cost=1e-3, threshold=2.0, random_state=0):
        self.pixel_max = pixel_max
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.init_cost = init_cost
        self.threshold = threshold
        self.random_state = random_state

    @property
    def threshold_(self):
        return self.threshold

    def fit(self, model, x, y=None, classes=None, *, quiet=True):
        self._validate_params()
        classes = list(range(int(model.output_shape[-1]))) if classes is None else list(classes)
        if len(classes) < 3:
            raise AegisError("Neural Cleanse needs at least 3 classes for its median-based anomaly index")
        self.classes_ = classes
        self.masks_, self.patterns_, self.success_ = {}, {}, {}
        norms = []
        for c in progress(classes, quiet=quiet, desc="neural cleanse"):
            r = reverse_engineer_trigger(model, x, c, pixel_max=self.pixel_max, epochs=self.epochs,
                                         steps_per_epoch=self.steps_per_epoch, batch_size=self.batch_size,
                                         learning_rate=self.learning_rate, init_cost=self.init_cost,
                                         seed=self.random_state + int(c))
            self.masks_[c], self.patterns_[c], self.success_[c] = r["mask"], r["pattern"], r["success"]
            norms.append(r["l1"])
        self.l1_norms_ = dict(zip(classes, norms))
        idx = anomaly_index(norms)
        med = np.median(norms)
        self.anomaly_index_ = dict(zip(classes, idx.tolist()))
        self.scores_ = self.anomaly_index_
        self.suspect_classes_ = [c for c, n, a in zip(classes, norms, idx) if n < med and a > self.threshold]
        self.is_backdoored_ = bool(self.suspect_classes_)
        return self

    def _class_entry(self, c):
        return {"l1_norm": self.l1_norms_[c], "anomaly_index": self.anomaly_index_[c],
                "attack_success": self.success_[c]}
