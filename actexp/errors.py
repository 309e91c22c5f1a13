"""The exceptions run.py turns into one line: bad input (exit 2) and an interrupted run (exit 130)."""


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


class CheckFailed(UserError):
    """A check that a job ran did not pass (its report is written before this is raised)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the job kept ("2 of 17 shards saved"): the same command resumes."""
