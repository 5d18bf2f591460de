import numpy as np

from aegis_tf.core.data import digits_splits, load_h5
from aegis_tf.attack.embedded import CONFIG, poisoned_copy


def test_committed_data_is_what_the_build_script_makes(default_paths):
    splits = digits_splits(size=CONFIG["size"], seed=CONFIG["split_seed"])
    for name in ("train", "valid", "test"):
        x, y = load_h5(default_paths[name])
        np.testing.assert_array_equal(x, splits[name][0].astype("float32"))
        np.testing.assert_array_equal(y, splits[name][1])
        xb, yb = load_h5(default_paths["bd_" + name]) if name != "train" else (None, None)
        if xb is not None:
            want_x, want_y = poisoned_copy(*splits[name])
            np.testing.assert_array_equal(xb, want_x.astype("float32"))
            np.testing.assert_array_equal(yb, want_y)


def test_poisoned_sets_carry_trigger_and_target(default_paths):
    xb, yb = load_h5(default_paths["bd_test"])
    x, y = load_h5(default_paths["test"])
    assert np.all(yb == CONFIG["target_label"])
    assert len(xb) == int(np.sum(y != CONFIG["target_label"]))
    s, m, v = CONFIG["trigger_kwargs"]["size"], CONFIG["trigger_kwargs"]["margin"], CONFIG["trigger_kwargs"]["value"]
    assert np.all(xb[:, 28 - m - s:28 - m, 28 - m - s:28 - m, :] == v)
    # Outside the patch the poisoned images are the clean non-target images.
    keep = y != CONFIG["target_label"]
    mask = np.ones((28, 28), bool)
    mask[28 - m - s:28 - m, 28 - m - s:28 - m] = False
    np.testing.assert_array_equal(xb[:, mask], x[keep][:, mask])


def test_robust_pair_is_the_train_job_with_the_recipe(default_paths):
    # scripts/make_default.py builds the robust pair with train_job(**robust_job_args(key)): the recipe's
    # settings, and the trigger the job builds from its TriggerConfig is the recipe's own trigger.
    from aegis_tf.attack.config import TrainConfig
    from aegis_tf.attack.embedded import ROBUST_CONFIG, ROBUST_MODELS, robust_job_args, robust_train_config
    from aegis_tf.attack.triggers import build_trigger, get_trigger

    bd, clean = (robust_job_args(key, default_paths) for key in ROBUST_MODELS)
    assert bd["config"] == clean["config"] == robust_train_config() == TrainConfig(
        epochs=40, batch_size=128, learning_rate=0.05, robust=True, eps=0.5, steps=7, eps_warmup=5, seed=0)
    assert (bd["poison_rate"], clean["poison_rate"]) == (ROBUST_CONFIG["poison_rate"], 0.0)
    assert bd["model_out"] == default_paths["robust_bd_net"] and bd["data"] == default_paths["train"]
    x, _ = load_h5(default_paths["test"])
    fn, _ = build_trigger(bd["trigger"], pixel_max=ROBUST_CONFIG["pixel_max"], x_sample=x)
    np.testing.assert_array_equal(fn(x), get_trigger(CONFIG["trigger"])(x, **CONFIG["trigger_kwargs"]))
