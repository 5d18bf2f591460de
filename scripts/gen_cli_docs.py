"""Write docs/cli.md, the command-line reference, from the parsers themselves.

    python scripts/gen_cli_docs.py           # (re)write docs/cli.md
    python scripts/gen_cli_docs.py --check   # exit 1 if docs/cli.md is out of date

The help text is rendered at a fixed width (100 columns), whatever the terminal,
so the file is the same on every machine with the same Python.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "cli.md")
WIDTH = 100

HEADER = """# CLI reference

Generated from the parsers by `python scripts/gen_cli_docs.py`; do not edit by hand
(`tests/test_docs.py` fails when this file and the parsers disagree).
`aegis` (installed by `pip install .`) and `python cli.py` are the same command.
Flags are spelled with hyphens; each also answers to its underscore spelling
(the lab's `--bad_model`, `--clean_set`, `--bad_set`, `--pruned_bad_model_weights`).
"""


def _fixed_width(parser):
    """Make ``parser`` format its help at WIDTH columns."""
    base = parser.formatter_class
    parser.formatter_class = lambda prog, base=base: base(prog, width=WIDTH)


def _subcommands(parser):
    """``(name, aliases, subparser)`` for each sub-command, in the order they were added."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    seen = {}
    for name, sub in action.choices.items():
        if id(sub) in seen:
            seen[id(sub)][1].append(name)
        else:
            seen[id(sub)] = (name, [], sub)
    return list(seen.values())


def render() -> str:
    """The Markdown text of docs/cli.md."""
    from aegis_tf.cli import build_parser

    parser = build_parser(prog="aegis")
    _fixed_width(parser)
    commands = _subcommands(parser)
    parts = [HEADER, "## Commands\n"]
    for name, aliases, _ in commands:
        alias = f" (alias `{'`, `'.join(aliases)}`)" if aliases else ""
        parts.append(f"- [`aegis {name}`](#aegis-{name}){alias}")
    parts.append("\n## `aegis --help`\n")
    parts.append("```text\n" + parser.format_help().rstrip() + "\n```\n")
    for name, aliases, sub in commands:
        _fixed_width(sub)
        parts.append(f"## aegis {name}\n")
        if aliases:
            parts.append(f"Alias: `aegis {'`, `aegis '.join(aliases)}`.\n")
        parts.append("```text\n" + sub.format_help().rstrip() + "\n```\n")
    return "\n".join(parts)


def main(argv=None):
    p = argparse.ArgumentParser(description="write docs/cli.md from the CLI parsers")
    p.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md differs from what would be written")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        try:
            with open(DOC, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print("docs/cli.md is out of date: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(DOC)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)  # document this checkout's parsers, not an installed copy
    sys.exit(main())
