"""One model of a zoo, scanned wherever a worker runs it (a local process or a Ray task).

:func:`scan_task` takes a plain dict (so it crosses process and machine boundaries
as it is) and returns the model's result as a plain dict. It never raises for a
model that cannot be loaded or scanned: that becomes an error result, and the zoo
goes on. It saves the model's page (``detect.json``, ``report.html``, figures and
recovered triggers) in the task's folder; the caller writes ``result.json``.
"""

import os
import socket
import time
import traceback

# What a model's result.json keeps of its scan's verdict (the evidence stays in its detect.json).
VERDICT_KEYS = ("backdoored", "target_classes", "backdoors", "inconclusive", "limits", "score", "probability",
                "line")

__all__ = ["scan_task", "error_result", "FAULT_VARIABLE", "VERDICT_KEYS"]

# Test hook: AEGIS_ZOO_FAULT="NAME" makes the worker scanning model NAME kill itself
# (SIGKILL) at every attempt; "NAME=PATH" only at the first one (PATH marks that it
# happened); several, comma-separated. The tests use it to check what a worker dying mid-scan does to a zoo.
FAULT_VARIABLE = "AEGIS_ZOO_FAULT"

_DATA_CACHE = {}  # one data set per process: consecutive models of a zoo usually share it


def _where():
    return f"{socket.gethostname()}:{os.getpid()}"


def _threads():
    """The math threads this worker was capped at (:func:`aegis_tf.core.threads.cap_process_threads`), or None."""
    value = os.environ.get("TF_NUM_INTRAOP_THREADS")
    return int(value) if value and value.isdigit() else None


def error_result(task, error, *, seconds=0.0, attempts=None):
    """The result of a model that could not be scanned: ``status`` ``error`` and the reason."""
    return {**_head(task), "status": "error", "error": str(error), "verdict": None, "robustness": None,
            "seconds": float(seconds), "attempts": attempts, "worker": _where(), "threads": _threads()}


def _head(task):
    entry = task["entry"]
    return {"name": entry["name"], "model": entry.get("model"), "weights": entry.get("weights"),
            "model_sha256": task.get("model_sha256"), "data": entry.get("data"), "scale": entry.get("scale"),
            "classes": entry.get("classes"), "truth": entry.get("truth"), "settings": task["settings_key"],
            "page": None, "retried_after": task.get("retry_reason")}


def _injected_fault(name):
    for spec in os.environ.get(FAULT_VARIABLE, "").split(","):
        target, _, marker = spec.partition("=")
        if target == name:
            _die(marker)


def _die(marker):
    if marker:
        if os.path.exists(marker):
            return
        with open(marker, "w") as f:
            f.write(_where())
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _load_data(entry):
    from aegis_tf.core.data import load_split

    key = (entry["data"], entry.get("data_dir"), entry.get("scale", "raw"))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # keep one set in memory
        _DATA_CACHE[key] = load_split(entry["data"], split="train", data_dir=entry.get("data_dir"),
                                      scale=entry.get("scale", "raw"))
    return _DATA_CACHE[key]


def scan_task(task):
    """Scan the model of ``task`` (``{"entry", "model_sha256", "settings_key", "job", "folder"}``)
    and save its page in ``task["folder"]``; returns its result (``status`` ``done`` or ``error``)."""
    start = time.perf_counter()
    entry = task["entry"]
    try:
        _injected_fault(entry["name"])
        if entry.get("problem"):
            return error_result(task, entry["problem"], attempts=1)
        verdict = _scan(task)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - a model that breaks the scan must not break the zoo
        from aegis_tf.core.errors import AegisError

        if isinstance(e, AegisError):
            why = str(e)
        else:
            frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
            where = f" ({os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
            why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}{where}"
        return error_result(task, why, seconds=time.perf_counter() - start, attempts=1)
    return {**_head(task), **verdict, "status": "done", "error": None,
            "seconds": time.perf_counter() - start, "attempts": 1, "worker": _where(), "threads": _threads()}


def _scan(task):
    from aegis_tf.core.quiet import import_keras_quietly

    keras = import_keras_quietly()  # once per worker process; quiet, so the zoo's lines stay readable
    from aegis_tf.core.data import check_fits_model
    from aegis_tf.core.models import load_model
    from aegis_tf.core.settings import pixel_max_of
    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.scan import examined_classes, scan_info, scan_into

    entry, job, folder = task["entry"], task["job"], task["folder"]
    config = DetectConfig(**job["config"])
    keras.utils.set_random_seed(job["seed"])  # each model scanned as `aegis detect` would, wherever it runs
    model = load_model(entry["model"], entry.get("weights"))
    x, y = _load_data(entry)
    source = f"data {entry['data']}"
    x = check_fits_model(x, y, model, source)
    examined = examined_classes(model, y, entry.get("classes"), job["method"], source)
    # resume="auto": an earlier attempt cut short goes on from its translations; another scan's state is cleared
    saved = scan_into(folder, model, x, y, keep=("result.json",), classes=examined, config=config,
                      pixel_max=pixel_max_of(entry["scale"]), method=job["method"], name=entry["name"],
                      info=scan_info(entry["model"], entry.get("weights"), entry["data"], entry.get("scale", "raw")),
                      seed=job["seed"], batch_size=job["batch_size"], quiet=True, resume="auto")
    del model
    keras.backend.clear_session()  # a long-lived worker scans thousands of models: free each one's graphs
    v = saved["verdict"]
    robustness = saved.get("robustness")
    return {"verdict": {k: v.get(k) for k in VERDICT_KEYS},
            "baselines": saved.get("baselines") or {},
            "robustness": None if not robustness else {k: robustness.get(k) for k in ("pgd_acc", "clean_acc", "eps",
                                                                                   "n_images", "robust")},
            "page": "report.html"}
