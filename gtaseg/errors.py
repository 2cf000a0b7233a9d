"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class GtasegError(Exception):
    """A problem with the user's input (a file, an option, a dataset), reported as one line."""


class CheckpointError(GtasegError):
    """A checkpoint that cannot be read or does not fit the model."""


class DataError(GtasegError):
    """A dataset file or folder that is missing or malformed."""
