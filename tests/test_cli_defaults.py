"""Every default defined once: the flags take their defaults, and their help texts show
them, from the settings dataclasses; the command line's own defaults agree with the
jobs' signatures (a disagreement such as ``robust`` True on the command line and
False in TrainConfig cannot come back unnoticed)."""

import dataclasses
import inspect

import pytest

from aegis_tf.attack.config import TrainConfig, TriggerConfig
from aegis_tf.cli import build_parser
from aegis_tf.cli._util import field_defaults, in_255ths, settings, shown
from aegis_tf.core.settings import pixel_max_of
from aegis_tf.detect.config import PRESETS


def _commands(parser=None):
    """``{name: subparser}`` of every command (aliases included)."""
    import argparse

    parser = parser or build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _defaults(sub):
    return {a.dest: a.default for a in sub._actions if a.dest != "help"}


def _help(sub, dest):
    """The help text of ``dest``'s flag, ``%(default)s`` filled in as argparse does."""
    return next(a.help % dict(vars(a), prog=sub.prog) for a in sub._actions if a.dest == dest and a.help)


def test_shown_and_in_255ths_print_defaults_as_the_help_texts_did():
    assert [shown(v) for v in (0.1, 100.0, 5e-4, 1e-3, 1e-4, 0.0, 0.05, (0.5, 0.75), "noise", 7)] == \
        ["0.1", "100", "5e-4", "1e-3", "1e-4", "0", "0.05", "0.5,0.75", "noise", "7"]
    assert [in_255ths(v) for v in (250 / 255, 8 / 255, 16 / 255, 0.15, 1.0)] == ["250/255", "8/255", "16/255", "0.15", "1"]


def test_train_without_flags_is_the_train_config_default():
    # `aegis train` with no training flag trains with TrainConfig() (Madry-robust, as the docs say).
    args = _commands()["train"].parse_args([])
    config = settings(TrainConfig, args, batch_size=args.train_batch_size, pixel_max=pixel_max_of(args.scale))
    assert config == TrainConfig() and config.robust is True
    assert settings(TriggerConfig, args) == TriggerConfig()
    assert "(default)" in _help(_commands()["train"], "robust")


def test_help_texts_read_the_dataclasses(monkeypatch):
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    monkeypatch.setattr(fields["epochs"], "default", 7)
    monkeypatch.setattr(fields["weight_decay"], "default", 1e-5)
    monkeypatch.setitem(PRESETS["paper"], "n_seeds", 123)
    commands = _commands()
    train, detect = commands["train"], commands["detect"]
    assert train.get_default("epochs") == 7 and "(default 7)" in _help(train, "epochs")
    assert "(default 1e-5)" in _help(train, "weight_decay")
    assert "paper 123" in _help(detect, "n_seeds") and "(123 seeds" in _help(detect, "preset")


def test_pgd_flags_default_to_the_training_attack():
    t = field_defaults(TrainConfig)
    for name in ("train", "evaluate-model"):
        d = _defaults(_commands()[name])
        assert (d["eps"], d["steps"], d["step_size"], d["norm"]) == (t["eps"], t["steps"], t["step_size"], str(t["norm"]))


def test_scan_help_names_the_staged_threshold():
    from aegis_tf.detect.staged import STAGED_ABOVE

    assert f"staged above {STAGED_ABOVE} classes" in _help(_commands()["detect"], "scan")


def test_compact_width_in_the_help_is_the_model_default():
    from aegis_tf.core.models import build_model

    assert "compact 16" in _help(_commands()["train"], "width")
    assert build_model("compact", input_shape=(8, 8, 1), num_classes=2).get_layer("conv_1").filters == 16


def _job(module, name):
    import importlib

    return getattr(importlib.import_module(module), name)


# (command, the job it calls, flag destinations named otherwise in the job)
JOBS = [
    ("poison", ("aegis_tf.attack.job", "poison_job"), {}),
    ("train", ("aegis_tf.attack.job", "train_job"), {}),
    ("evaluate-model", ("aegis_tf.attack.job", "evaluate_model_job"), {}),
    ("detect", ("aegis_tf.detect.scan", "run_detect"), {"jobs": "n_jobs"}),
    ("repair", ("repair.pipeline", "repair_job"), {}),
    ("evaluate-goodnet", ("repair.pipeline", "evaluate_goodnet_job"), {}),
]


@pytest.mark.parametrize("command, job, renamed", JOBS, ids=[j[0] for j in JOBS])
def test_command_defaults_agree_with_the_job(command, job, renamed):
    from aegis_tf.core.settings import parse_norm

    params = inspect.signature(_job(*job)).parameters
    compared = 0
    for dest, value in _defaults(_commands()[command]).items():
        param = params.get(renamed.get(dest, dest))
        if param is None or param.default is inspect.Parameter.empty or dest == "quiet":  # the CLI shows progress
            continue
        want = param.default
        if dest == "norm":
            value, want = parse_norm(value), parse_norm(want)
        assert value == want, f"{command} --{dest.replace('_', '-')}: {value!r} on the command line, {want!r} in {job[1]}"
        compared += 1
    assert compared


def test_repair_flags_default_to_the_repair_config():
    from repair.config import RepairConfig

    repair, goodnet = _commands()["repair"], _commands()["evaluate-goodnet"]
    for f in dataclasses.fields(RepairConfig):
        assert repair.get_default(f.name) == f.default, f.name
    assert goodnet.get_default("threshold") == RepairConfig().threshold
    args = repair.parse_args([])
    args.command = "repair"
    assert settings(RepairConfig, args) == RepairConfig()
