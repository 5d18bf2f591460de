"""What a zoo holds: one entry per model, read from a folder of model folders or a manifest.

A zoo is either

* a **folder** with one sub-folder per model (its name is the model's name)::

      zoo/
        bd_net/            bd_net.h5    config.json
        robust_bd_net/     model.keras  config.json

  ``config.json`` names the data and, optionally, the model file and the truth::

      {"data": "data/train.h5", "scale": "raw",
       "model": "bd_net.h5",                      # default: the folder's one .keras/.h5 file
       "truth": {"poisoned": true, "target": 0, "sources": "all", "family": "localised", "asr": 0.98}}

* or a **manifest**, a ``.json`` list of such objects each with a ``name`` and a ``model``
  (or ``{"models": [...]}``), or a ``.csv`` with the columns ``name, model, data, scale,
  weights, data_dir, classes, poisoned, target, sources, family, asr``.

Relative paths are read against the config's (or manifest's) folder first, then the
current folder. ``data`` may also name a set (``mnist``, with ``data_dir``). ``truth`` is
optional; with it the summary scores the scan (ROC-AUC, cross-entropy...). A model whose
entry cannot be used (no config, no model file, a bad field) still gets an entry, with
its ``problem``: the scan gives it an error result and goes on.
"""

import csv
import dataclasses
import hashlib
import json
import os
from typing import Optional

from aegis_tf.core.data import NAMED_SETS
from aegis_tf.core.errors import AegisError

__all__ = ["ZooModel", "read_zoo", "file_sha256", "CONFIG", "MODEL_SUFFIXES", "CSV_COLUMNS", "RESERVED"]

CONFIG = "config.json"
# The files scan-zoo writes at the top of OUT: no model may take their names.
RESERVED = ("summary.json", "summary.md", "report.html", "roc.png")
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
CSV_COLUMNS = ("name", "model", "data", "scale", "weights", "data_dir", "classes", "poisoned", "target", "sources",
               "family", "asr")
_FIELDS = {"name", "model", "weights", "data", "scale", "data_dir", "classes", "truth"}
_TRUTH = {"poisoned", "target", "sources", "family", "asr"}


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One model of a zoo: its name, files, data and (optional) truth; ``problem`` says why it
    cannot be scanned (it then gets an error result)."""

    name: str
    model: Optional[str] = None
    weights: Optional[str] = None
    data: Optional[str] = None
    scale: str = "raw"
    data_dir: Optional[str] = None
    classes: Optional[str] = None
    truth: Optional[dict] = None
    problem: Optional[str] = None

    def to_dict(self):
        return dataclasses.asdict(self)


def file_sha256(path, chunk=1 << 20):
    """The SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _resolve(value, base):
    """A path named in a config: against ``base`` first, then the current folder; kept as
    given (a named data set, or a path that does not exist, reported later) otherwise."""
    if value is None:
        return None
    if value in NAMED_SETS:  # a set name, even if a file or folder of that name lies around
        return value
    value = os.path.expanduser(str(value))
    for candidate in ((value,) if os.path.isabs(value) else (os.path.join(base, value), value)):
        if os.path.exists(candidate):
            return os.path.abspath(candidate)
    return value


def _truth(raw, where):
    """The ``truth`` object, checked: ``poisoned`` a bool, ``target`` a class or list of classes,
    ``sources`` ``"all"`` or a list, ``family`` a string, ``asr`` a number in [0, 1]."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: truth must be an object with poisoned, target, sources, family, asr")
    unknown = sorted(set(raw) - _TRUTH)
    if unknown:
        raise ValueError(f"{where}: unknown truth field(s) {', '.join(unknown)} (expected {', '.join(sorted(_TRUTH))})")
    if not isinstance(raw.get("poisoned"), bool):
        raise ValueError(f"{where}: truth.poisoned must be true or false. Received: {raw.get('poisoned')!r}")
    out = {"poisoned": raw["poisoned"]}
    target = raw.get("target")
    if target is not None:
        targets = target if isinstance(target, list) else [target]
        if not targets or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in targets):
            raise ValueError(f"{where}: truth.target must be a class number or a list of them. Received: {target!r}")
        out["target"] = targets
    sources = raw.get("sources")
    if sources is not None:
        if sources != "all" and not (isinstance(sources, list) and all(isinstance(s, int) for s in sources)):
            raise ValueError(f'{where}: truth.sources must be "all" or a list of classes. Received: {sources!r}')
        out["sources"] = sources
    if raw.get("family") is not None:
        out["family"] = str(raw["family"])
    asr = raw.get("asr")
    if asr is not None:
        if isinstance(asr, bool) or not isinstance(asr, (int, float)) or not 0.0 <= asr <= 1.0:
            raise ValueError(f"{where}: truth.asr must be a number in [0, 1]. Received: {asr!r}")
        out["asr"] = float(asr)
    return out


def _entry(name, raw, base, where):
    """A :class:`ZooModel` from one config object; a bad field becomes its ``problem``."""
    try:
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a JSON object")
        unknown = sorted(set(raw) - _FIELDS)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (expected {', '.join(sorted(_FIELDS))})")
        if not raw.get("data"):
            raise ValueError(f"{where}: no data named (a training set .h5/.npz or a set name)")
        scale = raw.get("scale") or "raw"
        if scale not in ("raw", "unit"):
            raise ValueError(f"{where}: scale must be raw or unit. Received: {scale!r}")
        model = raw.get("model")
        if model is None and os.path.isdir(base) and os.path.basename(os.path.normpath(base)) == name:
            found = sorted(n for n in os.listdir(base) if n.endswith(MODEL_SUFFIXES) and not n.startswith("."))
            if len(found) != 1:
                raise ValueError(f"{where}: {'no' if not found else len(found)} model files (.keras/.h5) in "
                                 f"{base}; name one as \"model\"")
            model = found[0]
        if not model:
            raise ValueError(f"{where}: no model file named")
        classes = raw.get("classes")
        if isinstance(classes, list):
            classes = ",".join(map(str, classes))
        return ZooModel(name=name, model=_resolve(model, base), weights=_resolve(raw.get("weights"), base),
                        data=_resolve(raw["data"], base), scale=scale, data_dir=_resolve(raw.get("data_dir"), base),
                        classes=None if classes in (None, "") else str(classes),
                        truth=_truth(raw.get("truth"), where))
    except ValueError as e:
        return ZooModel(name=name, problem=str(e))


def _from_folder(zoo):
    entries = []
    for name in sorted(os.listdir(zoo)):
        folder = os.path.join(zoo, name)
        if name.startswith((".", "_")) or not os.path.isdir(folder):
            continue
        path = os.path.join(folder, CONFIG)
        if not os.path.isfile(path):
            entries.append(ZooModel(name=name, problem=f"{path} not found (every model folder needs a {CONFIG} "
                                                       "naming its data)"))
            continue
        try:
            with open(path, encoding="utf-8-sig") as f:
                raw = json.load(f)
        except (OSError, ValueError) as e:
            entries.append(ZooModel(name=name, problem=f"cannot read {path}: {e}"))
            continue
        entries.append(_entry(name, raw, folder, path))
    return entries


def _csv_rows(path):
    try:
        return _read_csv(path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise AegisError(f"cannot read manifest {path} (expected a UTF-8 CSV with a header row): "
                         f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None


def _read_csv(path):
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's UTF-8 CSVs start with a BOM
        reader = csv.DictReader(f)
        missing = {"model", "data"} - set(reader.fieldnames or ())
        if missing:
            raise AegisError(f"manifest {path} needs the columns model and data (and optionally "
                             f"{', '.join(c for c in CSV_COLUMNS if c not in ('model', 'data'))}); "
                             f"missing: {', '.join(sorted(missing))}")
        unknown = sorted(set(reader.fieldnames) - set(CSV_COLUMNS))
        if unknown:
            raise AegisError(f"manifest {path}: unknown column(s) {', '.join(unknown)} "
                             f"(expected {', '.join(CSV_COLUMNS)})")
        rows = []
        for row in reader:
            raw = {k: v.strip() for k, v in row.items() if k in CSV_COLUMNS and v is not None and v.strip() != ""}
            truth = {k: raw.pop(k) for k in list(raw) if k in _TRUTH}
            if truth:
                truth = _csv_truth(truth)
                raw["truth"] = truth
            rows.append(raw)
    return rows


def _csv_truth(t):
    """CSV cells to truth values: ``true/false``, ``7`` or ``1;7``, ``all`` or ``3;8``, a number."""
    out = dict(t)
    if "poisoned" in t:
        word = t["poisoned"].lower()
        out["poisoned"] = True if word in ("true", "1", "yes") else False if word in ("false", "0", "no") else word
    for key in ("target", "sources"):
        if key in t and t[key] != "all":
            try:
                values = [int(v) for v in t[key].replace(";", " ").split()]
            except ValueError:
                continue  # left as text: _truth says what was expected
            out[key] = values[0] if key == "target" and len(values) == 1 else values
    if "asr" in t:
        try:
            out["asr"] = float(t["asr"])
        except ValueError:
            pass
    return out


def _from_manifest(path):
    base = os.path.dirname(os.path.abspath(path))
    if path.endswith(".csv"):
        rows = _csv_rows(path)
    else:
        try:
            with open(path, encoding="utf-8-sig") as f:
                rows = json.load(f)
        except (OSError, ValueError) as e:
            raise AegisError(f"cannot read manifest {path}: {e}") from None
        if isinstance(rows, dict):
            rows = rows.get("models")
        if not isinstance(rows, list):
            raise AegisError(f"manifest {path} must be a list of model objects or {{\"models\": [...]}}")
    entries = []
    for i, raw in enumerate(rows):
        where = f"{path} entry {i + 1}"
        if not isinstance(raw, dict):
            entries.append(ZooModel(name=f"entry_{i + 1}", problem=f"{where}: expected a JSON object"))
            continue
        model = raw.get("model")
        name = raw.get("name") or (os.path.splitext(os.path.basename(str(model)))[0] if model else f"entry_{i + 1}")
        entries.append(_entry(str(name), {k: v for k, v in raw.items() if k != "name"}, base, where))
    return entries


def read_zoo(zoo):
    """The models of ``zoo`` (a folder of model folders, or a ``.json``/``.csv`` manifest), in
    order, each a :class:`ZooModel`. A zoo that is missing, empty or has two models of one
    name is a one-line :class:`AegisError`; a model that cannot be used keeps its ``problem``."""
    zoo = os.fspath(zoo)
    if os.path.isdir(zoo):
        try:
            entries = _from_folder(zoo)
        except OSError as e:
            raise AegisError(f"cannot read zoo folder {zoo}: {e.strerror or e}") from None
        what = f"zoo folder {zoo}"
    elif os.path.isfile(zoo):
        if not zoo.endswith((".json", ".csv")):
            raise AegisError(f"a zoo is a folder of model folders or a .json/.csv manifest. Received: {zoo}")
        entries = _from_manifest(zoo)
        what = f"manifest {zoo}"
    else:
        raise AegisError(f"zoo not found: {zoo} (expected a folder with one sub-folder per model, or a .json/.csv "
                         "manifest)")
    if not entries:
        raise AegisError(f"{what} lists no models (expected one sub-folder per model with its {CONFIG})")
    names = [e.name for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise AegisError(f"{what} names {', '.join(twice)} more than once; each model needs its own name")
    bad = [n for n in names if os.sep in n or n in (".", "..") or not n.strip() or n.startswith(".")]
    if bad:
        raise AegisError(f"{what}: model names must be usable as folder names. Received: {bad[0]!r}")
    taken = [n for n in names if n in RESERVED]
    if taken:
        raise AegisError(f"{what}: a model may not be named {taken[0]} (the scan writes that file; names taken: "
                         f"{', '.join(RESERVED)})")
    return entries
