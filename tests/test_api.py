"""The public API (docs/api.md): aegis_tf.scan and ScanResult, the jobs the CLI calls,
and --fail-on-backdoor for registry pipelines."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import aegis_tf
import cli
from aegis_tf.core.embedded import PATHS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(config=aegis_tf.DetectConfig(n_seeds=15, steps=10, robustness_images=0), classes=[5, 6, 7])
FAST_FLAGS = ["--classes", "5,6,7", "--seeds", "15", "--steps", "10", "--robustness-images", "0", "--quiet"]


def _python_blocks(rel):
    text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_docs_examples_run(tmp_path, monkeypatch, capsys):
    for name in ("models", "data"):  # the examples use paths from the repository root
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks("docs/api.md")
    assert len(blocks) == 2
    exec(compile(blocks[0], "docs/api.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "True [7]" and printed[1].startswith("BACKDOORED: class 7")
    saved = json.load(open(tmp_path / "out" / "api_example" / "detect.json"))
    assert saved["verdict"]["target_classes"] == [7] and saved["triggers"]
    assert (tmp_path / "out" / "api_example" / "report.html").exists()
    exec(compile(blocks[1], "docs/api.md", "exec"), {})  # the clean model: no sys.exit
    assert capsys.readouterr().out.strip() == "flagged: []"


def test_scan_result_is_frozen_and_the_same_from_a_path_a_model_or_arrays(tmp_path):
    from aegis_tf.core.data import load_h5
    from aegis_tf.core.models import load_model

    by_path = aegis_tf.scan(PATHS["robust_bd_net"], PATHS["train"], **FAST)
    assert isinstance(by_path, aegis_tf.ScanResult) and by_path.name == "robust_bd_net"
    with pytest.raises(dataclasses.FrozenInstanceError):
        by_path.name = "other"
    d = by_path.to_dict()
    d["verdict"]["target_classes"].append(99)  # a copy: the result does not change
    assert 99 not in by_path.target_classes and 99 not in by_path.to_dict()["verdict"]["target_classes"]
    json.dumps(d)  # JSON-ready
    # the pair mask probe too: a pair toward 7 transferred once, a candidate (its gap 0.99 flags nothing)
    assert set(by_path.evidence) == {"patch_transfer", "pair_transfer", "pair_breadth", "whole_image", "blend_probe",
                                    "warp_probe", "mask_probe", "pair_mask"}
    assert by_path.evidence["pair_mask"]["flagged"] == []
    assert by_path.summary().splitlines()[0] == f"robust_bd_net: {by_path.line}"
    x, y = load_h5(PATHS["train"])
    model = load_model(PATHS["robust_bd_net"])
    other = aegis_tf.scan(model, (x, y), **FAST)  # a loaded model and arrays, in one call
    assert other.line == by_path.line
    assert other.to_dict()["aegis"]["classes"] == by_path.to_dict()["aegis"]["classes"]
    assert os.listdir(tmp_path) == []  # nothing written without out_dir
    saved = by_path.save(str(tmp_path / "a"))
    assert saved["verdict"] == by_path.verdict and (tmp_path / "a" / "detect.json").exists()
    assert saved["triggers"] and all((tmp_path / "a" / n).exists() for n in saved["triggers"])
    assert not (tmp_path / "a" / "scan_state").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(data=42), "data must be a dataset name"),
    (dict(data=(np.zeros((4, 28, 28, 1)), np.zeros(3, "int64"))), "one integer label per image"),
    (dict(config={"n_seeds": 5}), "config must be a DetectConfig"),
    (dict(method="magic"), "method must be aegis, neural-cleanse or both"),
    (dict(model=object()), "model must be a path"),
    (dict(model="missing.keras"), "model file not found"),
    (dict(classes=[3, 12]), "must lie in 0..9"),
    (dict(data=(np.linspace(0, 1, 4 * 784).reshape(4, 28, 28, 1), np.arange(4))), "already scaled to [0, 1]"),
])
def test_scan_refuses_bad_input_before_any_work(tmp_path, kwargs, message):
    args = {"model": PATHS["robust_bd_net"], "data": PATHS["train"], **kwargs}
    with pytest.raises(aegis_tf.AegisError, match=re.escape(message)):
        aegis_tf.scan(args.pop("model"), args.pop("data"), out_dir=str(tmp_path / "o"), **args)
    assert not (tmp_path / "o").exists()


def test_fail_on_backdoor_gates_a_pipeline(tmp_path, capsys, monkeypatch):
    # 25 steps: at FAST_FLAGS' 10, a third of the clean model's translations reach their class, and a scan
    # whose translations did not converge is inconclusive, which the gate does not pass.
    both = cli.main(["detect", "--out-dir", str(tmp_path / "pair"), "--fail-on-backdoor"] + FAST_FLAGS
                    + ["--steps", "25", "--no-warp-probe", "--no-mask-probe", "--no-pair-mask"])  # the gate alone
    out = capsys.readouterr().out
    assert both == 1 and "--fail-on-backdoor: 1 of 2 model(s) flagged: robust_bd_net" in out
    assert "\nrobust_clean_net: CLEAN" in out and "inconclusive" not in out.split("--fail-on-backdoor")[-1]
    import aegis_tf.api

    # the gate passes what the scans found clean, exits 1 on any flagged model ...
    clean = {"robust_clean_net": {"verdict": {"backdoored": False}}}
    monkeypatch.setattr(aegis_tf.api, "detect", lambda **kwargs: clean)
    assert cli.main(["detect", "--bad_model", PATHS["robust_clean_net"], "--fail-on-backdoor"] + FAST_FLAGS) == 0
    # ... and without the flag a flagged model exits with 0 (the verdict is in the report, not the status).
    flagged = {"robust_bd_net": {"verdict": {"backdoored": True}}}
    monkeypatch.setattr(aegis_tf.api, "detect", lambda **kwargs: flagged)
    assert cli.main(["detect", "--out-dir", str(tmp_path / "pair2")] + FAST_FLAGS) == 0
    assert cli.main(["detect", "--out-dir", str(tmp_path / "pair3"), "--fail-on-backdoor"] + FAST_FLAGS) == 1
    monkeypatch.undo()
    bad = cli.main(["detect", "--bad_model", "missing.keras", "--fail-on-backdoor"] + FAST_FLAGS)
    assert bad == 2


def test_import_aegis_tf_is_light_and_names_the_public_api():
    code = "import sys, aegis_tf; print('keras' in sys.modules, aegis_tf.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split()[0] == "False"
    for name in aegis_tf.__all__:
        assert getattr(aegis_tf, name) is not None
    assert callable(aegis_tf.scan) and callable(aegis_tf.repair) and callable(aegis_tf.train)


def test_a_scan_result_copies_pickles_and_cannot_be_deleted_from():
    import copy
    import pickle

    r = aegis_tf.ScanResult("m", {"verdict": {"backdoored": True, "target_classes": [7], "evidence": {},
                                              "line": "BACKDOORED: class 7"}})
    assert copy.copy(r) is r and copy.deepcopy(r) is r
    back = pickle.loads(pickle.dumps(r))
    assert back.line == r.line and back.target_classes == [7] and back.name == "m"
    with pytest.raises(dataclasses.FrozenInstanceError):
        del r.name


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(resume=True, out_dir=None), "give out_dir"),
])
def test_scan_checks_its_numbers_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(aegis_tf.AegisError, match=message):
        aegis_tf.scan(PATHS["robust_bd_net"], PATHS["train"], **{"out_dir": str(tmp_path / "o"), **kwargs})
    assert not (tmp_path / "o").exists()
