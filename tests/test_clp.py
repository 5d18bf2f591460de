"""Channel Lipschitzness-based Pruning (repair/clp.py): the channel bound, what is pruned, BN folding, and the
``repair --strategy clp`` command."""

import json
import os
import re

import keras
import numpy as np
import pytest

import aegis_tf
import cli
from aegis_tf.core.errors import AegisError
from repair.clp import channel_lipschitz, clp_prune, conv_layers


def _probe(model, name, x):
    return keras.Model(model.inputs, model.get_layer(name).output).predict(x, verbose=0)


def _conv_net(seed=0, filters=16, bn=False):
    """input 8x8x2 -> conv (16 channels) [-> BN] -> relu -> conv2 (8) -> pool -> dense 3."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not bn, activation=None if bn else "relu",
                            name="conv")(inp)
    if bn:
        x = keras.layers.BatchNormalization(name="bn")(x)
        x = keras.layers.Activation("relu", name="relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(3, activation="softmax", name="output")(x)
    return keras.Model(inp, out)


def test_uclc_is_the_spectral_norm_of_each_channel_times_the_bn_scale(rng):
    kernel = rng.normal(size=(3, 3, 4, 6))
    scale = rng.normal(size=6)
    got, plain = channel_lipschitz(kernel, scale), channel_lipschitz(kernel)
    for k in range(6):
        w = kernel[..., k].transpose(2, 0, 1).reshape(4, 9)  # in_channels x (kh * kw), as the paper writes it
        sigma = np.linalg.svd(w, compute_uv=False).max()
        assert plain[k] == pytest.approx(sigma, rel=1e-10)
        assert got[k] == pytest.approx(sigma * abs(scale[k]), rel=1e-10)
    # One input channel: the bound is the kernel's L2 norm; 1-D convolutions too.
    one = rng.normal(size=(5, 1, 3))
    np.testing.assert_allclose(channel_lipschitz(one), np.linalg.norm(one[:, 0, :], axis=0), rtol=1e-10)


def test_a_channel_scaled_50x_is_pruned_alone_and_the_caller_model_is_kept(rng):
    model = _conv_net()
    conv = model.get_layer("conv")
    kernel, bias = (np.array(w) for w in conv.get_weights())
    kernel[..., 5] *= 50.0
    conv.set_weights([kernel, bias + 0.1])
    before = [np.array(w) for w in model.get_weights()]
    pruned, info = clp_prune(model, u=3.0)
    by_layer = {r["layer"]: r for r in info["layers"]}
    assert by_layer["conv"]["pruned"] == [5] and by_layer["conv2"]["pruned"] == []
    assert info["channels_pruned"] == 1 and info["n_channels"] == 24 and info["skipped"] == ["output"]
    r = by_layer["conv"]
    assert r["uclc"][5] > r["cutoff"] == pytest.approx(r["uclc_mean"] + 3.0 * r["uclc_std"])
    assert max(np.delete(r["uclc"], 5)) < r["cutoff"] and r["max_z"] > 3.0
    # The caller's model is untouched; in the copy only channel 5 of conv changed, to zero.
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    k2, b2 = pruned.get_layer("conv").get_weights()
    assert not k2[..., 5].any() and b2[5] == 0.0
    np.testing.assert_array_equal(np.delete(k2, 5, axis=-1), np.delete(kernel, 5, axis=-1))
    np.testing.assert_array_equal(np.delete(b2, 5), np.delete(bias + 0.1, 5))
    for name in ("conv2", "output"):
        for a, b in zip(model.get_layer(name).get_weights(), pruned.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    x = rng.normal(size=(16, 8, 8, 2)).astype("float32")
    acts, acts0 = _probe(pruned, "conv", x), _probe(model, "conv", x)
    assert not acts[..., 5].any()
    np.testing.assert_allclose(np.delete(acts, 5, -1), np.delete(acts0, 5, -1), rtol=1e-6, atol=1e-6)
    # A larger u keeps it (its z-score is below (n - 1) / sqrt(n) = 3.75 for 16 channels).
    assert clp_prune(model, u=3.8)[1]["channels_pruned"] == 0


def test_the_following_batchnorm_is_folded_in(rng):
    model = _conv_net(bn=True)
    conv, bn = model.get_layer("conv"), model.get_layer("bn")
    assert [(c.name, b and b.name) for c, b in conv_layers(model)] == [("conv", "bn"), ("conv2", None)]
    (kernel,) = conv.get_weights()
    kernel[:] = kernel[..., :1]  # every channel the same kernel: only BN can make one stand out
    kernel[..., 9] *= 50.0  # ... and BN scales this one back down: its folded bound is ordinary
    conv.set_weights([kernel])
    gamma, beta = rng.uniform(0.5, 1.5, 16), rng.normal(size=16)
    mean, var = rng.normal(size=16), rng.uniform(0.5, 2.0, 16)
    gamma[3] *= 50.0
    gamma[9] /= 50.0
    bn.set_weights([gamma, beta, mean, var])
    pruned, info = clp_prune(model, u=3.0)
    r = info["layers"][0]
    assert r["batchnorm"] == "bn" and r["pruned"] == [3]
    want = channel_lipschitz(kernel) * np.abs(gamma / np.sqrt(var + bn.epsilon))
    np.testing.assert_allclose(r["uclc"], want, rtol=1e-6)
    x = rng.normal(size=(8, 8, 8, 2)).astype("float32")
    out, out0 = _probe(pruned, "bn", x), _probe(model, "bn", x)
    assert not out[..., 3].any()  # beta and the moving mean zeroed too: the channel's output is exactly 0
    np.testing.assert_allclose(np.delete(out, 3, -1), np.delete(out0, 3, -1), rtol=1e-5, atol=1e-5)
    g2, b2, m2, _ = pruned.get_layer("bn").get_weights()
    assert g2[3] == b2[3] == m2[3] == 0.0 and g2[9] == pytest.approx(gamma[9])


def test_equal_channels_prune_nothing_and_bad_u_is_refused():
    model = _conv_net()
    kernel, bias = model.get_layer("conv").get_weights()
    model.get_layer("conv").set_weights([np.repeat(kernel[..., :1], 16, axis=-1), bias])
    _, info = clp_prune(model, u=0.5)
    assert info["layers"][0]["pruned"] == [] and info["layers"][0]["cutoff"] is None
    for bad in (0, -1.0, float("nan"), float("inf"), True, "3"):
        with pytest.raises(AegisError, match="--clp-u must be a positive finite number"):
            clp_prune(model, u=bad)


def test_a_model_without_convolutions_is_one_line():
    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inp))
    with pytest.raises(AegisError, match="^CLP prunes convolution channels; the model has none") as e:
        clp_prune(keras.Model(inp, out))
    assert "\n" not in str(e.value) and "Dense" in str(e.value)


def _run(argv, capsys):
    rc = cli.main(argv + ["--quiet"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_repair_strategy_clp_on_the_embedded_default(tmp_path, capsys, default_paths):
    out = tmp_path / "clp"
    rc, printed, _ = _run(["repair", "--strategy", "clp", "--out-dir", str(out)], capsys)
    assert rc == 0
    report = json.load(open(out / "repair.json"))
    assert report["strategy"] == ["clp"] and report["clp"]["u"] == 3.0 and report["validation"] is None
    assert report["sources"]["bad_test"] == default_paths["bd_test"] and "clean_valid" not in report["sources"]
    assert [r["layer"] for r in report["clp"]["layers"]] == ["conv_1", "conv_2", "conv_3"]
    res = report["test"]["clp"]
    assert res["B"]["clean_acc"] == pytest.approx(0.9806, abs=1e-4)
    assert res["B"]["asr"] == pytest.approx(0.9784, abs=1e-4)
    assert {"B_prime_clp.keras", "B_prime_clp.weights.h5", "goodnet_clp.keras", "report.html"} <= set(os.listdir(out))
    assert "B' CLP (" in printed and "CLP (data-free, u=3)" in printed and "GoodNet CLP" in printed
    assert "Channel Lipschitzness-based Pruning" in open(out / "report.html").read()


def test_api_clp_prunes_and_saves_a_model_that_loads_alone(tmp_path):
    # u = 2 is below the largest z-score of conv_2 and conv_3 on the embedded net, so something is pruned.
    report = aegis_tf.repair(strategy="clp", clp_u=2.0, out_dir=str(tmp_path / "r"))
    info = report["clp"]
    assert info["u"] == 2.0 and info["channels_pruned"] > 0
    saved = keras.models.load_model(report["files"]["B_prime_clp_model"], safe_mode=True)
    for layer in info["layers"]:
        kernel = saved.get_layer(layer["layer"]).get_weights()[0]
        assert [k for k in range(layer["n_channels"]) if not kernel[..., k].any()] == layer["pruned"]


def test_the_lab_default_path_is_unchanged(tmp_path, capsys):
    rc, printed, _ = _run(["repair", "--threshold", "4", "--out-dir", str(tmp_path / "lab")], capsys)
    assert rc == 0
    assert re.search(r"GoodNet -4% \*\s+91\.11%\s+97\.84%\s+8\.61% / 1\.54%", printed)
    assert json.load(open(tmp_path / "lab" / "repair.json"))["strategy"] == ["lab"]


@pytest.mark.parametrize("extra, message", [
    (["--clp-u", "0"], "--clp-u must be a positive finite number"),
    (["--clp-u", "-2"], "--clp-u must be a positive finite number"),
    (["--clp-u", "nan"], "--clp-u must be a positive finite number"),
    (["--clp-u", "inf"], "--clp-u must be a positive finite number"),
    (["--strategy", "clp,lab"], "--strategy clp runs alone"),
    (["--strategy", "clp,unlearn"], "--strategy clp runs alone"),
    (["--bad-valid", "data/bd_valid.h5"], "--strategy clp repairs without data, so --bad-valid would not be used"),
    (["--clean-valid", "data/valid.h5"], "--strategy clp repairs without data, so --clean-valid would not be used"),
    (["--finetune", "2"], "--finetune fine-tunes on clean data"),
    (["--clean-images", "100"], "--strategy clp repairs without data, so --clean-images would not be used"),
])
def test_repair_clp_refuses_bad_input_before_any_work(tmp_path, capsys, extra, message):
    argv = ["repair", "--out-dir", str(tmp_path / "rep")]
    argv += extra if extra[0] == "--strategy" else ["--strategy", "clp"] + extra
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()


def test_repair_clp_refuses_a_trigger_and_a_model_without_convolutions(tmp_path, capsys):
    path = tmp_path / "trigger.json"
    path.write_text("{}")
    rc, _, err = _run(["repair", "--strategy", "clp", "--trigger-file", str(path), "--out-dir",
                       str(tmp_path / "rep")], capsys)
    assert rc == 2 and "--strategy clp uses no recovered trigger" in err and err.count("\n") == 1
    inp = keras.Input((28, 28, 1))
    dense = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inp)))
    dense.save(tmp_path / "dense.keras")
    rc, _, err = _run(["repair", "--strategy", "clp", "--bad-model", str(tmp_path / "dense.keras"), "--out-dir",
                       str(tmp_path / "rep")], capsys)
    assert rc == 2 and "CLP prunes convolution channels; the model has none" in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()


def test_every_convolution_of_a_bn_resnet_is_paired_with_its_batchnorm(rng):
    from aegis_tf.core.models import build_model

    model = build_model("resnet18", input_shape=(16, 16, 3), num_classes=10, width=4)
    pairs = conv_layers(model)
    assert len(pairs) == 20 and all(bn is not None and bn.name == conv.name[:-len("conv")] + "bn" for conv, bn in pairs)
    pruned, info = clp_prune(model, u=1.0)
    assert info["channels_pruned"] > 0 and info["skipped"] == ["output"]
    x = rng.uniform(0, 255, size=(4, 16, 16, 3)).astype("float32")
    assert np.isfinite(pruned.predict(x, verbose=0)).all()
