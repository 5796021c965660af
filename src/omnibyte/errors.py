"""Errors meant for the user: the CLI prints them as one line, without a traceback."""


class OmnibyteError(Exception):
    """A problem with the user's input (paths, data, checkpoints, options)."""
