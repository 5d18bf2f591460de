import keras
import numpy as np
import pytest

from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import build_deepid, predict_labels
from repair.prune import _first_reaching, finetune_pruned, prune_curve, prune_curve_naive, prune_model


def test_cached_curve_equals_naive_loop_on_default_badnet(default_model, default_valid):
    (xc, yc), (xb, yb) = default_valid
    xc, yc, xb, yb = xc[:120], yc[:120], xb[:120], yb[:120]
    fast = prune_curve(default_model, xc, yc, xb, yb, quiet=True)
    slow = prune_curve_naive(default_model, xc, yc, xb, yb, quiet=True)
    np.testing.assert_array_equal(fast.order, slow.order)
    np.testing.assert_allclose(fast.clean_acc, slow.clean_acc)
    np.testing.assert_allclose(fast.asr, slow.asr)
    assert fast.saved == slow.saved
    # The curve starts at the unpruned model and ends with every channel gone.
    assert fast.clean_acc[0] == pytest.approx(np.mean(predict_labels(default_model, xc) == yc))
    assert fast.n_channels == 32 and len(fast.clean_acc) == 33


def test_order_is_lowest_mean_activation_first(default_model, default_valid):
    (xc, yc), (xb, yb) = default_valid
    c = prune_curve(default_model, xc[:50], yc[:50], xb[:50], yb[:50], quiet=True)
    assert np.all(np.diff(c.mean_activation[c.order]) >= 0)


def test_two_branch_deepid_tail_matches_full_model(rng):
    keras.utils.set_random_seed(3)
    m = build_deepid(num_classes=20)
    x = rng.integers(0, 256, size=(24, 55, 47, 3)).astype("float32")
    y = predict_labels(m, x)  # accuracy 1.0 before pruning
    fast = prune_curve(m, x, y, x[:12], y[:12], rows_per_call=24 * 7, quiet=True)  # several chunks
    slow = prune_curve_naive(m, x, y, x[:12], y[:12], quiet=True)
    assert fast.layer == "pool_3" and fast.conv == "conv_3" and fast.n_channels == 60
    np.testing.assert_allclose(fast.clean_acc, slow.clean_acc)
    np.testing.assert_allclose(fast.asr, slow.asr)


def test_prune_model_copies_and_zeroes_channels(default_model, default_valid):
    (xc, yc), (xb, yb) = default_valid
    before = [w.copy() for w in default_model.get_weights()]
    c = prune_curve(default_model, xc, yc, xb, yb, quiet=True)
    k = c.saved[4]
    pruned = prune_model(default_model, c, k, x_check=xc, y_check=yc)
    kernel, bias = pruned.get_layer(c.conv).get_weights()
    gone = c.channels_at(k)
    assert np.all(kernel[..., gone] == 0) and np.all(bias[gone] == 0)
    kept = [i for i in range(c.n_channels) if i not in gone]
    assert np.any(kernel[..., kept] != 0)
    for a, b in zip(before, default_model.get_weights()):  # the caller's model is untouched
        np.testing.assert_array_equal(a, b)
    acc = np.mean(predict_labels(pruned, xc) == yc)
    assert acc == pytest.approx(c.clean_acc[k])
    assert (c.clean_acc[0] - acc) * 100 >= 4 - 1e-9
    assert (c.clean_acc[0] - c.clean_acc[k - 1]) * 100 < 4


def test_first_reaching_threshold_semantics():
    acc = np.array([0.90, 0.89, 0.875, 0.86, 0.70])
    assert _first_reaching(acc, (2, 4, 10)) == {2: 2, 4: 3, 10: 4}
    assert _first_reaching(np.array([0.5, 0.49]), (2,)) == {2: None}


def test_threshold_outside_choices_is_rejected(default_model, default_valid):
    (xc, yc), (xb, yb) = default_valid
    with pytest.raises(AegisError, match="one of 2, 4, 10 .* Received: 7"):
        prune_curve(default_model, xc, yc, xb, yb, thresholds=(7,))


def test_finetune_keeps_pruned_channels_zero(default_model, default_valid):
    (xc, yc), (xb, yb) = default_valid
    c = prune_curve(default_model, xc, yc, xb, yb, quiet=True)
    k = c.saved[10]
    pruned = prune_model(default_model, c, k)
    tuned = finetune_pruned(pruned, c, k, xc, yc, epochs=1, quiet=True)
    kernel, bias = tuned.get_layer(c.conv).get_weights()
    assert np.all(kernel[..., c.channels_at(k)] == 0) and np.all(bias[c.channels_at(k)] == 0)
    assert not np.array_equal(tuned.get_layer("output").get_weights()[0], pruned.get_layer("output").get_weights()[0])


def test_a_resnet_is_pruned_at_the_dense_layer_that_reads_its_global_pooling(rng):
    # A ResNet's global pooling is fed by an addition, not by one convolution: the lab's
    # channels are pruned by zeroing their input rows of the output layer, which must give
    # the masked tail's curve exactly, keep the rows zero under fine-pruning, and leave
    # every other weight alone.
    from aegis_tf.core.models import build_model, find_prune_site

    keras.utils.set_random_seed(5)
    m = build_model("resnet18", input_shape=(12, 12, 3), num_classes=5, width=4)
    assert find_prune_site(m, m.get_layer("penultimate")).name == "output"
    x = rng.integers(0, 256, size=(40, 12, 12, 3)).astype("float32")
    y = predict_labels(m, x)
    fast = prune_curve(m, x, y, x[:10], y[:10], quiet=True)
    slow = prune_curve_naive(m, x, y, x[:10], y[:10], quiet=True)
    assert fast.layer == "penultimate" and fast.conv == "output" and fast.n_channels == 32
    np.testing.assert_allclose(fast.clean_acc, slow.clean_acc)
    k = fast.saved[10] or fast.n_channels // 2
    pruned = prune_model(m, fast, k, x_check=x, y_check=y)  # checks the model against the curve
    kernel, before = pruned.get_layer("output").get_weights()[0], m.get_layer("output").get_weights()[0]
    gone = fast.channels_at(k)
    assert k > 0 and np.all(kernel[gone] == 0)
    np.testing.assert_array_equal(np.delete(kernel, gone, axis=0), np.delete(before, gone, axis=0))
    tuned = finetune_pruned(pruned, fast, k, x, y, epochs=1, batch_size=8, quiet=True)
    assert np.all(tuned.get_layer("output").get_weights()[0][gone] == 0)


def test_a_pooling_layer_with_neither_a_feeding_conv_nor_one_dense_reader_is_refused():
    from aegis_tf.core.models import find_prune_site

    inp = keras.Input((8, 8, 2))
    a = keras.layers.Conv2D(3, 3, padding="same")(inp)
    b = keras.layers.Conv2D(3, 3, padding="same")(inp)
    p = keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.Add()([a, b]))
    out = keras.layers.Concatenate()([keras.layers.Dense(2)(p), keras.layers.Dense(2)(p)])  # two readers
    m = keras.Model(inp, out)
    with pytest.raises(AegisError, match="found Add .*nor is it a global pooling layer read by one Dense layer"):
        find_prune_site(m, m.get_layer("gap"))
