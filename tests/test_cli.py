import json
import os

import h5py
import keras
import numpy as np
import pytest

import cli
from aegis_tf.core.data import load_h5
from aegis_tf.core.embedded import PATHS


@pytest.fixture(scope="module")
def repaired(tmp_path_factory):
    out = tmp_path_factory.mktemp("repair")
    rc = cli.main(["repair", "--threshold", "4", "--out-dir", str(out), "--out", str(out / "r.json"), "--quiet"])
    assert rc == 0
    return out


def test_repair_on_embedded_default_writes_everything(repaired, capsys):
    names = set(os.listdir(repaired))
    for t in (2, 4, 10):
        assert f"B_prime_{t}.weights.h5" in names and f"goodnet_{t}.keras" in names
    assert {"prune_curve.json", "prune_curve.png", "repair.json", "r.json", "report.html"} <= names
    assert not [n for n in names if n.startswith(".tmp-")]
    report = json.load(open(repaired / "repair.json"))
    assert report == json.load(open(repaired / "r.json"))
    b = report["test"]["4"]["B"]
    assert b["clean_acc"] >= 0.9 and b["asr"] >= 0.9  # the default is a real BadNet
    assert report["layer"] == "pool_3" and report["pruned"]["4"]["channels_pruned"] > 0
    # The lab's numbers on the embedded default, as the README states them: any change to the lab path shows here.
    t4 = report["test"]["4"]
    assert report["pruned"]["4"]["channels_pruned"] == 14
    assert (t4["B_prime"]["clean_acc"], t4["B_prime"]["asr"]) == (pytest.approx(0.9194, abs=5e-5),
                                                                 pytest.approx(0.9938, abs=5e-5))
    assert (t4["G"]["clean_acc"], t4["G"]["asr"]) == (pytest.approx(0.9111, abs=5e-5), pytest.approx(0.9784, abs=5e-5))
    # The ASR with no trigger: B sends 0.62% of the clean test images of other classes to the target by mistake.
    assert t4["B"]["clean_to_target"] == pytest.approx(0.0062, abs=5e-5) and t4["G"]["clean_to_target"] == 0
    assert "<th>ASR without trigger</th>" in (repaired / "report.html").read_text()
    from repair.pipeline import format_table

    table = format_table(report).splitlines()  # the console's table: the column, and B's 0.62% in it
    b_row = next(line for line in table if line.startswith("B (backdoored)"))
    assert "ASR without trigger" in table[1] and b_row.endswith("0.62%")
    curve = json.load(open(repaired / "prune_curve.json"))
    assert len(curve["curve"]) == report["n_channels"] + 1


def test_eval_with_seed_flags_reproduces_repair_numbers(repaired, tmp_path, default_paths, capsys):
    out = tmp_path / "eval.json"
    rc = cli.main([
        "eval", "--clean_set", default_paths["test"], "--bad_set", default_paths["bd_test"],
        "--bad_model", default_paths["bd_net"], "--bad_model_weights", default_paths["bd_weights"],
        "--threshold", "4", "--pruned_bad_model_weights", str(repaired / "B_prime_4.weights.h5"),
        "--out", str(out), "--quiet",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "GoodNet" in printed and "attack success rate" in printed
    got = json.load(open(out))
    want = json.load(open(repaired / "repair.json"))["test"]["4"]
    for model in ("B", "B_prime", "G"):
        assert got[model] == pytest.approx(want[model])
    # The single-file GoodNet gives the same numbers, with dashed flag aliases.
    rc = cli.main(["eval", "--goodnet", str(repaired / "goodnet_4.keras"), "--clean-set", default_paths["test"],
                   "--bad-set", default_paths["bd_test"], "--out", str(tmp_path / "g.json"), "--quiet"])
    assert rc == 0
    assert json.load(open(tmp_path / "g.json"))["G"] == pytest.approx(want["G"])


def _write_h5(path, x, y):
    with h5py.File(path, "w") as f:
        if x is not None:
            f.create_dataset("data", data=x)
        if y is not None:
            f.create_dataset("label", data=y)
    return str(path)


def _bad_inputs(tmp):
    """(name, argv) pairs, each a bad input that must give a one-line error."""
    good = load_h5(PATHS["valid"])
    x = np.transpose(good[0][:20], (0, 3, 1, 2))
    corrupt = tmp / "corrupt.h5"
    corrupt.write_bytes(b"\x00not an h5 file")
    inp = keras.Input((28, 28, 1))
    flat = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inp)))
    flat.save(tmp / "nopool.keras")
    return [
        ("missing file", ["--clean_set", str(tmp / "missing.h5")], "not found"),
        ("corrupt file", ["--clean_set", str(corrupt)], "cannot read"),
        ("missing model", ["--bad_model", str(tmp / "none.h5")], "model file not found"),
        ("no label key", ["--clean_set", _write_h5(tmp / "nolabel.h5", x, None)], "Missing 'label'"),
        ("no data key", ["--bad_set", _write_h5(tmp / "nodata.h5", None, good[1][:20])], "Missing 'data'"),
        ("wrong shape", ["--clean_set", _write_h5(tmp / "shape.h5", np.zeros((4, 3, 55, 47)), np.zeros(4))], "do not fit the model"),
        ("labels out of range", ["--clean_set", _write_h5(tmp / "labels.h5", x, np.full(20, 12))], "labels must lie in 0..9"),
        ("empty set", ["--bad_set", _write_h5(tmp / "empty.h5", np.zeros((0, 1, 28, 28)), np.zeros(0))], "empty set"),
        ("no pooling layer", ["--bad_model", str(tmp / "nopool.keras")], "no pooling layer"),
        ("threshold 7", ["--threshold", "7"], "must be one of 2, 4, 10 (percent accuracy drop). Received: 7"),
    ]


def test_bad_inputs_give_one_line_errors_and_no_files(tmp_path, capsys):
    for name, extra, message in _bad_inputs(tmp_path):
        out = tmp_path / ("out_" + name.replace(" ", "_"))
        capsys.readouterr()
        rc = cli.main(["repair", "--out-dir", str(out), "--quiet"] + extra)
        err = capsys.readouterr().err
        assert rc == 2, name
        assert message in err, (name, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert not out.exists(), name


def test_eval_missing_pruned_weights(tmp_path, capsys):
    rc = cli.main(["eval", "--pruned_bad_model_weights", str(tmp_path / "none.weights.h5"), "--quiet"])
    assert rc == 2
    assert "weights file not found" in capsys.readouterr().err
