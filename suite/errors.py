"""Errors the suite reports to users as plain messages rather than tracebacks."""


class SuiteError(Exception):
    """A problem the user can fix; the CLI prints the message and exits with status 2."""


class DataError(SuiteError):
    """The dataset cannot be used as given (empty class folder, single class, ...)."""


class WeightsError(SuiteError):
    """Requested weights cannot be had."""
