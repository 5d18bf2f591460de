import json
import os

import pytest

import cli
from aegis_tf.core.embedded import PATHS
from aegis_tf.detect.recovered import triggers_from_detect_dir


def _run(tmp_path, name, extra, capsys):
    out = tmp_path / name
    rc = cli.main(["detect", "--bad_model", PATHS["robust_bd_net"], "--classes",
                   "5,6,7", "--seeds", "15", "--steps", "10", "--runs", "1", "--out-dir", str(out), "--quiet"] + extra)
    assert rc == 0
    return out, capsys.readouterr().out


def test_detect_writes_report_and_is_reproducible(tmp_path, capsys):
    out, printed = _run(tmp_path, "a", ["--plots"], capsys)
    result = json.load(open(out / "detect.json"))
    verdict, report = result["verdict"], result["aegis"]
    assert printed.splitlines()[0] == "robust_bd_net: " + verdict["line"]  # one verdict line first
    assert verdict["backdoored"] == bool(verdict["target_classes"])
    # The one verdict: every class that patch transfer, the pair view, the whole-image signal, its blend
    # probe, the warp probe, the mask probe or the pair mask probe flags.
    assert verdict["target_classes"] == sorted(set(report["suspect_classes"])
                                               | set(report["pair_transfer"]["suspect_classes"])
                                               | set(report["pair_breadth"]["suspect_classes"])
                                               | set(report["whole_image"]["suspect_classes"])
                                               | set(report["blend_probe"]["suspect_classes"])
                                               | set(report["warp_probe"]["suspect_classes"])
                                               | set(report["mask_probe"]["suspect_classes"])
                                               | set(report["pair_mask"]["suspect_classes"]))
    # the pair mask probe too: a pair of the 3 classes transferred once, a candidate
    assert set(verdict["evidence"]) == {"patch_transfer", "pair_transfer", "pair_breadth", "whole_image", "blend_probe",
                                        "warp_probe", "mask_probe", "pair_mask"}
    assert report["pair_mask"]["examined_pairs"]
    # by default the pair mask probe runs on the candidates only (where the per-pair view saw a pair transfer
    # without flagging it), and the blend probe on every examined class, its gap on the console line
    assert report["config"]["pair_mask"] == "candidates" and report["config"]["wi_blend"] == "auto"
    assert set(report["blend_probe"]["classes"]) == {"5", "6", "7"} and "blend gap" in printed.splitlines()[0]
    assert verdict["evidence"]["patch_transfer"]["flagged"] == report["suspect_classes"]
    # Each flagged class leaves a recovered trigger that `repair --trigger-from` reads back.
    assert verdict["backdoored"] and 7 in verdict["target_classes"]  # robust_bd_net's backdoor, even on 3 classes
    assert {int(n.split("_")[1]) for n in result["triggers"]} == set(verdict["target_classes"])
    if verdict["backdoored"]:
        triggers, _ = triggers_from_detect_dir(str(out))
        assert {t.target for t in triggers} == set(verdict["target_classes"])
        assert all(t.image_shape == (28, 28, 1) and t.pixel_max == 255.0 for t in triggers)
        assert f"repair --trigger-from {out}`" in printed  # the console says where repair finds them
    assert (out / "report.html").stat().st_size > 5_000
    assert report["verdict"] in ("clean", "backdoored")
    assert set(report["classes"]) == {"5", "6", "7"}
    assert (out / "embeddings.png").stat().st_size > 5_000
    assert report["score"] == "transfer"
    assert set(report["files"]["suspect_patches"]) == {str(c) for c in report["suspect_classes"]}
    for path in report["files"]["suspect_patches"].values():
        assert os.path.getsize(path) > 5_000
    from aegis_tf.detect.patch_transfer import PatchTransferDetector, rates_from_histogram

    hists = {int(c): v["probes_moved_histogram"] for c, v in report["classes"].items()}
    assert all(len(h) == 21 and sum(h) == 15 for h in hists.values())  # 20 probes; one count per translation
    refit = PatchTransferDetector(flip_at=report["config"]["flip_at"]).fit_rates(
        {c: rates_from_histogram(h) for c, h in hists.items()})
    assert refit.suspect_classes_ == report["suspect_classes"]  # the histogram holds all the verdict needs
    again, _ = _run(tmp_path, "b", ["--plots", "--jobs", "2"], capsys)  # classes clustered in parallel: same report
    second = json.load(open(again / "detect.json"))["aegis"]
    for key in ("verdict", "suspect_classes", "classes", "translation_reached"):
        assert report[key] == second[key]


def test_detect_probes_turn_off(tmp_path, capsys):
    # on by default: test_detect_writes_report_and_is_reproducible
    out, printed = _run(tmp_path, "no_blend", ["--no-blend-probe", "--no-warp-probe", "--no-mask-probe",
                                               "--no-pair-mask"], capsys)
    result = json.load(open(out / "detect.json"))
    assert result["aegis"]["config"]["wi_blend"] is False and "blend_probe" not in result["aegis"]
    assert result["aegis"]["config"]["pair_mask"] is False and "pair_mask" not in result["aegis"]
    assert result["aegis"]["config"]["warp_probe"] is False and "warp_probe" not in result["aegis"]
    assert result["aegis"]["config"]["mask_probe"] is False and "mask_probe" not in result["aegis"]
    assert set(result["verdict"]["evidence"]) == {"patch_transfer", "pair_transfer", "pair_breadth", "whole_image"}
    assert "blend gap" not in printed.splitlines()[0]


@pytest.mark.parametrize("extra, message", [
    (["--classes", "5,12"], "--classes must lie in 0..9"),
    (["--bandwidth", "wide"], "--bandwidth must be auto or a number"),
    (["--seeds", "0"], "--n-seeds must be an integer in [1, inf)"),
    (["--top-frac", "1.5"], "--top-frac must be a number in (0, 1]"),
    (["--probes", "0"], "--n-probes must be an integer in [1, inf)"),
    (["--flip-at", "0"], "--flip-at must be a number in (0, 1]"),
    (["--start-noise", "-0.1"], "--start-noise must be a number in [0, inf)"),
    (["--jobs", "0"], "--jobs must be a positive integer or -1"),
    (["--bad_model", "missing.keras"], "model file not found"),
    (["--data", "data/bd_test.h5"], "has no images of class(es)"),
])
def test_detect_bad_inputs(tmp_path, capsys, extra, message):
    argv = ["detect", "--out-dir", str(tmp_path / "o"), "--quiet", "--classes", "0,7"]
    if "--classes" in extra:
        argv = argv[:-2]
    if not any(a == "--bad_model" for a in extra):
        argv += ["--bad_model", PATHS["robust_bd_net"]]
    if "--data" in extra:
        extra = ["--data", PATHS["bd_test"]]
    rc = cli.main(argv + extra)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_detect_refuses_non_finite_data_and_non_image_models_without_a_report(tmp_path, capsys):
    import keras
    import numpy as np

    from aegis_tf.core.data import load_h5, save_h5

    x, y = load_h5(PATHS["train"])
    x = x.astype("float32")
    x[3, 5, 5, 0] = np.nan
    save_h5(tmp_path / "nan.h5", x, y)
    flat = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    flat.save(tmp_path / "flat.keras")
    for extra, message in ((["--data", str(tmp_path / "nan.h5"), "--bad_model", PATHS["robust_bd_net"]],
                            "image data must be finite"),
                           (["--bad_model", str(tmp_path / "flat.keras")], "expected images (H, W, C)")):
        rc = cli.main(["detect", "--out-dir", str(tmp_path / "o"), "--quiet"] + extra)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1
        assert not (tmp_path / "o").exists()


def test_a_scan_that_cannot_be_read_says_inconclusive_names_no_class_and_fails_the_gate(tmp_path, capsys):
    # A 2-class model (no class can be told from "the others"), and a data set with 4 images of an
    # examined class: INCONCLUSIVE with the reason, no trigger saved, and --fail-on-backdoor exits 1.
    import keras
    import numpy as np

    from aegis_tf.core.data import load_h5, save_h5

    rng = np.random.default_rng(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inp))
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    model.save(tmp_path / "two.keras")
    save_h5(str(tmp_path / "two.h5"), rng.integers(0, 256, (40, 8, 8, 1)).astype("uint8"), np.arange(40) % 2)
    rc = cli.main(["detect", "--bad_model", str(tmp_path / "two.keras"), "--data", str(tmp_path / "two.h5"),
                   "--seeds", "5", "--steps", "3", "--out-dir", str(tmp_path / "o2"), "--quiet", "--fail-on-backdoor"])
    printed = capsys.readouterr().out
    assert rc == 1 and "two: INCONCLUSIVE: the model has 2 classes" in printed
    assert "--fail-on-backdoor: 1 inconclusive: two" in printed
    result = json.load(open(tmp_path / "o2" / "detect.json"))
    assert result["verdict"]["target_classes"] == [] and result["triggers"] == []
    assert result["verdict"]["limits"] == ["the model has 2 classes; every signal compares a class with at least "
                                           "2 others"]
    assert "<b>INCONCLUSIVE</b>" in open(tmp_path / "o2" / "report.html").read()

    x, y = load_h5(PATHS["train"])
    keep = np.concatenate([np.nonzero(y != 7)[0], np.nonzero(y == 7)[0][:4]])
    save_h5(str(tmp_path / "few7.h5"), x[keep], y[keep])
    rc = cli.main(["detect", "--bad_model", PATHS["robust_bd_net"], "--data", str(tmp_path / "few7.h5"),
                   "--classes", "5,6,7", "--seeds", "15", "--steps", "10", "--out-dir", str(tmp_path / "o7"),
                   "--quiet", "--no-warp-probe", "--no-mask-probe", "--no-pair-mask"])
    assert rc == 0  # without --fail-on-backdoor, a scan that ran is a success
    verdict = json.load(open(tmp_path / "o7" / "detect.json"))["verdict"]
    assert verdict["limits"] == ["too few training images (class 7: 4; at least 10 per examined class expected)"]
    assert not verdict["backdoored"] and verdict["line"].startswith("INCONCLUSIVE: too few training images")
    rc = cli.main(["detect", "--bad_model", PATHS["robust_bd_net"], "--classes", "5,6,7", "--seeds", "15",
                   "--steps", "2", "--eps", "0.01", "--out-dir", str(tmp_path / "oe"), "--quiet", "--no-warp-probe",
                   "--no-mask-probe", "--no-pair-mask"])  # the probes need no translations: off, for time
    verdict = json.load(open(tmp_path / "oe" / "detect.json"))["verdict"]
    assert rc == 0 and verdict["line"].startswith("INCONCLUSIVE: the translations did not converge (on average ")
    assert verdict["limits"][0].endswith("at least 50% expected); raise --eps or --steps")


def test_the_pair_mask_probe_runs_on_candidates_by_default_and_pair_mask_runs_it_on_every_pair(tmp_path, capsys,
                                                                                               monkeypatch):
    out, printed = _run(tmp_path, "pm", ["--pair-mask", "--no-warp-probe", "--no-mask-probe", "--no-blend-probe"],
                        capsys)
    result = json.load(open(out / "detect.json"))
    pm = result["aegis"]["pair_mask"]
    assert result["aegis"]["config"]["pair_mask"] is True and "pair_mask" in result["verdict"]["evidence"]
    assert len(pm["pairs"]) == 6 and all(v["norm"] > 0 for v in pm["pairs"].values())  # 3 classes: 6 pairs
    assert "pair mask gap" in printed.splitlines()[0] and "aegis pair mask:" in printed
    # by default it runs on the candidates only (test_detect_writes_report_and_is_reproducible), and
    # --no-pair-mask turns it off (test_detect_probes_turn_off)
    import aegis_tf.detect.scan as scan_module

    # one candidate, whatever the view saw
    monkeypatch.setattr(scan_module, "candidate_pairs", lambda pairs, classes=None: [(5, 7)])
    out, printed = _run(tmp_path, "one", ["--no-warp-probe", "--no-mask-probe", "--no-blend-probe"], capsys)
    pm = json.load(open(out / "detect.json"))["aegis"]["pair_mask"]  # printed, then saved: the whole command ran
    assert pm["examined_pairs"] == [[5, 7]] and set(pm["pairs"]) == {"5->6", "5->7", "6->7"}
    assert "gap" in pm["pairs"]["5->7"] and "gap" not in pm["pairs"]["5->6"]
    assert "aegis pair mask:" in printed and "highest pair gaps (source->target: gap, norm): 5->7: " in printed
    assert (out / "report.html").exists()
