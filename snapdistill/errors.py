"""Errors that the CLI turns into one line on stderr and exit code 2."""


class SnapdistillError(Exception):
    """A known failure caused by the user's input or environment (bad path, missing weights...).

    The message is shown as-is on one line, so it should say what is wrong and how to fix it.
    """

    exit_code = 2
