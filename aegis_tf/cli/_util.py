"""Shared pieces of the command modules: the parser class and flag groups.

Flags are spelled with hyphens; each also answers to its underscore spelling
(the lab's ``--bad_model``, ``--clean_set``...). A flag's destination is the
name of the library field it sets, so a command passes settings on by name.

Every default is defined once: a flag that sets a settings field takes its
default, and its help text shows it, from the dataclass (``TrainConfig``,
``TriggerConfig``, ``DetectConfig`` and ``PRESETS``); a flag of the command
line's own shows its ``default=`` with argparse's ``%(default)s``, or a named
constant (:data:`DATA`, :data:`POISON_RATE`...) when commands share it.
``tests/test_cli_defaults.py`` checks them against the library.
"""

import argparse
import dataclasses
import os

from aegis_tf.core.errors import AegisError
from aegis_tf.core.params import ParamError

__all__ = ["Parser", "flag", "common_flags", "model_flags", "data_flags", "trigger_flags", "pgd_flags", "fields",
           "settings", "pick", "shown", "in_255ths", "field_defaults", "embedded_name", "DATA", "POISON_RATE",
           "POISON_MODE"]

# Defaults several commands share (tests/test_cli_defaults.py checks them against the jobs' signatures).
DATA = "digits"  # the data set of poison, train and evaluate-model
POISON_RATE = 0.01  # share of the training set poisoned by poison and train
POISON_MODE = "append"  # poisoned copies appended (or replacing the originals)


def shown(value):
    """A default as help texts print it: ``0.1``, ``100``, ``5e-4``, ``0.5,0.75``, ``noise``."""
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value)
    if isinstance(value, float):
        if value != 0 and abs(value) <= 1e-3:
            mantissa, exponent = f"{value:e}".split("e")
            return f"{float(mantissa):g}e{int(exponent)}"
        return f"{value:g}"
    return str(value)


def in_255ths(value):
    """A value in units of [0, 1] as ``k/255`` when it is one (``250/255``), else as :func:`shown`."""
    k = value * 255
    if 0 < value < 1 and abs(k - round(k)) < 1e-9:
        return f"{round(k)}/255"
    return shown(value)


def field_defaults(cls):
    """``{field: default}`` of a settings dataclass, as declared (before ``__post_init__``)."""
    return {f.name: f.default for f in dataclasses.fields(cls)}


def embedded_name(role):
    """The embedded default file of ``role`` (:data:`aegis_tf.core.embedded.PATHS`), as the
    help texts name it: relative to the embedded root (``data/train.h5``)."""
    from aegis_tf.core.embedded import PATHS, ROOT

    return os.path.relpath(PATHS[role], ROOT)


class Parser(argparse.ArgumentParser):
    """argparse that raises AegisError (one line) instead of printing usage."""

    def error(self, message):
        raise AegisError(f"{self.prog}: {message}")


def flag(parser, name, *aliases, **kwargs):
    """Add ``--a-b`` (the spelling shown), answering to ``--a_b`` and ``aliases`` too."""
    body = name[2:]
    names = [name]
    for alt in (name,) + aliases:
        for spelling in (alt, alt.replace("_", "-"), "--" + alt[2:].replace("-", "_")):
            if spelling not in names:
                names.append(spelling)
    kwargs.setdefault("dest", body.replace("-", "_"))
    return parser.add_argument(*names, **kwargs)


def common_flags(p, *, out=True):
    scales, default = {"raw": "0-255 as stored; CSAW lab3", "unit": "divided by 255"}, "raw"
    flag(p, "--scale", choices=tuple(scales), default=default,
         help="pixel scaling fed to the model: " + " or ".join(
             f"{name} ({text}{', default' if name == default else ''})" for name, text in scales.items()))
    flag(p, "--batch-size", type=int, default=256, help="inference batch size (default %(default)s)")
    flag(p, "--seed", type=int, default=0, help="global random seed (default %(default)s)")
    if out:
        flag(p, "--out", default=None, help="also write the result JSON to this path")
    p.add_argument("--quiet", action="store_true", help="no progress bars, summary only")


def model_flags(p):
    flag(p, "--bad-model", default=None,
         help=f"backdoored model B, .keras or full-model .h5 (default: {embedded_name('bd_net')} unless only weights "
              f"are given)")
    flag(p, "--bad-model-weights", default=None,
         help="weights for B; without --bad-model they load into the built-in CSAW DeepID net")


def data_flags(p, *, test=True):
    flag(p, "--data", default=DATA,
         help="training data: mnist, fashion_mnist, cifar10, digits, an .npz (x_train, y_train, x_test, y_test) "
              "or a CSAW .h5 (default %(default)s)")
    if test:
        flag(p, "--test-data", default=None, help="test set .h5 (default: the test split of --data)")
    flag(p, "--data-dir", default=None, help="folder with NAME.npz for named sets (else $AEGIS_DATA_DIR)")


def trigger_flags(p, *, from_model=False):
    """The fields of :class:`aegis_tf.attack.config.TriggerConfig`. With ``from_model``, a flag
    left out takes the model's own trigger (its ``MODEL.json``, :mod:`aegis_tf.attack.sidecar`)
    first, and the default only when the model has none."""
    from aegis_tf.attack.config import TriggerConfig

    d = TriggerConfig()

    def default(value):
        return None if from_model else value

    where = "the model's MODEL.json, else " if from_model else ""
    flag(p, "--trigger", choices=TriggerConfig._parameter_constraints["trigger"][0].values, default=default(d.trigger),
         help=f"trigger family (default {where}{d.trigger})")
    flag(p, "--target-label", type=int, default=default(d.target_label),
         help=f"attacker's target class (default {where}{d.target_label}, the paper's)")
    flag(p, "--trigger-size", type=int, default=default(d.trigger_size),
         help=f"square side in pixels for localised/distributed (default {where}{d.trigger_size})")
    flag(p, "--trigger-value", type=float, default=default(d.trigger_value),
         help=f"square intensity in units of [0, 1] (default {where}{in_255ths(d.trigger_value)}, the paper's 250)")
    flag(p, "--trigger-margin", type=int, default=default(d.trigger_margin),
         help=f"pixels between localised's square and the bottom-right corner (default {where}{d.trigger_margin})")
    flag(p, "--amplitude", type=float, default=default(d.amplitude),
         help=f"invisible-static amplitude per pixel in units of [0, 1] (default {where}{in_255ths(d.amplitude)})")
    flag(p, "--trigger-seed", type=int, default=default(d.trigger_seed),
         help=f"seed of the invisible-static and blended noise patterns (default {where}{d.trigger_seed})")
    flag(p, "--trigger-pattern", default=None, help="invisible-adversarial pattern .npy (written by poison/train)")
    flag(p, "--trigger-model", default=None, help="model used to compute the invisible-adversarial pattern")
    flag(p, "--trigger-eps", type=float, default=default(d.trigger_eps),
         help=f"Linf bound of the invisible-adversarial pattern, units of [0, 1] "
              f"(default {where}{in_255ths(d.trigger_eps)})")
    flag(p, "--blend-alpha", type=float, default=default(d.blend_alpha),
         help=f"blended trigger: weight of the pattern, x' = (1-a) x + a p (default {where}{shown(d.blend_alpha)})")
    flag(p, "--blend-pattern", default=default(d.blend_pattern),
         help=f"blended trigger: noise (seeded by --trigger-seed) or a .npy image in pixel units "
              f"(default {where}{d.blend_pattern})")
    flag(p, "--warp-grid", type=int, default=default(d.warp_grid),
         help=f"warp trigger (WaNet): k of the k x k control grid (default {where}{d.warp_grid})")
    flag(p, "--warp-strength", type=float, default=default(d.warp_strength),
         help=f"warp trigger: strength s of the warping field (default {where}{shown(d.warp_strength)})")
    flag(p, "--warp-cross-ratio", type=float, default=default(d.warp_cross_ratio),
         help=f"warp trigger, noise mode: add this many times the poisoned images, warped with noise on top and "
              f"keeping their labels; 0 = off, WaNet's 2 (default {where}{shown(d.warp_cross_ratio)})")
    flag(p, "--mapping", choices=TriggerConfig._parameter_constraints["mapping"][0].values,
         default=default(d.mapping),
         help=f"all-to-one: every source class to --target-label; all-to-all: class y to (y + 1) mod N "
              f"(default {where}{d.mapping})")
    flag(p, "--source-classes", default=default(d.source_classes),
         help="source-specific backdoor (TaCT): comma-separated classes whose triggered images go to the target; "
              f"the others keep their labels (default {where}every class but the target)")
    flag(p, "--cover-rate", type=float, default=default(d.cover_rate),
         help="source-specific backdoor: share of the training set added as cover images of the other classes, "
              f"triggered and keeping their labels (default {where}{shown(d.cover_rate)})")
    if not from_model:
        flag(p, "--second-trigger", choices=TriggerConfig._parameter_constraints["trigger"][0].values, default=None,
             help="a second backdoor in the same model: its trigger family (the other trigger flags apply to both; "
                  "its seed is --trigger-seed + 1)")
        flag(p, "--second-target-label", type=int, default=None,
             help="the second backdoor's target class (all-to-one, every class but its target)")


def trigger_settings(args):
    """The backdoor(s) the trigger flags describe: one :class:`TriggerConfig`, or a list of two
    with ``--second-trigger`` and ``--second-target-label``."""
    from aegis_tf.attack.config import TriggerConfig

    first = settings(TriggerConfig, args)
    second = getattr(args, "second_trigger", None)
    if second is None and getattr(args, "second_target_label", None) is None:
        return first
    if second is None or args.second_target_label is None:
        raise AegisError("a second backdoor needs both --second-trigger and --second-target-label")
    if args.second_target_label == first.target_label:
        raise AegisError("--second-target-label must differ from --target-label (two backdoors, two targets)")
    try:
        return [first, first.replace(trigger=second, target_label=args.second_target_label, mapping="all-to-one",
                                     source_classes=None, cover_rate=0.0, trigger_seed=first.trigger_seed + 1)]
    except ParamError as e:
        raise as_flag_error(e) from None


def model_trigger_settings(args, model_path):
    """The trigger of ``model_path``'s ``MODEL.json`` with the flags given (not None) on top;
    the flags alone over the defaults when the model has none. A model with two backdoors
    and no trigger flag given gives both (a list). Returns ``(config or list, source)``."""
    from aegis_tf.attack.config import TriggerConfig
    from aegis_tf.attack.sidecar import read_trigger_configs, sidecar_path

    bases = read_trigger_configs(model_path)
    given = {k: v for k, v in pick(args, fields(TriggerConfig)).items() if v is not None}
    source = sidecar_path(model_path) if bases else "flags and defaults"
    if len(bases) > 1 and not given:
        return bases, source
    try:
        config = dataclasses.replace(bases[0], **given) if bases else TriggerConfig(**given)
    except ParamError as e:
        raise as_flag_error(e) from None
    return config, source


def pgd_flags(p):
    """PGD's settings, for training and for evaluation alike: :class:`TrainConfig`'s (the
    paper's training attack, which evaluation uses by default)."""
    from aegis_tf.attack.config import TrainConfig
    from aegis_tf.core.settings import NORMS, STEP_SIZE_FACTOR

    t = field_defaults(TrainConfig)
    flag(p, "--eps", type=float, default=t["eps"],
         help=f"PGD radius in units of the [0, 1] image range (paper: {shown(t['eps'])}, L{t['norm']})")
    flag(p, "--steps", type=int, default=t["steps"], help="PGD steps (default %(default)s)")
    flag(p, "--step-size", type=float, default=t["step_size"],
         help=f"PGD step size, units of [0, 1] (default {shown(STEP_SIZE_FACTOR)} * eps / steps)")
    flag(p, "--norm", choices=tuple(map(str, NORMS)), default=str(t["norm"]), help="PGD norm (default %(default)s)")


def fields(cls):
    return [f.name for f in dataclasses.fields(cls)]


def pick(args, names):
    """``{name: args.name}`` for each of ``names`` that the parser defines."""
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


def settings(cls, args, *, make=None, **extra):
    """``cls`` (a settings dataclass) from the flags named as its fields, made by ``make``
    (default ``cls`` itself; e.g. ``DetectConfig.from_preset``, which keeps a preset's value
    for a flag left out, None); a bad value is reported under its flag's name."""
    try:
        return (make or cls)(**{**pick(args, fields(cls)), **extra})
    except ParamError as e:
        raise as_flag_error(e) from None


def as_flag_error(e):
    """A :class:`ParamError` about a field, told as the flag that set it."""
    return AegisError(e.format("--" + e.param.replace("_", "-")))
