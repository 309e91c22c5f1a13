"""The exceptions run.py turns into one line: bad input (exit 2) and an interrupted run (exit 130)."""


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


class CheckFailed(UserError):
    """A check that a job ran did not pass (its report is written before this is raised)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the job kept ("2 of 17 shards saved"): the same command resumes."""


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


def user_fault(e: BaseException) -> bool:
    """Bad input the user can fix: ours, or a config Hydra or OmegaConf refused."""
    return isinstance(e, UserError) or type(e).__module__.startswith(("hydra.", "omegaconf."))


def message(e: BaseException) -> str:
    """What the CLI prints after `error: ` for bad input (and the API raises as a UserError)."""
    from .suggest import explain

    return explain(e) or one_line(e)
