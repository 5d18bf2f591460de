import numpy as np
import pytest

from aegis_tf.errors import AegisError
from aegis_tf.triggers import (distributed, invisible_adversarial, invisible_static, localised, make_trigger, poison,
                               universal_perturbation)
from conftest import tiny_cnn


@pytest.fixture
def batch():
    return np.random.default_rng(0).integers(0, 200, size=(6, 28, 28, 1)).astype("float32")


def test_localised_is_a_small_corner_square(batch):
    out = localised(batch, size=2, value=250)
    assert np.all(out[:, 26:, 26:, :] == 250)
    changed = (out != batch).any(axis=(0, 3))
    assert changed.sum() <= 4 and changed.sum() / changed.size < 0.01
    assert not np.shares_memory(out, batch)


def test_distributed_matches_the_papers_pixels(batch):
    out = distributed(batch, size=2, value=250, offset=1)
    assert np.all(out[:, 1:3, 1:3, :] == 250) and np.all(out[:, 24:26, 24:26, :] == 250)
    changed = (out != batch).any(axis=(0, 3))
    assert changed.sum() == 8


def test_invisible_static_is_fixed_small_and_clipped(batch):
    a = invisible_static(batch, amplitude=8, seed=1)
    b = invisible_static(batch, amplitude=8, seed=1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - batch).max() <= 8 and a.min() >= 0 and a.max() <= 255
    assert not np.array_equal(a, invisible_static(batch, amplitude=8, seed=2))
    # The same pattern on every image.
    d = invisible_static(np.full((2, 28, 28, 1), 100.0), amplitude=8, seed=1) - 100.0
    np.testing.assert_array_equal(d[0], d[1])


@pytest.mark.parametrize("norm", [2, np.inf])
def test_universal_perturbation_is_bounded_reproducible_and_targeted(norm):
    model = tiny_cnn(seed=0, input_shape=(8, 8, 1), num_classes=3)
    x = np.random.default_rng(0).random((40, 8, 8, 1)).astype("float32")
    from aegis_tf.models import predict_labels

    eps = 1.0 if norm == 2 else 0.2
    target = int(np.argmin(np.bincount(predict_labels(model, x), minlength=3)))  # the least predicted class
    p1 = universal_perturbation(model, x, target, eps=eps, step_size=eps / 5, steps=15, norm=norm, clip_min=0, clip_max=1, seed=4)
    p2 = universal_perturbation(model, x, target, eps=eps, step_size=eps / 5, steps=15, norm=norm, clip_min=0, clip_max=1, seed=4)
    np.testing.assert_array_equal(p1, p2)
    size = np.sqrt((p1**2).sum()) if norm == 2 else np.abs(p1).max()
    assert size <= eps + 1e-5
    before = np.mean(predict_labels(model, x) == target)
    after = np.mean(predict_labels(model, invisible_adversarial(x, pattern=p1, clip_min=0, clip_max=1)) == target)
    assert after > before


@pytest.mark.parametrize("mode", ["append", "replace"])
def test_poison_rate_labels_and_seed(batch, mode):
    x = np.repeat(batch, 50, axis=0)  # 300 images
    y = np.arange(300) % 10
    xp, yp, idx = poison(x, y, trigger="localised", poison_rate=0.1, target_label=7, mode=mode, seed=3)
    assert len(idx) == 30 and np.all(y[idx] != 7)
    if mode == "append":
        assert len(xp) == 330 and np.all(yp[300:] == 7)
        np.testing.assert_array_equal(xp[:300], x)
        assert np.all(xp[300:, 26:, 26:, :] == 250)
    else:
        assert len(xp) == 300 and np.all(yp[idx] == 7)
        assert np.sum(yp != y) == 30
    _, _, idx2 = poison(x, y, trigger="localised", poison_rate=0.1, target_label=7, mode=mode, seed=3)
    np.testing.assert_array_equal(idx, idx2)


def test_poison_and_trigger_errors(batch):
    with pytest.raises(AegisError, match="poison_rate must lie in"):
        poison(batch, np.zeros(6), trigger="localised", poison_rate=1.5, target_label=7)
    with pytest.raises(AegisError, match="trigger must be one of"):
        make_trigger("sparkles")
    with pytest.raises(AegisError, match="needs a pattern"):
        make_trigger("invisible-adversarial")
    with pytest.raises(AegisError, match="trigger size"):
        localised(batch, size=40)
