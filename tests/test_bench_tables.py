"""Helpers of the benchmark tables (bench/ is on the test path, see conftest)."""

from aegis_tf.detect.config import DetectConfig


def test_detect_table_resume_reads_a_setting_added_later_as_the_value_that_behaves_as_before():
    from detect_table import _same_config

    new = DetectConfig().to_dict()
    old = {k: v for k, v in new.items() if k not in ("scan", "top_k")}  # a table written before those settings
    assert _same_config(old, new)
    assert not _same_config(old, {**new, "scan": "staged"})  # a setting that changes the scan does not match
    assert not _same_config({**old, "n_seeds": 7}, new)
    before_probe = {k: v for k, v in new.items() if k != "wi_blend"}  # a table from before the blend probe
    assert not _same_config(before_probe, new)  # ran without it: the default (auto, with it) does not match
    assert _same_config(before_probe, {**new, "wi_blend": False})


def test_repair_table_renders_errors_and_unmeasured_numbers():
    from repair_table import render

    row = {"method": "lab pruning -4% (3 ch)", "clean_acc": 0.9, "asr": None, "g_clean_acc": 0.89, "g_asr": None,
           "g_clean_rejected": 0.05, "g_bad_rejected": None, "recovered_asr": 0.01, "seconds": 3.0, "note": ""}
    results = {"machine": "2 CPU cores", "commands": ["python bench/repair_table.py m.keras",
                                                      "python bench/repair_table.py m.keras --redo unlearn"],
               "models": [{"model": "m.keras", "detect": {"line": "CLEAN", "triggers": [], "seconds": 5.0},
                           "rows": [row, {"method": "unlearn", "error": "detect recovered no trigger",
                                          "seconds": None}]}]}
    text = render(results)
    assert "| lab pruning -4% (3 ch) | 90.00% | n/a | 89.00% | n/a | 5.00% / n/a | 1.00% | 3 |" in text
    assert "| unlearn | - | - | - | - | - | - | - | detect recovered no trigger |" in text
    assert "--redo" in text and "CSAW DeepID" in text


def test_compare_scans_matches_majority_verdicts(tmp_path):
    import json

    from compare_scans import main, majority

    assert majority([[7], [7, 6], [7]]) == ((7,), 3)
    assert majority([[], [3]]) == ((), 2)  # a tie: the earliest run's
    full = {"rows": [{"path": "a.keras", "runs": [{"suspects": [7]}, {"suspects": [7]}, {"suspects": []}]},
                     {"path": "b.keras", "runs": [{"suspects": []}]}]}
    staged = {"rows": [{"path": "a.keras", "runs": [{"suspects": [7]}]},
                       {"path": "b.keras", "runs": [{"suspects": [2]}]},
                       {"path": "c.keras", "runs": [{"suspects": []}]}]}
    (tmp_path / "full.json").write_text(json.dumps(full))
    (tmp_path / "staged.json").write_text(json.dumps(staged))
    main([str(tmp_path / "staged.json"), "--against", str(tmp_path / "full.json"), "--out", str(tmp_path / "c.md")])
    text = (tmp_path / "c.md").read_text()
    assert "| a.keras | class 7 (3 runs) | class 7 | yes |" in text
    assert "| b.keras | clean | class 2 | **no** |" in text
    assert "Same verdict: 1 of 2 models." in text and "No full scan to compare with: c.keras." in text
    assert text.startswith("Staged scan against full scan: staged.json")
    main([str(tmp_path / "staged.json"), str(tmp_path / "full.json"), "--against", str(tmp_path / "full.json"),
          "--labels", "before", "after", "--out", str(tmp_path / "d.md")])  # several tables, other names
    text = (tmp_path / "d.md").read_text()
    assert text.startswith("After against before: staged.json, full.json")
    assert "| model | before | after | same verdict |" in text
    assert "| a.keras | class 7 (3 runs) | class 7 (3 runs) | yes |" in text


def test_detect_table_interrupted_resume_keeps_the_rows_it_has_not_reached():
    from detect_table import _rows_to_write

    done = {p: {"path": p, "runs": [p]} for p in ("a", "b", "c")}
    reached = [{"path": "a", "runs": ["a"], "baselines": {}}]  # a resumed call added baselines to "a" so far
    rows = _rows_to_write(reached, done)
    assert [r["path"] for r in rows] == ["a", "b", "c"] and "baselines" in rows[0]
    assert _rows_to_write([], {}) == []


def test_detect_table_resume_runs_only_the_missing_detection_seeds():
    from detect_table import _missing_runs

    assert _missing_runs(None, 5) == [0, 1, 2, 3, 4]  # a new model: every seed
    assert _missing_runs({"runs": [{}, {}, {}]}, 5) == [3, 4]  # 3 runs extended to 5: seeds 3 and 4 only
    assert _missing_runs({"runs": [{}] * 5}, 5) == []


def test_signal_gaps_reports_each_signals_catch_and_false_positive_margin(tmp_path):
    import json

    from signal_gaps import markdown, model_line

    def run(flagged_wi, flagged_bp, wi, bp):
        return {"signals": {"patch_transfer": [], "whole_image": flagged_wi, "blend_probe": flagged_bp},
                "whole_image": {str(c): {"gap": g} for c, g in enumerate(wi)},
                "blend_probe": {str(c): {"gap": g} for c, g in enumerate(bp)},
                "flagged": bool(flagged_wi or flagged_bp), "right_class": 2 in flagged_wi + flagged_bp}

    bad = {"path": "m/bad.keras", "name": "bad.keras", "target": 2, "asr": 0.97,
           "runs": [run([], [2], [0.3, 1.2, 0.4], [0.2, 0.3, 3.4]), run([2], [2], [0.2, 0.5, 2.1], [0.3, 1.7, 2.9])]}
    clean = {"path": "m/clean.keras", "name": "clean.keras", "target": None, "asr": None,
             "runs": [run([], [], [1.3, 0.7, 0.5], [0.9, 1.1, 0.8])]}
    stats = model_line(bad, ["patch_transfer", "whole_image", "blend_probe"])
    assert stats["patch_transfer"][0] == 0
    assert stats["whole_image"] == (1, (0.4, 2.1), 1.2)  # caught in 1 of 2 runs; class 1 came to 1.2
    assert stats["blend_probe"] == (2, (2.9, 3.4), 1.7)
    assert model_line(clean, ["whole_image"])["whole_image"] == (0, None, 1.3)
    (tmp_path / "t.json").write_text(json.dumps({"rows": [bad, clean]}))
    text = markdown([str(tmp_path / "t.json")])
    assert "| m/bad.keras | 2 | 2 | 2 | 0 | 1 | 0.40-2.10 | 1.20 | 2 | 2.90-3.40 | 1.70 |" in text
    assert "| m/clean.keras | clean | 1 | clean 1 | - | - | - | 1.30 | - | - | 1.10 |" in text
    assert "whole-image 1.30; blend probe 1.70." in text
    for r in bad["runs"] + clean["runs"]:  # tables made before the blend probe ran (--no-blend-probe)
        del r["blend_probe"]
    (tmp_path / "t.json").write_text(json.dumps({"rows": [bad, clean]}))
    assert "whole-image 1.30; blend probe not run." in markdown([str(tmp_path / "t.json")])
