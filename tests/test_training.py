import keras
import numpy as np
import pytest

from aegis_tf.core.backend import enable_determinism
from aegis_tf.core.errors import AegisError
from aegis_tf.attack.evaluation import evaluate_backdoor
from aegis_tf.core.models import build_compact_cnn, predict_labels
from aegis_tf.attack.training import TrainConfig, learning_rate_at, train
from aegis_tf.attack.triggers import localised, poison


def bands(n, seed):
    """Synthetic 12x12 images: the class is which horizontal band is bright."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    x = rng.random((n, 12, 12, 1)).astype("float32") * 0.3
    for c in range(3):
        x[y == c, 4 * c:4 * c + 3, 1:9, :] += 0.6
    return np.clip(x, 0, 1), y


def fresh(seed=0):
    keras.utils.set_random_seed(seed)
    return build_compact_cnn(input_shape=(12, 12, 1), num_classes=3, width=4, input_scale=1.0)


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    enable_determinism()
    x, y = bands(256, 0)
    cfg = {"epochs": 3, "batch_size": 32, "robust": True, "eps": 0.2, "steps": 3, "pixel_max": 1.0, "seed": 5}
    full = fresh()
    h_full = train(full, x, y, config=cfg, quiet=True)

    class Killed(Exception):
        pass

    def kill(epoch, record):
        if epoch == 1:
            raise Killed

    interrupted = fresh()
    with pytest.raises(Killed):
        train(interrupted, x, y, config=cfg, checkpoint_dir=str(tmp_path), quiet=True, on_epoch_end=kill)
    resumed = fresh()  # a new process would rebuild the model from scratch
    h_res = train(resumed, x, y, config=cfg, checkpoint_dir=str(tmp_path), quiet=True)
    assert [r["epoch"] for r in h_res] == [0, 1, 2]
    no_time = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # wall time differs
    assert no_time(h_res) == no_time(h_full) and all(r["seconds"] >= 0 for r in h_res)
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    # A different configuration must not silently resume from that checkpoint.
    with pytest.raises(AegisError, match="another configuration"):
        train(fresh(), x, y, config={**cfg, "eps": 0.3}, checkpoint_dir=str(tmp_path), quiet=True)


def test_learning_rate_schedule_and_config_defaults():
    cfg = TrainConfig(epochs=20)
    assert [learning_rate_at(e, cfg) for e in (0, 9, 10, 14, 15, 19)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert cfg["momentum"] == 0.9 and cfg["weight_decay"] == 5e-4 and cfg["eps"] == 0.5 and cfg["steps"] == 20
    assert cfg["step_size"] == pytest.approx(2.5 * 0.5 / 20)
    with pytest.raises(TypeError):
        TrainConfig(epoch=3)
    with pytest.raises(AegisError, match=r"steps must be an integer in \[1, inf\). Received: 0"):
        TrainConfig(steps=0)
    with pytest.raises(AegisError, match="norm must be one of 2, inf"):
        TrainConfig(norm=1)
    assert TrainConfig(norm=np.inf).norm == "inf" and TrainConfig(norm="2").norm == 2
    with pytest.raises(AegisError, match="unknown training option"):
        train(None, np.zeros((1, 2, 2, 1)), [0], config={"epoch": 3})


def test_tiny_robust_model_learns_a_planted_trigger():
    enable_determinism()
    x, y = bands(900, 1)
    xt, yt = bands(300, 2)

    def trig(a):
        return localised(a, size=2, value=1.0)

    xp, yp, _ = poison(x, y, trigger=trig, poison_rate=0.1, target_label=0, seed=0)
    model = fresh(1)
    cfg = {"epochs": 12, "batch_size": 32, "learning_rate": 0.05, "robust": True, "eps": 0.25, "steps": 5,
           "pixel_max": 1.0, "seed": 0}
    history = train(model, xp, yp, config=cfg, quiet=True)
    assert history[-1]["loss"] < history[0]["loss"]
    res = evaluate_backdoor(model, xt, yt, trigger=trig, target_label=0, eps=0.25, steps=5, pixel_max=1.0)
    assert res["clean_acc"] > 0.9
    assert res["asr"] > 0.8  # chance is 1/3
    assert res["adv_acc"] > 0.5
    # The same model, evaluated without the trigger, barely predicts the target.
    keep = yt != 0
    assert np.mean(predict_labels(model, xt[keep]) == 0) < 0.2
