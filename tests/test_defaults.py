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
