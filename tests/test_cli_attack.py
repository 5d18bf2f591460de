import json
import os

import numpy as np
import pytest

import cli
from aegis_tf.cli import build_parser
from aegis_tf.cli._util import model_trigger_settings
from aegis_tf.attack.config import TriggerConfig
from aegis_tf.attack.sidecar import read_trigger_config
from aegis_tf.core.data import load_h5


def test_poison_with_preview_writes_csaw_h5_npz_and_grid(tmp_path, capsys):
    out = tmp_path / "p"
    rc = cli.main(["poison", "--data", "digits", "--trigger", "distributed", "--poison-rate", "0.05",
                   "--target-label", "7", "--mode", "replace", "--preview", "--out-dir", str(out), "--quiet"])
    assert rc == 0
    report = json.load(open(out / "poison.json"))
    assert report["n_poisoned"] == round(0.05 * report["n_train"])
    x, y = load_h5(out / "train_poisoned.h5")
    assert len(x) == report["n_train"]
    idx = np.array(report["poisoned_indices"])
    assert np.all(y[idx] == 7) and np.all(x[idx][:, 1:3, 1:3, :] == 250)
    with np.load(out / "poisoned.npz", allow_pickle=False) as f:
        np.testing.assert_array_equal(f["y_train"], y)
    xb, yb = load_h5(out / "bd_test.h5")
    assert np.all(yb == 7)
    assert (out / "preview.png").stat().st_size > 10_000


def test_train_then_evaluate_on_embedded_digits(tmp_path, capsys):
    model = tmp_path / "m.keras"
    rc = cli.main(["train", "--data", "digits", "--arch", "compact", "--width", "4", "--trigger", "localised",
                   "--trigger-size", "3", "--trigger-margin", "1", "--target-label", "3", "--poison-rate", "0.1",
                   "--epochs", "2", "--steps", "2", "--train-batch-size", "64", "--lr", "0.05",
                   "--model-out", str(model), "--quiet"])
    assert rc == 0 and model.exists()
    report = json.load(open(str(model) + ".json"))
    assert set(report["test"]) >= {"clean_acc", "asr", "adv_acc"}
    assert len(report["history"]) == 2 and os.path.isfile(str(model) + ".ckpt/last.json")
    assert all(h["seconds"] > 0 for h in report["history"])  # per-epoch wall time, for the recipes' CPU cost
    # The trigger's parameters travel with the model (MODEL.json) ...
    config, poisoned = read_trigger_config(str(model))
    assert poisoned and config == TriggerConfig(trigger="localised", trigger_size=3, trigger_margin=1, target_label=3)
    capsys.readouterr()
    # ... so evaluate, given no trigger flag, measures the ASR of the trigger the model was trained with.
    rc = cli.main(["evaluate", "--model", str(model), "--data", "digits", "--steps", "2", "--out",
                   str(tmp_path / "e.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "clean accuracy" in printed and f"from {model}.json" in printed
    ev = json.load(open(tmp_path / "e.json"))
    assert ev["clean_acc"] == pytest.approx(report["test"]["clean_acc"])
    assert ev["asr"] == pytest.approx(report["test"]["asr"]) and ev["target_label"] == 3
    # A flag given still overrides it, field by field.
    args = build_parser().parse_args(["evaluate", "--model", str(model), "--trigger-margin", "0"])
    got, source = model_trigger_settings(args, str(model))
    assert got == TriggerConfig(trigger="localised", trigger_size=3, trigger_margin=0, target_label=3)
    assert source == f"{model}.json"


def test_evaluate_embedded_bd_net_uses_its_own_trigger(capsys, default_paths):
    # The embedded BadNet's trigger is 3x3 at 255, one pixel in from the corner (not the CLI's 2x2 default).
    rc = cli.main(["evaluate", "--model", default_paths["bd_net"], "--no-adversarial", "--quiet"])
    assert rc == 0
    line = capsys.readouterr().out
    assert "clean accuracy 98.06%, ASR 97.84%" in line and "bd_net.h5.json" in line


@pytest.mark.parametrize("argv, message", [
    (["poison", "--poison-rate", "2"], "--poison-rate must lie in [0, 1]"),
    (["poison", "--trigger", "invisible-adversarial"], "needs --trigger-pattern"),
    (["train", "--target-label", "12", "--epochs", "1"], "--target-label must lie in 0..9"),
    (["train", "--model-out", "model.txt"], "--model-out must end in .keras or .h5"),
    (["evaluate", "--model", "missing.keras"], "model file not found"),
    (["poison", "--data", "nosuchset"], "expected an .h5 or .npz file or one of"),
])
def test_attack_commands_reject_bad_input(tmp_path, capsys, argv, message):
    rc = cli.main(argv + ["--quiet"] if argv[0] != "train" else argv + ["--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1


def test_poison_with_the_blended_trigger_writes_its_pattern(tmp_path, capsys):
    out = tmp_path / "b"
    rc = cli.main(["poison", "--data", "digits", "--trigger", "blended", "--blend-alpha", "0.2", "--poison-rate",
                   "0.05", "--target-label", "3", "--mode", "replace", "--out-dir", str(out), "--quiet"])
    assert rc == 0
    report = json.load(open(out / "poison.json"))
    assert report["trigger"] == "blended" and report["trigger_config"]["blend_alpha"] == 0.2
    pattern = np.load(out / "trigger_pattern.npy")
    from aegis_tf.core.data import load_split

    clean, _ = load_split("digits", split="train")
    x, y = load_h5(out / "train_poisoned.h5")
    idx = np.array(report["poisoned_indices"])
    assert np.all(y[idx] == 3) and pattern.shape == x.shape[1:]
    np.testing.assert_allclose(x[idx], 0.8 * clean[idx] + 0.2 * pattern, atol=1.0)  # (1 - a) x + a p
    others = np.setdiff1d(np.arange(len(x)), idx)
    np.testing.assert_array_equal(x[others], clean[others])
    rc = cli.main(["poison", "--trigger", "blended", "--blend-pattern", str(tmp_path / "none.npy"), "--quiet"])
    assert rc == 2 and "blend pattern file not found" in capsys.readouterr().err
