"""The zoo job behind ``aegis scan-zoo`` and :func:`aegis_tf.scan_zoo`: scan every model of a
zoo, one ``result.json`` each, then summarise.

1. The zoo is read (:func:`aegis_tf.zoo.manifest.read_zoo`) and every setting checked
   before any work; a model already done with the same file (SHA-256) and settings is
   skipped, so a rerun finishes only what is missing.
2. The engine (:mod:`aegis_tf.zoo.engines`) scans the rest; as each model finishes, its
   ``OUT/NAME/result.json`` is written atomically (Ctrl-C leaves every finished result
   intact; an unfinished model has no result and is scanned again next time, resuming
   from its saved translations).
3. ``summary.json``, ``summary.md``, ``roc.png`` and the index ``report.html`` are made
   from the ``result.json`` files alone (:mod:`aegis_tf.zoo.summary`).
"""

import contextlib
import hashlib
import json
import os
import signal
import threading
import time

from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import check_out_dir, progress, read_json, to_jsonable, write_json
from aegis_tf.zoo.engines import make_engine
from aegis_tf.zoo.manifest import file_sha256, read_zoo
from aegis_tf.zoo.summary import summarize, summary_lines, write_summary

__all__ = ["scan_zoo", "RESULT", "settings_key", "plan"]

RESULT = "result.json"


def _stat(path):
    """``[size, mtime_ns]`` of a file (a data set is too big to hash on every rerun), else None."""
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns] if os.path.isfile(path) else None
    except (OSError, TypeError):
        return None


def settings_key(entry, config, method, seed, batch_size):
    """What a model's result depends on besides its model file: a hash of the scan's settings,
    aegis-tf's version, the weights file's bytes and the data's path, size and time, scale and
    classes. A result with another key is scanned again."""
    from aegis_tf import __version__

    weights = file_sha256(entry.weights) if entry.weights and os.path.isfile(entry.weights) else entry.weights
    what = {"config": to_jsonable(config), "method": method, "seed": seed, "batch_size": batch_size,
            "data": entry.data, "data_file": _stat(entry.data), "data_dir": entry.data_dir, "scale": entry.scale,
            "classes": entry.classes, "weights": weights, "aegis_tf": __version__}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _sha(entry):
    try:
        return file_sha256(entry.model) if entry.model and os.path.isfile(entry.model) else None
    except OSError:
        return None


def _previous(folder):
    path = os.path.join(folder, RESULT)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # unreadable: scanned again


def plan(entries, out_dir, *, config, method, seed, batch_size, retry_errors=False):
    """``(tasks, done)``: the models to scan (worker tasks) and the results kept from an earlier
    run (same model hash and settings; an error result is kept too unless ``retry_errors``, but
    not one the machine caused, a worker that died: ``transient``; a changed truth is written
    into the kept result, not scanned for)."""
    job = {"config": config.to_dict(), "method": method, "seed": seed, "batch_size": batch_size}
    tasks, done = [], {}
    for entry in entries:
        folder = os.path.join(out_dir, entry.name)
        key = settings_key(entry, config, method, seed, batch_size)
        sha = _sha(entry)
        old = _previous(folder)
        if (old is not None and old.get("settings") == key and old.get("model_sha256") == sha
                and (old.get("status") == "done" or not (retry_errors or old.get("transient")))):
            if old.get("truth") != entry.truth:  # the truth is not an input of the scan: updated, not rescanned
                old = {**old, "truth": entry.truth}
                write_json(os.path.join(folder, RESULT), old)
            done[entry.name] = old
            continue
        _sweep(folder)
        tasks.append({"entry": entry.to_dict(), "model_sha256": sha, "settings_key": key, "job": job,
                      "folder": os.path.abspath(folder)})
    return tasks, done


def _sweep(folder):
    """Remove the temporary files a worker killed mid-write left in a folder about to be scanned again."""
    for root, _, names in os.walk(folder):
        for n in names:
            if n.startswith(".tmp-"):
                try:
                    os.remove(os.path.join(root, n))
                except OSError:
                    pass


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a CI timeout, a service stop) ends the scan as Ctrl-C does: workers stopped, every
    finished result kept. Only in the main thread, where Python can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def scan_zoo(zoo, out_dir, *, config=None, method="aegis", engine="local", workers=1, threads=None, address=None,
             gpus_per_task=0.0, retries=1, seed=0, batch_size=256, retry_errors=False, quiet=False, echo=print):
    """Scan every model of ``zoo`` into ``out_dir``; returns the summary (``summary.json``).

    ``zoo``: a folder with one sub-folder per model (model file + ``config.json``) or a
    ``.json``/``.csv`` manifest (:mod:`aegis_tf.zoo.manifest`). ``engine``: ``local``
    (``workers`` processes, ``threads`` math threads each; default all cores split among
    the workers) or ``ray`` (``address`` of a running cluster, else a local instance;
    ``threads`` CPUs and ``gpus_per_task`` GPUs declared per task). A worker that dies is
    retried ``retries`` times; a model that cannot be loaded or scanned gets an error
    result and the scan goes on. ``config`` is the :class:`~aegis_tf.detect.config.DetectConfig`
    of every scan (default: the measured default).
    """
    import multiprocessing

    from aegis_tf.detect.config import DetectConfig, check_method

    if multiprocessing.parent_process() is not None:
        raise AegisError("scan_zoo was called while a worker process started (its workers are spawned, and a spawned "
                         "process runs the calling script again): put the call under "
                         "`if __name__ == \"__main__\":`")

    config = DetectConfig() if config is None else config
    if not isinstance(config, DetectConfig):
        raise AegisError(f"config must be a DetectConfig. Received: {type(config).__name__}")
    check_method(method)
    for name, value, low in (("--batch-size", batch_size, 1), ("--seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise AegisError(f"{name} must be an integer >= {low}. Received: {value!r}")
    runner = make_engine(engine, workers=workers, threads=threads, address=address, gpus=gpus_per_task,
                         retries=retries)
    check_out_dir(out_dir, "--out")
    entries = read_zoo(zoo)
    names = [e.name for e in entries]
    tasks, done = plan(entries, out_dir, config=config, method=method, seed=seed, batch_size=batch_size,
                       retry_errors=retry_errors)
    echo(f"scan-zoo: {len(entries)} model(s) in {zoo}; {len(done)} already done, {len(tasks)} to scan "
         f"({runner.name} engine)")
    start = time.perf_counter()
    bar = progress(total=len(entries), initial=len(done), desc="scan-zoo", unit="model", quiet=quiet)
    line = bar.write if not bar.disable else echo  # a line per model above the bar, not through it
    finished = [len(done)]

    def on_result(result):
        write_json(os.path.join(out_dir, result["name"], RESULT), {**result, "engine": runner.name})
        done[result["name"]] = result
        finished[0] += 1
        bar.update(1)
        if not quiet:
            what = result["error"] if result["status"] != "done" else result["verdict"]["line"]
            line(f"[{finished[0]}/{len(entries)}] {result['name']}: {what} ({result['seconds']:.0f} s)")

    try:
        with _sigterm_as_interrupt():
            if tasks:
                runner.run(tasks, on_result)
    except KeyboardInterrupt:
        bar.close()
        echo(f"scan-zoo: interrupted; {len(done)} of {len(entries)} result(s) kept in {out_dir}; run again to "
             "finish the rest")
        raise
    bar.close()
    results = [read_json(os.path.join(out_dir, n, RESULT), "result") for n in names]
    summary = summarize(results, engine=runner.describe(), seconds=time.perf_counter() - start, zoo=os.fspath(zoo))
    write_summary(out_dir, summary)
    for line in summary_lines(summary):
        echo(line)
    echo(f"report: {os.path.join(out_dir, 'report.html')}")
    return summary
