"""The one error type the CLI turns into a one-line message and exit code 2."""


class ExporterError(Exception):
    """A user-facing error: bad input, missing file, refused overwrite."""
