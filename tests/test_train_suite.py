"""scripts/train_cifar_small.sh and scripts/train_suite.sh: the settings reach the
trainer, and a run under COLLAPSE_ACC is set aside and retrained once with seed + 100."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cifar_recipe_passes_its_settings_and_retrains_a_collapsed_run(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "cifar10.npz", x_train=rng.integers(0, 256, (160, 32, 32, 3), dtype=np.uint8),
             y_train=rng.integers(0, 10, 160).astype(np.uint8),
             x_test=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
             y_test=rng.integers(0, 10, 40).astype(np.uint8))
    out = tmp_path / "out"
    # Settings of the run, as a user would override them; COLLAPSE_ACC above 1 makes every run "collapse".
    env = dict(os.environ, SEEDS="1", TRIGGERS="blended", EPOCHS="1", STEPS="1", WIDTH="4",
               COLLAPSE_ACC="1.01", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "train_cifar_small.sh"), str(data), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "collapsed cifar10 blended 1 (clean accuracy under 1.01); retraining with seed 101" in done.stdout
    assert "COLLAPSED twice cifar10 blended 1; kept the second run" in done.stdout
    first = json.load(open(out / "cifar10_blended_s1.collapsed.keras.json"))
    kept = json.load(open(out / "cifar10_blended_s1.keras.json"))
    assert first["config"]["seed"] == 1 and kept["config"]["seed"] == 101
    # The recipe's defaults (train_cifar_small.sh) reach the trainer; the target follows the seed (1 -> 1).
    assert kept["trigger_config"]["blend_alpha"] == 0.3 and kept["poison_rate"] == 0.2
    assert kept["target_label"] == 1 and kept["config"]["steps"] == 1 and kept["config"]["eps_warmup"] == 2
    import keras

    model = keras.saving.load_model(str(out / "cifar10_blended_s1.keras"), safe_mode=True)
    assert model.get_layer("conv_1").filters == 4
