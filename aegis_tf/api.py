"""The public Python API: one function per job, the same typed settings as the command line.

    import aegis_tf

    result = aegis_tf.scan("models/robust_bd_net.keras", "data/train.h5")
    print(result.backdoored, result.target_classes)   # True [7]
    print(result.line)                                # the console's verdict line
    result.save("out/scan")                           # detect.json, report.html, recovered triggers

Each function checks its inputs before any work and raises
:class:`aegis_tf.AegisError` (one line saying what was expected) on bad
input. The command line (:mod:`aegis_tf.cli`) parses flags and calls these,
nothing more. See docs/api.md.
"""

import os

import numpy as np

from aegis_tf.core.errors import AegisError

__all__ = ["scan", "scan_zoo", "detect", "repair", "evaluate_goodnet", "poison", "train", "evaluate", "ScanResult"]


def __getattr__(name):  # ScanResult without importing Keras at `import aegis_tf`
    if name == "ScanResult":
        from aegis_tf.detect.scan import ScanResult

        return ScanResult
    raise AttributeError(name)


def _model(model, weights):
    """``(keras.Model, path or None)`` from a path (loaded in safe mode) or a model in memory."""
    from aegis_tf.core.models import load_model

    if isinstance(model, (str, os.PathLike)) or model is None:
        path = None if model is None else os.fspath(model)
        return load_model(path, weights), path
    if weights is not None:
        raise AegisError("weights= goes with a model path, not with a model in memory")
    if not hasattr(model, "predict") or not hasattr(model, "output_shape"):
        raise AegisError(f"model must be a path to a .keras/.h5 file or a keras.Model. Received: {type(model).__name__}")
    return model, None


def _data(data, *, scale, data_dir, split="train"):
    """``(x, y, description)``: a named set, an .h5/.npz path (``split``), or ``(x, y)`` arrays."""
    from aegis_tf.core.data import from_arrays, load_split

    if isinstance(data, (str, os.PathLike)):
        x, y = load_split(os.fspath(data), split=split, data_dir=data_dir, scale=scale)
        return x, y, os.fspath(data)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise AegisError(f"data=(x, y) needs one integer label per image. Received x {x.shape}, y {y.shape} "
                             f"({y.dtype})")
        source = f"data=(x, y) of shape {tuple(x.shape)}"
        x, y = from_arrays(x, y, scale=scale, source=source)
        return x, y, source
    raise AegisError("data must be a dataset name (digits, mnist, fashion_mnist, cifar10), an .h5/.npz path or "
                     f"(x, y) arrays. Received: {type(data).__name__}")


def scan(model, data, *, config=None, out_dir=None, method="aegis", classes=None, scale="raw", data_dir=None,
         weights=None, name=None, seed=0, batch_size=256, quiet=True, plots=False, n_jobs=1, resume=False):
    """Is ``model`` backdoored, and toward which class? Returns a :class:`ScanResult`.

    ``model``: a ``.keras``/``.h5`` path (loaded in Keras safe mode; ``weights`` for a
    weights file) or a ``keras.Model``. ``data``: its training images, as a named set,
    an ``.h5``/``.npz`` path (the training split) or ``(x, y)`` arrays, stored as raw
    0-255 pixels (``scale="raw"``, as the model sees them) or divided by 255 for the
    model (``scale="unit"``). ``config``: a :class:`~aegis_tf.detect.config.DetectConfig`
    (default: the measured default); ``method``: ``aegis``, ``neural-cleanse`` or ``both``;
    ``classes``: the classes to examine (a list or ``"1,7"``; default all).

    With ``out_dir`` the scan keeps its progress there (``resume`` continues an
    interrupted scan) and the result is saved there (:meth:`ScanResult.save`);
    without, nothing is written.
    """
    from aegis_tf.core.data import check_fits_model
    from aegis_tf.core.settings import pixel_max_of
    from aegis_tf.core.utils import check_out_dir
    from aegis_tf.detect.config import DetectConfig
    from aegis_tf.detect.scan import check_jobs, check_method, examined_classes, scan_info, scan_model

    config = DetectConfig() if config is None else config
    if not isinstance(config, DetectConfig):
        raise AegisError(f"config must be a DetectConfig. Received: {type(config).__name__}")
    check_method(method)
    check_jobs(n_jobs)
    for name_, value, low in (("batch_size", batch_size, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise AegisError(f"{name_} must be an integer >= {low}. Received: {value!r}")
    if resume and out_dir is None:
        raise AegisError("resume=True continues a scan saved in out_dir; give out_dir")
    if out_dir is not None:
        check_out_dir(out_dir)
    net, path = _model(model, weights)
    x, y, source = _data(data, scale=scale, data_dir=data_dir)
    x = check_fits_model(x, y, net, f"data {source}")
    if isinstance(classes, (list, tuple)):
        classes = ",".join(map(str, classes))
    examined = examined_classes(net, y, classes, method, f"data {source}")
    name = name or (os.path.splitext(os.path.basename(path or weights))[0] if (path or weights)
                    else (net.name or "model"))
    info = scan_info(path, weights, source, scale)
    result = scan_model(net, x, y, classes=examined, config=config, pixel_max=pixel_max_of(scale), method=method,
                        name=name, info=info, state_dir=out_dir, seed=seed, batch_size=batch_size, quiet=quiet,
                        plots=plots, n_jobs=n_jobs, resume=resume)
    if out_dir is not None:
        result.save(out_dir)
        result.clear_state()
    return result


def scan_zoo(zoo, out_dir, *, config=None, method="aegis", engine="local", workers=1, threads=None, address=None,
             gpus_per_task=0.0, retries=1, seed=0, batch_size=256, retry_errors=False, quiet=True, echo=None):
    """Scan every model of ``zoo`` (a folder of model folders with their ``config.json``, or a
    ``.json``/``.csv`` manifest) into ``out_dir``: one ``result.json`` per model, then
    ``summary.json``, ``summary.md`` and an index ``report.html``. Returns the summary.

    A rerun skips the models already done (same file hash and settings); a model that cannot
    be loaded or scanned gets an error result and the others go on. ``engine="local"`` runs
    ``workers`` processes (``threads`` math threads each, never more than the cores in all);
    ``engine="ray"`` runs one Ray task per model on the cluster at ``address`` or on a local
    instance (``pip install aegis-tf[ray]``). ``echo`` (e.g. ``print``) receives the summary
    lines, and, unless ``quiet``, a line per model as it finishes. See docs/zoo.md.
    """
    from aegis_tf.zoo.scan import scan_zoo as run

    return run(zoo, out_dir, config=config, method=method, engine=engine, workers=workers, threads=threads,
               address=address, gpus_per_task=gpus_per_task, retries=retries, seed=seed, batch_size=batch_size,
               retry_errors=retry_errors, quiet=quiet, echo=echo or (lambda *_: None))


def detect(**kwargs):
    """The ``aegis detect`` job: scan the model named by ``bad_model``/``bad_model_weights``
    (default: the embedded robust pair), save each result and return ``{name: detect.json}``.
    Takes the keyword arguments of :func:`aegis_tf.detect.scan.run_detect`."""
    from aegis_tf.detect.scan import run_detect

    return run_detect(**kwargs)


def repair(config=None, **kwargs):
    """The ``aegis repair`` job: the lab's pruning and GoodNet by default, a repair from the
    trigger ``detect`` recovered (``trigger_from=`` a detect folder), or the data-free
    channel-Lipschitzness pruning (``strategy="clp"``, ``clp_u``); returns ``repair.json``.

    ``config`` is a :class:`~repair.config.RepairConfig` (``threshold`` 2, 4 or 10, ``strategy``,
    ...); its fields can also be given as keywords (``aegis_tf.repair(threshold=2)``). The other
    keywords are those of :func:`repair.pipeline.repair_job` (``bad_model``, ``clean_valid``,
    ``bad_valid``, ``out_dir``, ``scale``, ...)."""
    from repair.pipeline import repair_job

    return repair_job(config=config, **kwargs)


def evaluate_goodnet(**kwargs):
    """The lab's evaluation of a GoodNet (clean accuracy and ASR of B, B' and GoodNet); see
    :func:`repair.pipeline.evaluate_goodnet_job`."""
    from repair.pipeline import evaluate_goodnet_job

    return evaluate_goodnet_job(**kwargs)


def poison(data, trigger=None, *, poison_rate, out_dir, **kwargs):
    """Poison ``data``'s training split with ``trigger`` (a
    :class:`~aegis_tf.attack.config.TriggerConfig`, default the paper's localised square);
    see :func:`aegis_tf.attack.job.poison_job`."""
    from aegis_tf.attack.config import TriggerConfig
    from aegis_tf.attack.job import poison_job

    return poison_job(data=data, trigger=TriggerConfig() if trigger is None else trigger, poison_rate=poison_rate, out_dir=out_dir,
                      **kwargs)


def train(data, trigger=None, config=None, *, model_out, **kwargs):
    """Poison, train (standard or Madry-robust, a :class:`~aegis_tf.attack.config.TrainConfig`)
    and evaluate a model; see :func:`aegis_tf.attack.job.train_job`. The caller seeds
    Keras' global random generator (``keras.utils.set_random_seed``) first."""
    from aegis_tf.attack.config import TrainConfig, TriggerConfig
    from aegis_tf.attack.job import train_job

    return train_job(data=data, trigger=TriggerConfig() if trigger is None else trigger,
                     config=TrainConfig() if config is None else config,
                     model_out=model_out, **kwargs)


def evaluate(model, data, trigger=None, **kwargs):
    """Clean accuracy, attack success rate and PGD accuracy of the model file ``model`` on
    ``data``'s test split. ``trigger`` defaults to the model's own (its ``MODEL.json``,
    written by :func:`train`), else the default :class:`~aegis_tf.attack.config.TriggerConfig`;
    see :func:`aegis_tf.attack.job.evaluate_model_job`."""
    from aegis_tf.attack.config import TriggerConfig
    from aegis_tf.attack.job import evaluate_model_job
    from aegis_tf.attack.sidecar import read_trigger_configs

    if trigger is None:
        trigger = read_trigger_configs(model) or TriggerConfig()
    return evaluate_model_job(model=model, data=data, trigger=trigger, **kwargs)
