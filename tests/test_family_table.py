"""bench/family_table.py: the truth read from a training report and the judgement of a verdict."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench")) if os.path.join(ROOT, "bench") not in sys.path else None
spec = importlib.util.spec_from_file_location("family_table", os.path.join(ROOT, "bench", "family_table.py"))
family_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(family_table)


def _report(specs, asr, rate=0.05):
    return {"poison_rate": rate, "trigger_config": specs[0], "trigger_configs": specs if len(specs) > 1 else None,
            "test": {"asr": asr[0], "backdoors": [{"asr": a} for a in asr]}}


def test_truth_reads_each_family():
    ss = {"trigger": "localised", "target_label": 7, "source_classes": [3], "mapping": "all-to-one"}
    assert family_table.truth(_report([ss], [0.99])) == (
        "source-specific", [{"kind": "source-specific", "trigger": "localised", "target": 7, "sources": [3]}], True)
    a2a = {"trigger": "localised", "target_label": 7, "mapping": "all-to-all"}
    assert family_table.truth(_report([a2a], [0.5]))[0::2] == ("all-to-all", False)
    warp = {"trigger": "warp", "target_label": 7}
    two = family_table.truth(_report([warp, {"trigger": "distributed", "target_label": 2}], [0.95, 0.97]))
    assert two[0] == "two" and [b["target"] for b in two[1]] == [7, 2] and two[2]
    assert family_table.truth(_report([warp], [0.1], rate=0)) == ("clean", [], True)


def test_an_all_to_all_backdoor_is_learned_by_its_asr_on_the_images_the_model_classifies_right():
    from aegis_tf.detect.ranking import learned_asr

    a2a = {"trigger": "localised", "target_label": 7, "mapping": "all-to-all"}
    report = _report([a2a], [0.7774])  # the CIFAR-10 all-to-all seed 2: 83.07% clean, 90.89% of those flip
    row = {"backdoor": "localised, all-to-all (y -> y+1)", "asr": 0.7774, "asr_on_correct": 0.9089}
    assert family_table.truth(report)[2] is False  # an older report: the plain ASR only
    report["test"]["backdoors"] = [row]
    assert family_table.truth(report)[2] is True and learned_asr(row) == 0.9089
    assert learned_asr({**row, "asr_on_correct": 0.85}) == 0.85 and family_table.truth(
        {**report, "test": {"backdoors": [{**row, "asr_on_correct": 0.85}]}})[2] is False
    # any other backdoor keeps its plain ASR, even where the report carries the other share
    assert learned_asr({"backdoor": "localised, all -> 7", "asr": 0.8, "asr_on_correct": 0.95}) == 0.8
    assert learned_asr({"asr": None}) is None


def test_judge_asks_for_the_right_target_source_and_mapping():
    ss = [{"kind": "source-specific", "target": 7, "sources": [3]}]
    v = {"backdoored": True, "target_classes": [7], "backdoors": [{"target": 7, "sources": [3]}]}
    assert family_table.judge(v, ss, 10)
    assert not family_table.judge({**v, "backdoors": [{"target": 7, "sources": [4]}]}, ss, 10)
    assert family_table.judge({**v, "backdoors": [{"target": 7, "sources": "all"}]}, ss, 10)
    assert not family_table.judge({**v, "target_classes": [6]}, ss, 10)
    a2a = [{"kind": "all-to-all", "target": 7, "sources": None}]
    half = {"backdoored": True, "target_classes": [1, 3, 5, 7, 9],
            "backdoors": [{"kind": "all-to-all", "mapping": [[c, c + 1] for c in range(0, 10, 2)]}]}
    assert family_table.judge(half, a2a, 10)
    assert not family_table.judge({"backdoored": True, "target_classes": [7], "backdoors": [{"target": 7}]}, a2a, 10)
    assert family_table.judge({"backdoored": False, "target_classes": []}, [], 10)
    assert not family_table.judge({"backdoored": True, "target_classes": [1]}, [], 10)
