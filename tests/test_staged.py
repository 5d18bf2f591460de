import json
import os

import numpy as np
import pytest

from aegis_tf.detect.config import DetectConfig
from aegis_tf.core.data import load_h5
from aegis_tf.core.embedded import PATHS
from aegis_tf.core.errors import AegisError
from aegis_tf.detect.scan import run_aegis
from aegis_tf.core.models import load_model
from aegis_tf.detect.staged import STAGED_ABOVE, promote, promote_all, scan_mode
from aegis_tf.detect.state import STATE_DIR, ScanState
from aegis_tf.core.utils import no_partial_report
from aegis_tf.detect.whole_image import WholeImageDetector

FAST = DetectConfig(n_seeds=15, steps=20, wi_probes=10, scan="staged", stage1_seeds=4, stage1_steps=5, top_k=2,
                    warp_probe=False, mask_probe=False)  # the probes without translations: their own test below


def test_promote_takes_the_top_k_and_every_alarmed_class():
    scores = {0: 0.0, 1: 0.5, 2: 0.1, 3: 0.0, 4: 0.9, 5: 0.3}
    assert promote(scores, top_k=2, alarm=1.0) == [1, 4]
    assert promote(scores, top_k=2, alarm=0.3) == [1, 4, 5]  # 5 reaches the alarm level
    assert promote(scores, top_k=0, alarm=0.1) == [1, 2, 4, 5]
    assert promote(scores, top_k=10, alarm=1.0) == [1, 2, 4, 5]  # k above the class count: every class with a score


def test_promote_breaks_ties_by_the_lower_class_and_is_pure():
    scores = {9: 0.2, 3: 0.2, 5: 0.2, 1: 0.2}
    before = dict(scores)
    assert promote(scores, top_k=2, alarm=1.0) == [1, 3]
    assert scores == before


def test_a_zero_score_fills_no_top_k_place():
    # A clean model's patch shares are all 0: promoting classes 0..k-1 for it would be arbitrary.
    assert promote({c: 0.0 for c in range(50)}, top_k=5, alarm=0.1) == []
    assert promote({c: (0.05 if c == 30 else 0.0) for c in range(50)}, top_k=5, alarm=0.1) == [30]


def test_promote_all_is_the_union_of_both_signals():
    stage1 = {"patch_transfer": {c: (0.4 if c == 7 else 0.0) for c in range(100)},
              "whole_image": {c: (3.0 if c == 42 else 0.5 - c / 1000) for c in range(100)}}
    config = DetectConfig(top_k=2, alarm_transfer=0.1, alarm_gap=1.5)
    assert promote_all(stage1, config) == [0, 7, 42]  # 0: the second-highest gap
    assert promote_all(stage1, config.replace(top_k=3)) == [0, 1, 7, 42]
    assert promote_all({"patch_transfer": stage1["patch_transfer"]}, config) == [7]
    assert promote_all(stage1, config.replace(top_k=2, alarm_gap=4.0)) == [0, 7, 42]  # 42 by rank alone


def test_promote_all_promotes_by_the_stage1_blend_gap_too():
    stage1 = {"patch_transfer": {c: 0.0 for c in range(30)},
              "whole_image": {c: 1.0 - c / 100 for c in range(30)},
              "blend_probe": {c: (2.0 if c == 17 else 0.5) for c in range(30)}}
    config = DetectConfig(top_k=2, alarm_transfer=0.1, alarm_gap=1.5)
    assert promote_all(stage1, config) == [0, 1, 17]  # 17 by its blend gap alone (rank and alarm)
    assert promote_all(stage1, config.replace(top_k=2, alarm_gap=3.0)) == [0, 1, 17]  # by rank alone
    stage1["blend_probe"] = {c: 0.5 for c in range(30)}
    assert promote_all(stage1, config) == [0, 1]  # ties: the two lowest classes


def test_stage1_measures_a_chunk_again_when_its_saved_result_lacks_the_blend_weight(bd):
    from aegis_tf.detect.staged import screen, score_screen

    model, x, y = bd
    cfg = FAST.replace(stage1_seeds=3, stage1_steps=2)
    first = screen(model, x[:200], y[:200], [1, 4, 7], cfg, pixel_max=255.0, batch_size=16)
    assert all(0 < r["blend_alpha"] <= 1 for r in first.values())
    assert set(score_screen(first, cfg)) == {"patch_transfer", "whole_image", "blend_probe"}
    old = {c: {k: v for k, v in r.items() if k != "blend_alpha"} for c, r in first.items()}  # an older scan's state
    again = screen(model, x[:200], y[:200], [1, 4, 7], cfg, pixel_max=255.0, batch_size=16, done=old)
    assert again == first  # measured again, with the same chunk seed
    off = cfg.replace(wi_blend=False)
    kept = screen(model, x[:200], y[:200], [1, 4, 7], off, pixel_max=255.0, batch_size=16, done=old)
    assert kept == old and "blend_probe" not in score_screen(kept, off)  # without the probe, nothing is missing


def test_auto_is_staged_only_above_the_class_count():
    auto = DetectConfig()
    assert scan_mode(auto, 10) == "full" and scan_mode(auto, STAGED_ABOVE) == "full"
    assert scan_mode(auto, STAGED_ABOVE + 1) == "staged"
    assert scan_mode(auto.replace(scan="full"), 1283) == "full"
    assert scan_mode(auto.replace(scan="staged"), 10) == "staged"


@pytest.fixture(scope="module")
def bd():
    x, y = load_h5(PATHS["train"])
    return load_model(PATHS["robust_bd_net"]), x, y


def _scan(bd, out_dir, **kwargs):
    model, x, y = bd
    return run_aegis(model, x, y, classes=list(range(10)), config=FAST, pixel_max=255.0, out_dir=out_dir,
                     batch_size=16, **kwargs)


@pytest.fixture(scope="module")
def whole(bd, tmp_path_factory):
    """An uninterrupted staged scan and its report folder."""
    out_dir = tmp_path_factory.mktemp("whole")
    return _scan(bd, str(out_dir)), out_dir


def test_staged_scan_reports_both_stages_and_finds_the_planted_class(whole):
    report, out_dir = whole
    stages = report["stages"]
    assert stages["scan"] == "staged" and stages["classes"] == 10 and len(stages["stage1"]) == 10
    assert 7 in stages["promoted"] and sorted(map(int, report["classes"])) == stages["promoted"]
    assert all(v["promoted"] == (int(c) in stages["promoted"]) for c, v in stages["stage1"].items())
    assert report["suspect_classes"] == [7]
    assert set(report["seconds"]) >= {"stage1", "translate", "patch_transfer"}
    assert not os.path.exists(out_dir / STATE_DIR)  # removed once the scan is done


def _interrupt_after_first_save(bd, out_dir, monkeypatch, saver, prefix):
    """Run a staged scan that Ctrl-C stops right after ``ScanState.<saver>`` first saves a part
    whose name starts with ``prefix``."""
    saved = getattr(ScanState, saver)

    def save_then_stop(self, name, *args, **kwargs):
        saved(self, name, *args, **kwargs)
        if name.startswith(prefix):
            raise KeyboardInterrupt

    monkeypatch.setattr(ScanState, saver, save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _scan(bd, out_dir)
    monkeypatch.setattr(ScanState, saver, saved)


def test_resume_continues_an_interrupted_scan_with_the_same_numbers(bd, whole, tmp_path, monkeypatch):
    _interrupt_after_first_save(bd, str(tmp_path), monkeypatch, "save_json", "stage1")  # after stage 1's first chunk
    first = json.load(open(tmp_path / STATE_DIR / "stage1.json"))
    assert 0 < len(first) < 10
    resumed = _scan(bd, str(tmp_path), resume=True)
    report = whole[0]
    assert resumed["stages"]["resumed_classes"] == len(first)
    assert resumed["stages"]["stage1"] == report["stages"]["stage1"]
    assert resumed["stages"]["promoted"] == report["stages"]["promoted"]
    assert resumed["suspect_classes"] == report["suspect_classes"]


def test_resume_continues_stage2_from_the_classes_it_finished(bd, whole, tmp_path, monkeypatch):
    _interrupt_after_first_save(bd, str(tmp_path), monkeypatch, "save_arrays", "stage2_")  # after stage 2's first class
    assert len([n for n in os.listdir(tmp_path / STATE_DIR) if n.startswith("stage2_")]) == 1
    resumed = _scan(bd, str(tmp_path), resume=True)
    report = whole[0]
    assert resumed["stages"]["resumed_classes"] == 10 and resumed["stages"]["resumed_stage2_classes"] == 1
    for key in ("classes", "whole_image", "translation_reached", "suspect_classes"):
        assert resumed[key] == report[key]
    assert not os.path.exists(tmp_path / STATE_DIR)  # removed when the scan ends


def test_a_staged_scan_of_fewer_than_3_classes_is_a_one_line_error(bd):
    model, x, y = bd
    with pytest.raises(AegisError, match="at least 3 classes"):
        run_aegis(model, x, y, classes=[6, 7], config=FAST, pixel_max=255.0, out_dir=None)
    with pytest.raises(Exception, match="top_k"):
        FAST.replace(top_k=1)


def test_a_damaged_state_part_is_a_one_line_error(tmp_path):
    state = ScanState.open(str(tmp_path), "key", resume=False)
    (tmp_path / STATE_DIR / "stage2_7.npz").write_bytes(b"")  # an empty, truncated .npz
    (tmp_path / STATE_DIR / "stage1.json").write_text("not json")
    for read in (lambda: state.load_arrays("stage2_7"), lambda: state.load_json("stage1")):
        with pytest.raises(AegisError, match="not a scan state folder"):
            read()
    assert state.load_arrays("stage2_8") is None and state.load_json("other") is None


def test_the_state_parts_are_written_atomically_and_cleared(tmp_path):
    state = ScanState.open(str(tmp_path), "key", resume=False)
    state.save_arrays("rows_000000000", rows=np.arange(4))
    state.save_json("stage1", {"3": {"reached": 1.0}})
    assert sorted(os.listdir(tmp_path / STATE_DIR)) == ["fingerprint", "rows_000000000.npz", "stage1.json"]
    again = ScanState.open(str(tmp_path), "key", resume=True)  # the same scan reads its parts back
    assert again.load_arrays("rows_000000000")["rows"].tolist() == [0, 1, 2, 3]
    assert again.load_json("stage1") == {"3": {"reached": 1.0}}
    ScanState.open(str(tmp_path), "key", resume=False)  # a new scan starts afresh
    assert os.listdir(tmp_path / STATE_DIR) == ["fingerprint"]
    again.clear()
    assert os.listdir(tmp_path) == []
    ScanState.off().save_json("stage1", {})  # a scan with no report folder saves nothing
    assert os.listdir(tmp_path) == []


def test_resume_refuses_the_state_of_another_scan(bd, tmp_path):
    ScanState.open(str(tmp_path), "0123456789abcdef", resume=False)
    model, x, y = bd
    with pytest.raises(AegisError, match="another scan"):
        run_aegis(model, x, y, classes=list(range(10)), config=FAST.replace(stage1_seeds=5), pixel_max=255.0,
                  out_dir=str(tmp_path), batch_size=16, resume=True)
    (tmp_path / STATE_DIR / "fingerprint").unlink()
    with pytest.raises(AegisError, match="not a scan state folder"):
        _scan(bd, str(tmp_path), resume=True)


def test_stage2_flags_a_whole_image_class_only_if_stage1_did_against_every_class():
    # Stage 2 measured classes 6 and 7 in full: against 6 alone, 7 has gap 4. Its stage-1 gap,
    # against all classes, decides whether that counts (its nearest rival may not be promoted).
    both = dict(screen_threshold=1.5)
    det = WholeImageDetector(threshold=2.0).fit_norms({6: 8.0, 7: 2.0}, screen_gaps={6: 0.4, 7: 1.2}, **both)
    assert det.scores_ == {6: 0.25, 7: 4.0} and det.suspect_classes_ == []
    det = WholeImageDetector(threshold=2.0).fit_norms({6: 8.0, 7: 2.0}, screen_gaps={6: 0.4, 7: 2.5}, **both)
    assert det.suspect_classes_ == [7] and det.report()["classes"]["7"]["stage1_gap"] == 2.5
    det = WholeImageDetector(threshold=2.0).fit_norms({6: 8.0, 7: 5.0}, screen_gaps={6: 0.4, 7: 9.0}, **both)
    assert det.suspect_classes_ == []  # stage 1 alone does not flag
    with pytest.raises(AegisError, match="at least 3 classes"):
        WholeImageDetector().fit_norms({6: 8.0, 7: 2.0})  # a full scan compares 3 or more
    with pytest.raises(AegisError, match="at least 2 classes"):
        WholeImageDetector().fit_norms({7: 2.0}, screen_gaps={7: 3.0}, screen_threshold=1.5)


FULL = FAST.replace(scan="full")


def test_resume_continues_an_interrupted_full_scan_with_the_same_numbers(bd, tmp_path, monkeypatch):
    model, x, y = bd
    scan = dict(classes=[2, 5, 7], config=FULL, pixel_max=255.0, batch_size=16)  # 15 seeds: one batch a chunk
    whole = run_aegis(model, x, y, out_dir=str(tmp_path / "whole"), **scan)
    assert not os.path.exists(tmp_path / "whole" / STATE_DIR)  # removed when the scan ends
    saved, calls = ScanState.save_arrays, []

    def save_then_stop(self, name, **arrays):  # Ctrl-C after the second chunk is saved
        saved(self, name, **arrays)
        calls.append((name, len(arrays["rows"])))
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ScanState, "save_arrays", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_aegis(model, x, y, out_dir=str(tmp_path), **scan)
    assert calls == [("rows_000000000", 16), ("rows_000000016", 16)]
    calls.clear()
    monkeypatch.setattr(ScanState, "save_arrays", lambda self, name, **a: calls.append((name, len(a["rows"])))
                        or saved(self, name, **a))
    load, loaded = ScanState.load_arrays, []

    def load_and_count(self, name):
        part = load(self, name)
        loaded.append(None if part is None else name)
        return part

    monkeypatch.setattr(ScanState, "load_arrays", load_and_count)
    resumed = run_aegis(model, x, y, out_dir=str(tmp_path), resume=True, **scan)
    assert loaded == ["rows_000000000", "rows_000000016", None]
    assert calls == [("rows_000000032", 13)]  # only the last chunk was translated again
    for key in ("classes", "whole_image", "translation_reached", "suspect_classes"):
        assert resumed[key] == whole[key]
    assert not os.path.exists(tmp_path / STATE_DIR)


def test_an_interrupted_run_leaves_no_partial_report(tmp_path):
    (tmp_path / "old.png").write_text("kept: not touched by the run")
    (tmp_path / "detect.json").write_text("{}")  # an older report whose figures get overwritten
    (tmp_path / "a.png").write_text("old figure")
    with pytest.raises(KeyboardInterrupt):
        with no_partial_report(str(tmp_path), keep=(STATE_DIR,)):
            os.makedirs(tmp_path / STATE_DIR)
            (tmp_path / STATE_DIR / "stage1.json").write_text("{}")
            os.makedirs(tmp_path / "m2" / STATE_DIR)  # a kept folder's files stay too
            (tmp_path / "m2" / STATE_DIR / "rows_000000000.npz").write_text("x")
            os.makedirs(tmp_path / "model")
            (tmp_path / "model" / "b.png").write_text("new")
            os.utime(tmp_path / "a.png", ns=(1, 1))
            raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == sorted(["old.png", STATE_DIR, "model", "m2"])
    assert os.listdir(tmp_path / "model") == []
    assert os.listdir(tmp_path / "m2" / STATE_DIR) == ["rows_000000000.npz"]


def test_a_finished_run_keeps_everything(tmp_path):
    with no_partial_report(str(tmp_path)):
        (tmp_path / "detect.json").write_text("{}")
    assert os.listdir(tmp_path) == ["detect.json"]


def test_a_staged_scan_runs_the_warp_and_mask_probes_on_every_class_within_their_budget(bd):
    """The probes that need no translations are the full scan's, on every class (not only the
    promoted ones); over ``probe_budget`` each says "not run" and names nothing."""
    from aegis_tf.detect.verdict import combine, verdict_line

    model, x, y = bd
    cheap = FAST.replace(warp_probe="auto", mask_probe="auto", warp_steps=5, mask_epochs=5, mask_restarts=1)
    report = run_aegis(model, x, y, classes=list(range(10)), config=cheap, pixel_max=255.0, batch_size=16)
    promoted = report["stages"]["promoted"]
    assert len(promoted) < 10 and report["stages"]["mask_probe"] == "every class, within 300 s"
    for probe in ("mask_probe", "warp_probe"):
        assert sorted(map(int, report[probe]["classes"])) == list(range(10)), probe  # every class, not `promoted`
        assert "skipped" not in report[probe]
    assert 7 in report["mask_probe"]["suspect_classes"]
    small = cheap.replace(n_seeds=5, steps=5, mask_epochs=1)  # the scans below check bookkeeping only
    over = run_aegis(model, x, y, classes=list(range(10)), config=small.replace(probe_budget=1e-3), pixel_max=255.0,
                     batch_size=16)
    for probe in ("mask_probe", "warp_probe"):
        assert over[probe]["verdict"] == "not run" and "over the budget of 0.001 s" in over[probe]["skipped"]
        assert over[probe]["evidence"]["flagged"] == [] and over[probe]["evidence"]["skipped"]
    line = verdict_line(combine({"patch_transfer": over["evidence"], "mask_probe": over["mask_probe"]["evidence"],
                                 "warp_probe": over["warp_probe"]["evidence"]}))
    assert "mask gap not run" in line and "warp gap not run" in line
    # a class only a probe scored (not promoted to stage 2) shows "-" for the other signals
    pt = {"description": "d", "scores": {"0": 0.0, "3": 0.01}, "threshold": 0.02, "direction": "above", "flagged": []}
    mk = {"description": "d", "scores": {str(c): 5.0 if c == 5 else 1.0 for c in range(10)}, "threshold": 2.0,
          "direction": "above", "flagged": [5]}
    assert verdict_line(combine({"patch_transfer": pt, "mask_probe": mk})) == (
        "BACKDOORED: class 5 (patch share - vs 0.02; mask gap 5.00 vs 2)")
    # asked for (True), a probe has no budget
    forced = run_aegis(model, x, y, classes=list(range(10)), pixel_max=255.0, batch_size=16,
                       config=small.replace(probe_budget=1e-3, mask_probe=True, warp_probe=False))
    assert forced["stages"]["mask_probe"] == "every class" and "skipped" not in forced["mask_probe"]
    assert "warp_probe" not in forced and forced["stages"]["warp_probe"] == "off"


def test_cli_scan_flag_and_interrupt(tmp_path, monkeypatch):
    import aegis_tf.report.html as html_report
    from aegis_tf.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(html_report, "write_detect_html", interrupted)
    out = tmp_path / "o"
    rc = main(["detect", "--bad_model", PATHS["robust_bd_net"], "--scan", "staged", "--n-seeds", "10", "--steps", "5",
               "--stage1-seeds", "3", "--stage1-steps", "3", "--wi-probes", "10", "--quiet", "--out-dir", str(out),
               "--no-warp-probe", "--no-mask-probe", "--no-pair-mask"])  # the probes play no part here: off, for time
    assert rc == 130
    assert os.listdir(out) == [STATE_DIR]  # the resume state stays; figures, triggers and detect.json do not
    assert "stage1.json" in os.listdir(out / STATE_DIR)
    assert main(["detect", "--scan", "partial"]) == 2


def test_the_html_report_shows_both_stages(whole, tmp_path):
    from aegis_tf.report.html import write_detect_html

    report = whole[0]
    from aegis_tf.detect.verdict import combine

    verdict = combine({"patch_transfer": report["evidence"], "whole_image": report["whole_image"]["evidence"]})
    page = open(write_detect_html({"model": "m.keras", "aegis": report, "verdict": verdict},
                                  str(tmp_path / "r.html"))).read()
    stages = page[page.index('id="stages"'):]
    assert "Stage 1 screened 10 classes" in stages and "Stage 2 ran" in stages
    assert "and stage 1 gap &ge; 1.5" in page  # the whole-image column's second condition
    assert ", ".join(map(str, report["stages"]["promoted"])) in stages
    table = page[page.index('id="stage1"'):]
    assert table[:table.index("</table>")].count('<tr class="suspect">') == len(report["stages"]["promoted"])


def test_auto_resume_reads_back_its_own_state_and_clears_another_scans(tmp_path):
    from aegis_tf.core.errors import AegisError

    first = ScanState.open(str(tmp_path), "key-a", resume=False)
    first.save_json("stage1", {"3": 1})
    assert ScanState.open(str(tmp_path), "key-a", resume="auto").load_json("stage1") == {"3": 1}
    with pytest.raises(AegisError, match="belongs to another scan"):
        ScanState.open(str(tmp_path), "key-b", resume=True)
    other = ScanState.open(str(tmp_path), "key-b", resume="auto")  # a zoo's rescan under new settings
    assert other.load_json("stage1") is None
    assert open(tmp_path / STATE_DIR / "fingerprint").read() == "key-b"
