"""The one exception type for bad input: run.py prints its message as one line and exits 2."""


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


class CheckFailed(UserError):
    """A check that a job ran did not pass (its report is written before this is raised)."""
