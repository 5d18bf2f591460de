"""The house rules of the package layout (docs/design.md), read from the code.

Each lifecycle stage is one folder, and imports only run downward:

    core  <  report  <  attack  <  detect  <  zoo  <  repair/  <  aegis_tf.api  <  aegis_tf.cli

A module may import its own stage and the stages below it, never one above.
``repair/`` imports no job module (``aegis_tf.attack.job``, ``aegis_tf.detect.scan``);
inside ``detect/`` only the scan job imports the scan job.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANKS = {"aegis_tf.core": 0, "aegis_tf.report": 1, "aegis_tf.attack": 2, "aegis_tf.detect": 3, "aegis_tf.zoo": 4,
         "repair": 5, "aegis_tf.api": 6, "aegis_tf.cli": 7}
JOBS = ("aegis_tf.attack.job", "aegis_tf.detect.scan", "aegis_tf.zoo", "aegis_tf.api", "aegis_tf.cli")


def _stage(module):
    """The stage a dotted module name belongs to (the longest matching prefix)."""
    best = None
    for prefix in RANKS:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    return best


def _modules():
    for top in ("aegis_tf", "repair"):
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for n in names:
                if n.endswith(".py"):
                    path = os.path.join(folder, n)
                    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    yield rel.removesuffix(".__init__"), path


def _imports(path, module):
    """Every project module ``path`` imports (anywhere in the file, lazy imports included)."""
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = module.split(".")[: -node.level] if not path.endswith("__init__.py") else module.split(".")
                base = ".".join(pkg + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in ("aegis_tf", "repair")}


MODULES = dict(_modules())


def test_every_module_belongs_to_a_stage():
    loose = [m for m in MODULES if _stage(m) is None and m != "aegis_tf"]
    assert loose == [], f"modules outside the stage folders: {loose}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "aegis_tf"))
def test_imports_run_downward(module):
    rank = RANKS[_stage(module)]
    upward = []
    for imported in _imports(MODULES[module], module):
        stage = _stage(imported)
        if stage is not None and RANKS[stage] > rank:
            upward.append(imported)
    assert upward == [], f"{module} imports a higher stage: {sorted(upward)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _stage(m) in ("repair", "aegis_tf.core",
                                                                                  "aegis_tf.report")
                                          or (m.startswith(("aegis_tf.attack", "aegis_tf.detect"))
                                              and m not in JOBS)))
def test_no_job_module_imported_below_the_jobs(module):
    jobs = [m for m in _imports(MODULES[module], module) if m.startswith(JOBS)]
    assert jobs == [], f"{module} imports job modules {jobs}"


def test_repair_rules_live_in_repair():
    from repair.thresholds import THRESHOLDS

    assert THRESHOLDS == (2, 4, 10)
    assert not any("THRESHOLDS" in open(p).read() for m, p in MODULES.items() if m.startswith("aegis_tf.core"))


def test_version_is_defined_once():
    import aegis_tf

    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    project = text[text.index("\n[project]\n"):text.index("\n[project.")]
    assert 'dynamic = ["version"]' in project and "\nversion =" not in project
    assert 'version = {attr = "aegis_tf.__version__"}' in text
    assert aegis_tf.__version__.count(".") == 2
