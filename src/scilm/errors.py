"""The one exception type for bad user input; the CLI prints it as a single line."""


class ScilmError(Exception):
    """A problem with the user's input or settings: shown as one line, exit code 2, no traceback."""
