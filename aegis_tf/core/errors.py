"""The one exception type a user is meant to see.

Everything that is wrong with a user's input (a file, a flag, a model) raises
:class:`AegisError` with a single line that says what was expected and what was
received. ``cli.py`` prints that line and exits with status 2; it never shows a
traceback for bad input.
"""


class AegisError(Exception):
    """Bad input: a missing or malformed file, an unsupported model, a bad flag."""
