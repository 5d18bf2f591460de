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

import time

import numpy as np

from aegis_tf.core import backend
from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import logits_model
from aegis_tf.core.params import Detector, Interval
from aegis_tf.core.utils import progress

__all__ = ["reverse_engineer_trigger", "reverse_engineer_triggers", "mask_state", "mask_step", "OverBudget",
           "StepBudget", "anomaly_index", "NeuralCleanse"]

_EPS = 1e-7
MAX_BATCH = 512  # images per input-gradient call when several targets' fits share it


def _group_size(batch_size, n_images, max_batch=MAX_BATCH):
    """How many targets' batches (of ``batch_size``, at most ``n_images``) share one model call."""
    return max(1, int(max_batch) // max(1, min(batch_size, n_images)))


class OverBudget(Exception):
    """A fit would take longer than its budget: ``projected_s`` seconds."""

    def __init__(self, projected_s):
        super().__init__(f"{projected_s:.0f} s projected")
        self.projected_s = float(projected_s)


class StepBudget:
    """Projects a fit of ``total`` equal steps from the time of its third (the first two
    compile) and raises :class:`OverBudget` there when it exceeds ``budget_s`` (None: no
    budget): call :meth:`tick` before each step."""

    def __init__(self, budget_s, total):
        self.budget_s, self.total, self.done, self._started = budget_s, int(total), 0, None

    def tick(self):
        self.done += 1
        if self.budget_s is None:
            return
        if self.done == 3:
            self._started = time.perf_counter()
        elif self.done == 4:
            projected = (time.perf_counter() - self._started) * self.total
            if projected > self.budget_s:
                raise OverBudget(projected)


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
    return reverse_engineer_triggers(model, x, [target], pixel_max=pixel_max, epochs=epochs,
                                     steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                                     learning_rate=learning_rate, init_cost=init_cost, patience=patience,
                                     attack_threshold=attack_threshold, seeds=[seed])[0]


def reverse_engineer_triggers(model, x, targets, *, pixel_max=255.0, epochs=10, steps_per_epoch=20, batch_size=32,
                              learning_rate=0.1, init_cost=1e-3, patience=5, attack_threshold=0.99, seeds=None,
                              max_batch=MAX_BATCH, budget_s=None):
    """:func:`reverse_engineer_trigger` for every class of ``targets`` at once, one list entry
    per target (``seeds``: one per target, default ``0, 1, ...``).

    Each target keeps its own random stream (its start and its batches), Adam state and cost
    schedule, exactly as when fitted alone; what is shared is the model call: up to
    ``max_batch // batch_size`` targets' batches go through one input gradient, whose
    forward pass also gives the predictions the success rate counts (no second pass). On a
    CIFAR-10 ResNet-18 that is one call of 320 images per step for ten classes instead of
    twenty calls of 32. With ``budget_s``, the third step projects the whole fit (every
    group), and :class:`OverBudget` is raised there when it would take longer."""
    x = np.asarray(x, dtype="float32")
    targets = [int(t) for t in targets]
    seeds = list(range(len(targets))) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(targets):
        raise ValueError(f"reverse_engineer_triggers: {len(targets)} targets but {len(seeds)} seeds")
    group = _group_size(batch_size, len(x), max_batch)
    logits, out = logits_model(model), []
    budget = StepBudget(budget_s, -(-len(targets) // group) * epochs * steps_per_epoch)
    for i in range(0, len(targets), group):
        out += _fit_group(logits, x, targets[i:i + group], seeds[i:i + group], pixel_max=pixel_max,
                          epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                          learning_rate=learning_rate, init_cost=init_cost, patience=patience,
                          attack_threshold=attack_threshold, budget=budget)
    return out


def _squash(t, scale=1.0):
    return (np.tanh(t) / (2 - _EPS) + 0.5) * scale


def mask_state(mask0, pattern0):
    """The optimiser state of stacked mask fits from uniform draws ``mask0`` (n, H, W, 1) and
    ``pattern0`` (n, H, W, C) in [0, 1): the ``tanh`` parameters and both Adam states."""
    mask_t = np.arctanh((np.asarray(mask0) - 0.5) * (2 - _EPS)).astype("float32")
    pat_t = np.arctanh((np.asarray(pattern0) - 0.5) * (2 - _EPS)).astype("float32")
    return {"mask_t": mask_t, "pat_t": pat_t, "adam_m": (np.zeros_like(mask_t), np.zeros_like(mask_t), 0),
            "adam_p": (np.zeros_like(pat_t), np.zeros_like(pat_t), 0)}


def mask_step(logits, xb, labels, state, cost, *, pixel_max, learning_rate):
    """One Adam step of every stacked fit of ``state`` (:func:`mask_state`, updated in place) on
    its own batch ``xb`` (n, k, H, W, C) toward ``labels`` (n * k), minimising the mean
    cross-entropy plus ``cost`` (n) times the mask's L1 norm. Returns each fit's share of its
    batch the model gave its label (the forward pass of the gradient, before the step)."""
    n, k, h, w, ch = xb.shape
    mask, pattern = _squash(state["mask_t"])[:, None], _squash(state["pat_t"], pixel_max)[:, None]
    x_adv = ((1 - mask) * xb + mask * pattern).reshape((-1, h, w, ch))
    grad, _, out = backend.input_gradient(logits, x_adv, labels, with_logits=True)
    grad = np.asarray(grad).reshape((n, k, h, w, ch)) / k  # each fit's mean loss
    g_mask = np.sum(grad * (pattern - xb), axis=(1, 4))[..., None] + cost[:, None, None, None]
    g_pat = np.sum(grad * mask, axis=1)
    mask_t, pat_t = state["mask_t"], state["pat_t"]
    step, state["adam_m"] = _adam(state["adam_m"], g_mask * (1 - np.tanh(mask_t) ** 2) / (2 - _EPS), learning_rate)
    state["mask_t"] = mask_t - step
    step, state["adam_p"] = _adam(state["adam_p"], g_pat * (1 - np.tanh(pat_t) ** 2) / (2 - _EPS) * pixel_max,
                                  learning_rate)
    state["pat_t"] = pat_t - step
    return np.mean((np.argmax(np.asarray(out), axis=-1) == labels).reshape((n, k)), axis=1)


def _schedule(i, ok, cost, cost_set, up, down, *, init_cost, patience):
    """Neural Cleanse's cost schedule for fit ``i`` after an epoch (``ok``: it reached the
    threshold), in place: 0 until the first success, then ``init_cost``, raised x1.5 after
    ``patience`` epochs above the threshold or lowered /1.5^1.5 after ``patience`` below."""
    if not cost_set[i]:
        if ok:
            cost[i], cost_set[i] = init_cost, True
        return
    up[i], down[i] = (up[i] + 1, 0) if ok else (0, down[i] + 1)
    if up[i] >= patience:
        cost[i], up[i] = cost[i] * 1.5, 0
    elif down[i] >= patience:
        cost[i], down[i] = cost[i] / 1.5**1.5, 0


def _fit_group(logits, x, targets, seeds, *, pixel_max, epochs, steps_per_epoch, batch_size, learning_rate,
               init_cost, patience, attack_threshold, budget):
    """Neural Cleanse's fit of one mask and pattern per target, the targets stacked on axis 0."""
    n, b = len(targets), min(batch_size, len(x))
    h, w, ch = x.shape[1:]
    rngs = [np.random.default_rng(s) for s in seeds]
    starts = [(r.random((h, w, 1)), r.random((h, w, ch))) for r in rngs]  # each stream's draws, in order
    state = mask_state(np.stack([m for m, _ in starts]), np.stack([p for _, p in starts]))
    labels = np.repeat(targets, b)
    cost, cost_set = np.zeros(n, "float32"), np.zeros(n, bool)
    up, down = np.zeros(n, int), np.zeros(n, int)
    best = [None] * n
    for _ in range(epochs):
        hits = np.zeros(n)
        for _ in range(steps_per_epoch):
            budget.tick()
            xb = np.stack([x[r.choice(len(x), size=b, replace=False)] for r in rngs])  # (n, b, h, w, ch)
            hits += mask_step(logits, xb, labels, state, cost, pixel_max=pixel_max, learning_rate=learning_rate)
        mask, pattern = _squash(state["mask_t"])[..., 0], _squash(state["pat_t"], pixel_max)
        success, l1 = hits / steps_per_epoch, mask.sum(axis=(1, 2))
        for i in range(n):
            ok = bool(success[i] >= attack_threshold)
            if ok and (best[i] is None or l1[i] < best[i]["l1"]):
                best[i] = {"mask": mask[i], "pattern": pattern[i], "l1": float(l1[i]), "success": float(success[i])}
            _schedule(i, ok, cost, cost_set, up, down, init_cost=init_cost, patience=patience)
    # A target that never reached the threshold: its last mask.
    return [r if r is not None else {"mask": mask[i], "pattern": pattern[i], "l1": float(l1[i]),
                                     "success": float(success[i])} for i, r in enumerate(best)]


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
        group = _group_size(self.batch_size, len(x))  # the groups reverse_engineer_triggers makes: one bar step each
        for i in progress(range(0, len(classes), group), quiet=quiet, desc="neural cleanse"):
            chunk = classes[i:i + group]
            fitted = reverse_engineer_triggers(model, x, chunk, pixel_max=self.pixel_max, epochs=self.epochs,
                                               steps_per_epoch=self.steps_per_epoch, batch_size=self.batch_size,
                                               learning_rate=self.learning_rate, init_cost=self.init_cost,
                                               seeds=[self.random_state + int(c) for c in chunk])
            for c, r in zip(chunk, fitted):
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
