"""The PGD norm is parsed in one place (aegis_tf.core.settings.parse_norm)."""

import numpy as np
import pytest

from aegis_tf.attack.config import TrainConfig
from aegis_tf.core.errors import AegisError
from aegis_tf.core.pgd import L2Step, LinfStep, check_norm, make_step
from aegis_tf.core.settings import NORMS, norm_name, parse_norm


@pytest.mark.parametrize("spelling", [2, 2.0, "2", "l2", "L2"])
def test_every_spelling_of_l2(spelling):
    assert parse_norm(spelling) == 2 and norm_name(spelling) == 2
    assert TrainConfig(norm=spelling).norm == 2
    assert isinstance(make_step(norm=spelling, eps=1.0, step_size=0.1, clip_min=0, clip_max=1), L2Step)


@pytest.mark.parametrize("spelling", [np.inf, float("inf"), "inf", "linf", "Linf"])
def test_every_spelling_of_linf(spelling):
    assert parse_norm(spelling) == np.inf and norm_name(spelling) == "inf"
    assert TrainConfig(norm=spelling).norm == "inf"
    assert isinstance(make_step(norm=spelling, eps=1.0, step_size=0.1, clip_min=0, clip_max=1), LinfStep)


@pytest.mark.parametrize("bad", [1, "1", "l1", None, 0, "", -np.inf])
def test_other_norms_are_refused(bad):
    with pytest.raises(ValueError, match="norm must be 2 or np.inf"):
        parse_norm(bad)
    with pytest.raises(AegisError, match="norm must be one of 2, inf"):
        TrainConfig(norm=bad)


def test_one_parser():
    assert check_norm is parse_norm
    assert [norm_name(n) for n in NORMS] == list(NORMS)  # the spellings flags and reports use are fixed points
