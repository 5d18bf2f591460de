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
