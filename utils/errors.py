"""The error a script reports as one line and exit status 2, never as a traceback."""


class UserError(ValueError):
    """Bad input from the user: a flag, a file, a checkpoint. The message names it and says
    what to do."""
