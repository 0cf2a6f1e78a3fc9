"""Errors the suite reports to users as plain messages rather than tracebacks."""


class SuiteError(Exception):
    """A problem the user can fix; the CLI prints the message and exits with status 2."""


class ConfigError(SuiteError, ValueError):
    """A setting has a value no run can use (a ``ValueError`` too, for code that builds configs)."""


class DataError(SuiteError):
    """The dataset cannot be used as given (empty class folder, single class, ...)."""


class WeightsError(SuiteError):
    """Requested weights cannot be had."""


class DiskFull(SuiteError):
    """A file could not be written for want of space; what was half-written is removed."""


class ClusterError(SuiteError):
    """A multi-worker run cannot go on: a process did not join, or failed or left mid-run."""


class Terminated(BaseException):
    """The process was asked to stop by a signal (SIGTERM from a scheduler or ``timeout``).

    A ``BaseException``, like ``KeyboardInterrupt``: it is not an error of the work and is not
    caught by ``except Exception``; what is running records it and stops.
    """

    def __init__(self, signal_name: str):
        super().__init__(f"terminated by {signal_name}")
        self.signal_name = signal_name


def stop_reason(exc: BaseException) -> str:
    """What a run's manifest says when ``exc`` stopped it."""
    if isinstance(exc, Terminated):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by SIGINT (Ctrl-C)"
    if isinstance(exc, DiskFull):
        return f"disk full: {exc}"
    return f"{type(exc).__name__}: {exc}"
