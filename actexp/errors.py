"""The exceptions run.py turns into one line: bad input (exit 2) and an interrupted run (exit 130)."""

import errno
import threading


# A folder the user cannot write to (a read-only mount, another user's folder): fixable by choosing another.
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


class CheckFailed(UserError):
    """A check that a job ran did not pass (its report is written before this is raised)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the job kept ("2 of 17 shards saved"): the same command resumes."""


_SIGINT = threading.Event()


def on_sigint(signum, frame) -> None:
    """The CLI's Ctrl-C handler: KeyboardInterrupt, remembered. Python drops an exception raised inside
    a finaliser (filelock's FileLock.__del__ runs after every shard), so a Ctrl-C that lands there
    would be lost and the job would run on: the long loops call check_interrupt() too."""
    _SIGINT.set()
    raise KeyboardInterrupt


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came (and was swallowed somewhere) since the process started."""
    if _SIGINT.is_set():
        raise KeyboardInterrupt


def one_line(e: BaseException) -> str:
    """An exception as one line: Hydra and OmegaConf messages span several."""
    parts = []
    for err in (e, e.__cause__):
        for line in str(err or "").splitlines():
            line = line.strip()
            if line.startswith("Config search path"):
                break
            if line and not line.startswith(("full_key:", "object_type", "reference_type")) and line not in parts:
                parts.append(line)
    return " ".join(parts) or type(e).__name__


def _os_error(e: BaseException):
    """The OSError with a path this user cannot use behind e (logging wraps one in a ValueError), or None."""
    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, OSError) and err.errno in UNWRITABLE and err.filename is not None:
            return err
    return None


def _unwritable(e: BaseException) -> bool:
    return _os_error(e) is not None


def user_fault(e: BaseException) -> bool:
    """Bad input the user can fix: ours, a config Hydra or OmegaConf refused, or a folder this user
    cannot write to (Hydra makes the run folder before anything of ours runs)."""
    return isinstance(e, UserError) or type(e).__module__.startswith(("hydra.", "omegaconf.")) or _unwritable(e)
