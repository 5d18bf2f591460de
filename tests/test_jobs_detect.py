import json
import os

import keras
import pytest

from aegis_tf.detect.config import DetectConfig
from aegis_tf.core.embedded import PATHS
from aegis_tf.core.errors import AegisError
from aegis_tf.detect.scan import aegis_evidence, run_aegis, run_detect

# the probes without translations at their smallest (their own tests measure them)
FAST = DetectConfig(n_seeds=15, steps=10, mask_epochs=1, mask_restarts=1, warp_steps=3)


def test_both_methods_give_the_aegis_verdict_with_neural_cleanse_beside_it(tmp_path):
    from aegis_tf.detect.verdict import combine

    lines = []
    results = run_detect(config=FAST, bad_model=PATHS["robust_bd_net"], method="both", classes="5,6,7",
                         out_dir=str(tmp_path), echo=lines.append)
    (name, result), = results.items()
    verdict = result["verdict"]
    aegis = aegis_evidence(result["aegis"])
    assert {"patch_transfer", "whole_image", "blend_probe"} <= set(aegis)
    assert set(verdict["evidence"]) == set(aegis) | {"neural_cleanse"}
    # Neural Cleanse is shown in the verdict's evidence but does not vote: the verdict is AEGIS's signals'.
    assert verdict["evidence"]["neural_cleanse"]["decides"] is False
    union = sorted({c for e in aegis.values() if e.get("decides", True) for c in e["flagged"]})
    assert verdict["target_classes"] == union and verdict["backdoored"] == bool(union)
    assert (verdict["score"] >= 1) == verdict["backdoored"] and "NC index" not in verdict["line"]
    # Its own verdict goes beside the one verdict, as a baseline.
    alone = combine({"neural_cleanse": result["neural_cleanse"]["evidence"]})
    nc = result["baselines"]["neural_cleanse"]
    assert nc == {k: alone[k] for k in ("backdoored", "target_classes", "line", "score")}
    assert nc["target_classes"] == result["neural_cleanse"]["suspect_classes"]
    assert lines[0] == f"{name}: {verdict['line']}"
    assert lines[1] == f"  neural cleanse (baseline, not in the verdict): {nc['line']}"
    assert json.load(open(tmp_path / "detect.json")) == json.loads(json.dumps(result))
    html = open(tmp_path / "report.html").read()
    assert 'id="verdict"' in html and "data:image/png;base64," in html  # NC masks at least


def test_run_aegis_without_an_out_dir_draws_nothing(tmp_path, monkeypatch):
    from aegis_tf.core.data import load_h5
    from aegis_tf.core.models import load_model

    monkeypatch.chdir(tmp_path)
    x, y = load_h5(PATHS["train"])
    report = run_aegis(load_model(PATHS["robust_bd_net"]), x, y, classes=[6, 7], config=FAST, pixel_max=255.0,
                       out_dir=None, plots=True)
    assert report["files"] == {} and os.listdir(tmp_path) == []
    assert set(report["seconds"]) == {"translate", "patch_transfer", "pair_transfer"}  # no t-SNE for the transfer verdict


def test_a_model_that_does_not_fit_the_data_is_refused_before_any_work(tmp_path):
    inp = keras.Input((28, 28, 1))
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(inp))
    path = tmp_path / "four.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(AegisError, match="4"):
        run_detect(config=FAST, bad_model=str(path), out_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_neural_cleanse_alone_is_the_verdict(monkeypatch):
    from aegis_tf.core.models import load_model
    from aegis_tf.detect import scan

    evidence = {"description": "d", "scores": {"5": 0.3, "6": 0.4, "7": 3.1}, "threshold": 2.0,
                "direction": "above", "flagged": [7]}
    fake = {"verdict": "backdoored", "suspect_classes": [7], "classes": {}, "evidence": evidence,
            "method": "neural-cleanse", "seconds": {}, "files": {}}
    monkeypatch.setattr(scan, "neural_cleanse_scan", lambda *a, **k: (fake, None))
    result = scan.scan_model(load_model(PATHS["robust_bd_net"]), None, None, classes=[5, 6, 7], config=FAST,
                             pixel_max=255.0, method="neural-cleanse").to_dict()
    assert result["verdict"]["target_classes"] == [7] and result["verdict"]["line"].startswith("BACKDOORED: class 7")
    assert "decides" not in result["verdict"]["evidence"]["neural_cleanse"]
    assert result["verdict"]["score"] == 3.1 / 2.0
    assert result["baselines"] == {} and result["robustness"] is None  # the robustness check goes with AEGIS
