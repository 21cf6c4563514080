"""The error a script reports as one line and exit status 2, never as a traceback."""


class UserError(ValueError):
    """Bad input from the user: a flag, a file, a checkpoint. The message names it and says
    what to do."""


def os_error_line(error: OSError) -> str:
    """One line for a failure of the machine rather than the input (disk full, permissions, a
    vanished folder): the path and the system's reason, and what to do."""
    paths = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
    reason = error.strerror or str(error)
    return f"{paths or 'a file operation'}: {reason}; check the path, its permissions and the free disk space"
