"""The attack side's settings: the attacker's trigger (:class:`TriggerConfig`) and a
training run (:class:`TrainConfig`). Both are :class:`aegis_tf.core.settings.Settings`."""

import dataclasses
from typing import Optional, Tuple, Union

from aegis_tf.attack.triggers import TRIGGERS
from aegis_tf.core.errors import AegisError
from aegis_tf.core.params import Interval, Options, ParamError
from aegis_tf.core.settings import NONNEG, NORMS, POS, POS_INT, UNIT, Settings, default_step_size, norm_name

__all__ = ["TrainConfig", "TriggerConfig"]


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    """A training run. Defaults follow the AEGIS paper (see :mod:`aegis_tf.attack.training`),
    whose models are adversarially robust: ``robust=True`` (Madry PGD training) is the
    default here as in ``aegis train`` (``robust=False``: standard training).
    ``eps`` and ``step_size`` are in units of [0, 1]; ``step_size=None`` becomes
    :func:`default_step_size`; ``norm`` is ``2`` or ``"inf"`` (any spelling
    :func:`~aegis_tf.core.settings.parse_norm` takes, such as ``np.inf``)."""

    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: Tuple[float, ...] = (0.5, 0.75)
    lr_drop: float = 0.1
    robust: bool = True
    eps: float = 0.5
    steps: int = 20
    step_size: Optional[float] = None
    norm: Union[int, str] = 2
    eps_warmup: int = 0
    augment: bool = False
    pixel_max: float = 255.0
    seed: int = 0

    _parameter_constraints = {
        "epochs": [Interval(int, 0, None)], "batch_size": POS_INT, "learning_rate": POS,
        "momentum": [Interval(float, 0, 1)], "weight_decay": NONNEG, "lr_drop": POS,
        "eps": NONNEG, "steps": POS_INT, "step_size": [None, POS[0]], "eps_warmup": [Interval(int, 0, None)],
        "pixel_max": POS, "seed": [Interval(int, 0, None)],
    }

    def __post_init__(self):
        try:
            object.__setattr__(self, "norm", norm_name(self.norm))
        except ValueError:
            raise ParamError("norm", str(Options(*NORMS)), self.norm) from None
        object.__setattr__(self, "lr_milestones", tuple(float(m) for m in self.lr_milestones))
        if self.step_size is None:
            object.__setattr__(self, "step_size", default_step_size(self.eps, self.steps))
        super().__post_init__()

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["lr_milestones"] = list(self.lr_milestones)  # as JSON stores it
        return out


@dataclasses.dataclass(frozen=True)
class TriggerConfig(Settings):
    """The attacker's trigger, as ``poison``, ``train`` and ``evaluate-model`` take it.
    ``trigger_value``, ``amplitude`` and ``trigger_eps`` are in units of [0, 1].

    ``trigger_size``/``trigger_value``: the squares of localised and distributed
    (``trigger_margin``: pixels between localised's square and the corner);
    ``amplitude``/``trigger_seed``: invisible-static's pattern; ``trigger_pattern``
    (.npy), or ``trigger_model`` and ``trigger_eps`` to compute one:
    invisible-adversarial; ``blend_alpha`` and ``blend_pattern`` (``noise`` drawn
    from ``trigger_seed``, or a .npy in pixel units): blended. ``warp_grid``
    (k, the k x k control grid), ``warp_strength`` (s) and ``warp_cross_ratio``
    (noise mode: that many times the poisoned images, warped with a random field on
    top and keeping their labels; 0 = off): warp (WaNet). random-position: a square
    of ``trigger_size`` at a random place in each image (drawn from ``trigger_seed``).

    Who the backdoor sends where: ``mapping="all-to-one"`` (default) sends every
    class to ``target_label``; ``source_classes`` (e.g. ``(3,)``) limits it to those
    source classes (source-specific, TaCT), and ``cover_rate`` adds that share of the
    training set as cover images of the other classes, triggered, keeping their
    labels; ``mapping="all-to-all"`` sends class y to (y + 1) mod N.
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
    warp_grid: int = 4
    warp_strength: float = 0.5
    warp_cross_ratio: float = 0.0
    mapping: str = "all-to-one"
    source_classes: Optional[Tuple[int, ...]] = None
    cover_rate: float = 0.0

    _parameter_constraints = {
        "trigger": [Options(*TRIGGERS)],
        "target_label": [Interval(int, 0, None)], "trigger_size": POS_INT, "trigger_value": UNIT,
        "trigger_margin": [Interval(int, 0, None)],
        "amplitude": UNIT, "trigger_seed": [Interval(int, 0, None)], "trigger_pattern": [None, str],
        "trigger_model": [None, str], "trigger_eps": UNIT, "blend_alpha": UNIT, "blend_pattern": [str],
        "warp_grid": [Interval(int, 2, None)], "warp_strength": POS, "warp_cross_ratio": NONNEG,
        "mapping": [Options("all-to-one", "all-to-all")], "cover_rate": [Interval(float, 0, 1)],
    }

    def __post_init__(self):
        sources = parse_classes_list(self.source_classes, "source_classes")
        object.__setattr__(self, "source_classes", sources)
        super().__post_init__()
        if sources is not None:
            if self.mapping == "all-to-all":
                raise AegisError("source_classes go with an all-to-one backdoor, not all-to-all")
            if self.target_label in sources:
                raise AegisError(f"source_classes must not hold the target class {self.target_label}. "
                                 f"Received: {','.join(map(str, sources))}")
        if self.cover_rate and sources is None:
            raise AegisError("cover_rate needs source_classes (cover images come from the other classes)")

    def to_dict(self):
        out = super().to_dict()
        if self.source_classes is not None:
            out["source_classes"] = list(self.source_classes)
        return out

    def describe(self):
        """``localised, 3 -> 7`` / ``warp, all -> 7`` / ``blended, all-to-all (y -> y+1)``."""
        if self.mapping == "all-to-all":
            return f"{self.trigger}, all-to-all (y -> y+1)"
        src = ",".join(map(str, self.source_classes)) if self.source_classes else "all"
        return f"{self.trigger}, {src} -> {self.target_label}"


def parse_classes_list(value, name):
    """``None``, or a sorted tuple of distinct class numbers from ``"3,5"``, ``3`` or ``[3, 5]``."""
    if value is None or value == "":
        return None
    try:
        items = value.split(",") if isinstance(value, str) else (value if isinstance(value, (list, tuple)) else [value])
        classes = tuple(sorted({int(str(c).strip()) for c in items if str(c).strip()}))
    except ValueError:
        raise AegisError(f"{name} must be comma-separated class numbers. Received: {value!r}") from None
    if not classes or min(classes) < 0:
        raise AegisError(f"{name} must be comma-separated class numbers >= 0. Received: {value!r}")
    return classes
