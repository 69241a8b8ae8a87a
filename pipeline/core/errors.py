"""The one exception a stage raises for bad input: the CLI prints it as one line and exits 1."""


class PipelineError(Exception):
    """A problem the user can fix (a bad param, file or URL); its message says what to do."""
