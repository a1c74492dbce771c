"""Errors that the command line reports as one line with exit status 2."""


class UserError(Exception):
    """Bad input from the user: a wrong path, option value, or file.

    The message must name the problem and, where possible, what to do about it. The CLI
    prints it as ``resprune: error: <message>`` and exits with status 2, without a traceback.
    """
