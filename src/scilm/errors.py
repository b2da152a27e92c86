"""The one exception type for bad user input; the CLI prints it as a single line.

Library code names settings, not flags: a message marks a setting's name with :func:`name`, which
``str(error)`` shows as the plain name (``batch_size must be at least 1``, for a notebook) and
:meth:`ScilmError.for_cli` as the flag (``--batch-size must be at least 1``).
"""

from __future__ import annotations

import re

_MARKED = re.compile("\u2039([a-z0-9_]+)\u203a")  # ‹name›


def name(setting: str) -> str:
    """Mark ``setting`` (a config field's name) in an error message; see :class:`ScilmError`."""
    return f"\u2039{setting}\u203a"


class ScilmError(Exception):
    """A problem with the user's input or settings: shown as one line, exit code 2, no traceback."""

    def __str__(self) -> str:
        return _MARKED.sub(r"\1", super().__str__())

    def for_cli(self) -> str:
        """The message with every marked setting written as its command-line flag."""
        return _MARKED.sub(lambda m: "--" + m.group(1).replace("_", "-"), super().__str__())
