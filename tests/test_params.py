import dataclasses

import numpy as np
import pytest

from aegis_tf.detect.config import PRESETS, DetectConfig
from repair.thresholds import THRESHOLDS, check_threshold
from aegis_tf.attack.config import TrainConfig, TriggerConfig
from aegis_tf.core.errors import AegisError
from aegis_tf.core.params import Interval, Options, ParamError, validate_params


def test_interval_and_options_accept_exactly_their_values():
    pos = Interval(int, 1, None)
    assert pos(1) and pos(10**9) and not pos(0) and not pos(1.5) and not pos(True)
    unit = Interval(float, 0, 1, closed="right")
    assert unit(1) and unit(0.5) and not unit(0) and not unit(1.01) and not unit("0.5")
    assert str(unit) == "a number in (0, 1]" and str(pos) == "an integer in [1, inf)"
    opts = Options("auto", -1)
    assert opts("auto") and opts(-1) and not opts("Auto") and not opts(-1.0)


def test_validate_params_names_the_first_bad_value():
    constraints = {"a": [Interval(int, 0, None)], "b": [None, str]}
    validate_params({"a": 3, "b": None}, constraints)
    with pytest.raises(ParamError) as e:
        validate_params({"a": -2, "b": 5}, constraints)
    assert e.value.param == "a" and str(e.value) == "a must be an integer in [0, inf). Received: -2"
    assert e.value.format("--a") == "--a must be an integer in [0, inf). Received: -2"


def test_detect_config_is_frozen_validated_and_presets_layer_over_defaults():
    config = DetectConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_seeds = 3
    assert config.replace(n_seeds=3).n_seeds == 3 and config.n_seeds == 200
    for bad in ({"n_seeds": 0}, {"flip_at": 1.5}, {"score": "votes"}, {"bandwidth": -1.0}, {"bandwidth": "wide"}):
        with pytest.raises(ParamError, match=next(iter(bad))):
            DetectConfig(**bad)
    assert DetectConfig(bandwidth=35.0).bandwidth == 35.0
    paper = DetectConfig.from_preset("paper", runs=3)
    assert paper.runs == 3 and paper.score == PRESETS["paper"]["score"] == "clusters"
    with pytest.raises(AegisError, match="preset must be one of default, paper"):
        DetectConfig.from_preset("fast")
    assert DetectConfig(**config.to_dict()) == config  # JSON round trip


def test_train_and_trigger_configs():
    t = TrainConfig(norm="inf", steps=10, eps=0.3)
    assert t.norm == "inf" and t.step_size == pytest.approx(2.5 * 0.3 / 10)
    assert t.to_dict()["lr_milestones"] == [0.5, 0.75] and {**t}["eps"] == 0.3
    assert TrainConfig(norm=np.inf) == TrainConfig(norm="inf")
    with pytest.raises(ParamError, match="blend_alpha"):
        TriggerConfig(trigger="blended", blend_alpha=0.0)
    with pytest.raises(ParamError, match="trigger must be one of"):
        TriggerConfig(trigger="sticker")


def test_threshold_set_is_defined_once():
    assert THRESHOLDS == (2, 4, 10)
    assert [check_threshold(t) for t in ("2", 4, " 10")] == [2, 4, 10]
    for bad in ("7", "4.0", "four", None, -4):
        with pytest.raises(AegisError, match="--threshold must be one of 2, 4, 10"):
            check_threshold(bad)
