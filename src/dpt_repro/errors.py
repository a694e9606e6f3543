"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A bad parameter, a missing input or corrupt data: a clear message, never a traceback."""


class GateFailed(Exception):
    """A data-quality gate found bad data; the pipeline must stop before the next stage."""
