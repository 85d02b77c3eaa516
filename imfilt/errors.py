"""The library's own errors; only the CLI turns them into messages and exit codes."""


class ImfiltError(Exception):
    """Base class: the message is one line a user can act on."""


class UsageError(ImfiltError):
    """A bad option value or kernel: nothing is processed (exit 2)."""


class KernelError(UsageError):
    """A kernel that cannot be read or used; the message names the file, line and column."""


class InputError(ImfiltError):
    """One input that cannot be read or written: the rest of a batch goes on (exit 1)."""


class EngineUnavailable(UsageError):
    """The requested engine cannot run on this machine."""


class Stopped(ImfiltError):
    """On a Dask worker: the client that sent this job was interrupted, so the job ends unwritten."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, or a signal that asks a program to end (SIGTERM from kill, timeout or a job scheduler)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """The one check for every option with a fixed set of values."""
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
