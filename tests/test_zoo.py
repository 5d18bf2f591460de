"""``aegis scan-zoo``: the zoo's layout, one result per model, resumable, faults, the summary's
metrics recomputed independently, and the local and Ray engines giving the same verdicts."""

import csv
import json
import os

import numpy as np
import pytest

from aegis_tf import cli
from aegis_tf.core.errors import AegisError
from aegis_tf.zoo import scan as zoo_scan
from aegis_tf.zoo.manifest import read_zoo
from aegis_tf.zoo.summary import summarize
from conftest import tiny_cnn

# Small enough that a scan of a tiny model takes about a second.
FAST = ["--n-seeds", "2", "--steps", "3", "--n-probes", "4", "--wi-probes", "4", "--robustness-images", "0",
        "--no-blend-probe", "--no-warp-probe", "--no-mask-probe", "--no-pair-mask"]


def _fast_config():
    from aegis_tf.detect.config import DetectConfig

    return DetectConfig(n_seeds=2, steps=3, n_probes=4, wi_probes=4, robustness_images=0, wi_blend=False,
                        warp_probe=False, mask_probe=False, pair_mask=False)


def _data(path, n=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n * classes, 8, 8, 1)).astype("uint8")
    y = np.repeat(np.arange(classes), n)
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return str(path)


def _zoo(root, *, models=("a", "b"), broken=(), truth=None):
    """A zoo folder of tiny random models on one .npz, with ``broken`` folders holding a damaged file."""
    root.mkdir()
    data = _data(root / "data.npz")
    for i, name in enumerate(models):
        (root / name).mkdir()
        tiny_cnn(seed=i).save(root / name / "model.keras")
        config = {"data": "../data.npz"}
        if truth and name in truth:
            config["truth"] = truth[name]
        (root / name / "config.json").write_text(json.dumps(config))
    for name in broken:
        (root / name).mkdir()
        (root / name / "model.keras").write_bytes(b"not a zip archive")
        (root / name / "config.json").write_text(json.dumps({"data": "../data.npz"}))
    return root, data


# ---------------------------------------------------------------------------------------------
# The zoo's layout
# ---------------------------------------------------------------------------------------------

def test_read_zoo_folder_resolves_paths_and_keeps_problems(tmp_path):
    root, data = _zoo(tmp_path / "zoo", truth={"a": {"poisoned": True, "target": 2, "family": "localised"}})
    (root / "no_config").mkdir()
    (root / "two_models").mkdir()
    for n in ("x.keras", "y.h5"):
        (root / "two_models" / n).write_bytes(b"")
    (root / "two_models" / "config.json").write_text('{"data": "../data.npz"}')
    (root / "bad_truth").mkdir()
    (root / "bad_truth" / "m.keras").write_bytes(b"")
    (root / "bad_truth" / "config.json").write_text('{"data": "mnist", "truth": {"poisoned": "yes"}}')
    (root / ".hidden").mkdir()
    entries = {e.name: e for e in read_zoo(root)}
    assert sorted(entries) == ["a", "b", "bad_truth", "no_config", "two_models"]
    a = entries["a"]
    assert a.model == str(root / "a" / "model.keras") and a.data == data and a.problem is None
    assert a.truth == {"poisoned": True, "target": [2], "family": "localised"}
    assert "config.json not found" in entries["no_config"].problem
    assert "2 model files" in entries["two_models"].problem
    assert "truth.poisoned must be true or false" in entries["bad_truth"].problem


def test_read_zoo_manifests_json_and_csv(tmp_path):
    data = _data(tmp_path / "d.npz")
    tiny_cnn().save(tmp_path / "m.keras")
    (tmp_path / "zoo.json").write_text(json.dumps({"models": [
        {"name": "one", "model": "m.keras", "data": "d.npz", "scale": "raw",
         "truth": {"poisoned": True, "target": [1, 2], "sources": [0]}},
        {"model": "m.keras", "data": "d.npz", "scale": "sideways"}]}))
    one, two = read_zoo(tmp_path / "zoo.json")
    assert (one.name, one.model, one.data) == ("one", str(tmp_path / "m.keras"), data)
    assert one.truth == {"poisoned": True, "target": [1, 2], "sources": [0]}
    assert two.name == "m" and "scale must be raw or unit" in two.problem
    with open(tmp_path / "zoo.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "model", "data", "poisoned", "target", "sources", "family", "asr"])
        w.writerow(["p", "m.keras", "d.npz", "true", "7", "3;8", "source-specific", "0.95"])
        w.writerow(["c", "m.keras", "d.npz", "false", "", "", "clean", ""])
    p, c = read_zoo(tmp_path / "zoo.csv")
    assert p.truth == {"poisoned": True, "target": [7], "sources": [3, 8], "family": "source-specific", "asr": 0.95}
    assert c.truth == {"poisoned": False, "family": "clean"} and c.problem is None


def test_manifest_edge_cases_bom_set_names_and_reserved_names(tmp_path, monkeypatch):
    tiny_cnn().save(tmp_path / "m.keras")
    (tmp_path / "mnist").mkdir()  # a folder named like a set must not turn the set name into a path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "z.csv").write_bytes("\ufeffname,model,data,data_dir\nx,m.keras,mnist,/data\n".encode("utf-8"))
    (x,) = read_zoo(tmp_path / "z.csv")
    assert x.problem is None and x.data == "mnist" and x.data_dir == "/data"
    (tmp_path / "bad.csv").write_bytes(b"name,model,data\n\xff\xfe,m.keras,d\n")
    with pytest.raises(AegisError, match="cannot read manifest .* UTF-8 CSV"):
        read_zoo(tmp_path / "bad.csv")
    (tmp_path / "r.json").write_text('[{"name": "report.html", "model": "m.keras", "data": "mnist"}]')
    with pytest.raises(AegisError, match="may not be named report.html"):
        read_zoo(tmp_path / "r.json")


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "absent", "zoo not found"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "lists no models"),
    (lambda p: (p / "z.txt").write_text("x") and p / "z.txt", "a .json/.csv manifest"),
    (lambda p: (p / "z.json").write_text('[{"name": "a", "model": "m", "data": "d"}, '
                                         '{"name": "a", "model": "m", "data": "d"}]') and p / "z.json",
     "names a more than once"),
    (lambda p: (p / "z.json").write_text("{not json") and p / "z.json", "cannot read manifest"),
    (lambda p: (p / "z.csv").write_text("name,data\na,d\n") and p / "z.csv", "missing: model"),
])
def test_bad_zoos_are_one_line_errors_before_any_work(tmp_path, capsys, make, message):
    zoo = make(tmp_path)
    rc = cli.main(["scan-zoo", str(zoo), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "--workers must be a positive integer"),
    (["--workers", "64"], "--workers must be at most the"),
    (["--threads", "64"], "exceeds the"),
    (["--retries", "-1"], "--retries must be 0 or a positive integer"),
    (["--address", "auto"], "--address joins a Ray cluster"),
    (["--engine", "ray", "--workers", "2"], "--workers sizes the local engine"),
    (["--n-seeds", "0"], "--n-seeds must be"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, capsys, extra, message):
    root, _ = _zoo(tmp_path / "zoo", models=("a",))
    rc = cli.main(["scan-zoo", str(root), "--out", str(tmp_path / "out"), "--quiet"] + extra)
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# The summary, recomputed independently
# ---------------------------------------------------------------------------------------------

def _result(name, score, truth, *, status="done", flagged=None, classes=()):
    flagged = score >= 1 if flagged is None else flagged
    return {"name": name, "status": status, "truth": truth, "seconds": 2.0 + score, "attempts": 1, "page": None,
            "error": None if status == "done" else "boom", "model_sha256": "x",
            "verdict": None if status != "done" else {"backdoored": flagged, "target_classes": list(classes),
                                                      "inconclusive": [], "score": score, "line": "..."}}


def test_summary_metrics_match_an_independent_computation():
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    results = [_result("p1", 3.0, {"poisoned": True, "target": [1], "family": "localised"}, classes=[1]),
               _result("p2", 1.5, {"poisoned": True, "target": [2], "family": "localised"}, classes=[4]),
               _result("p3", 0.4, {"poisoned": True, "target": [3], "family": "warp"}),
               _result("c1", 0.2, {"poisoned": False, "family": "clean"}),
               _result("c2", 1.2, {"poisoned": False, "family": "clean"}, classes=[5]),
               _result("nl", 0.1, {"poisoned": True, "target": [1], "asr": 0.5, "family": "warp"}),
               _result("err", 0.0, {"poisoned": False}, status="error"),
               _result("unknown", 0.3, None)]
    s = summarize(results)
    scores, labels = [3.0, 1.5, 0.4, 0.2, 1.2], [1, 1, 1, 0, 0]
    p = [v / (1 + v) for v in scores]
    m = s["metrics"]
    assert m["models"] == 5 and m["backdoored"] == 3 and m["clean"] == 2
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["cross_entropy"] == pytest.approx(log_loss(labels, p))
    assert m["brier"] == pytest.approx(brier_score_loss(labels, p))
    assert m["accuracy"] == pytest.approx(3 / 5)  # p1, p2, c1 right
    assert m["right_target"] == {"flagged_backdoored": 2, "right": 1}
    assert s["counts"] == {"backdoored": 3, "clean": 4, "inconclusive": 0, "error": 1}
    assert s["left_out"] == {"poisoned but not learned (ASR under 90%)": 1, "error result": 1, "no truth given": 1}
    assert s["families"]["localised"] == {"models": 2, "backdoored": 2, "flagged": 2, "right_target": 1,
                                          "mean_score": 2.25}
    assert s["roc"]["fpr"][0] == 0.0 and s["roc"]["tpr"][-1] == 1.0
    assert s["seconds_per_model"]["worst"] == pytest.approx(5.0)


# ---------------------------------------------------------------------------------------------
# Scanning: one result per model, reruns, faults
# ---------------------------------------------------------------------------------------------

class InProcess:
    """An engine that scans in this process (fast), optionally interrupted after ``stop_after`` results."""

    name = "in-process"

    def __init__(self, stop_after=None):
        self.stop_after, self.seen = stop_after, []

    def describe(self):
        return {"engine": self.name}

    def run(self, tasks, on_result):
        from aegis_tf.zoo.worker import scan_task

        for task in tasks:
            if self.stop_after is not None and len(self.seen) >= self.stop_after:
                raise KeyboardInterrupt
            self.seen.append(task["entry"]["name"])
            on_result(scan_task(task))


def test_interrupt_keeps_finished_results_and_a_rerun_finishes_only_the_rest(tmp_path, monkeypatch):
    root, _ = _zoo(tmp_path / "zoo", models=("a", "b", "c"))
    out = tmp_path / "out"
    engine = InProcess(stop_after=1)
    monkeypatch.setattr(zoo_scan, "make_engine", lambda *a, **k: engine)
    with pytest.raises(KeyboardInterrupt):
        zoo_scan.scan_zoo(root, out, config=_fast_config(), echo=lambda *_: None, quiet=True)
    assert (out / "a" / "result.json").is_file()
    assert not (out / "b" / "result.json").exists() and not (out / "summary.json").exists()
    assert not [p for p in out.rglob(".tmp-*")]  # no half-written file anywhere
    first = (out / "a" / "result.json").read_bytes()
    engine = InProcess()
    monkeypatch.setattr(zoo_scan, "make_engine", lambda *a, **k: engine)
    summary = zoo_scan.scan_zoo(root, out, config=_fast_config(), echo=lambda *_: None, quiet=True)
    assert engine.seen == ["b", "c"]  # only what was missing
    assert (out / "a" / "result.json").read_bytes() == first
    assert summary["models"] == 3 and summary["counts"]["error"] == 0
    # A changed model file is scanned again; so is every model under other settings.
    tiny_cnn(seed=9).save(root / "b" / "model.keras")
    entries = read_zoo(root)
    tasks, done = zoo_scan.plan(entries, out, config=_fast_config(), method="aegis", seed=0, batch_size=256)
    assert [t["entry"]["name"] for t in tasks] == ["b"] and sorted(done) == ["a", "c"]
    # A truth given later is written into the kept result, without scanning again.
    (root / "a" / "config.json").write_text(json.dumps({"data": "../data.npz", "truth": {"poisoned": False}}))
    tasks, done = zoo_scan.plan(read_zoo(root), out, config=_fast_config(), method="aegis", seed=0, batch_size=256)
    assert "a" in done and json.loads((out / "a" / "result.json").read_text())["truth"] == {"poisoned": False}
    tasks, _ = zoo_scan.plan(entries, out, config=_fast_config().replace(steps=4), method="aegis", seed=0,
                             batch_size=256)
    assert [t["entry"]["name"] for t in tasks] == ["a", "b", "c"]


@pytest.fixture(scope="module")
def local_scan(tmp_path_factory):
    """A zoo of two tiny models, one damaged file and one folder without config, scanned by the
    local engine through the command line (one worker process)."""
    tmp = tmp_path_factory.mktemp("local")
    root, _ = _zoo(tmp / "zoo", models=("a", "b"), broken=("broken",),
                   truth={"a": {"poisoned": True, "target": 1}, "b": {"poisoned": False}})
    (root / "no_config").mkdir()
    out = tmp / "out"
    rc = cli.main(["scan-zoo", str(root), "--out", str(out), "--quiet"] + FAST)
    return root, out, rc


def test_local_engine_gives_one_result_per_model_and_a_summary(local_scan, capsys):
    root, out, rc = local_scan
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["rows"]] == ["a", "b", "broken", "no_config"]
    results = {n: json.loads((out / n / "result.json").read_text()) for n in ("a", "b", "broken", "no_config")}
    assert results["a"]["status"] == results["b"]["status"] == "done"
    assert results["a"]["model_sha256"] and results["a"]["worker"] and results["a"]["engine"] == "local"
    from aegis_tf.zoo.engines import cores

    assert results["a"]["threads"] == cores()  # one worker: every core, capped before TensorFlow started
    assert "not a .keras archive" in results["broken"]["error"]
    assert "config.json not found" in results["no_config"]["error"]
    assert summary["counts"]["error"] == 2 and summary["metrics"]["models"] == 2
    assert (out / "a" / "report.html").is_file() and (out / "a" / "detect.json").is_file()
    index = (out / "report.html").read_text()
    assert 'href="a/report.html"' in index and "not a .keras archive" in index
    assert "| broken | error |" in (out / "summary.md").read_text()
    # A scan that could not be read (its verdict's limits) is inconclusive in the summary, never clean.
    for row in summary["rows"][:2]:
        limits = results[row["name"]]["verdict"]["limits"]
        assert row["limits"] == limits
        assert row["verdict"] == ("backdoored" if results[row["name"]]["verdict"]["backdoored"] else
                                  "inconclusive" if limits or results[row["name"]]["verdict"]["inconclusive"]
                                  else "clean")
    # The rerun scans nothing and changes no result.
    before = {n: (out / n / "result.json").read_bytes() for n in results}
    capsys.readouterr()
    assert cli.main(["scan-zoo", str(root), "--out", str(out), "--quiet"] + FAST) == 0
    assert "4 already done, 0 to scan" in capsys.readouterr().out
    assert {n: (out / n / "result.json").read_bytes() for n in results} == before
    # --fail-on-backdoor gates a registry pipeline: a model that could not be scanned is no pass.
    flagged = [r["name"] for r in summary["rows"] if r["verdict"] == "backdoored"]
    rc = cli.main(["scan-zoo", str(root), "--out", str(out), "--quiet", "--fail-on-backdoor"] + FAST)
    printed = capsys.readouterr().out
    assert rc == 1 and "2 not scanned: broken, no_config" in printed
    assert f"{len(flagged) + 2} of 4 model(s) do not pass" in printed


def test_a_worker_killed_mid_scan_is_retried_or_marked_failed(tmp_path, monkeypatch):
    from aegis_tf.zoo.worker import FAULT_VARIABLE

    root, _ = _zoo(tmp_path / "zoo", models=("once", "always", "fine"))
    marker = tmp_path / "died_once"
    monkeypatch.setenv(FAULT_VARIABLE, f"once={marker},always")
    out = tmp_path / "out"
    summary = zoo_scan.scan_zoo(root, out, config=_fast_config(), retries=1, echo=lambda *_: None, quiet=True)
    once = json.loads((out / "once" / "result.json").read_text())
    assert marker.is_file() and once["status"] == "done" and once["attempts"] == 2
    assert once["retried_after"] == "worker process died mid-scan (killed by SIGKILL)"
    always = json.loads((out / "always" / "result.json").read_text())
    assert always["status"] == "error" and always["attempts"] == 2
    assert "worker process died mid-scan (killed by SIGKILL), on each of 2 attempt(s)" in always["error"]
    # The machine's failure, not the model's: a rerun scans it again (a broken file's error is kept).
    assert always["transient"] is True
    tasks, done = zoo_scan.plan(read_zoo(root), out, config=_fast_config(), method="aegis", seed=0, batch_size=256)
    assert [t["entry"]["name"] for t in tasks] == ["always"] and sorted(done) == ["fine", "once"]
    assert json.loads((out / "fine" / "result.json").read_text())["status"] == "done"
    assert summary["counts"]["error"] == 1


def test_ray_engine_gives_the_local_verdicts_and_survives_a_killed_worker(local_scan, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from aegis_tf.zoo.worker import FAULT_VARIABLE

    root, local_out, _ = local_scan
    monkeypatch.setenv(FAULT_VARIABLE, f"a={tmp_path / 'died_once'}")
    out = tmp_path / "ray"
    summary = zoo_scan.scan_zoo(root, out, config=_fast_config(), engine="ray", retries=1, echo=lambda *_: None,
                                quiet=True)
    local = json.loads((local_out / "summary.json").read_text())
    assert (tmp_path / "died_once").is_file()  # the first attempt at a was killed, and Ray ran it again
    assert summary["engine"]["engine"] == "ray"
    assert [(r["name"], r["verdict"], r["target_classes"], r["score"]) for r in summary["rows"]] == \
        [(r["name"], r["verdict"], r["target_classes"], r["score"]) for r in local["rows"]]
    ray_a = json.loads((out / "a" / "result.json").read_text())
    assert ray_a["engine"] == "ray" and ray_a["threads"] == 1  # the task's declared CPU


def test_api_scan_zoo_is_the_job(tmp_path):
    import aegis_tf

    root, _ = _zoo(tmp_path / "zoo", models=("a",))
    with pytest.raises(AegisError, match="config must be a DetectConfig"):
        aegis_tf.scan_zoo(root, tmp_path / "out", config={"n_seeds": 2})
    assert not (tmp_path / "out").exists()


def test_make_zoo_lays_out_trained_models_with_their_truth(tmp_path):
    sys_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_zoo", os.path.join(sys_path, "make_zoo.py"))
    make_zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_zoo)
    models = tmp_path / "models"
    models.mkdir()
    data = _data(tmp_path / "mnist.npz")
    for name, trigger, rate, asr in (("mnist_source-specific_std_s1", {"target_label": 1, "source_classes": "8"}, 0.05,
                                      0.97),
                                     ("mnist_all-to-all_std_s0", {"target_label": 7, "mapping": "all-to-all"}, 0.1, 0.5),
                                     ("mnist_clean_std_s0", {"target_label": 7}, 0.0, None)):
        tiny_cnn().save(models / f"{name}.keras")
        report = {"data": data, "poison_rate": rate, "n_poisoned": int(rate * 100),
                  "trigger_config": {"trigger": "localised", **trigger},
                  "test": {"clean_acc": 0.99, "backdoors": [] if asr is None else [{"asr": asr}]}}
        (models / f"{name}.keras.json").write_text(json.dumps(report))
    # an all-to-all report that measured its ASR on the images the model classifies right: learned by that
    report.update(poison_rate=0.1, n_poisoned=10,
                  trigger_config={"trigger": "localised", "target_label": 7, "mapping": "all-to-all"})
    report["test"] = {"clean_acc": 0.85, "asr": 0.78, "asr_on_correct": 0.91, "backdoors": [{"asr": 0.78}]}
    tiny_cnn().save(models / "mnist_all-to-all_std_s2.keras")
    (models / "mnist_all-to-all_std_s2.keras.json").write_text(json.dumps(report))
    tiny_cnn().save(models / "still_training.keras")  # no report yet: skipped
    zoo = tmp_path / "zoo"
    make_zoo.main([str(models), str(zoo)])
    entries = {e.name: e for e in read_zoo(zoo)}
    assert sorted(entries) == ["mnist_all-to-all_std_s0", "mnist_all-to-all_std_s2", "mnist_clean_std_s0",
                               "mnist_source-specific_std_s1"]
    assert entries["mnist_all-to-all_std_s2"].truth["asr"] == 0.91
    assert entries["mnist_source-specific_std_s1"].truth == {"poisoned": True, "family": "source-specific",
                                                             "target": [1], "sources": [8], "asr": 0.97}
    assert entries["mnist_all-to-all_std_s0"].truth["target"] == list(range(10))
    assert entries["mnist_clean_std_s0"].truth == {"poisoned": False, "family": "clean"}
    assert all(e.problem is None and e.data == data for e in entries.values())
    summary = summarize([_result(n, 2.0 if e.truth["poisoned"] else 0.1, e.truth) for n, e in entries.items()])
    assert summary["left_out"] == {"poisoned but not learned (ASR under 90%)": 1}  # the all-to-all at 50% ASR


def test_the_zoo_gate_fails_a_model_that_could_not_be_read_and_passes_a_saturated_signal(monkeypatch, capsys):
    import aegis_tf.api
    from aegis_tf.zoo.summary import _row

    def result(name, verdict):
        return {"name": name, "status": "done", "verdict": verdict, "truth": None, "seconds": 1.0, "attempts": 1}

    clean = {"backdoored": False, "target_classes": [], "inconclusive": {}, "limits": [], "score": 0.2}
    saturated = {**clean, "inconclusive": {"whole_image": "saturated"}}
    unread = {**clean, "limits": ["the model has 2 classes; every signal compares a class with at least 2 others"]}
    rows = [_row(result("c", clean)), _row(result("s", saturated)), _row(result("u", unread))]
    assert [r["verdict"] for r in rows] == ["clean", "inconclusive", "inconclusive"]
    assert rows[2]["limits"] == unread["limits"] and rows[1]["limits"] == []
    monkeypatch.setattr(aegis_tf.api, "scan_zoo", lambda *a, **k: {"rows": rows, "models": 3})
    assert cli.main(["scan-zoo", "zoo", "--out", "o", "--quiet", "--fail-on-backdoor"]) == 1
    printed = capsys.readouterr().out
    assert "1 inconclusive model(s) pass (no class named; read with care): s" in printed
    assert "1 of 3 model(s) do not pass; 1 could not be read: u" in printed
    rows.pop()
    assert cli.main(["scan-zoo", "zoo", "--out", "o", "--quiet", "--fail-on-backdoor"]) == 0
