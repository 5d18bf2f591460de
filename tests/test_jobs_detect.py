import json
import os

import keras
import pytest

from aegis_tf.detect.config import DetectConfig
from aegis_tf.core.embedded import PATHS
from aegis_tf.core.errors import AegisError
from aegis_tf.detect.scan import run_aegis, run_detect

FAST = DetectConfig(n_seeds=15, steps=10)


def test_both_methods_give_one_verdict_and_a_report_page(tmp_path):
    lines = []
    results = run_detect(config=FAST, bad_model=PATHS["robust_bd_net"], method="both", classes="5,6,7",
                         out_dir=str(tmp_path), echo=lines.append)
    (name, result), = results.items()
    verdict = result["verdict"]
    assert set(verdict["evidence"]) == {"patch_transfer", "whole_image", "blend_probe", "neural_cleanse"}
    aegis = result["aegis"]
    union = sorted(set(aegis["suspect_classes"]) | set(aegis["whole_image"]["suspect_classes"])
                   | set(aegis["blend_probe"]["suspect_classes"]) | set(result["neural_cleanse"]["suspect_classes"]))
    assert verdict["target_classes"] == union and verdict["backdoored"] == bool(union)
    assert lines[0] == f"{name}: {verdict['line']}"
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
    assert set(report["seconds"]) == {"translate", "patch_transfer"}  # no t-SNE for the transfer verdict


def test_a_model_that_does_not_fit_the_data_is_refused_before_any_work(tmp_path):
    inp = keras.Input((28, 28, 1))
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(inp))
    path = tmp_path / "four.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(AegisError, match="4"):
        run_detect(config=FAST, bad_model=str(path), out_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
