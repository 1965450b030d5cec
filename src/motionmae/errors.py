"""User-facing errors: the CLI prints their message on one line, without a traceback."""


class UserError(Exception):
    """A mistake in the user's input (path, annotation line, config key, shape). The message names it."""
