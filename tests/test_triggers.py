import numpy as np
import pytest

from aegis_tf.core.errors import AegisError
from aegis_tf.attack.triggers import (blend_pattern, blended, distributed, invisible_adversarial, invisible_static,
                               load_blend_pattern, localised, make_trigger, poison, universal_perturbation)
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
    from aegis_tf.core.models import predict_labels

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


def test_blended_is_the_formula_and_leaves_the_input_alone(batch):
    before = batch.copy()
    p = blend_pattern(batch.shape[1:], seed=0, pixel_max=255.0)
    out = blended(batch, alpha=0.15, seed=0, pixel_max=255.0)
    np.testing.assert_array_equal(batch, before)
    assert not np.shares_memory(out, batch) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.85 * batch + 0.15 * p, rtol=1e-6, atol=1e-4)
    # An explicit pattern is used as given.
    q = np.full(batch.shape[1:], 200.0)
    np.testing.assert_allclose(blended(batch, alpha=0.5, pattern=q), 0.5 * batch + 100.0, rtol=1e-6, atol=1e-4)
    # alpha 1 replaces the image with the pattern.
    np.testing.assert_allclose(blended(batch, alpha=1.0, pattern=q), np.broadcast_to(q, batch.shape))


def test_blend_pattern_is_seeded_noise_over_the_pixel_range():
    a = blend_pattern((28, 28, 3), seed=0, pixel_max=255.0)
    np.testing.assert_array_equal(a, blend_pattern((28, 28, 3), seed=0, pixel_max=255.0))
    assert not np.array_equal(a, blend_pattern((28, 28, 3), seed=1, pixel_max=255.0))
    assert a.shape == (28, 28, 3) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 255 and a.std() > 50  # noise, not a constant
    u = blend_pattern((8, 8, 1), seed=0, pixel_max=1.0)
    assert u.min() >= 0 and u.max() <= 1
    x = np.zeros((2, 8, 8, 1), "float32")
    assert not np.array_equal(blended(x, seed=0, pixel_max=1.0), blended(x, seed=1, pixel_max=1.0))


@pytest.mark.parametrize("pixel_max", [255.0, 1.0])
def test_blended_stays_in_the_pixel_range(pixel_max):
    rng = np.random.default_rng(1)
    x = np.concatenate([np.zeros((2, 16, 16, 3)), np.full((2, 16, 16, 3), pixel_max),
                        rng.uniform(0, pixel_max, (4, 16, 16, 3))]).astype("float32")
    for alpha in (1e-3, 0.15, 0.7, 1.0):
        out = blended(x, alpha=alpha, seed=3, pixel_max=pixel_max)
        assert out.min() >= 0 and out.max() <= pixel_max


def test_blended_hw_pattern_broadcasts_over_channels():
    x = np.random.default_rng(2).uniform(0, 255, (3, 10, 12, 3)).astype("float32")
    p2 = np.random.default_rng(3).uniform(0, 255, (10, 12))
    out = blended(x, alpha=0.2, pattern=p2)
    np.testing.assert_allclose(out, blended(x, alpha=0.2, pattern=np.repeat(p2[..., None], 3, axis=-1)))
    np.testing.assert_allclose(out, 0.8 * x + 0.2 * p2[None, :, :, None], rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("alpha", [0, 0.0, -0.1, 1.01, 2, float("nan"), "0.2", None, True])
def test_blended_alpha_bounds(batch, alpha):
    with pytest.raises(AegisError, match=r"blend alpha must lie in \(0, 1\]. Received: ") as e:
        blended(batch, alpha=alpha)
    assert "\n" not in str(e.value)
    with pytest.raises(AegisError, match="blend alpha must lie in"):
        make_trigger("blended", alpha=alpha)


@pytest.mark.parametrize("shape", [(28, 28, 3), (27, 28, 1), (28, 27), (28,), (1, 28, 28, 1)])
def test_blended_pattern_shape_errors(batch, shape):
    with pytest.raises(AegisError) as e:
        blended(batch, pattern=np.zeros(shape))
    msg = str(e.value)
    assert "(28, 28, 1) or (28, 28)" in msg and f"Received shape {shape}" in msg and "\n" not in msg


def test_blended_pattern_values_must_be_pixels(batch):
    with pytest.raises(AegisError, match=r"values must lie in \[0, 1\]"):
        blended(batch / 255.0, pattern=np.full((28, 28), 200.0), pixel_max=1.0)
    with pytest.raises(AegisError, match="values must lie in"):
        blended(batch, pattern=np.full((28, 28), np.nan))


def test_make_trigger_blended(batch):
    fn = make_trigger("blended", pixel_max=255.0, alpha=0.15, seed=4)
    np.testing.assert_array_equal(fn(batch), blended(batch, alpha=0.15, seed=4, pixel_max=255.0))
    p = blend_pattern((28, 28, 1), seed=9, pixel_max=1.0)
    fn = make_trigger("blended", pixel_max=1.0, alpha=0.3, pattern=p)
    np.testing.assert_allclose(fn(batch / 255.0), 0.7 * batch / 255.0 + 0.3 * p, rtol=1e-6, atol=1e-6)


def test_poison_with_blended_labels_the_poisoned_as_the_target(batch):
    x = np.repeat(batch, 20, axis=0)  # 120 images
    y = np.arange(120) % 10
    xp, yp, idx = poison(x, y, trigger="blended", poison_rate=0.15, target_label=3, seed=0, alpha=0.15)
    assert len(idx) == 18 and np.all(y[idx] != 3)
    assert len(xp) == 138 and np.all(yp[120:] == 3)
    np.testing.assert_array_equal(xp[:120], x)
    np.testing.assert_allclose(xp[120:], blended(x[idx], alpha=0.15), rtol=1e-6)
    xr, yr, idx_r = poison(x, y, trigger=make_trigger("blended", alpha=0.15), poison_rate=0.15, target_label=3,
                           mode="replace", seed=0)
    assert np.all(yr[idx_r] == 3) and np.sum(yr != y) == 18
    np.testing.assert_array_equal(xr[idx_r], xp[120:])


def test_load_blend_pattern(tmp_path):
    noise = load_blend_pattern("noise", (8, 8, 3), seed=2, pixel_max=255.0)
    np.testing.assert_array_equal(noise, blend_pattern((8, 8, 3), seed=2, pixel_max=255.0))
    p = np.random.default_rng(0).uniform(0, 255, (8, 8))
    np.save(tmp_path / "p.npy", p)
    got = load_blend_pattern(str(tmp_path / "p.npy"), (8, 8, 3), seed=0, pixel_max=255.0)
    assert got.shape == (8, 8, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got[..., 2], p, rtol=1e-6)
    # The saved noise pattern round-trips.
    np.save(tmp_path / "noise.npy", noise)
    np.testing.assert_array_equal(load_blend_pattern(tmp_path / "noise.npy", (8, 8, 3)), noise)


def test_load_blend_pattern_errors(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not an npy file")
    np.save(tmp_path / "wrong.npy", np.zeros((9, 8, 3)))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = [
        (tmp_path / "missing.npy", "blend pattern file not found"),
        (tmp_path / "bad.npy", "cannot read blend pattern .* as .npy"),
        (tmp_path / "obj.npy", "cannot read blend pattern"),
        (tmp_path / "wrong.npy", r"must have shape \(8, 8, 3\) or \(8, 8\) .* Received shape \(9, 8, 3\)"),
        ("sparkles", "blend pattern must be noise or a .npy file. Received: 'sparkles'"),
    ]
    for spec, message in cases:
        with pytest.raises(AegisError, match=message) as e:
            load_blend_pattern(str(spec), (8, 8, 3), seed=0, pixel_max=255.0)
        assert "\n" not in str(e.value)


def test_existing_triggers_are_unchanged(batch):
    # Bit-identical to the formulas they had before the blended trigger was added.
    rng = np.random.default_rng(0)
    pattern = (8.0 * rng.choice([-1.0, 1.0], size=(28, 28, 1))).astype("float32")
    np.testing.assert_array_equal(make_trigger("invisible-static")(batch),
                                  np.clip(batch.astype("float32") + pattern, 0.0, 255.0))
    expected = batch.copy()
    expected[:, 26:, 26:, :] = 250.0
    np.testing.assert_array_equal(make_trigger("localised")(batch), expected)
