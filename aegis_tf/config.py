"""Typed, frozen settings, validated once when they are made.

:class:`DetectConfig` holds every setting of a detection scan: the measured
defaults, or a preset of :data:`PRESETS` with overrides
(``DetectConfig.from_preset("paper", n_seeds=100)``). :class:`TrainConfig`
holds a training run's. Both read like mappings (``config["eps"]``) and turn
into plain dicts with ``to_dict()`` for JSON reports and checkpoints. The CLI
maps its flags to these fields by name.
"""

import dataclasses
from typing import Optional, Tuple, Union

import numpy as np

from aegis_tf.errors import AegisError
from aegis_tf.params import Interval, Options, validate_params
from aegis_tf.triggers import TRIGGERS

__all__ = ["DetectConfig", "TrainConfig", "TriggerConfig", "PRESETS", "default_step_size", "pixel_max_of",
           "THRESHOLDS", "check_threshold"]

_POS_INT = [Interval(int, 1, None)]
_NONNEG = [Interval(float, 0, None)]
_POS = [Interval(float, 0, None, closed="neither")]
_UNIT = [Interval(float, 0, 1, closed="right")]


# The lab's pruning levels: accuracy drops, in percentage points, at which B' is kept.
THRESHOLDS = (2, 4, 10)


def check_threshold(threshold):
    """``threshold`` as an int of :data:`THRESHOLDS`, or a one-line error."""
    t = int(threshold) if str(threshold).strip().isdigit() else None
    if t not in THRESHOLDS:
        raise AegisError(f"--threshold must be one of 2, 4, 10 (percent accuracy drop). Received: {threshold}")
    return t


def pixel_max_of(scale):
    """The largest pixel value the model sees: 255 for ``raw`` data, 1 for ``unit``."""
    return 255.0 if scale == "raw" else 1.0


def default_step_size(eps, steps):
    """The PGD step size when none is given: ``2.5 * eps / steps`` (MadryLab robustness' rule)."""
    return 2.5 * eps / max(1, steps)


class _Settings:
    _parameter_constraints = {}

    def __post_init__(self):
        validate_params(self.to_dict(), self._parameter_constraints)

    def __getitem__(self, key):
        return getattr(self, key)

    def keys(self):
        return [f.name for f in dataclasses.fields(self)]

    def to_dict(self):
        return dataclasses.asdict(self)

    def replace(self, **overrides):
        """A copy with ``overrides`` applied (validated again)."""
        return dataclasses.replace(self, **overrides)


@dataclasses.dataclass(frozen=True)
class DetectConfig(_Settings):
    """Settings of a detection scan. Lengths and radii are in units of the [0, 1]
    pixel range; the scan scales them by the data's pixel maximum.

    Translation (AEGIS): ``n_seeds`` images of other classes translated toward
    each class by ``steps`` of targeted L2 PGD (``eps``, ``step_size``), each
    started from its seed plus Gaussian noise of std ``start_noise``.

    Scores: ``score="transfer"`` (default) pastes the ``top_frac`` most-changed
    pixels of a translation onto ``n_probes`` clean images; it transfers when
    at least ``flip_at`` of them move. ``score="clusters"`` is the paper's
    t-SNE + clustering count (``layer``, ``reducer``, ``clusterer``,
    ``bandwidth``, ``population``, ``criterion``, ``runs``,
    ``min_cluster_frac``; see :class:`aegis_tf.clustering.AegisDetector`).

    ``whole_image`` adds the signal for triggers spread over the image
    (:class:`aegis_tf.whole_image.WholeImageDetector`: ``wi_probes`` clean
    probes; a class is flagged when it needs ``wi_threshold`` times less norm
    than every other class) beside the transfer score, and with it the blend
    probe (:class:`aegis_tf.whole_image.BlendProbeDetector`, for blended
    triggers): ``wi_blend="auto"`` (default) runs the probe wherever the
    whole-image signal runs in a full scan and skips it in a staged one;
    ``True`` asks for it (a staged scan then refuses); ``False`` turns it off.
    Measured in results/detect_blend_probe*.md.

    ``scan``: ``"full"`` runs the detector on every class; ``"staged"`` screens
    every class with ``stage1_seeds`` translations of ``stage1_steps`` steps,
    then runs the full detector on the ``top_k`` classes of each stage-1 signal
    plus any class whose stage-1 patch share reaches ``alarm_transfer`` or whose
    whole-image gap reaches ``alarm_gap`` (:mod:`aegis_tf.staged`); ``"auto"``
    (default) is staged above :data:`aegis_tf.staged.STAGED_ABOVE` classes.
    ``top_k`` is at least 2, so stage 2 always has two classes to compare.
    """

    n_seeds: int = 200
    steps: int = 75
    eps: float = 100.0
    step_size: float = 0.25
    start_noise: float = 0.1
    layer: Optional[str] = None
    score: str = "transfer"
    top_frac: float = 0.02
    n_probes: int = 20
    flip_at: float = 0.9
    reducer: str = "tsne"
    clusterer: str = "meanshift"
    bandwidth: Union[str, float] = "auto"
    population: str = "translated"
    criterion: str = "absolute"
    runs: int = 1
    min_cluster_frac: float = 0.0
    whole_image: bool = True
    wi_probes: int = 50
    wi_threshold: float = 2.0
    wi_blend: Union[bool, str] = "auto"
    scan: str = "auto"
    stage1_seeds: int = 10
    stage1_steps: int = 15
    top_k: int = 5
    alarm_transfer: float = 0.1
    alarm_gap: float = 1.5

    _parameter_constraints = {
        "n_seeds": _POS_INT, "steps": _POS_INT, "eps": _POS, "step_size": _POS, "start_noise": _NONNEG,
        "layer": [None, str], "score": [Options("transfer", "clusters")], "top_frac": _UNIT,
        "n_probes": _POS_INT, "flip_at": _UNIT, "reducer": [Options("tsne", "pca")],
        "clusterer": [Options("meanshift", "hdbscan", "affinity")],
        "bandwidth": [Options("auto"), Interval(float, 0, None, closed="neither")],
        "population": [Options("both", "translated")], "criterion": [Options("absolute", "relative")],
        "runs": _POS_INT, "min_cluster_frac": [Interval(float, 0, 1)],
        "whole_image": [Options(True, False)], "wi_probes": _POS_INT, "wi_threshold": [Interval(float, 1, None)],
        "wi_blend": [Options("auto", True, False)],
        "scan": [Options("auto", "full", "staged")], "stage1_seeds": _POS_INT, "stage1_steps": _POS_INT,
        "top_k": [Interval(int, 2, None)], "alarm_transfer": _UNIT, "alarm_gap": [Interval(float, 1, None)],
    }

    @classmethod
    def from_preset(cls, name="default", **overrides):
        """The measured defaults (``"default"``) or a preset of :data:`PRESETS`, then ``overrides``.
        ``None`` overrides are ignored (a flag the user did not give)."""
        if name != "default" and name not in PRESETS:
            validate_params({"preset": name}, {"preset": [Options("default", *PRESETS)]})
        base = {} if name == "default" else PRESETS[name]
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


# The measured default is DetectConfig() (results/detect_table.md, results/detect_rules.md).
# The authors' notebooks (MNIST values; the scan scales eps by the pixel range). They
# flattened the output of ResNet layer4; models without one give their penultimate layer.
PRESETS = {
    "paper": {
        "n_seeds": 500, "steps": 75, "eps": 100.0, "step_size": 0.25, "layer": "layer4,penultimate",
        "reducer": "tsne", "clusterer": "meanshift", "bandwidth": 35.0, "population": "both",
        "criterion": "absolute", "runs": 1, "min_cluster_frac": 0.0, "score": "clusters", "start_noise": 0.0,
        "whole_image": False, "wi_blend": False,
    },
}


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Settings):
    """A training run. Defaults follow the AEGIS paper (see :mod:`aegis_tf.training`).
    ``eps`` and ``step_size`` are in units of [0, 1]; ``step_size=None`` becomes
    :func:`default_step_size`; ``norm`` is ``2`` or ``"inf"``."""

    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: Tuple[float, ...] = (0.5, 0.75)
    lr_drop: float = 0.1
    robust: bool = False
    eps: float = 0.5
    steps: int = 20
    step_size: Optional[float] = None
    norm: Union[int, str] = 2
    eps_warmup: int = 0
    augment: bool = False
    pixel_max: float = 255.0
    seed: int = 0

    _parameter_constraints = {
        "epochs": [Interval(int, 0, None)], "batch_size": _POS_INT, "learning_rate": _POS,
        "momentum": [Interval(float, 0, 1)], "weight_decay": _NONNEG, "lr_drop": _POS,
        "eps": _NONNEG, "steps": _POS_INT, "step_size": [None, _POS[0]], "eps_warmup": [Interval(int, 0, None)],
        "pixel_max": _POS, "seed": [Interval(int, 0, None)],
    }

    def __post_init__(self):
        norm = self.norm
        if norm in (np.inf, "inf", float("inf")):
            norm = "inf"
        elif norm in (2, "2"):
            norm = 2
        else:
            validate_params({"norm": norm}, {"norm": [Options(2, "inf")]})
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "lr_milestones", tuple(float(m) for m in self.lr_milestones))
        if self.step_size is None:
            object.__setattr__(self, "step_size", default_step_size(self.eps, self.steps))
        super().__post_init__()

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["lr_milestones"] = list(self.lr_milestones)  # as JSON stores it
        return out


@dataclasses.dataclass(frozen=True)
class TriggerConfig(_Settings):
    """The attacker's trigger, as ``poison``, ``train`` and ``evaluate-model`` take it.
    ``trigger_value``, ``amplitude`` and ``trigger_eps`` are in units of [0, 1].

    ``trigger_size``/``trigger_value``: the squares of localised and distributed
    (``trigger_margin``: pixels between localised's square and the corner);
    ``amplitude``/``trigger_seed``: invisible-static's pattern; ``trigger_pattern``
    (.npy), or ``trigger_model`` and ``trigger_eps`` to compute one:
    invisible-adversarial; ``blend_alpha`` and ``blend_pattern`` (``noise`` drawn
    from ``trigger_seed``, or a .npy in pixel units): blended.
    """

    trigger: str = "localised"
    target_label: int = 7
    trigger_size: int = 2
    trigger_value: float = 250 / 255
    trigger_margin: int = 0
    amplitude: float = 8 / 255
    trigger_seed: int = 0
    trigger_pattern: Optional[str] = None
    trigger_model: Optional[str] = None
    trigger_eps: float = 16 / 255
    blend_alpha: float = 0.15
    blend_pattern: str = "noise"

    _parameter_constraints = {
        "trigger": [Options(*TRIGGERS)],
        "target_label": [Interval(int, 0, None)], "trigger_size": _POS_INT, "trigger_value": _UNIT,
        "trigger_margin": [Interval(int, 0, None)],
        "amplitude": _UNIT, "trigger_seed": [Interval(int, 0, None)], "trigger_pattern": [None, str],
        "trigger_model": [None, str], "trigger_eps": _UNIT, "blend_alpha": _UNIT, "blend_pattern": [str],
    }
