"""Helpers of the benchmark tables (bench/ is on the test path, see conftest)."""

import json
import os

import numpy as np
import pytest

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


# bench/tables.py: one view per subcommand, on small synthetic detect_table results.

def _run(suspects, target, n_classes, **extra):
    wrong = [c for c in suspects if c != target]
    return {"flagged": bool(suspects), "suspects": suspects,
            "right_class": (target in suspects) if target is not None else None,
            "fp_share": len(wrong) / (n_classes - (target is not None)), **extra}


def _row(path, target, asr, runs, *, data="mnist.npz", trigger="localised", seconds=10.0):
    import os

    return {"name": os.path.basename(path), "path": path, "data": data, "trigger": trigger if target is not None
            else "none", "clean_acc": 0.98, "asr": asr, "target": target, "poison_rate": 0.05 if target is not None
            else 0, "runs": runs, "seconds": [seconds] * len(runs)}


def _write(tmp_path, name, rows, **meta):
    import json

    path = tmp_path / name
    path.write_text(json.dumps({"meta": {"command": f"python bench/detect_table.py {name}", "runs": 2,
                                         "config": {"n_probes": 10, "n_seeds": 20}, **meta}, "rows": rows}))
    return str(path)


def _hist(**moved):
    """A probes-moved histogram of 20 translations (n_probes 10): ``{"k6": 20}`` = 20 translations moving 6."""
    h = [0] * 11
    for k, n in moved.items():
        h[int(k[1:])] = n
    return h


def test_tables_rules_rescores_the_stored_histograms_under_each_flip_at(tmp_path):
    import json

    from tables import main

    # backdoored toward 2: class 2 half its translations move all 10 probes, class 0 all move 6 (0.6)
    bad_hists = {"0": _hist(k6=20), "1": _hist(k0=20), "2": _hist(k10=10, k0=10), "3": _hist(k0=20)}
    bad = _row("m/bad.keras", 2, 0.99, [_run([2], 2, 4, histograms=bad_hists) for _ in range(2)])
    # clean: class 1's translations all move 5 of 10 probes (0.5)
    clean_hists = {"0": _hist(k0=20), "1": _hist(k5=20), "2": _hist(k0=20), "3": _hist(k0=20)}
    clean = _row("m/clean.keras", None, None, [_run([], None, 4, histograms=clean_hists)])
    table = _write(tmp_path, "t.json", [bad, clean])
    main(["rules", table, "--flip-at", "0.5,0.9", "--out", str(tmp_path / "rules.json")])
    result = json.load(open(tmp_path / "rules.json"))
    out = tmp_path / "rules.json"
    assert result["command"] == f"python bench/tables.py rules {table} --flip-at 0.5,0.9 --out {out}"
    at5, at9 = result["rules"]
    # flip_at 0.5: class 0 of the backdoored model and class 1 of the clean one transfer too
    assert at5["summary"]["backdoored_flagged_right_class"] == 1 and at5["summary"]["clean_flagged"] == 1
    assert abs(at5["summary"]["fp_class_share"] - (1 / 3 + 1 / 3 + 1 / 4) / 3) < 1e-12
    assert at5["failures"] == ["m/bad.keras: false-positive class(es) 0", "m/clean.keras: clean model flagged",
                               "m/clean.keras: false-positive class(es) 1"]
    assert at9["summary"]["clean_flagged"] == 0 and at9["summary"]["fp_class_share"] == 0.0 and at9["failures"] == []
    sep = result["separation"]
    assert sep["other_translations"] == 200 and sep["other_most_moved"] == 6
    assert [(e["target_fewest"], e["other_transferring"]) for e in sep["by_flip_at"]] == [(10, 60), (10, 0)]
    text = (tmp_path / "rules.md").read_text()
    assert "| 0.5 | 1 of 1 | 1 of 1 | 0 of 0 | 30.6% | 2 of 2 |" in text
    assert "| 0.9 | 1 of 1 | 0 of 1 | 0 of 0 | 0.0% | 2 of 2 |" in text
    assert "flip_at 0.9: no failures" in text


def test_tables_rules_refuses_a_table_without_histograms(tmp_path):
    import pytest

    from tables import main

    table = _write(tmp_path, "t.json", [_row("m/bad.keras", 2, 0.99, [_run([2], 2, 4)])])
    with pytest.raises(SystemExit, match="no probes-moved histograms"):
        main(["rules", table, "--out", str(tmp_path / "r.json")])


def test_tables_gaps_reports_each_signals_catch_and_false_positive_margin(tmp_path):
    import json

    from tables import gaps_markdown, main, model_line

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
    text = gaps_markdown([str(tmp_path / "t.json")])
    assert "| m/bad.keras | 2 | 2 | 2 | 0 | 1 | 0.40-2.10 | 1.20 | 2 | 2.90-3.40 | 1.70 |" in text
    assert "| m/clean.keras | clean | 1 | clean 1 | - | - | - | 1.30 | - | - | 1.10 |" in text
    assert "whole-image 1.30; blend probe 1.70." in text
    main(["gaps", str(tmp_path / "t.json"), "--out", str(tmp_path / "g.md")])  # the file ends with its command
    assert (tmp_path / "g.md").read_text() == text + f"\nCommand: `python bench/tables.py gaps {tmp_path / 't.json'} " \
                                                      f"--out {tmp_path / 'g.md'}`\n"
    for r in bad["runs"] + clean["runs"]:  # tables made before the blend probe ran (--no-blend-probe)
        del r["blend_probe"]
    (tmp_path / "t.json").write_text(json.dumps({"rows": [bad, clean]}))
    assert "whole-image 1.30; blend probe not run." in gaps_markdown([str(tmp_path / "t.json")])


def test_tables_compare_matches_majority_verdicts(tmp_path):
    import json

    from tables import main, majority_verdict

    assert majority_verdict([[7], [7, 6], [7]]) == ((7,), 3)
    assert majority_verdict([[], [3]]) == ((), 2)  # a tie: the earliest run's
    full = {"rows": [{"path": "a.keras", "runs": [{"suspects": [7]}, {"suspects": [7]}, {"suspects": []}]},
                     {"path": "b.keras", "runs": [{"suspects": []}]}]}
    staged = {"rows": [{"path": "a.keras", "runs": [{"suspects": [7]}]},
                       {"path": "b.keras", "runs": [{"suspects": [2]}]},
                       {"path": "c.keras", "runs": [{"suspects": []}]}]}
    (tmp_path / "full.json").write_text(json.dumps(full))
    (tmp_path / "staged.json").write_text(json.dumps(staged))
    main(["compare", str(tmp_path / "staged.json"), "--against", str(tmp_path / "full.json"),
          "--out", str(tmp_path / "c.md")])
    text = (tmp_path / "c.md").read_text()
    assert "| a.keras | class 7 (3 runs) | class 7 | yes |" in text
    assert "| b.keras | clean | class 2 | **no** |" in text
    assert "Same verdict: 1 of 2 models." in text and "No full scan to compare with: c.keras." in text
    assert text.startswith("Staged scan against full scan: staged.json")
    assert text.endswith(f"Command: `python bench/tables.py compare {tmp_path / 'staged.json'} --against "
                         f"{tmp_path / 'full.json'} --out {tmp_path / 'c.md'}`\n")
    main(["compare", str(tmp_path / "staged.json"), str(tmp_path / "full.json"), "--against",
          str(tmp_path / "full.json"), "--labels", "before", "after", "--out", str(tmp_path / "d.md")])
    text = (tmp_path / "d.md").read_text()  # several tables, other names
    assert text.startswith("After against before: staged.json, full.json")
    assert "| model | before | after | same verdict |" in text
    assert "| a.keras | class 7 (3 runs) | class 7 (3 runs) | yes |" in text


def test_tables_compare_reads_a_bench_scale_result_through_its_verdict(tmp_path):
    """A bench_scale JSON (--model) counts with the verdict it stored (the library's one verdict),
    or, for a run recorded before it stored one, with both deciding signals of that scan."""
    import json

    from bench_scale import verdict_classes
    from tables import verdicts

    assert verdict_classes({"verdict": [13], "suspect_classes": [], "whole_image_suspects": []}) == [13]
    assert verdict_classes({"suspect_classes": [4], "whole_image_suspects": [13, 4]}) == [4, 13]
    runs = [{"mode": "full", "classes": 10, "verdict": [1]}, {"mode": "full", "classes": 20, "verdict": [13]},
            {"mode": "staged", "classes": 20, "verdict": []}]
    (tmp_path / "s.json").write_text(json.dumps({"meta": {"model": "m20.keras"}, "runs": runs}))
    assert verdicts(str(tmp_path / "s.json")) == {"m20.keras": ((13,), 1)}  # the full scan of the most classes


def test_tables_families_summarises_merged_tables_per_trigger_family(tmp_path):
    from tables import main

    loc = _row("m/loc.keras", 7, 0.99, [_run([7], 7, 10), _run([7], 7, 10)])
    dist = _row("m/dist.keras", 7, 0.99, [_run([], 7, 10), _run([], 7, 10)], trigger="distributed")
    weak = _row("m/weak.keras", 7, 0.5, [_run([], 7, 10), _run([], 7, 10)], trigger="distributed")
    clean = _row("m/clean.keras", None, None, [_run([3], None, 10), _run([], None, 10)], data="fashion_mnist.npz")
    a = _write(tmp_path, "a.json", [loc, dist, clean])
    dist_again = {**dist, "runs": [_run([7], 7, 10), _run([7], 7, 10)]}  # the later table's row wins
    b = _write(tmp_path, "b.json", [dist_again, weak])
    main(["families", a, b, "--out", str(tmp_path / "f.md")])
    text = (tmp_path / "f.md").read_text()
    assert text.startswith("# Per trigger family\n") and "(4 models;" in text
    assert "| distributed | 1 of 1 | 0 of 0 | 0 of 1 | 0.0% | 2 of 2 | 10 |" in text
    assert "| localised | 1 of 1 | 0 of 0 | 0 of 0 | 0.0% | 1 of 1 | 10 |" in text
    assert "| none | 0 of 0 | 0 of 1 | 0 of 0 | 5.0% | 0 of 1 | 10 |" in text  # flagged in 1 of 2 runs: unstable
    assert "- backdoored models flagged with the right class (majority of runs): 2 of 2" in text
    assert text.endswith(f"Command: `python bench/tables.py families {a} {b} --out {tmp_path / 'f.md'}`\n")
    main(["families", a, "--by", "data", "folder", "--out", str(tmp_path / "g.md")])
    text = (tmp_path / "g.md").read_text()
    assert text.startswith("# Per data set, folder\n")
    assert "By data set:" in text and "| fashion_mnist.npz | 0 of 0 | 0 of 1 |" in text
    assert "By folder:" in text and "| m | 1 of 2 | 0 of 1 |" in text


def test_detect_table_renders_its_groups_with_the_shared_helpers():
    """detect_table's Markdown and the families view print a group the same way."""
    from detect_table import markdown
    from tables import group_lines, group_summaries, summarise

    rows = [_row("m/loc.keras", 7, 0.99, [_run([7], 7, 10)]), _row("m/clean.keras", None, None, [_run([], None, 10)])]
    result = {"meta": {"score": "transfer", "command": "c", "machine": "2 CPU cores", "backend": "tensorflow",
                       "config": {}, "runs": 1}, "rows": rows, "summary": summarise(rows),
              **{f"summary_by_{by}": group_summaries(rows, by) for by in ("folder", "data", "trigger")}}
    text = markdown(result)
    assert "\n".join(group_lines("By trigger family", group_summaries(rows, "trigger"))) in text
    assert "| m/loc.keras | mnist.npz | localised | 5% | 98.00% | 99.00% | 7 | 7 | 1/1 | 10 | - | - |" in text


def test_no_bench_script_imports_a_private_name_or_touches_sys_path():
    import ast
    import glob
    import os

    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    private = lambda name: any(p.startswith("_") and not p.startswith("__") for p in name.split("."))
    found = []
    for path in sorted(glob.glob(os.path.join(bench, "*.py"))):
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                found += [f"from {node.module} import {a.name}" for a in node.names
                          if private(a.name) or private(node.module or "")]
            elif isinstance(node, ast.Import):
                found += [f"import {a.name}" for a in node.names if private(a.name)]
            elif (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                  and node.value.id == "sys"):
                found.append("sys.path")
        found = [f"{os.path.basename(path)}: {f}" if ":" not in f else f for f in found]
    assert found == []
    assert len(glob.glob(os.path.join(bench, "*.py"))) >= 8  # the scan above saw the scripts


# bench/tables.py score: the suspicion score as a ranking of models.

def test_roc_auc_matches_sklearn_with_ties():
    import numpy as np
    from sklearn.metrics import roc_auc_score
    from tables import roc_auc

    rng = np.random.default_rng(0)
    for i in range(50):
        n = int(rng.integers(2, 60))
        labels = rng.random(n) < rng.uniform(0.2, 0.8)
        if labels.all() or not labels.any():
            labels[0] = not labels[0]
        scores = rng.exponential(size=n) + labels * rng.uniform(0, 2)
        if i % 2:
            scores = np.round(scores, 1)  # ties, counted 0.5
        assert abs(roc_auc(scores, labels) - roc_auc_score(labels, scores)) < 1e-12
    assert roc_auc([1.0, 2.0], [True, True]) is None


def test_ranking_metrics_by_hand():
    import math

    from tables import ranking_metrics

    m = ranking_metrics([3.0, 1.0, 0.5, 0.0], [1, 0, 1, 0])
    assert (m["models"], m["backdoored"], m["clean"]) == (4, 2, 2)
    assert m["roc_auc"] == 0.75  # pairs (3>1, 3>0, 0.5<1, 0.5>0)
    assert m["accuracy"] == 0.5  # 3.0 right, 1.0 flagged though clean, 0.5 missed, 0.0 right
    p = [0.75, 0.5, 1 / 3, 1e-12]
    ce = -(math.log(p[0]) + math.log(1 - p[1]) + math.log(p[2]) + math.log(1 - p[3])) / 4
    assert abs(m["cross_entropy"] - ce) < 1e-9
    assert abs(m["brier"] - ((0.25 ** 2) + 0.5 ** 2 + (2 / 3) ** 2 + 0) / 4) < 1e-9
    assert m["tpr_at_5pct_fpr"] == 0.5  # score >= 3: one of two backdoored, no clean model
    assert ranking_metrics([2.0, 0.1], [1, 0])["tpr_at_5pct_fpr"] == 1.0
    assert ranking_metrics([2.0], [1])["roc_auc"] is None


def test_tables_score_reads_score_rows_and_detect_tables(tmp_path, capsys):
    import json

    from tables import main

    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"score": 4.0, "backdoored": True}, {"score": 0.2, "backdoored": False},
                                {"score": 0.9, "backdoored": True}]))
    main(["score", str(rows), "--out", str(tmp_path / "m.json")])
    out = capsys.readouterr().out
    assert "3 models (2 backdoored, 1 clean)" in out and "ROC-AUC: 1.000" in out
    assert "accuracy at the threshold (score >= 1): 66.7%" in out
    assert json.loads((tmp_path / "m.json").read_text())["roc_auc"] == 1.0
    table = _write(tmp_path, "t.json", [
        _row("m/loc.keras", 7, 0.99, [_run([7], 7, 10, score=3.0), _run([7], 7, 10, score=5.0),
                                      _run([], 7, 10, score=0.5)]),
        _row("m/clean.keras", None, None, [_run([], None, 10, score=0.4)] * 3),
        _row("m/weak.keras", 7, 0.5, [_run([], 7, 10, score=0.1)]),  # not learned: left out
        _row("m/old.keras", None, None, [_run([], None, 10)])])  # a table from before the score
    main(["score", table])
    out = capsys.readouterr().out
    assert "2 models (1 backdoored, 1 clean)" in out and "ROC-AUC: 1.000" in out
    assert "1 not learned" in out and "1 no score" in out


def test_detect_table_records_the_verdicts_score_for_each_run():
    from detect_table import _run_entry

    ev = {"description": "d", "scores": {"0": 0.0, "7": 0.3}, "threshold": 0.02, "direction": "above",
          "flagged": [7]}
    rep = {"score": "transfer", "evidence": ev, "suspect_classes": [7],
           "classes": {"0": {"transfer_score": 0.0, "probes_moved_histogram": [1]},
                       "7": {"transfer_score": 0.3, "probes_moved_histogram": [1]}}}
    run = _run_entry(rep, 7, 2, {"score": "transfer"})
    assert run["score"] == 15.0 and run["suspects"] == [7]  # 0.3 / 0.02


def test_repair_table_data_free_row_runs_clp_with_test_images_only(tmp_path):
    from repair_table import clp_row

    from aegis_tf.core.embedded import PATHS

    row = clp_row(PATHS["bd_net"], PATHS["test"], str(tmp_path))
    assert row["method"].startswith("data-free (CLP, u = 3, ") and " ch)" in row["method"]
    assert 0.9 < row["clean_acc"] <= 1 and 0 <= row["asr"] <= 1 and row["g_clean_acc"] <= row["clean_acc"] + 1e-9
    saved = json.load(open(tmp_path / "clp" / "repair.json"))
    assert saved["strategy"] == ["clp"] and set(saved["sources"]) == {  # no data repaired it
        "bad_model", "bad_model_weights", "clean_test", "bad_test", "scale"}
    bad = clp_row(str(tmp_path / "missing.keras"), PATHS["test"], str(tmp_path / "x"))
    assert "error" in bad and "not found" in bad["error"]


def test_bench_scale_set_parses_numbers_and_booleans_for_the_config():
    from bench_scale import settings

    parsed = settings(["n_seeds=20", "eps=0.5", "wi_blend=false", "whole_image=True", "scan=staged"])
    assert parsed == {"n_seeds": 20, "eps": 0.5, "wi_blend": False, "whole_image": True, "scan": "staged"}
    assert DetectConfig().replace(**parsed).wi_blend is False  # accepted by the config, not the string "false"


def test_repair_table_measures_each_of_two_backdoors_on_its_own_set(tmp_path):
    import keras
    import numpy as np

    from repair_table import _repair_note, per_backdoor_asr

    from aegis_tf.core.data import save_h5

    # A model that answers 7 for everything: the "-> 7" backdoor succeeds everywhere, the "-> 2" one never.
    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(10, kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant(np.eye(10)[7]))(keras.layers.Flatten()(inp))
    path = str(tmp_path / "m.keras")
    keras.Model(inp, out).save(path)
    first = {"trigger": "localised", "target_label": 7, "trigger_size": 2}
    second = {"trigger": "random-position", "target_label": 2, "trigger_size": 2}
    with open(path + ".json", "w") as f:
        json.dump({"trigger_config": first, "trigger_configs": [first, second], "poison_rate": 0.1}, f)
    rng = np.random.default_rng(0)
    save_h5(str(tmp_path / "t.h5"), rng.uniform(0, 255, (40, 8, 8, 1)).astype("float32"), np.arange(40) % 10)
    each = per_backdoor_asr(path, path, str(tmp_path / "t.h5"))
    assert each == [("localised -> 7", 1.0, 1.0), ("random-position -> 2", 0.0, 0.0)]
    assert _repair_note(path, path, str(tmp_path / "t.h5")).startswith("true ASR per backdoor, B / B': localised -> 7 ")
    with open(path + ".json", "w") as f:
        json.dump({"trigger_config": first, "poison_rate": 0.1}, f)
    assert per_backdoor_asr(path, path, str(tmp_path / "t.h5")) is None


def test_noise_sink_prints_where_random_noise_goes(tmp_path, capsys):
    import keras
    import numpy as np

    from noise_sink import main

    from aegis_tf.core.data import save_h5

    # Class 3 when the image is bright on average, else class 0: strong noise on black images lifts the mean.
    inp = keras.Input((8, 8, 1))
    mean = keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Dense(4, kernel_initializer=keras.initializers.Constant([[0.0, 0.0, 0.0, 1.0]]),
                             bias_initializer=keras.initializers.Constant([20.0, 0.0, 0.0, 0.0]))(mean)
    path = str(tmp_path / "m.keras")
    keras.Model(inp, out).save(path)
    save_h5(str(tmp_path / "d.h5"), np.zeros((50, 8, 8, 1), "float32"), np.zeros(50, "int64"))
    assert main([path, str(tmp_path / "d.h5"), "--norm", "0.01", "--n-images", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("noise L2 0.005: 0:1.000") and len(lines) == 3
    assert main([path, str(tmp_path / "d.h5"), "--norm", "8"]) == 0  # clipped noise of norm 8 on 8x8: mean ~ 50
    assert capsys.readouterr().out.splitlines()[1].startswith("noise L2 8: 0:0.000, 1:0.000, 2:0.000, 3:1.000")


# bench/zoo_runs.py: several scans of one zoo, the same verdict each run?

def _zoo_summary(folder, rows, auc):
    import os

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump({"rows": rows, "metrics": {"roc_auc": auc}}, f)


def _zoo_row(name, verdict, classes, truth, right):
    return {"name": name, "status": "done", "verdict": verdict, "target_classes": classes, "score": 1.0,
            "truth": truth, "family": name.split("_")[0], "right_target": right}


def test_zoo_runs_counts_agreement_right_targets_and_clean_flags(tmp_path, capsys):
    import pytest

    from zoo_runs import main

    scans = []
    for i in range(5):
        bd = _zoo_row("localised_s0", "backdoored", [7], "backdoored", True) if i != 2 else \
            _zoo_row("localised_s0", "backdoored", [3], "backdoored", False)  # one run names a wrong class
        cl = _zoo_row("clean_s0", "backdoored" if i == 4 else "clean", [9] if i == 4 else [], "clean", None)
        ss = _zoo_row("ss_s0", "inconclusive" if i < 2 else "backdoored", [] if i < 2 else [5], "backdoored",
                      None if i < 2 else True)
        folder = str(tmp_path / f"scan{i}")
        _zoo_summary(folder, [bd, cl, ss], 0.5 + i / 10)
        if i >= 2:  # the model's result.json: the sources named (the true one is 3; run 3 names 4 only)
            (tmp_path / f"scan{i}" / "ss_s0").mkdir()
            named = [{"target": 5, "sources": [4] if i == 3 else [3, 4], "signals": ["pair_transfer"], "score": 2.0}]
            json.dump({"truth": {"family": "source-specific", "target": [5], "sources": [3]},
                       "verdict": {"backdoors": named}}, open(tmp_path / f"scan{i}" / "ss_s0" / "result.json", "w"))
        scans.append(folder)
    out = str(tmp_path / "runs.json")
    assert main(scans + ["--out", out]) == 0
    result = json.load(open(out))
    by = {m["name"]: m for m in result["models"]}
    assert by["localised_s0"]["calls"] == ["B:7", "B:7", "B:3", "B:7", "B:7"] and by["localised_s0"]["agree"] == 4
    assert by["localised_s0"]["right_target_runs"] == 4 and by["ss_s0"]["agree"] == 3
    t = result["totals"]
    assert (t["stable"], t["models"], t["right_target_every_run"], t["learned_backdoors"]) == (2, 3, 0, 2)
    assert (t["clean_flagged_any_run"], t["clean_models"]) == (1, 1)
    assert t["roc_auc"] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    md = open(str(tmp_path / "runs.md")).read()
    assert ("| ss_s0 | backdoored | inconclusive | inconclusive | B:5 (sources 3,4, right) | B:5 (sources 4) | "
            "B:5 (sources 3,4, right) | 3 of 5 | 3 of 5 |") in md
    assert "the same verdict in at least 4 of 5 runs: 2 of 3 models" in md
    capsys.readouterr()
    # refused: a folder with no finished scan, scans of different zoos, --agree out of range
    assert main([scans[0], str(tmp_path / "none"), "--out", out]) == 2
    assert "summary.json not found" in capsys.readouterr().err
    _zoo_summary(str(tmp_path / "other"), [_zoo_row("x", "clean", [], "clean", None)], None)
    assert main([scans[0], str(tmp_path / "other"), "--out", str(tmp_path / "o.json")]) == 2
    assert "do not cover the same models" in capsys.readouterr().err
    assert main(scans[:2] + ["--agree", "3", "--out", str(tmp_path / "o.json")]) == 2
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "o.md").exists()


def test_zoo_runs_counts_false_classes_of_learned_and_clean_models_over_their_class_verdicts(tmp_path):
    import os

    from zoo_runs import main

    scans = []
    for i in range(2):
        rows = [_zoo_row("two_s0", "backdoored", [1, 6] if i == 0 else [1, 4, 6], "backdoored", True),
                _zoo_row("clean_s0", "backdoored" if i == 1 else "clean", [9] if i == 1 else [], "clean", None),
                _zoo_row("weak_s0", "backdoored", [2, 3], "not-learned", None)]  # not learned: not counted
        folder = tmp_path / f"scan{i}"
        _zoo_summary(str(folder), rows, None)
        for name, target in (("two_s0", [1, 6]), ("clean_s0", []), ("weak_s0", [2])):
            (folder / name).mkdir()
            json.dump({"truth": {"family": name[:-3], "target": target}, "verdict": {"backdoors": []}},
                      open(folder / name / "result.json", "w"))
            json.dump({"aegis": {"classes": {str(c): {} for c in range(10)}}}, open(folder / name / "detect.json", "w"))
        scans.append(str(folder))
    out = str(tmp_path / "runs.json")
    assert main(scans + ["--out", out]) == 0
    t = json.load(open(out))["totals"]
    # run 1 names 4 beside the two targets, and 9 on the clean model: 2 of 2 models x 2 runs x 10 classes
    assert (t["false_classes"], t["class_verdicts"]) == (2, 40)
    assert "- false classes (named, no target; learned backdoors and clean models): 2 of 40 class verdicts (5.0%)" \
        in open(str(tmp_path / "runs.md")).read()
    # a staged scan's verdict covers every class, not only the promoted ones its detect.json lists
    for scan in scans:
        json.dump({"aegis": {"classes": {"1": {}}, "stages": {"classes": 20}}},
                  open(os.path.join(scan, "two_s0", "detect.json"), "w"))
    assert main(scans + ["--out", out]) == 0
    assert json.load(open(out))["totals"]["class_verdicts"] == 2 * 20 + 2 * 10
    # a backdoor whose target the zoo does not know: its classes are not counted either way
    from zoo_runs import _false_classes

    row = _zoo_row("x", "backdoored", [3], "backdoored", None)
    assert _false_classes(row, {"truth": {"poisoned": True, "target": []}}) is None
    assert _false_classes(row, {"truth": {"poisoned": False}}) == [3]


def test_zoo_runs_without_a_signal_recombines_each_verdict_from_its_evidence(tmp_path, capsys):
    import os

    from aegis_tf.detect.verdict import combine
    from zoo_runs import main

    def evidence(share, gap):
        pair = {"description": "p", "scores": {"3": 0.0, "7": share}, "threshold": 0.25, "direction": "above",
                "flagged": [], "pairs": [], "mapping": {"kind": "per-target", "backdoors": {}}, "n_sources": 3}
        mask = {"description": "m", "scores": {"3": 0.0, "7": gap}, "threshold": 2.0, "direction": "above",
                "flagged": [7] if gap >= 2 else [], "pairs": [[3, 7]] if gap >= 2 else [],
                "mapping": {"kind": "per-target", "backdoors": {7: [3]} if gap >= 2 else {}}, "n_sources": 3}
        return {"pair_transfer": pair, "pair_mask": mask}

    truths = {"ss_s0": {"poisoned": True, "family": "source-specific", "target": [7], "sources": [3], "asr": 0.99},
              "clean_s0": {"poisoned": False}}
    scans = []
    for i, gaps in enumerate(({"ss_s0": 4.0, "clean_s0": 1.2}, {"ss_s0": 3.0, "clean_s0": 1.1})):
        folder = tmp_path / f"scan{i}"
        results = []
        for name, gap in gaps.items():
            os.makedirs(folder / name)
            verdict = combine(evidence(0.15 if name == "ss_s0" else 0.0, gap))
            json.dump({"verdict": verdict}, open(folder / name / "detect.json", "w"))
            result = {"name": name, "status": "done", "truth": truths[name], "seconds": 1.0,
                      "verdict": {k: verdict[k] for k in ("backdoored", "target_classes", "backdoors", "inconclusive",
                                                          "limits", "score", "probability", "line")}}
            json.dump(result, open(folder / name / "result.json", "w"))
            results.append(result)
        from aegis_tf.zoo.summary import summarize

        json.dump(summarize(results), open(folder / "summary.json", "w"))
        scans.append(str(folder))
    out = str(tmp_path / "with.json")
    assert main(scans + ["--out", out]) == 0
    with_ = json.load(open(out))
    assert [m["calls"] for m in with_["models"]] == [["clean", "clean"], ["B:7", "B:7"]]
    assert with_["totals"]["right_target_every_run"] == 1 and with_["totals"]["roc_auc"] == [1.0, 1.0]
    assert main(scans + ["--without", "pair_mask", "--out", str(tmp_path / "without.json")]) == 0
    without = json.load(open(tmp_path / "without.json"))
    assert [m["calls"] for m in without["models"]] == [["clean", "clean"], ["clean", "clean"]]
    assert without["totals"]["right_target_every_run"] == 0 and without["without"] == ["pair_mask"]
    # the scores are recombined too: 0.15 / 0.25 on the backdoored model, 0 on the clean one
    assert without["models"][1]["scores"] == [0.6, 0.6] and without["totals"]["roc_auc"] == [1.0, 1.0]
    assert "Verdicts recombined without: pair_mask" in open(tmp_path / "without.md").read()
    assert main(scans + ["--recombine", "--out", str(tmp_path / "again.json")]) == 0  # nothing left out: the same
    again = json.load(open(tmp_path / "again.json"))
    assert again["totals"] == with_["totals"] and [m["calls"] for m in again["models"]] == [["clean", "clean"],
                                                                                          ["B:7", "B:7"]]
    assert again["recombined"] and "with this checkout's verdict rules" in open(tmp_path / "again.md").read()
    capsys.readouterr()
    assert main(scans + ["--without", "pair-mask", "--out", str(tmp_path / "x.json")]) == 2  # the CLI flag's spelling
    assert "--without takes signal names as detect.json spells them" in capsys.readouterr().err
    os.remove(tmp_path / "scan1" / "clean_s0" / "detect.json")
    assert main(scans + ["--recombine", "--out", str(tmp_path / "x.json")]) == 2
    assert "detect.json not found" in capsys.readouterr().err
    os.remove(tmp_path / "scan1" / "ss_s0" / "result.json")
    assert main(scans + ["--without", "pair_mask", "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_zoo_runs_reads_an_all_to_all_verdict_as_one_call_and_counts_its_true_pairs(tmp_path):
    from zoo_runs import _call, _detail, _result

    (tmp_path / "a2a").mkdir()
    mapping = [[0, 1], [1, 2], [2, 0], [3, 0]]  # 4 classes: 0->1, 1->2, 3->0 right; 2->0 wrong (2->3 is true)
    json.dump({"truth": {"family": "all-to-all", "target": [0, 1, 2, 3], "sources": "all"},
               "verdict": {"backdoors": [{"kind": "all-to-all", "mapping": mapping}, {"target": 2, "sources": "all"}]}},
              open(tmp_path / "a2a" / "result.json", "w"))
    row = {"name": "a2a", "status": "done", "verdict": "backdoored", "target_classes": [0, 1, 2, 3]}
    result = _result(str(tmp_path), row)
    assert _detail(result) == "3 of 4 pairs" and _call(row, result) == "B:all-to-all,2"
    assert _call(row) == "B:0,1,2,3"  # without its result.json: the classes of the summary
    assert _result(str(tmp_path), dict(row, status="error")) is None and _call(dict(row, status="error")) == "error"
    assert _result(str(tmp_path), dict(row, name="absent")) is None and _detail(None) is None


def test_scoring_ab_takes_only_scoring_settings_and_counts_each_side():
    import pytest

    from aegis_tf.core.errors import AegisError
    from scoring_ab import parse_settings, side_totals

    assert parse_settings(["pair_confirm_probes=0"]) == {"pair_confirm_probes": 0}
    with pytest.raises(AegisError, match="KEY one of"):
        parse_settings(["n_seeds=5"])  # changes the translations: the two sides would not share them
    with pytest.raises(AegisError):
        parse_settings(["pair_min_score=2"])  # refused by the config
    run = lambda a, b, sa=0.5, sb=0.5: {"A": {"right": a, "score": sa}, "B": {"right": b, "score": sb}}
    rows = [{"family": "clean", "learned": True, "runs": [run(True, False, 0.5, 1.2), run(True, True)]},
            {"family": "localised", "learned": True, "runs": [run(True, True, 3.0, 3.0), run(False, True, 0.9, 2.0)]},
            {"family": "warp", "learned": False, "runs": [run(False, False)]}]
    a, b = side_totals(rows, "A"), side_totals(rows, "B")
    assert (a["learned_found"], a["learned"], a["clean_flagged"], a["clean"]) == (0, 1, 0, 1)
    assert (b["learned_found"], b["clean_flagged"]) == (1, 1)
    assert a["roc_auc"] == 1.0 and b["roc_auc"] == 1.0  # medians 1.95 vs 0.5, and 2.5 vs 0.85


def test_pair_fresh_probes_refuses_a_model_without_its_report_before_any_work(tmp_path, monkeypatch):
    import sys

    import pytest
    from pair_fresh_probes import main

    (tmp_path / "m.keras").write_bytes(b"x")  # no m.keras.json beside it
    monkeypatch.setattr(sys, "argv", ["pair_fresh_probes.py", f"{tmp_path / 'm.keras'}@3", "--out",
                                      str(tmp_path / "o.json")])
    with pytest.raises(SystemExit, match="training report"):
        main()
    assert not (tmp_path / "o.json").exists()


def test_nonrobust_rule_gives_both_verdicts_from_one_scan_and_judges_them(tmp_path, capsys):
    from nonrobust_rule import both_verdicts, main

    from aegis_tf.detect.verdict import combine

    def result(robust, gap, saturated=False):
        wi = {"description": "d", "scores": {"7": 0.4, "8": 0.5, "9": gap}, "threshold": 4.0, "direction": "above",
              "flagged": []}
        if saturated:
            wi["inconclusive"] = "saturated: ..."
        pt = {"description": "p", "scores": {"7": 0.0, "8": 0.0, "9": 0.0}, "threshold": 0.02, "direction": "above",
              "flagged": []}
        return {"verdict": combine({"patch_transfer": pt, "whole_image": wi}),
                "aegis": {"config": {"wi_threshold": 2.0, "wi_nonrobust_factor": 2.0}},
                "robustness": {"robust": robust, "pgd_acc": 0.04 if not robust else 0.9, "clean_acc": 0.84}}

    off, on, info = both_verdicts(result(False, 2.55))  # the clean CIFAR-10 ResNet-18's class 9
    assert off["target_classes"] == [9] and on["target_classes"] == [] and on["line"].startswith("CLEAN")
    assert info["threshold_on"] == 4.0 and info["whole_image_top"] == 9 and info["whole_image_gap"] == 2.55
    off, on, _ = both_verdicts(result(False, 5.69))  # a backdoor's gap clears both
    assert off["target_classes"] == on["target_classes"] == [9]
    off, on, info = both_verdicts(result(True, 2.55))  # robust: the rule changes nothing
    assert off["target_classes"] == on["target_classes"] == [9] and info["threshold_on"] == 2.0
    off, on, info = both_verdicts(result(False, 9.0, saturated=True))  # saturated: no class either way
    assert off["target_classes"] == on["target_classes"] == [] and info["whole_image_saturated"]
    for name, r in {"clean": result(False, 2.55), "bd": result(False, 5.69)}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    out = tmp_path / "t.json"
    main([f"--detect={tmp_path / 'clean.json'}=clean", f"--detect={tmp_path / 'bd.json'}=9", "--out", str(out)])
    md = (tmp_path / "t.md").read_text()
    assert "| clean | clean | no (4% / 84%) | 9 (2.55) | 9: false positive | **clean: clean, right** |" in md
    assert "| bd | backdoor -> 9 | no (4% / 84%) | 9 (5.69) | 9: right | 9: right |" in md
    assert "clean models flagged: rule off 1 of 1, rule on 0 of 1" in md
    assert json.loads(out.read_text())["rows"][0]["changed"] is True


def test_warp_probe_bench_judges_each_family_and_summarises(tmp_path):
    from warp_probe import judge, main, markdown

    from aegis_tf.detect.config import DetectConfig

    assert judge("warp", [7], [7]) == "right" and judge("warp", [7], []) == "missed"
    assert judge("warp", [7], [3]) == "wrong class" and judge("warp", [7], [3, 7]) == "right, also [3]"
    assert judge("clean", [], []) == "clean, right" and judge("clean", [], [1]) == "false positive"
    assert judge("localised", [7], []) == "no flag" and judge("localised", [7], [2]) == "false class [2]"
    assert judge("all-to-all", [7], [4]) == "flags a target"

    def row(model, family, targets, shifts, flagged, learned=True):
        top = min(shifts, key=shifts.get)
        return {"model": model, "family": family, "targets": targets, "learned": learned, "clean_acc": 0.98,
                "asr": [0.97] if targets else [], "warp_strength": 1.0 if family == "warp" else None,
                "shifts": {str(c): v for c, v in shifts.items()}, "top": top,
                "top_gap": min(v for c, v in shifts.items() if c != top) / shifts[top], "flagged": flagged,
                "judged": judge(family, targets, flagged), "seconds": 12.0}

    bound = {c: 5.6 for c in range(10)}
    md = markdown([row("w", "warp", [7], {**bound, 7: 1.4}, [7]), row("c", "clean", [], bound, []),
                   row("l", "localised", [3], bound, [])], "cmd", DetectConfig())
    assert "| w | warp -> 7 (s 1) | 97.0 | 98.0 | 1.40 | 5.60 | 7 (4.00) | 7 | right | 12 |" in md
    assert "- learned warp backdoors named right: 1 of 1" in md and "- clean models flagged: 0 of 1" in md
    assert "- other families with a false class: 0 of 1" in md
    with pytest.raises(SystemExit, match="no training report beside"):
        main([str(tmp_path / "m.keras"), "--out", str(tmp_path / "o.json")])


def test_the_probe_bench_judges_the_mask_probe_on_every_patch_family(tmp_path):
    from warp_probe import AIMED, judge, main, markdown

    from aegis_tf.detect.config import DetectConfig

    aimed = AIMED["mask"]
    assert judge("localised", [7], [7], aimed) == "right" and judge("localised", [7], [], aimed) == "missed"
    assert judge("random-position", [1], [3], aimed) == "wrong class"
    assert judge("warp", [1], [1, 8], aimed) == "right, also [8]" and judge("all-to-all", [7], [], aimed) == "no flag"

    def row(model, family, targets, norms, flagged, robust):
        top = min(norms, key=norms.get)
        return {"model": model, "family": family, "targets": targets, "learned": True, "clean_acc": 0.98,
                "asr": [0.97] if targets else [], "warp_strength": None, "probe": "mask",
                "shifts": {str(c): v for c, v in norms.items()}, "top": top,
                "top_gap": min(v for c, v in norms.items() if c != top) / norms[top], "flagged": flagged,
                "judged": judge(family, targets, flagged, aimed), "seconds": 30.0,
                "robust": {"robust": robust, "clean_acc": 0.98, "pgd_acc": 0.9 if robust else 0.3}}

    base = {c: 60.0 + c for c in range(10)}
    md = markdown([row("l", "localised", [7], {**base, 7: 20.0}, [7], True),
                   row("c", "clean", [], base, [], False), row("s", "source-specific", [1], base, [], False)],
                  "cmd", DetectConfig(), "mask")
    assert "# The mask probe on trained models" in md
    assert "| l | localised -> 7 | 97.0 | 98.0 | 20.00 | 60.00 | 7 (3.00) | 7 | right | yes (90% / 98%) | 30 |" in md
    assert "- learned non-all-to-all backdoors named right: 1 of 2" in md and "- clean models flagged: 0 of 1" in md
    assert "- named right, per family: localised 1 of 1, source-specific 0 of 1" in md
    assert "- on the 2 models measured not robust: 0 of 1 learned backdoors right, 0 of 1 clean models flagged" in md
    done = tmp_path / "m.json"  # --render writes the table again from the JSON rows, running nothing
    done.write_text(json.dumps({"command": "cmd", "config": DetectConfig().to_dict(),
                                "rows": [row("c", "clean", [], base, [], False)]}))
    main(["--render", "--out", str(done)])
    assert "| c | clean | - | 98.0 | - | 60.00 |" in (tmp_path / "m.md").read_text()
    two = row("t", "two", [2, 7], {**base, 2: 10.0, 7: 11.0}, [], True)  # scored before the pair gap: missed
    done.write_text(json.dumps({"command": "cmd", "config": DetectConfig().to_dict(), "rows": [{**two, "ceiling": 784.0}]}))
    main(["--render", "--rescore", "--out", str(done)])
    back = json.loads(done.read_text())
    assert back["rows"][0]["flagged"] == [2, 7] and back["rows"][0]["judged"] == "right"
    assert back["rescored"] == f"python bench/warp_probe.py --render --rescore --out {done}"
    kept = {**row("k", "clean", [], base, [], True), "ceiling": 784.0, "inconclusive": "class 1 takes 100% ..."}
    done.write_text(json.dumps({"command": "cmd", "config": DetectConfig().to_dict(), "rows": [kept]}))
    main(["--render", "--rescore", "--out", str(done)])  # a collapsed model: its norms do not say so, it stays
    assert json.loads(done.read_text())["rows"][0]["inconclusive"] == "class 1 takes 100% ..."
    assert "(run); rescored by `" in (tmp_path / "m.md").read_text()


def test_the_pair_mask_bench_judges_pairs_against_each_family_and_summarises(tmp_path):
    from pair_mask import judge, main, markdown

    ss = [{"kind": "source-specific", "trigger": "localised", "target": 7, "sources": [3]}]
    assert judge("source-specific", ss, [(3, 7)], 10) == "right"
    assert judge("source-specific", ss, [(3, 7), (1, 4)], 10) == "right, also 1->4"
    assert judge("source-specific", ss, [(5, 7)], 10) == "missed"
    assert judge("clean", [], [], 10) == "clean, right" and judge("clean", [], [(1, 4)], 10) == "false positive"
    assert judge("all-to-all", [], [(s, s + 1) for s in range(5)], 10) == "right (5 of 10 pairs)"
    assert judge("all-to-all", [], [(0, 1), (1, 2), (3, 9)], 10) == "missed (2 of 10 pairs)"
    one = [{"kind": "all-to-one", "trigger": "localised", "target": 7, "sources": None}]
    assert judge("localised", one, [(1, 7)], 10) == "no false target"
    assert judge("warp", one, [(9, 4), (1, 7)], 10) == "false target 9->4"

    def row(model, family, truths, true_pairs, top, flagged):
        return {"model": model, "family": family, "truths": truths, "learned": True, "clean_acc": 0.99,
                "asr": [0.99] if truths else [], "true_pairs": true_pairs, "top": top, "flagged": flagged,
                "judged": judge(family, truths, [tuple(p) for p in flagged], 10), "seconds": 40.0}

    md = markdown([row("s", "source-specific", ss, [[3, 7, 3.5, 6.0]], [[3, 7, 3.5, 6.0], [1, 4, 1.2, 20.0]],
                       [[3, 7]]),
                   row("c", "clean", [], [], [[9, 4, 1.7, 19.0]], [])], "cmd", DetectConfig())
    assert "| s | source-specific 3 -> 7 | 99.0 | 99.0 | 3->7 (3.50, 6.0) | 3->7 (3.50, 6.0), 1->4 (1.20, 20.0) | " \
           "3->7 | right | 40 |" in md
    assert "- learned source-specific backdoors named with their source: 1 of 1" in md
    assert "- clean models with a flagged pair: 0 of 1" in md
    assert "- margin: smallest true source-specific pair gap 3.50; largest pair gap on a clean model 1.70" in md
    with pytest.raises(SystemExit, match="no training report beside"):
        main([str(tmp_path / "m.keras"), "--out", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit, match="needs the JSON written by an earlier run"):
        main(["--render", "--out", str(tmp_path / "none.json")])


def test_unlearn_rounds_counts_the_target_per_setting_against_each_models_b():
    from unlearn_rounds import markdown

    def row(seed, setting, acc, asr):
        return {"seed": seed, "setting": setting, "clean_acc": acc, "asr": asr, "seconds": 10.0}

    result = {"command": "python bench/unlearn_rounds.py w --clean-images 600", "settings": [(1, "last"), (2, "last")],
              "models": [{"model": "out/a.keras", "clean_images": 600, "B": [0.99, 0.999],
                          "rows": [row(0, "1 round", 0.985, 0.05), row(0, "2 rounds", 0.982, 0.015),
                                   row(1, "1 round", 0.985, 0.019), row(1, "2 rounds", 0.975, 0.01)]}]}
    text = markdown(result)
    # 2 rounds, seed 1: ASR 1% but 1.5 points of clean accuracy lost, so the target is not met there.
    assert "| a.keras | 600 | 99.00 / 99.90 | 98.50 / 5.00; 98.50 / 1.90 (target met 1 of 2) | " \
           "98.20 / 1.50; 97.50 / 1.00 (target met 1 of 2) |" in text
    assert "- 1 round: target met on 1 of 2 runs; true ASR 1.90-5.00%, clean accuracy lost 0.50-0.50 points" in text
    assert "- 2 rounds: target met on 1 of 2 runs; true ASR 1.00-1.50%, clean accuracy lost 0.80-1.50 points" in text


def test_the_pair_mask_candidates_bench_reads_pairs_and_refuses_bad_ones_before_work(tmp_path, capsys):
    import pytest

    from aegis_tf.core.errors import AegisError
    from pair_mask_candidates import main, parse_pairs

    assert parse_pairs("3,5") == [(3, 5)] and parse_pairs("3,5;1,7") == [(3, 5), (1, 7)]
    for bad in ("3", "3,3", "a,b", "", "-1,2", "1,2,3"):
        with pytest.raises(AegisError, match="--pairs must be SOURCE,TARGET"):
            parse_pairs(bad)
    from aegis_tf.core.embedded import PATHS

    out = tmp_path / "pm.json"
    assert main(["--model", PATHS["robust_bd_net"], "--data", PATHS["train"], "--pairs", "3,12",
                 "--out", str(out)]) == 2
    assert "the model does not have (it has 10)" in capsys.readouterr().err and not out.exists()
    assert main(["--model", PATHS["robust_bd_net"], "--data", PATHS["train"], "--pairs", "3,5", "--budget", "0",
                 "--out", str(out)]) == 2
    assert "--budget must be a number of seconds > 0" in capsys.readouterr().err and not out.exists()


def _one_model_scan(tmp_path, detect):
    """A scan-zoo folder of one finished model ``m`` with its ``detect.json``."""
    import json

    scan = tmp_path / "scan"
    (scan / "m").mkdir(parents=True)
    (scan / "summary.json").write_text(json.dumps({"rows": [{"name": "m", "status": "done"}]}))
    (scan / "m" / "result.json").write_text("{}")
    (scan / "m" / "detect.json").write_text(json.dumps(detect))
    return scan


def test_mask_restarts_replays_the_scans_fit_and_refuses_another_seed_leaving_nothing(tmp_path, capsys):
    import json

    import numpy as np

    from aegis_tf.core.data import load_split
    from aegis_tf.core.embedded import PATHS
    from aegis_tf.core.models import load_model
    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.mask_probe import MaskProbeDetector
    from mask_restarts import main

    config = DetectConfig(mask_fit=60, mask_epochs=1, wi_probes=10)
    x, y = load_split(PATHS["train"], split="train")
    stored = MaskProbeDetector.from_config(config.replace(mask_restarts=1), random_state=3).fit(
        load_model(PATHS["bd_net"]), x, y, list(range(10)))
    report = stored.report()
    detect = {"model_file": PATHS["bd_net"], "weights_file": None, "data": PATHS["train"], "scale": "raw",
              "aegis": {"config": config.to_dict(), "mask_probe": report},
              "verdict": {"evidence": {"mask_probe": {"old": True}}}}
    scan = _one_model_scan(tmp_path, detect)
    out = tmp_path / "out"
    assert main([str(scan), "--seed", "4", "--out", str(out)]) == 2  # not the scan's seed: start 0 differs
    assert "was --seed the scan's?" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    assert main([str(scan), "--seed", "3", "--restarts", "2", "--out", str(out)]) == 0
    again = json.loads((out / "m" / "detect.json").read_text())
    new = again["aegis"]["mask_probe"]
    assert again["verdict"]["evidence"]["mask_probe"] == new["evidence"] and again["rescored"]
    for c in range(10):
        starts = new["classes"][str(c)]["start_mask_l1"]
        assert len(starts) == 2 and np.isclose(starts[0], report["classes"][str(c)]["mask_l1"], rtol=1e-4)
    log = json.loads((out / "mask_restarts.json").read_text())
    assert log["restarts"] == 2 and log["models"]["m"]["first_start"] <= 0.01
    assert main([str(scan), "--seed", "3", "--out", str(out)]) == 2  # an existing folder is not overwritten
    assert "exists" in capsys.readouterr().err
    assert main([str(tmp_path / "none"), "--seed", "3", "--out", str(tmp_path / "o2")]) == 2
    assert "summary.json not found" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    (scan / "m" / "detect.json").unlink()  # a damaged scan folder: one line, nothing half-written
    assert main([str(scan), "--seed", "3", "--out", str(tmp_path / "o3") + "/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FileNotFoundError" in err and "Traceback" not in err
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o3.partial").exists()


def test_pair_candidates_replays_the_pair_mask_on_the_current_rules_candidates_and_verifies_the_rest(
        tmp_path, capsys):
    import json

    from aegis_tf.core.data import load_split
    from aegis_tf.core.embedded import PATHS
    from aegis_tf.core.models import load_model
    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.pair_probe import PairMaskDetector
    from pair_candidates import main

    config = DetectConfig(pair_mask="candidates", pair_mask_epochs=1, pair_mask_restarts=1, wi_probes=10)
    x, y = load_split(PATHS["train"], split="train")
    stored = PairMaskDetector.from_config(config, random_state=3).fit(load_model(PATHS["bd_net"]), x, y, range(10),
                                                                      examine=[(3, 7)])
    report = stored.report()
    report["evidence"] = stored.evidence(stored.describe())

    def detect(shares, with_pair_mask=True):
        classes = {str(t): {"sources": {str(s): shares.get((s, t), 0.0) for s in range(10) if s != t}}
                   for t in range(10)}
        aegis = {"config": config.to_dict(), "classes": {str(c): {} for c in range(10)},
                 "pair_transfer": {"classes": classes, "evidence": {"pairs": [[2, 5]], "fragile_sources": [1]}}}
        evidence = {"patch_transfer": {"old": True}}
        if with_pair_mask:
            aegis["pair_mask"], evidence["pair_mask"] = report, report["evidence"]
        return {"model_file": PATHS["bd_net"], "weights_file": None, "data": PATHS["train"], "scale": "raw",
                "aegis": aegis, "verdict": {"evidence": evidence}}

    scan = tmp_path / "scan"
    # "same": the scan examined 3 -> 7 and the rule finds it alone (2 -> 5 flagged, source 1 fragile);
    # "more": 6 -> 0 transferred once, a candidate now (it was not under 0.1 and two translations)
    models = {"same": detect({(3, 7): 0.15, (2, 5): 0.5, (1, 4): 0.1}),
              "more": detect({(3, 7): 0.15, (6, 0): 0.05})}
    for name, d in models.items():
        (scan / name).mkdir(parents=True)
        (scan / name / "result.json").write_text("{}")
        (scan / name / "detect.json").write_text(json.dumps(d))
    (scan / "summary.json").write_text(json.dumps({"rows": [{"name": n, "status": "done"} for n in models]}))
    out = tmp_path / "out"
    assert main([str(scan), "--seed", "4", "--verify", "--out", str(out)]) == 2  # not the scan's seed
    assert "was --seed the scan's?" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    assert main([str(scan), "--seed", "3", "--verify", "--out", str(out)]) == 0
    log = json.loads((out / "pair_candidates.json").read_text())["models"]
    assert log["same"]["after"] == [[3, 7]] and log["same"]["stored_norms_within"] <= 0.01
    assert log["more"]["before"] == [[3, 7]] and log["more"]["after"] == [[3, 7], [6, 0]]
    same = json.loads((out / "same" / "detect.json").read_text())
    assert same["aegis"]["pair_mask"] == report and "rescored" not in same  # verified, kept as stored
    more = json.loads((out / "more" / "detect.json").read_text())
    new = more["aegis"]["pair_mask"]
    assert new["examined_pairs"] == [[3, 7], [6, 0]] and more["verdict"]["evidence"]["pair_mask"] == new["evidence"]
    assert "at least 1 translation;" in new["evidence"]["description"] and more["rescored"]["pair_mask"]
    assert more["verdict"]["evidence"]["patch_transfer"] == {"old": True}  # every other signal as stored
    # a scan from before the probe reads as if it had run it; one that ran it on every pair is refused
    (scan / "more" / "detect.json").write_text(json.dumps(detect({(6, 0): 0.05}, with_pair_mask=False)))
    assert main([str(scan), "--seed", "3", "--out", str(tmp_path / "o2")]) == 0
    added = json.loads((tmp_path / "o2" / "more" / "detect.json").read_text())
    assert added["aegis"]["pair_mask"]["examined_pairs"] == [[6, 0]] and "pair_mask" in added["verdict"]["evidence"]
    skipped = detect({(3, 7): 0.15})
    skipped["aegis"]["pair_mask"] = {**report, "skipped": "over the budget", "pairs": {}}
    (scan / "more" / "detect.json").write_text(json.dumps(skipped))
    assert main([str(scan), "--seed", "3", "--verify", "--out", str(tmp_path / "o4")]) == 2
    assert "more: the scan's pair mask probe was not run (over the budget)" in capsys.readouterr().err
    assert not (tmp_path / "o4").exists()
    every = detect({(6, 0): 0.05})
    every["aegis"]["config"]["pair_mask"] = True
    (scan / "more" / "detect.json").write_text(json.dumps(every))
    assert main([str(scan), "--seed", "3", "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more: the scan ran the pair mask probe as True" in err
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o3.partial").exists()


def test_pair_gaps_lists_flagged_shares_and_examined_gaps_highest_first(tmp_path, capsys):
    from pair_gaps import main

    scan = tmp_path / "scan"
    (scan / "m").mkdir(parents=True)
    (scan / "summary.json").write_text(json.dumps({"rows": [{"name": "m", "status": "done"},
                                                            {"name": "x", "status": "error"}]}))
    (scan / "m" / "detect.json").write_text(json.dumps({"aegis": {
        "pair_transfer": {"evidence": {"pairs": [[1, 4]], "retested": [
            {"pair": [7, 8], "share_before": 0.29, "translations_before": 21, "share": 0.18, "translations": 84,
             "flagged": False}]}, "classes": {"4": {"sources": {"1": 0.29}}}},
        "pair_mask": {"pairs": {"3->7": {"norm": 4.0, "gap": 6.2}, "3->5": {"norm": 20.0},
                                "7->8": {"norm": 14.0, "gap": 1.74}}}}}))
    assert main([str(scan)]) == 0
    assert capsys.readouterr().out.splitlines() == ["scan m pair_mask 3->7 gap 6.20 norm 4.0",
                                                    "scan m pair_mask 7->8 gap 1.74 norm 14.0",
                                                    "scan m pair_transfer 1->4 share 0.29",
                                                    "scan m pair_retest 7->8 share 0.18 from 0.29 on 84 "
                                                    "translations (dropped)"]
    assert main([str(scan), "--min-gap", "2"]) == 0 and len(capsys.readouterr().out.splitlines()) == 1
    assert main([str(tmp_path / "none")]) == 2 and "summary.json not found" in capsys.readouterr().err


def test_pair_retest_replays_the_second_look_as_a_live_fit_makes_it(tmp_path, capsys):
    import json

    from aegis_tf.core.data import load_split
    from aegis_tf.core.embedded import PATHS
    from aegis_tf.core.models import load_model
    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.patch_transfer import PairTransferDetector
    from aegis_tf.detect.translation import translate
    from pair_retest import main

    config = DetectConfig(n_seeds=40, steps=30, pair_mask=False)
    model, (x, y) = load_model(PATHS["robust_bd_net"]), load_split(PATHS["train"], split="train")
    tr = translate(model, x, y, list(range(10)), config, pixel_max=255.0, seed=3)

    def view(**kw):
        return PairTransferDetector(n_probes=config.pair_probes, confirm_probes=config.pair_confirm_probes,
                                    translation=config, random_state=3, **kw).fit(model, x, y, range(10),
                                                                                 translations=tr)

    stored = view(retest=0)  # a scan from before the second look
    assert stored.flagged_pairs_ and stored.retested_ == {}
    report = stored.report()
    report["evidence"] = stored.evidence("the per-pair view")
    detect = {"model_file": PATHS["robust_bd_net"], "weights_file": None, "data": PATHS["train"], "scale": "raw",
              "aegis": {"config": config.to_dict(), "classes": {str(c): {} for c in range(10)},
                        "pair_transfer": report},
              "verdict": {"evidence": {"pair_transfer": report["evidence"], "patch_transfer": {"old": True}}}}
    scan = _one_model_scan(tmp_path, detect)
    out = tmp_path / "out"
    assert main([str(scan), "--seed", "4", "--below", "1", "--out", str(out)]) == 2  # not the scan's seed
    assert "random state 3, not --seed 4" in capsys.readouterr().err and not out.exists()
    assert main([str(scan), "--seed", "3", "--below", "1", "--out", str(out)]) == 0  # every flag re-tested
    live = view(retest_below=1.0)  # what a scan with the second look gives on the same translations
    assert live.retested_ and set(live.retested_) == {p for p in stored.flagged_pairs_ if stored.pairs_[p] < 1}
    log = json.loads((out / "pair_retest.json").read_text())
    assert log["models"]["m"]["retested"] == {f"{s}->{t}": v for (s, t), v in live.retested_.items()}
    again = json.loads((out / "m" / "detect.json").read_text())
    ev = again["verdict"]["evidence"]["pair_transfer"]
    assert ev["pairs"] == [list(p) for p in live.flagged_pairs_] and len(ev["retested"]) == len(live.retested_)
    assert again["aegis"]["pair_transfer"]["classes"] == json.loads(json.dumps(live.report()["classes"]))
    assert again["verdict"]["evidence"]["patch_transfer"] == {"old": True} and again["rescored"]["pair_transfer"]
    bad = json.loads(json.dumps(detect))  # a share that is no count over the pair's translations
    bad["aegis"]["pair_transfer"]["classes"]["7"]["sources"]["3"] = 0.123
    (scan / "m" / "detect.json").write_text(json.dumps(bad))
    assert main([str(scan), "--seed", "3", "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pair 3->7: share 0.123 is no count" in err and not (tmp_path / "o2").exists()


def test_repair_table_passes_the_unlearning_settings_to_each_repair(tmp_path, monkeypatch):
    # --unlearn-rounds and --unlearn-reinvert reach the repair jobs of a --redo (as repair's own flags),
    # and the command joins the table's list; the defaults are repair's.
    import repair_table

    seen = []

    def fake_repair_job(**kwargs):
        seen.append(kwargs)
        raise repair_table.AegisError("not run here")

    monkeypatch.setattr(repair_table, "repair_job", fake_repair_job)
    out = tmp_path / "table.json"
    entry = {"model": "m.keras", "valid": "v.h5", "test": "t.h5", "rows": [],
             "detect": {"line": "BACKDOORED", "triggers": ["trigger_7_mask_probe.json"], "seconds": 1.0}}
    out.write_text(json.dumps({"machine": "x", "commands": ["python bench/repair_table.py m.keras"],
                               "models": [entry]}))
    args = ["m.keras", "--redo", "unlearn", "--out", str(out), "--work", str(tmp_path)]
    assert repair_table.main(args + ["--unlearn-rounds", "1", "--unlearn-reinvert", "3"]) == 0
    assert seen[-1]["unlearn_rounds"] == 1 and seen[-1]["unlearn_reinvert"] == 3 and seen[-1]["strategy"] == "unlearn"
    table = json.loads(out.read_text())
    assert table["commands"][-1].endswith("--unlearn-rounds 1 --unlearn-reinvert 3")
    (row,) = table["models"][0]["rows"]
    assert row["method"] == "unlearn" and row["error"] == "not run here"
    repair_table.main(args)
    n_calls = len(seen)
    for bad, message in ((["--unlearn-reinvert", "-1"], "--unlearn-reinvert must be 0"),
                         (["--unlearn-rounds", "0"], "--unlearn-rounds must be a whole number")):
        with pytest.raises(SystemExit, match=message):  # one line, before any scan or repair
            repair_table.main(args + bad)
    assert len(seen) == n_calls
    from repair.config import RepairConfig

    assert seen[-1]["unlearn_rounds"] == RepairConfig().unlearn_rounds == 2 and seen[-1]["unlearn_reinvert"] == 0


# bench/repair_summary.py: one line per model from repair tables at one or two clean budgets.

def _repair_table(path, model, budget, unlearn, b=(0.83, 0.95), clp=(0.70, 0.01)):
    rows = [{"method": "B (no repair)", "clean_acc": b[0], "asr": b[1], "g_clean_acc": b[0], "g_asr": b[1]},
            {"method": "lab pruning -4% (80 ch)", "clean_acc": 0.80, "asr": 0.5, "g_clean_acc": 0.78, "g_asr": 0.4},
            {"method": "data-free (CLP, u = 3, 9 of 1200 ch)", "clean_acc": clp[0], "asr": clp[1],
             "g_clean_acc": clp[0], "g_asr": clp[1]},
            {"method": "trigger-prune", "error": "detect recovered no trigger"},
            {"method": "unlearning (2 rounds, epoch average, average kept)", "clean_acc": unlearn[0],
             "asr": unlearn[1], "g_clean_acc": unlearn[0] - 0.02, "g_asr": unlearn[1]}]
    path.write_text(json.dumps({"clean_images": budget, "models": [{"model": model, "rows": rows}]}))
    return str(path)


def test_repair_summary_joins_two_budgets_and_names_the_repairs_that_meet_the_target(tmp_path, capsys):
    import repair_summary

    a1 = _repair_table(tmp_path / "a1.json", "out/a.keras", 500, (0.815, 0.021))  # 0.02 over the ASR bar
    a5 = _repair_table(tmp_path / "a5.json", "out/a.keras", 2500, (0.825, 0.019))
    b1 = _repair_table(tmp_path / "b1.json", "out/b.keras", 500, (0.81, 0.01), clp=(0.825, 0.015))  # 1.5 pts lost
    out = tmp_path / "s.md"
    repair_summary.main([a5, a1, b1, "--title", "t", "--out", str(out)])
    rows = {r["model"]: r for r in json.load(open(tmp_path / "s.json"))["rows"]}
    assert rows["out/a.keras"]["budgets"] == [500, 2500] and rows["out/a.keras"]["met"] == ["unlearning (2500)"]
    assert rows["out/a.keras"]["columns"]["lab pruning -4%, GoodNet"] == [0.78, 0.4]  # GoodNet's numbers
    assert rows["out/a.keras"]["columns"]["trigger-aware pruning -4%, B'"] is None  # no trigger: no numbers
    assert rows["out/b.keras"]["met"] == ["CLP (data-free) (500)"]  # unlearning lost 2 points
    text = out.read_text()
    assert "| a.keras | 83.00 / 95.00 | 78.00 / 40.00 | - | - | 70.00 / 1.00 | 81.50 / 2.10 | 82.50 / 1.90 | " \
           "unlearning (2500) |" in text
    assert "| b.keras |" in text and "| 81.00 / 1.00 | - | CLP (data-free) (500) |" in text
    assert "Models where some repair meets the target: 2 of 2." in text and "| WaNet | 91.25/89.73 |" in text
    both = json.load(open(a1))  # one table holding two models is named once on the "Tables:" line
    both["models"] += json.load(open(b1))["models"]
    (tmp_path / "ab.json").write_text(json.dumps(both))
    repair_summary.main([str(tmp_path / "ab.json"), "--out", str(tmp_path / "ab.md")])
    tables = [l for l in (tmp_path / "ab.md").read_text().splitlines() if l.startswith("Tables: ")]
    assert tables == [f"Tables: `{os.path.relpath(tmp_path / 'ab.json', repair_summary.ROOT)}`"]
    with pytest.raises(SystemExit, match="in two tables at 500 clean images"):
        repair_summary.main([a1, _repair_table(tmp_path / "a1b.json", "out/a.keras", 500, (0.8, 0.0)),
                             "--out", str(tmp_path / "t.md")])
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(SystemExit, match="not a bench/repair_table.py table"):
        repair_summary.main([str(tmp_path / "bad.json"), "--out", str(tmp_path / "u.md")])
    assert not (tmp_path / "t.md").exists() and not (tmp_path / "u.md").exists()


def test_asr_floor_measures_the_true_asr_and_the_asr_without_trigger_of_each_model(tmp_path, capsys):
    import asr_floor
    from conftest import constant_model

    from aegis_tf.core.data import save_h5

    y = np.array([0, 1, 2, 2, 1, 0, 2, 1])
    save_h5(str(tmp_path / "test.h5"), np.full((8, 8, 8, 1), 100.0, "float32"), y)
    to_target, to_zero = str(tmp_path / "b.keras"), str(tmp_path / "b_prime.keras")
    constant_model(2).save(to_target)  # sends every image, triggered or not, to the target 2
    constant_model(0).save(to_zero)
    spec = {"trigger": "localised", "target_label": 2, "trigger_size": 2, "mapping": "all-to-one"}
    (tmp_path / "b.keras.json").write_text(json.dumps({"trigger_config": spec, "poison_rate": 0.1}))
    out = tmp_path / "floor.json"
    asr_floor.main([to_target, to_zero, "--trigger-of", to_target, "--test", str(tmp_path / "test.h5"),
                    "--out", str(out)])
    rows = {r["model"]: r for r in json.load(open(out))["rows"]}
    assert rows[to_target]["asr"] == 1.0 and rows[to_target]["untriggered_asr"] == 1.0
    assert rows[to_target]["clean_acc"] == pytest.approx(3 / 8) and rows[to_target]["backdoor"] == "localised, all -> 2"
    assert rows[to_zero]["asr"] == 0.0 and rows[to_zero]["untriggered_asr"] == 0.0
    assert "| 37.50 | 100.00 | 100.00 |" in (tmp_path / "floor.md").read_text()
    import keras  # a model that answers 2 only for a bright pixel: the trigger moves it, the plain images do not

    inp = keras.Input((8, 8, 1))
    dense = keras.layers.Dense(3)
    keras.Model(inp, dense(keras.layers.GlobalMaxPooling2D()(inp))).save(str(tmp_path / "reacts.keras"))
    reacts = keras.saving.load_model(str(tmp_path / "reacts.keras"))
    reacts.layers[-1].set_weights([np.array([[-1.0, 0.0, 1.0]], "float32"), np.array([200.0, 0.0, -200.0], "float32")])
    reacts.save(str(tmp_path / "reacts.keras"))
    asr_floor.main([str(tmp_path / "reacts.keras"), "--trigger-of", to_target, "--test", str(tmp_path / "test.h5"),
                    "--out", str(tmp_path / "new" / "r.json")])  # a folder that does not exist yet is made
    row = json.load(open(tmp_path / "new" / "r.json"))["rows"][0]
    assert row["asr"] == 1.0 and row["untriggered_asr"] == 0.0
    a2a = {**spec, "mapping": "all-to-all"}  # y -> y + 1 (mod 3): only the class-1 images are sent to 2
    (tmp_path / "b.keras.json").write_text(json.dumps({"trigger_config": a2a, "poison_rate": 0.1}))
    asr_floor.main([to_target, "--trigger-of", to_target, "--test", str(tmp_path / "test.h5"), "--out", str(out)])
    row = json.load(open(out))["rows"][0]
    assert row["asr"] == row["untriggered_asr"] == pytest.approx(3 / 8) and row["backdoor"].endswith("(y -> y+1)")
    with pytest.raises(SystemExit, match="no trigger file"):
        asr_floor.main([to_zero, "--trigger-of", to_zero, "--test", str(tmp_path / "test.h5"),
                        "--out", str(tmp_path / "none.json")])
    assert not (tmp_path / "none.json").exists() and not (tmp_path / "none.md").exists()
    (tmp_path / "b.keras.json").write_text(json.dumps({"trigger_config": spec, "poison_rate": 0.1}))  # all -> 2
    save_h5(str(tmp_path / "only2.h5"), np.full((2, 8, 8, 1), 100.0, "float32"), np.array([2, 2]))
    with pytest.raises(SystemExit, match="holds no image the backdoor"):
        asr_floor.main([to_target, "--trigger-of", to_target, "--test", str(tmp_path / "only2.h5"),
                        "--out", str(tmp_path / "none.json")])
    assert not (tmp_path / "none.json").exists()
