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
    import json

    from aegis_tf.detect.ranking import learned_asrs

    # the committed report of the CIFAR-10 all-to-all seed 2: 83.07% clean, ASR 77.74%, 90.89% of the images
    # it classifies right (measured at the top level of its test results, not in its backdoor's row)
    path = os.path.join(ROOT, "results", "attack", "cifar_training", "cpu_resnet18w16_std_all-to-all_s2.json")
    report = json.load(open(path))
    assert "asr_on_correct" not in report["test"]["backdoors"][0]
    assert learned_asrs(report["test"], ["all-to-all"]) == [report["test"]["asr_on_correct"]]
    assert family_table.truth(report)[0::2] == ("all-to-all", True)
    a2a = {"trigger": "localised", "target_label": 7, "mapping": "all-to-all"}
    older = _report([a2a], [0.7774])  # no asr_on_correct: the plain ASR
    assert family_table.truth(older)[2] is False
    older["test"]["backdoors"][0]["asr_on_correct"] = 0.85
    assert family_table.truth(older)[2] is False and learned_asrs(older["test"], ["all-to-all"]) == [0.85]
    # every other backdoor keeps its plain ASR, even where the report carries the other share; the second
    # backdoor of two does not take the first one's top-level share
    test = {"asr": 0.8, "asr_on_correct": 0.95, "backdoors": [{"asr": 0.8}, {"asr": 0.7}]}
    assert learned_asrs(test, ["all-to-one", "all-to-all"]) == [0.8, 0.7]
    assert learned_asrs({"asr": 0.5}, []) == [0.5] and learned_asrs({}, ["all-to-one"]) == []
    assert family_table.truth({**older, "test": {}})[2] is False  # no ASR at all: not learned


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
    # pairs named one target at a time (not read as all-to-all) count too: half of them is right, one is not
    by_target = [{"target": c + 1, "sources": [c]} for c in range(0, 10, 2)]
    assert family_table.true_pairs_found(by_target, 10) == 5
    assert family_table.judge({"backdoored": True, "target_classes": [1, 3, 5, 7, 9], "backdoors": by_target}, a2a, 10)
    one = [{"target": 7, "sources": [6]}, {"target": 9, "sources": "all"}]  # the CIFAR-10 seed 2's verdict
    assert family_table.true_pairs_found(one, 10) == 1
    assert not family_table.judge({"backdoored": True, "target_classes": [7, 9], "backdoors": one}, a2a, 10)
    assert family_table.judge({"backdoored": False, "target_classes": []}, [], 10)
    assert not family_table.judge({"backdoored": True, "target_classes": [1]}, [], 10)
