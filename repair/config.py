"""The settings of a repair (:class:`RepairConfig`), as ``aegis repair`` and
:func:`aegis_tf.repair` take them. The command line reads its flags' defaults here."""

import dataclasses
import math
import numbers
from typing import Optional

from aegis_tf.core.errors import AegisError
from aegis_tf.core.settings import Settings
from repair.thresholds import check_threshold

__all__ = ["RepairConfig", "STRATEGIES", "METHODS", "check_clp_u", "check_reinvert_settings"]

STRATEGIES = ("lab", "trigger-prune", "unlearn", "clp")
MIN_CLEAN_IMAGES = 10  # unlearning holds a fifth of them out: fewer leave it nothing to check against
METHODS = ("cached", "naive")


def check_reinvert_settings(reinvert, at=0.5, starts=3):
    """One-line errors for re-inversion settings out of range (checked before any work)."""
    if isinstance(reinvert, bool) or not isinstance(reinvert, numbers.Integral) or reinvert < 0:
        raise AegisError(f"--unlearn-reinvert must be 0 (off) or a whole number of steps. Received: {reinvert!r}")
    if not 0.0 < at <= 1.0:
        raise AegisError(f"the re-inversion share must lie in (0, 1]. Received: {at}")
    if isinstance(starts, bool) or not isinstance(starts, numbers.Integral) or starts < 1:
        raise AegisError(f"the re-inversion starts must be a whole number, at least 1. Received: {starts!r}")


def check_clp_u(u):
    """``u`` as a float, or a one-line AegisError unless it is a positive finite number."""
    if isinstance(u, bool) or not isinstance(u, numbers.Real) or not math.isfinite(u) or u <= 0:
        raise AegisError(f"--clp-u must be a positive finite number of standard deviations (the paper's default is "
                         f"3). Received: {u!r}")
    return float(u)


@dataclasses.dataclass(frozen=True)
class RepairConfig(Settings):
    """How to repair a model.

    The lab's pruning: prune the last pooling layer (``layer``, default the last) lowest
    mean clean activation first, with ``method`` ``cached`` (fast) or ``naive`` (the lab's
    full-model loop); keep B' at 2, 4 and 10 points of accuracy drop, and headline the one
    at ``threshold``; ``finetune`` epochs (Adam, ``finetune_lr``) of fine-pruning, 0 = off.

    From a recovered trigger (``strategy``, a comma-separated list of :data:`STRATEGIES`;
    default ``lab`` without a trigger, ``trigger-prune,unlearn`` with one): trigger-aware
    pruning stops at a recovered-trigger ASR of ``stop_asr``; unlearning runs at most
    ``unlearn_epochs`` (Adam, ``unlearn_lr``; None: 1e-3, or 1e-4 for a model with batch
    normalisation, whose statistics stay frozen) with ``unlearn_share`` of the images added
    again with the trigger, ``unlearn_rounds`` times (each round from the weights the last kept);
    ``unlearn_reinvert`` steps of re-inversion after it (0: off; :func:`repair.trigger_repair.unlearn`).

    Without any data (``strategy`` ``clp``, alone): Channel Lipschitzness-based Pruning
    zeroes, in each convolution layer, the channels whose Lipschitz upper bound exceeds
    the layer's mean by more than ``clp_u`` standard deviations (:mod:`repair.clp`).

    ``clean_images`` (default: all of them): the clean data budget, a random subset of that
    many validation images (the same for a given seed); a set smaller than the budget is an
    error before any work.
    """

    threshold: int = 4
    layer: Optional[str] = None
    method: str = "cached"
    finetune: int = 0
    finetune_lr: float = 1e-4
    strategy: Optional[str] = None
    stop_asr: float = 0.05
    unlearn_epochs: int = 20
    unlearn_lr: Optional[float] = None
    unlearn_share: float = 1.0
    unlearn_rounds: int = 2
    unlearn_reinvert: int = 0
    clp_u: float = 3.0
    clean_images: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "threshold", check_threshold(self.threshold))
        if self.method not in METHODS:
            raise AegisError(f"--method must be cached or naive. Received: {self.method!r}")
        if not isinstance(self.finetune, int) or self.finetune < 0:
            raise AegisError(f"--finetune must be 0 or a positive number of epochs. Received: {self.finetune}")
        if not 0.0 <= self.stop_asr < 1.0:
            raise AegisError(f"--stop-asr must lie in [0, 1). Received: {self.stop_asr}")
        for name, value in (("--finetune-lr", self.finetune_lr), ("--unlearn-lr", self.unlearn_lr)):
            if value is not None and not value > 0:
                raise AegisError(f"{name} must be a positive number. Received: {value}")
        check_clp_u(self.clp_u)
        check_reinvert_settings(self.unlearn_reinvert)
        if self.clean_images is not None and (isinstance(self.clean_images, bool) or not isinstance(
                self.clean_images, numbers.Integral) or self.clean_images < MIN_CLEAN_IMAGES):
            raise AegisError(f"--clean-images must be a whole number of at least {MIN_CLEAN_IMAGES} images. "
                             f"Received: {self.clean_images!r}")
        if self.strategy is not None:
            names = [s.strip() for s in self.strategy.split(",")]
            if not names or any(s not in STRATEGIES for s in names):
                raise AegisError(f"--strategy must be a comma-separated list of {', '.join(STRATEGIES)}. "
                                 f"Received: {self.strategy}")

    def strategies(self, *, trigger):
        """The strategies to run: ``strategy``, or the default with or without a recovered trigger."""
        return ([s.strip() for s in self.strategy.split(",")] if self.strategy
                else (["trigger-prune", "unlearn"] if trigger else ["lab"]))
