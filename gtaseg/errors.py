"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class GtasegError(Exception):
    """A problem with the user's input (a file, an option, a dataset), reported as one line."""


class CheckpointError(GtasegError):
    """A checkpoint that cannot be read or does not fit the model."""


class ModelError(GtasegError):
    """A model whose layers gtaseg cannot read the [cls] attention of."""


class DataError(GtasegError):
    """A dataset file or folder that is missing or malformed."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` as one line. A DataLoader worker's exception reaches the main process with
    the worker's whole traceback as its message ("Caught DataError in DataLoader worker process 0. Original
    Traceback ..."); its last line holds the original message."""
    text = str(error)
    if "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        name, sep, message = last.partition(": ")  # "gtaseg.errors.DataError: <message>"
        text = message if sep and " " not in name else last
    return " ".join(text.split()) if "\n" in text else text
