"""The trigger a model was trained with, kept in a JSON file beside it.

``aegis train`` writes ``MODEL.json`` (for ``model.keras``: ``model.keras.json``)
with the training report; its ``trigger_config`` holds every parameter of the
trigger (family, target, size, value, margin, amplitude, seed, pattern file)
and ``poison_rate`` says whether it was planted at all. ``poison`` writes the
same fields into ``poison.json``. The embedded models have such files too.

``evaluate-model`` takes the trigger from here unless flags override it, so
a user gets the real ASR without knowing the trigger's numbers; ``repair``
uses it, when no poisoned test set is given, to measure the true ASR of the
repaired models (never to repair them).
"""

import dataclasses
import os

from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import read_json

__all__ = ["read_trigger_configs", "sidecar_path", "read_trigger_config"]


def sidecar_path(model_path):
    """``MODEL.json`` for ``MODEL``."""
    return os.fspath(model_path) + ".json"


def _resolve(path, folder):
    """A file named in a sidecar: as written, or relative to the sidecar's folder."""
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    for candidate in (os.path.join(folder, path), os.path.join(folder, os.path.basename(path))):
        if os.path.exists(candidate):
            return candidate
    return path


def read_trigger_config(model_path):
    """``(TriggerConfig, poisoned)`` from the model's sidecar, or ``(None, False)`` when it has none.

    ``poisoned`` is False for a model trained without poison (its sidecar
    still names the trigger its ASR baseline is measured with). A pattern
    file the training wrote (``trigger_pattern``) is used for the
    invisible-adversarial and blended triggers.
    """
    from aegis_tf.attack.config import TriggerConfig

    if not model_path:
        return None, False
    path = sidecar_path(model_path)
    if not os.path.isfile(path):
        return None, False
    report = read_json(path, "the model's trigger file")
    spec = report.get("trigger_config") if isinstance(report, dict) else None
    if not isinstance(spec, dict):
        return None, False
    names = {f.name for f in dataclasses.fields(TriggerConfig)}
    spec = {k: v for k, v in spec.items() if k in names}
    folder = os.path.dirname(os.path.abspath(path))
    pattern = _resolve(report.get("trigger_pattern"), folder)
    if pattern and spec.get("trigger") == "invisible-adversarial":
        spec["trigger_pattern"] = pattern
    elif pattern and spec.get("trigger") == "blended":
        spec["blend_pattern"] = pattern
    for key in ("trigger_pattern", "trigger_model"):
        spec[key] = _resolve(spec.get(key), folder)
    try:
        config = TriggerConfig(**spec)
    except Exception as e:  # a ParamError, or a TypeError from a wrong type
        raise AegisError(f"{path}: bad trigger_config ({e})") from None
    return config, float(report.get("poison_rate", 0.0) or 0.0) > 0


def read_trigger_configs(model_path):
    """Every backdoor of the model's sidecar: ``[TriggerConfig, ...]`` (two for a model with two
    backdoors, ``trigger_configs``; the first is :func:`read_trigger_config`'s), or ``[]``."""
    from aegis_tf.attack.config import TriggerConfig

    first, _ = read_trigger_config(model_path)
    if first is None:
        return []
    report = read_json(sidecar_path(model_path), "the model's trigger file")
    more = report.get("trigger_configs") if isinstance(report, dict) else None
    if not isinstance(more, list) or len(more) < 2:
        return [first]
    names = {f.name for f in dataclasses.fields(TriggerConfig)}
    out = [first]
    for spec in more[1:]:
        try:
            out.append(TriggerConfig(**{k: v for k, v in spec.items() if k in names}))
        except Exception as e:  # a ParamError, or a TypeError from a wrong type
            raise AegisError(f"{sidecar_path(model_path)}: bad trigger_configs entry ({e})") from None
    return out
