"""The accelerator suite's tiny size runs end to end on CPU (bench/device_suite.sh)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_device_suite_writes_one_json_and_one_table(tmp_path):
    env = {**os.environ, "SIZE": "tiny", "PYTHON": sys.executable, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(["bash", os.path.join(ROOT, "bench", "device_suite.sh"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    suite = json.load(open(tmp_path / "suite.json"))
    assert suite["size"] == "tiny" and suite["devices"]
    backends = {run["backend"] for run in suite["runs"]}
    assert "tensorflow" in backends
    for run in suite["runs"]:
        assert {(r["arch"], r["kind"].split()[0]) for r in run["training"]} == {
            ("compact", "standard"), ("compact", "PGD"), ("resnet18", "standard"), ("resnet18", "PGD")}
        assert all(r["ours_images_per_s"] > 0 for r in run["training"])
        assert {"translate", "patch_transfer"} <= set(run["aegis"]["seconds"])
        # the library's one verdict (every deciding signal), not the patch-transfer suspects alone
        assert isinstance(run["aegis"]["verdict"], list) and "suspect_classes" not in run["aegis"]
        assert run["aegis"]["line"].startswith("BACKDOORED" if run["aegis"]["verdict"] else "CLEAN")
        assert run["neural_cleanse"]["seconds"] > 0
        assert run["staged"]["stage_seconds"]["stage1"] > 0 and run["staged"]["promoted"]
        # the ratio needs the hand-written JAX loop, measured only where JAX is installed
        assert all((r["ratio_to_jax_reference"] is None) == ("jax" not in backends) for r in run["training"])
    table = open(tmp_path / "suite.md").read()
    assert suite["devices"][0] in table and "| tensorflow | resnet18" in table
