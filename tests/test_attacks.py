import numpy as np
import pytest

from aegis_tf.core import backend
from aegis_tf.core.pgd import L2Step, LinfStep, check_norm, projected_gradient_descent
from aegis_tf.core.models import logits_model, predict_labels
from conftest import tiny_cnn


@pytest.fixture(scope="module")
def model():
    return tiny_cnn(seed=0, num_classes=3)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((16, 8, 8, 1)).astype("float32")


@pytest.mark.parametrize("norm", [2, np.inf])
@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_stays_in_norm_ball_and_value_bounds(model, images, norm, targeted):
    eps = 0.3 if norm == 2 else 0.05
    y = np.full(len(images), 2) if targeted else None
    adv = projected_gradient_descent(model, images, eps=eps, step_size=eps / 4, steps=10, norm=norm, y=y,
                                     targeted=targeted, clip_min=0.1, clip_max=0.9, seed=0)
    d = (adv - images).reshape(len(images), -1)
    # The clip to [0.1, 0.9] moves pixels outside the bounds; measure against the clipped start.
    size = np.sqrt((d**2).sum(axis=1)) if norm == 2 else np.abs(d).max(axis=1)
    start_gap = np.clip(images, 0.1, 0.9) - images
    assert adv.min() >= 0.1 - 1e-6 and adv.max() <= 0.9 + 1e-6
    inside = np.abs(start_gap).reshape(len(images), -1).max(axis=1) == 0
    assert np.all(size[inside] <= eps + 1e-5)


def test_projection_clips_into_the_ball_not_onto_it():
    step = L2Step(eps=1.0, step_size=0.1, clip_min=-10, clip_max=10)
    x0 = np.zeros((2, 4), "float32")
    x = np.array([[0.1, 0, 0, 0], [3.0, 4.0, 0, 0]], "float32")
    out = np.asarray(step.project(x, x0))
    np.testing.assert_allclose(out[0], x[0], atol=1e-6)  # already inside: unchanged
    np.testing.assert_allclose(np.linalg.norm(out[1]), 1.0, atol=1e-5)
    inf = LinfStep(eps=0.5, step_size=0.1, clip_min=-10, clip_max=10)
    np.testing.assert_allclose(np.asarray(inf.project(x, x0))[1], [0.5, 0.5, 0, 0])


def test_random_starts_are_inside_and_seeded(images):
    for step in (L2Step(eps=0.5, step_size=0.1, clip_min=0, clip_max=1), LinfStep(eps=0.1, step_size=0.1, clip_min=0, clip_max=1)):
        a = step.random_start(images, np.random.default_rng(3))
        b = step.random_start(images, np.random.default_rng(3))
        np.testing.assert_array_equal(a, b)
        assert a.min() >= 0 and a.max() <= 1
        d = (a - images).reshape(len(images), -1)
        size = np.sqrt((d**2).sum(1)) if isinstance(step, L2Step) else np.abs(d).max(1)
        assert np.all(size <= step.eps + 1e-5)


@pytest.mark.parametrize("norm", [2, np.inf])
def test_targeted_pgd_lowers_the_target_loss(model, images, norm):
    target = np.full(len(images), 1)
    logits = logits_model(model)
    _, before = backend.input_gradient(logits, images, target)
    adv = projected_gradient_descent(model, images, eps=2.0 if norm == 2 else 0.3, step_size=0.1 if norm == 2 else 0.03,
                                     steps=20, norm=norm, y=target, targeted=True, clip_min=0, clip_max=1)
    _, after = backend.input_gradient(logits, adv, target)
    assert np.mean(after) < np.mean(before) - 0.05
    assert np.mean(predict_labels(model, adv) == 1) > np.mean(predict_labels(model, images) == 1)


def test_untargeted_pgd_raises_the_loss(model, images):
    y = predict_labels(model, images)
    logits = logits_model(model)
    _, before = backend.input_gradient(logits, images, y)
    adv = projected_gradient_descent(model, images, eps=1.0, step_size=0.1, steps=10, norm=2, clip_min=0, clip_max=1)
    _, after = backend.input_gradient(logits, adv, y)
    assert np.mean(after) > np.mean(before)


def test_bad_norm_is_a_value_error():
    with pytest.raises(ValueError, match="norm must be 2 or np.inf"):
        check_norm(1)


def test_logits_model_matches_softmax(model, images):
    logits = np.asarray(logits_model(model)(images))
    probs = model.predict(images, verbose=0)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(1, keepdims=True), probs, atol=1e-5)


def test_compiled_random_starts_stay_inside_and_spread(images):
    """``start_from_noise`` (PGD's random start inside compiled training) keeps the bounds."""
    rng = np.random.default_rng(0)
    normal = rng.standard_normal(images.shape).astype("float32")
    uniform = rng.random(images.shape).astype("float32")
    for step in (L2Step(eps=2.0, step_size=0.1, clip_min=-100, clip_max=100),
                 LinfStep(eps=0.1, step_size=0.1, clip_min=-100, clip_max=100)):
        a = np.asarray(step.start_from_noise(images, normal, uniform))
        d = (a - images).reshape(len(images), -1)
        size = np.sqrt((d**2).sum(1)) if isinstance(step, L2Step) else np.abs(d).max(1)
        assert np.all(size <= step.eps * (1 + 1e-5))
        assert size.max() > 0.5 * step.eps  # a real start, not the clean point
        if isinstance(step, L2Step):  # one radius per example, drawn uniformly in [0, eps)
            np.testing.assert_allclose(size, step.eps * uniform.reshape(len(images), -1)[:, 0], rtol=1e-4)
    clipped = np.asarray(L2Step(eps=50.0, step_size=0.1, clip_min=0, clip_max=1).start_from_noise(images, normal, uniform))
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_input_gradient_can_return_the_logits_of_its_forward_pass(model, images):
    logits = logits_model(model)
    y = np.zeros(len(images), "int64")
    grad, loss = backend.input_gradient(logits, images, y)
    grad2, loss2, out = backend.input_gradient(logits, images, y, with_logits=True)
    np.testing.assert_allclose(np.asarray(grad2), np.asarray(grad), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(loss2), np.asarray(loss), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(out), np.asarray(logits.predict_on_batch(images)), rtol=1e-4, atol=1e-5)
