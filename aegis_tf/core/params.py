"""Parameter constraints, validated once, in the manner of scikit-learn.

A class states the valid values of each parameter in ``_parameter_constraints``
(``{name: [constraint, ...]}``; a value is valid when any constraint accepts
it) and calls :func:`validate_params` at the start of ``fit``. The command line
maps its flags to the same names and needs no checks of its own: a
:class:`ParamError` names the parameter, and the CLI shows it as a flag.
"""

import numbers

from aegis_tf.core.errors import AegisError

__all__ = ["ParamError", "Interval", "Options", "validate_params", "Detector"]


class ParamError(AegisError):
    """A parameter outside its constraints. ``param`` is its name."""

    def __init__(self, param, expected, received):
        self.param, self.expected, self.received = param, expected, received
        super().__init__(self.format(param))

    def format(self, name):
        return f"{name} must be {self.expected}. Received: {self.received!r}"


class Interval:
    """Numbers of ``kind`` (``int`` or ``float``; ints are accepted as floats)
    between ``left`` and ``right`` (``None``: unbounded); ``closed`` is
    ``"both"``, ``"left"``, ``"right"`` or ``"neither"``."""

    def __init__(self, kind, left, right, *, closed="both"):
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def __call__(self, value):
        if isinstance(value, bool):
            return False
        if not isinstance(value, numbers.Integral if self.kind is int else numbers.Real):
            return False
        lo_ok = self.left is None or (value >= self.left if self.closed in ("both", "left") else value > self.left)
        hi_ok = self.right is None or (value <= self.right if self.closed in ("both", "right") else value < self.right)
        return lo_ok and hi_ok

    def __str__(self):
        lo = "-inf" if self.left is None else f"{self.left:g}"
        hi = "inf" if self.right is None else f"{self.right:g}"
        lb = "[" if self.closed in ("both", "left") and self.left is not None else "("
        rb = "]" if self.closed in ("both", "right") and self.right is not None else ")"
        return f"{'an integer' if self.kind is int else 'a number'} in {lb}{lo}, {hi}{rb}"


class Options:
    """One of a fixed set of values."""

    def __init__(self, *values):
        self.values = values

    def __call__(self, value):
        return any(value == v and type(value) is type(v) for v in self.values)

    def __str__(self):
        return "one of " + ", ".join(map(str, self.values))


def _describe(constraint):
    if constraint is None:
        return "None"
    if constraint is str:
        return "a string"
    return str(constraint)


def _accepts(constraint, value):
    if constraint is None:
        return value is None
    if constraint is str:
        return isinstance(value, str)
    return constraint(value)


def validate_params(params, constraints):
    """Raise :class:`ParamError` for the first value of ``params`` (a dict) that
    no constraint of its name accepts."""
    for name, rules in constraints.items():
        value = params[name]
        if not any(_accepts(r, value) for r in rules):
            raise ParamError(name, " or ".join(_describe(r) for r in rules), value)


class Detector:
    """The interface every detector provides, scikit-learn style.

    ``__init__`` stores parameters only. ``fit(model, x, y, classes)`` returns
    ``self`` and sets ``classes_``, ``scores_`` (class -> the detector's score),
    ``suspect_classes_`` and ``is_backdoored_``. ``report()`` is JSON-ready.
    Subclasses declare ``_parameter_constraints``, ``score_name`` (the JSON name
    of a class's score), ``threshold_`` and ``direction`` (``"above"``: a
    class is flagged when its score exceeds the threshold; ``"below"``: when it
    lies under it).
    """

    _parameter_constraints = {}
    score_name = "score"
    direction = "above"

    def _validate_params(self):
        validate_params({k: getattr(self, k) for k in self._parameter_constraints}, self._parameter_constraints)

    def get_params(self):
        return {k: getattr(self, k) for k in self._parameter_constraints}

    def _class_entry(self, c):
        return {self.score_name: self.scores_[c]}

    def evidence(self, description):
        """This detector's part of the combined verdict: per-class scores against its threshold."""
        return {"description": description, "scores": {str(c): self.scores_[c] for c in self.classes_},
                "threshold": self.threshold_, "direction": self.direction, "flagged": list(self.suspect_classes_)}

    def report(self):
        """Verdict, suspect classes, each class's entry and the parameters."""
        return {
            "verdict": "backdoored" if self.is_backdoored_ else "clean",
            "suspect_classes": list(self.suspect_classes_),
            "classes": {str(c): self._class_entry(c) for c in self.classes_},
            "params": self.get_params(),
        }
