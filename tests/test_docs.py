"""The docs cannot drift: docs/cli.md is what the parsers print, and README stays one page
whose relative links all resolve."""

import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gen_cli_docs():
    path = os.path.join(ROOT, "scripts", "gen_cli_docs.py")
    spec = importlib.util.spec_from_file_location("gen_cli_docs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def test_cli_reference_matches_the_parsers():
    assert _read("docs/cli.md") == _gen_cli_docs().render(), \
        "docs/cli.md is out of date: run python scripts/gen_cli_docs.py"


def test_readme_is_one_page():
    lines = _read("README.md").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150)"


def test_readme_relative_links_exist():
    text = _read("README.md")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [l for l in links if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", l)]
    assert relative, "README.md links to no file"
    missing = [l for l in relative if not os.path.exists(os.path.join(ROOT, l.split("#")[0]))]
    assert not missing, f"README.md links to missing paths: {missing}"


def test_ci_runs_exactly_the_readme_test_command_and_installs_what_it_needs():
    first_block = _read("README.md").split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert len(first_block) == 2, "the README's first block is the set-up line and the test command"
    ci = [l for l in _read(".ci/run").splitlines() if l.strip() and not l.startswith("#")]
    assert ci[-1] == first_block[1], f".ci/run ends with {ci[-1]!r}, the README's test command is {first_block[1]!r}"
    requirements = re.findall(r"^([A-Za-z0-9_.-]+)", _read("requirements.txt"), flags=re.M)
    if " -n " in first_block[1]:  # the test command runs on several processes: pytest-xdist must be installed
        assert "pytest-xdist" in requirements, "the README's test command needs pytest-xdist in requirements.txt"
    assert "-r requirements.txt" in " ".join(ci), ".ci/run must install requirements.txt"
