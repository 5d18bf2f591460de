"""results/ is grouped by stage and indexed: every file sits in a stage folder and is listed in
results/README.md, and the relative links of the results and the docs resolve."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")
STAGES = ("attack", "detect", "repair", "bench")


def _files():
    for folder, _, names in os.walk(RESULTS):
        for n in names:
            yield os.path.relpath(os.path.join(folder, n), RESULTS).replace(os.sep, "/")


def test_every_result_sits_in_a_stage_folder():
    loose = [f for f in _files() if f != "README.md" and f.split("/")[0] not in STAGES]
    assert loose == [], f"results outside results/{{{','.join(STAGES)}}}/: {loose}"


def test_the_index_lists_every_result():
    index = open(os.path.join(RESULTS, "README.md"), encoding="utf-8").read()
    listed = set(re.findall(r"`([^`\s]+)`", index))
    missing = sorted(f for f in _files() if f != "README.md" and f not in listed)
    assert missing == [], f"results/README.md does not list: {missing}"


def test_relative_links_of_results_and_docs_resolve():
    pages = [os.path.join(folder, n) for folder, _, names in os.walk(RESULTS) for n in names if n.endswith(".md")]
    pages += [os.path.join(ROOT, "docs", n) for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md")]
    broken = []
    for page in pages:
        text = open(page, encoding="utf-8").read()
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z][a-z0-9+.-]*:|^#", link):
                continue
            if not os.path.exists(os.path.join(os.path.dirname(page), link.split("#")[0])):
                broken.append(f"{os.path.relpath(page, ROOT)}: {link}")
    assert broken == []
