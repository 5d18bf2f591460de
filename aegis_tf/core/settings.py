"""Typed, frozen settings: the base class every settings dataclass shares, and the
unit rules they all use.

:class:`Settings` validates its fields once, when made (the dataclass's
``_parameter_constraints``, see :mod:`aegis_tf.core.params`), reads like a
mapping (``config["eps"]``), turns into a plain dict with ``to_dict()`` and
copies with ``replace(**overrides)``. The stages define their own settings on
it: :class:`aegis_tf.attack.config.TriggerConfig` and
:class:`~aegis_tf.attack.config.TrainConfig`, :class:`aegis_tf.detect.config.DetectConfig`.
"""

import dataclasses
import math

from aegis_tf.core.params import Interval, validate_params

__all__ = ["Settings", "pixel_max_of", "default_step_size", "STEP_SIZE_FACTOR", "NORMS", "parse_norm", "norm_name",
           "POS_INT", "NONNEG", "POS", "UNIT"]

POS_INT = [Interval(int, 1, None)]
NONNEG = [Interval(float, 0, None)]
POS = [Interval(float, 0, None, closed="neither")]
UNIT = [Interval(float, 0, 1, closed="right")]


def pixel_max_of(scale):
    """The largest pixel value the model sees: 255 for ``raw`` data, 1 for ``unit``."""
    return 255.0 if scale == "raw" else 1.0


# The PGD step size when none is given is STEP_SIZE_FACTOR * eps / steps (MadryLab robustness' rule).
STEP_SIZE_FACTOR = 2.5

# The PGD norms, as settings, flags and reports spell them (:func:`norm_name`).
NORMS = (2, "inf")


def default_step_size(eps, steps):
    """The PGD step size when none is given: ``2.5 * eps / steps`` (MadryLab robustness' rule)."""
    return STEP_SIZE_FACTOR * eps / max(1, steps)


def parse_norm(norm):
    """The PGD norm as the attacks take it: ``2`` (from ``2``, ``"2"``, ``"l2"``, ``"L2"``) or
    ``math.inf``, equal to ``np.inf`` (from ``np.inf``, ``float("inf")``, ``"inf"``, ``"linf"``,
    ``"Linf"``). Anything else raises ValueError. The one place a norm is parsed:
    :func:`norm_name` (settings, reports) and :func:`aegis_tf.core.pgd.make_step` call it."""
    if norm in (2, "2", "l2", "L2"):
        return 2
    if norm in (math.inf, "inf", "linf", "Linf"):
        return math.inf
    raise ValueError(f"norm must be 2 or np.inf. Received: {norm!r}")


def norm_name(norm):
    """The norm as settings, flags and JSON reports spell it: ``2`` or ``"inf"`` (see :func:`parse_norm`)."""
    return 2 if parse_norm(norm) == 2 else "inf"


class Settings:
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
